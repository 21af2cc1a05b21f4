"""Parity of difflab's DDPM and DDIM samplers with diffusers' DDPMScheduler / DDIMScheduler.

The same betas, the same deterministic "model" and the same per-step noise go through our
whole sampling loop (``ddpm_sample`` / ``ddim_sample``) and through a loop over the diffusers
scheduler; the final samples must agree.

Precision: diffusers stores ``alphas_cumprod`` in float32 (even with ``trained_betas``), which
alone moves abar by ~1e-6 relative near t = T. To test the *algorithm* rather than float32
rounding, most tests build the scheduler from our betas and then replace its tables by our
float64 ones (``_float64_tables``); every step of both loops is then float64 and they agree
to 1e-9. One test keeps diffusers' shipped float32 tables and checks agreement to 1e-5.

Noise: DDPMScheduler.step draws ``randn_tensor(shape, generator=g, dtype=x.dtype)`` (=
``torch.randn``) once per step with t > 0, after the model call; our DDPM draws
``difflab.rng.randn`` with the same generator at the same point of every step (its last draw,
at t = 0, is multiplied by 0). Two generators with the same seed therefore give both loops the
same noise. For DDIM we pass diffusers ``variance_noise=`` drawn from a same-seeded generator.
"""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from difflab.diffusion import GaussianDiffusion
from difflab.samplers import ddim_sample, ddim_step, ddpm_sample
from difflab.schedules import make_betas

D64 = torch.float64
T = 1000
PRED_TO_DIFFUSERS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def smooth_model(x, t, **_):
    """A deterministic, smooth, nonlinear stand-in for a network: any (x, t) -> output.

    t enters as t / 100 so an off-by-one timestep moves the output by ~1e-2; t may be an integer
    or a float tensor. Output is bounded, so every parametrisation gives a stable chain.
    """
    tt = t.to(D64).reshape(-1, *([1] * (x.ndim - 1))) / 100.0
    return (0.7 * torch.tanh(x) * torch.cos(0.3 * tt) + 0.3 * torch.sin(0.5 * x + tt)).to(x.dtype)


def _float64_tables(sched, diffusion):
    """Replace the scheduler's float32 tables by our float64 ones (same betas, so same values)."""
    sched.betas = torch.from_numpy(diffusion.terms.betas.copy())
    sched.alphas = torch.from_numpy(diffusion.terms.alphas.copy())
    sched.alphas_cumprod = torch.from_numpy(diffusion.terms.alphas_cumprod.copy())
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=D64)
    return sched


def _x_T(shape=(3, 2, 4, 4), dtype=D64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _batch_t(t, x):
    return torch.full((x.shape[0],), int(t), dtype=torch.long)


def diffusers_ddpm_loop(sched, x_T, seed):
    g = torch.Generator().manual_seed(seed)
    x = x_T.clone()
    for t in sched.timesteps:
        out = smooth_model(x, _batch_t(t, x))
        x = sched.step(out, t, x, generator=g).prev_sample
    return x


def diffusers_ddim_loop(sched, x_T, seed, eta, use_clipped_model_output):
    g = torch.Generator().manual_seed(seed)
    x = x_T.clone()
    for t in sched.timesteps:
        out = smooth_model(x, _batch_t(t, x))
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype) if eta > 0 else None
        x = sched.step(out, t, x, eta=eta, variance_noise=noise,
                       use_clipped_model_output=use_clipped_model_output).prev_sample
    return x


# ---------------------------------------------------------------------------------------- DDPM
def _ddpm_pair(prediction, variance, clip, num_inference_steps):
    betas = make_betas("linear", T)
    ours = GaussianDiffusion(betas, prediction=prediction, variance=variance)
    sched = DDPMScheduler(num_train_timesteps=T, trained_betas=betas, variance_type=variance, clip_sample=clip,
                          prediction_type=PRED_TO_DIFFUSERS[prediction])
    if num_inference_steps is not None:
        sched.set_timesteps(num_inference_steps)  # diffusers' default "leading": prev_t = t - T // S
    return ours, _float64_tables(sched, ours)


