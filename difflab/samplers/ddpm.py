"""DDPM ancestral sampling (DDPM Algorithm 2), on the full chain or a respaced one."""

from __future__ import annotations

import torch

from ..rng import randn
from .base import CountingModel, Recorder, SampleOutput, batch_t, check_x_T

VARIANCE_CHOICES = (None, "fixed_small", "fixed_large")


def ddpm_step(diffusion, out: dict, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_{t-1} = mu_theta(x_t, t) + sigma_t z, with z = 0 at the last step (DDPM Alg. 2, line 4)."""
    nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
    return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise


@torch.no_grad()
def ddpm_sample(model, diffusion, x_T: torch.Tensor, *, steps=None, spacing: str = "linspace", generator=None,
                model_kwargs=None, clip_denoised: bool = False, callback=None, progress: bool = False,
                return_trajectory: bool = False, variance: str | None = None, denoised_fn=None) -> SampleOutput:
    """Ancestral sampling with sigma_t^2 = beta-tilde_t (``fixed_small``), beta_t (``fixed_large``)
    or the model's learned variance (the diffusion's own variance type when ``variance`` is None).

    With ``steps`` < T the chain is respaced (iDDPM section 4) and sampled with its own betas.
    """
    check_x_T(x_T)
    if variance not in VARIANCE_CHOICES:
        raise ValueError(f"unknown DDPM variance {variance!r}; allowed: fixed_small, fixed_large, or None "
                         "(the diffusion's own)")
    if variance is not None and diffusion.learns_variance:
        raise ValueError("this model learns its variance; leave variance=None to use it")
    chain = diffusion.respaced(steps, spacing)
    if variance is not None:
        chain = chain.with_options(variance=variance)
    counted = CountingModel(model)
    rec = Recorder(chain.num_timesteps, return_trajectory=return_trajectory, callback=callback,
                   progress=progress, desc="DDPM")
    x = x_T
    for i in reversed(range(chain.num_timesteps)):
        t = batch_t(i, x)
        out = chain.p_mean_variance(counted, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                    model_kwargs=model_kwargs)
        noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        x_prev = ddpm_step(chain, out, x, t, noise)
        rec.step(chain.num_timesteps - 1 - i, int(chain.timestep_map[i]), x, out["pred_x0"])
        x = x_prev
    return rec.finish(x, counted.nfe, [int(s) for s in chain.timestep_map[::-1]])
