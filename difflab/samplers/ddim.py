"""DDIM (Song et al. 2021): non-Markovian sampling, any eta, any sub-sequence; inversion.

Notation: on a (respaced) chain with steps tau_1 < ... < tau_S, at step i with
abar = abar_{tau_i} and abar_prev = abar_{tau_{i-1}} (1 at the last step),

    sigma_i = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev)     (DDIM eq. 16)
    x_prev  = sqrt(abar_prev) pred_x0 + sqrt(1 - abar_prev - sigma_i^2) eps + sigma_i z  (DDIM eq. 12)
"""

from __future__ import annotations

import torch

from ..rng import randn
from .base import CountingModel, Recorder, SampleOutput, batch_t, check_eta, check_x_T


def ddim_sigma(abar: torch.Tensor, abar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """DDIM eq. 16; eta = 1 gives the DDPM posterior standard deviation sqrt(beta-tilde)."""
    return eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)


def ddim_step(pred_x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor, abar_prev: torch.Tensor,
              eta: float, noise: torch.Tensor | None) -> torch.Tensor:
    """One DDIM update (DDIM eq. 12) from the model's (pred_x0, eps)."""
    sigma = ddim_sigma(abar, abar_prev, eta)
    dir_xt = torch.sqrt((1 - abar_prev - sigma**2).clamp(min=0)) * eps
    x_prev = torch.sqrt(abar_prev) * pred_x0 + dir_xt
    if eta > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


@torch.no_grad()
def ddim_sample(model, diffusion, x_T: torch.Tensor, *, steps=50, spacing: str = "linspace", generator=None,
                model_kwargs=None, clip_denoised: bool = False, callback=None, progress: bool = False,
                return_trajectory: bool = False, eta: float = 0.0, denoised_fn=None) -> SampleOutput:
    """DDIM sampling on ``steps`` timesteps; eta = 0 is deterministic, eta = 1 DDPM-like.

    Works with any model trained as a DDPM (DDIM section 4: the training objective is shared).
    """
    check_x_T(x_T)
    check_eta(eta)
    chain = diffusion.respaced(steps, spacing)
    counted = CountingModel(model)
    rec = Recorder(chain.num_timesteps, return_trajectory=return_trajectory, callback=callback,
                   progress=progress, desc="DDIM")
    x = x_T
    for i in reversed(range(chain.num_timesteps)):
        t = batch_t(i, x)
        out = chain.p_mean_variance(counted, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                    model_kwargs=model_kwargs)
        abar = chain.extract("alphas_cumprod", t, x)
        abar_prev = chain.extract("alphas_cumprod_prev", t, x)
        noise = randn(x.shape, generator, device=x.device, dtype=x.dtype) if eta > 0 else None
        x_prev = ddim_step(out["pred_x0"], out["eps"], abar, abar_prev, eta, noise)
        rec.step(chain.num_timesteps - 1 - i, int(chain.timestep_map[i]), x, out["pred_x0"])
        x = x_prev
    return rec.finish(x, counted.nfe, [int(s) for s in chain.timestep_map[::-1]])


@torch.no_grad()
def ddim_invert(model, diffusion, x_0: torch.Tensor, *, steps=50, spacing: str = "linspace", generator=None,
                model_kwargs=None, clip_denoised: bool = False, callback=None, progress: bool = False,
                return_trajectory: bool = False) -> SampleOutput:
    """Deterministic DDIM inversion x_0 -> x_T (DDIM section 4.3, eta = 0 run forward).

    The ODE step of eq. 12 taken from abar_prev to abar, with eps evaluated at the
    current (less noisy) point: x_next = sqrt(abar_next) pred_x0 + sqrt(1 - abar_next) eps.
    ``sample`` of the output is x_T; sampling it with ``ddim_sample(eta=0)`` on the same
    steps reconstructs x_0 up to discretisation error.
    """
    check_x_T(x_0)
    chain = diffusion.respaced(steps, spacing)
    counted = CountingModel(model)
    rec = Recorder(chain.num_timesteps, return_trajectory=return_trajectory, callback=callback,
                   progress=progress, desc="DDIM inversion")
    x = x_0
    for i in range(chain.num_timesteps):
        t = batch_t(i, x)
        if i == 0:
            # the first point is x_0 itself (abar_prev = 1): there is no noise to predict yet,
            # so evaluate the model at the first kept step, as the reverse step did.
            out = chain.p_mean_variance(counted, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        else:
            out = chain.p_mean_variance(counted, x, batch_t(i - 1, x), clip_denoised=clip_denoised,
                                        model_kwargs=model_kwargs)
        eps = out["eps"]
        abar_prev = chain.extract("alphas_cumprod_prev", t, x)
        abar = chain.extract("alphas_cumprod", t, x)
        pred_x0 = (x - torch.sqrt(1 - abar_prev) * eps) / torch.sqrt(abar_prev)
        x_next = torch.sqrt(abar) * pred_x0 + torch.sqrt(1 - abar) * eps
        rec.step(i, int(chain.timestep_map[i]), x, pred_x0)
        x = x_next
    return rec.finish(x, counted.nfe, [int(s) for s in chain.timestep_map])
