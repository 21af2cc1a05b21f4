"""Why the latent presets predict v: unclipped eps sampling on the cosine schedule amplifies a small
model error by 1 / sqrt(alphas_cumprod[T-1]) at the first step, v sampling does not. (Measured on a
trained 7x7x4 super-resolution model with eps prediction: sampled latents of std ~1700, PSNR 8 dB,
and 17.8 dB once pred_x0 was clamped to [-5, 5].)"""

import pytest
import torch

from difflab.config import RUN_PRESETS, DiffusionConfig
from difflab.conditioning import unclipped_eps_warning


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_a_small_output_error_at_the_last_timestep_is_amplified_into_x0_with_eps_and_not_with_v(prediction):
    diffusion = DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction=prediction).build()
    g = torch.Generator().manual_seed(0)
    x_0, noise = torch.randn(64, 4, 7, 7, generator=g), torch.randn(64, 4, 7, 7, generator=g)
    t = torch.full((64,), 999)
    x_t = diffusion.q_sample(x_0, t, noise)
    target = noise if prediction == "eps" else diffusion.v_from_x0_eps(x_0, t, noise)
    pred_x0, _ = diffusion.to_x0_eps(x_t, t, target + 0.01)            # the network is off by 0.01
    error = float((pred_x0 - x_0).abs().mean())
    abar_T = float(diffusion.terms.alphas_cumprod[-1])
    if prediction == "eps":   # 0.01 * sqrt(1 - abar) / sqrt(abar): ~200 on data of std 1
        assert error == pytest.approx(0.01 * (1 - abar_T) ** 0.5 / abar_T ** 0.5, rel=1e-3) and error > 100
    else:                     # 0.01 * sqrt(1 - abar)
        assert error == pytest.approx(0.01, rel=1e-3)


def test_the_warning_names_the_problem_and_the_latent_presets_avoid_it():
    cfg = RUN_PRESETS["mnist-latent-text"]
    assert cfg.diffusion.prediction == "v" and RUN_PRESETS["mnist-latent-sr"].diffusion.prediction == "v"
    assert unclipped_eps_warning(cfg) is None
    eps = cfg.replace(diffusion=DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction="eps"))
    assert "diffusion.prediction=v" in unclipped_eps_warning(eps)
    clipped = RUN_PRESETS["digits"].replace(diffusion=eps.diffusion)   # eps, cosine, but x_0 clipped to [-1, 1]
    assert clipped.sample.clip_denoised and unclipped_eps_warning(clipped) is None