@pytest.mark.parametrize("prediction,variance,clip", [
    ("eps", "fixed_small", False),
    ("v", "fixed_large", True),
    ("x0", "fixed_large", False),
])
def test_ddpm_full_chain_matches_diffusers(prediction, variance, clip):
    ours, sched = _ddpm_pair(prediction, variance, clip, None)
    x_T = _x_T(shape=(2, 1, 3, 3))
    expected = diffusers_ddpm_loop(sched, x_T, seed=1)
    out = ddpm_sample(smooth_model, ours, x_T, generator=torch.Generator().manual_seed(1), clip_denoised=clip)
    assert out.nfe == T
    torch.testing.assert_close(out.sample, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("num_inference_steps", [10, 50])
def test_ddpm_respaced_leading_matches_diffusers(prediction, variance, clip, num_inference_steps):
    ours, sched = _ddpm_pair(prediction, variance, clip, num_inference_steps)
    x_T = _x_T()
    expected = diffusers_ddpm_loop(sched, x_T, seed=2)
    # our equivalent of diffusers' leading spacing: respace the chain onto diffusers' timesteps
    out = ddpm_sample(smooth_model, ours, x_T, steps=sched.timesteps.tolist(),
                      generator=torch.Generator().manual_seed(2), clip_denoised=clip, variance=variance)
    assert out.timesteps == sched.timesteps.tolist()
    assert out.nfe == num_inference_steps
    torch.testing.assert_close(out.sample, expected, rtol=1e-9, atol=1e-9)
    # and the same chain through our own "leading" spacing
    same = ddpm_sample(smooth_model, ours, x_T, steps=num_inference_steps, spacing="leading",
                       generator=torch.Generator().manual_seed(2), clip_denoised=clip, variance=variance)
    torch.testing.assert_close(same.sample, out.sample, rtol=0, atol=0)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_ddpm_matches_diffusers_float32_tables(prediction):
    """diffusers as shipped (float32 tables from trained_betas) against ours, float32 samples.

    diffusers forms beta'_t = 1 - abar_t / abar_prev in float32; for the short late steps of a
    respaced chain that cancels to ~1e-5 relative, so the samples (kept in [-1, 1] by clipping)
    agree to ~1.5e-5 here, where with float64 tables (tests above) they agree to 1e-9 and the
    float32 sample arithmetic alone accounts for < 1e-6.
    """
    betas = make_betas("linear", T)
    ours = GaussianDiffusion(betas, prediction=prediction, variance="fixed_small")
    sched = DDPMScheduler(num_train_timesteps=T, trained_betas=betas, clip_sample=True,
                          prediction_type=PRED_TO_DIFFUSERS[prediction])
    sched.set_timesteps(100)
    x_T = _x_T(dtype=torch.float32)
    expected = diffusers_ddpm_loop(sched, x_T, seed=3)
    out = ddpm_sample(smooth_model, ours, x_T, steps=sched.timesteps.tolist(), clip_denoised=True,
                      generator=torch.Generator().manual_seed(3))
    assert out.sample.dtype == torch.float32
    torch.testing.assert_close(out.sample, expected, rtol=0, atol=5e-5)


def test_ddpm_parity_is_sensitive_to_the_noise():
    """The comparison is not vacuous: a different noise seed gives a clearly different sample."""
    ours, sched = _ddpm_pair("eps", "fixed_small", False, 50)
    x_T = _x_T()
    expected = diffusers_ddpm_loop(sched, x_T, seed=2)
    other = ddpm_sample(smooth_model, ours, x_T, steps=sched.timesteps.tolist(),
                        generator=torch.Generator().manual_seed(99))
    assert (other.sample - expected).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------- DDIM
def _ddim_pair(prediction, spacing, steps, clip=False):
    betas = make_betas("linear", T)
    ours = GaussianDiffusion(betas, prediction=prediction)
    sched = DDIMScheduler(num_train_timesteps=T, trained_betas=betas, clip_sample=clip, set_alpha_to_one=True,
                          steps_offset=0, timestep_spacing=spacing, prediction_type=PRED_TO_DIFFUSERS[prediction])
    sched.set_timesteps(steps)
    return ours, _float64_tables(sched, ours)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [10, 50, 100])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_matches_diffusers(eta, steps, spacing):
    ours, sched = _ddim_pair("eps", spacing, steps)
    x_T = _x_T()
    expected = diffusers_ddim_loop(sched, x_T, seed=4, eta=eta, use_clipped_model_output=False)
    out = ddim_sample(smooth_model, ours, x_T, steps=steps, spacing=spacing, eta=eta,
                      generator=torch.Generator().manual_seed(4))
    assert out.timesteps == sched.timesteps.tolist()
    assert out.nfe == steps
    torch.testing.assert_close(out.sample, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_prediction_types_and_clipping_match_diffusers(prediction, clip):
    # our clip_denoised re-derives eps from the clipped x_0 (p_mean_variance), which is diffusers'
    # use_clipped_model_output=True
    ours, sched = _ddim_pair(prediction, "leading", 20, clip=clip)
    x_T = _x_T()
    expected = diffusers_ddim_loop(sched, x_T, seed=5, eta=0.5, use_clipped_model_output=clip)
    out = ddim_sample(smooth_model, ours, x_T, steps=20, spacing="leading", eta=0.5, clip_denoised=clip,
                      generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out.sample, expected, rtol=1e-9, atol=1e-9)


def test_ddim_linspace_differs_from_diffusers_by_design():
    """diffusers' DDIMScheduler.step always steps to prev_t = t - T // S, whatever the spacing.

    With "linspace" (timesteps round(linspace(0, T-1, S)), gaps of 111 for S = 10) that is not the
    next timestep of the grid, so diffusers jumps to abar_{t-100} (a timestep it never evaluates)
    while we step along the grid (DDIM eq. 12 on the sub-sequence tau). Same timesteps, different
    algorithm: the samples differ, and the first diffusers step is exactly our DDIM update towards
    abar_{899} instead of abar_{888}.
    """
    steps = 10
    ours, sched = _ddim_pair("eps", "linspace", steps)
    assert sched.timesteps.tolist()[:2] == [999, 888]
    x_T = _x_T()
    expected = diffusers_ddim_loop(sched, x_T, seed=6, eta=0.0, use_clipped_model_output=False)
    out = ddim_sample(smooth_model, ours, x_T, steps=steps, spacing="linspace", return_trajectory=True)
    assert out.timesteps == sched.timesteps.tolist()  # the same grid ...
    assert (out.sample - expected).abs().max() > 1e-2  # ... but not the same sampler

    t = _batch_t(999, x_T)
    pred_x0, eps = ours.to_x0_eps(x_T, t, smooth_model(x_T, t))
    abar = torch.from_numpy(ours.terms.alphas_cumprod)
    diffusers_first = sched.step(smooth_model(x_T, t), sched.timesteps[0], x_T, eta=0.0).prev_sample
    torch.testing.assert_close(diffusers_first, ddim_step(pred_x0, eps, abar[999], abar[899], 0.0, None),
                               rtol=1e-12, atol=1e-12)
    ours_first = ddim_step(pred_x0, eps, abar[999], abar[888], 0.0, None)
    assert (diffusers_first - ours_first).abs().max() > 1e-3
    torch.testing.assert_close(out.trajectory[1], ours_first, rtol=1e-12, atol=1e-12)


def test_ddim_full_chain_eta1_is_ddpm_fixed_small():
    """DDIM eq. 16 with eta = 1 is the DDPM posterior (fixed_small): same noise, same sample."""
    betas = make_betas("linear", T)
    ours = GaussianDiffusion(betas)
    x_T = _x_T(shape=(2, 3))
    a = ddim_sample(smooth_model, ours, x_T, steps=50, spacing="leading", eta=1.0,
                    generator=torch.Generator().manual_seed(7))
    b = ddpm_sample(smooth_model, ours, x_T, steps=50, spacing="leading", variance="fixed_small",
                    generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.sample, b.sample, rtol=1e-9, atol=1e-9)
    assert math.isfinite(float(a.sample.abs().max()))
