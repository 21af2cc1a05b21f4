"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++"): multistep, data-prediction form; its ODE
(eta = 0) and its SDE variant, DPM-Solver++(2M) SDE (the same exponential integrator applied to
the reverse SDE; the authors' addition to diffusers as ``algorithm_type="sde-dpmsolver++"``, also
k-diffusion's ``sample_dpmpp_2m_sde`` with eta = 1).

Notation, on a grid of steps tau_1 < ... < tau_S, walked from i = S down to 1, with the last
step landing on clean data (abar = 1, sigma = 0):

==========================  ===============================================================
``alpha_i, sigma_i``        sqrt(abar_{tau_i}), sqrt(1 - abar_{tau_i})  (VP: x_t = alpha x_0 + sigma eps)
``lambda_i``                log(alpha_i / sigma_i), half the log-SNR
``h_i``                     lambda_{i-1} - lambda_i > 0, the step in lambda
``r_i``                     h_{i+1} / h_i, ratio of the previous step to this one
``x0_i``                    pred_x0 of the model at (x_{tau_i}, tau_i)
``z``                       fresh N(0, I) noise (SDE only)
==========================  ===============================================================

    2M data term:  D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i+1}    (DPM-Solver++ Alg. 2; D_i = x0_i
                                                                          on the first and last steps)
    ODE:   x_{i-1} = (sigma_{i-1} / sigma_i) x_i - alpha_{i-1} (e^{-h_i} - 1) D_i    (DPM-Solver++ eq. 9)
    SDE:   x_{i-1} = (sigma_{i-1} / sigma_i) e^{-h_i} x_i + alpha_{i-1} (1 - e^{-2 h_i}) D_i
                     + sigma_{i-1} sqrt(1 - e^{-2 h_i}) z                      (SDE-DPM-Solver++(2M))

The first-order ODE step is DDIM with eta = 0 (DPM-Solver++ section 4); the first-order SDE step is
the DDPM posterior step, i.e. DDIM with eta = 1 (both tested). The first step has no history and is
first order. The last step goes to sigma = 0, where lambda = +inf: it is always first order and returns
x0 of the last evaluation (e^{-h} = 0, no noise), as diffusers' ``DPMSolverMultistepScheduler`` does with
its default ``final_sigmas_type="zero"`` (so its ``lower_order_final`` switch has nothing left to change
for the 2nd-order solver and is not offered). The NFE equals the number of steps. e^{-h} is computed as
a ratio of sigma / alpha, so the final step needs no infinities.

Grids (``sigma_schedule``, see ``sigmas.py``): ``"timesteps"`` (default) takes the chain's timesteps
chosen by ``steps`` and ``spacing``; the default spacing is ``"trailing"`` (T-1, T-1-T/S, ..., T/S-1),
which is (up to one timestep) the grid diffusers uses by default for this solver. A grid that ends
with a model call at t = 0 ("linspace", "leading") wastes that call and, worse, makes the step into
t = 0 a huge one in lambda after a small one (r ~ 0.15 at 20 steps on the linear schedule), where
the 2M extrapolation overshoots: on a 2-D Gaussian mixture with the exact model, 20 steps on
"linspace" inflate the variances by 12-21 %, on "trailing" they are off by < 2 %. ``"karras"`` takes
the training timesteps nearest to EDM's rho = 7 levels between the chain's smallest sigma and
``sigma_max`` (EDM's 80 by default; None = the chain's largest, which is what diffusers'
``use_karras_sigmas=True`` does, and calls its network at the same timesteps). Uncapped, the cosine
schedule's top sigma of ~2e4 puts half of 10 levels above sigma 80 (where the sample is noise to 1
part in 80) and several of them round onto the same timestep (10 steps give 7 distinct ones). The
cap applies to the Karras grid only: the "timesteps" grid starts at its first timestep.
"""

from __future__ import annotations

import math

import torch

from ..rng import randn
from .base import CountingModel, Recorder, SampleOutput, batch_t, check_x_T
from .sigmas import KARRAS_RHO, KARRAS_SIGMA_MAX, check_sigma_schedule, karras_timesteps

ORDERS = (1, 2)


@torch.no_grad()
def dpm_solver_pp_sample(model, diffusion, x_T: torch.Tensor, *, steps=20, spacing: str = "trailing",
                         generator=None, model_kwargs=None, clip_denoised: bool = False, callback=None,
                         progress: bool = False, return_trajectory: bool = False, eta: float = 0.0,
                         order: int = 2, sigma_schedule: str = "timesteps", rho: float = KARRAS_RHO,
                         sigma_max: float | None = KARRAS_SIGMA_MAX, denoised_fn=None) -> SampleOutput:
    """DPM-Solver++ ODE (multistep, data prediction) on ``steps`` timesteps; one model call per step.

    ``order`` 2 is DPM-Solver++(2M); ``order`` 1 is the first-order solver (identical to DDIM with
    eta = 0). This is the deterministic solver: ``eta`` must be 0 (the stochastic one is
    :func:`dpm_solver_pp_sde_sample`). ``generator`` is accepted for the common signature and unused.
    ``sigma_schedule``: "timesteps" or "karras" (with ``rho``, and ``sigma_max`` capping the top of the
    Karras grid, None = the chain's largest sigma as in diffusers; ``spacing`` then does not apply).
    ``clip_denoised`` / ``denoised_fn`` act on pred_x0 before it enters the update (static thresholding).
    """
    if float(eta) != 0.0:
        raise ValueError(f"dpm_solver_pp_sample is the deterministic (eta = 0) DPM-Solver++; got eta={eta}. "
                         "Use dpm_solver_pp_sde_sample (sampler 'dpm++2m-sde'), ddim_sample or ddpm_sample for "
                         "stochastic sampling")
    return _multistep(model, diffusion, x_T, stochastic=False, steps=steps, spacing=spacing, generator=None,
                      model_kwargs=model_kwargs, clip_denoised=clip_denoised, callback=callback, progress=progress,
                      return_trajectory=return_trajectory, order=order, sigma_schedule=sigma_schedule, rho=rho,
                      sigma_max=sigma_max, denoised_fn=denoised_fn)


@torch.no_grad()
def dpm_solver_pp_sde_sample(model, diffusion, x_T: torch.Tensor, *, steps=20, spacing: str = "trailing",
                             generator=None, model_kwargs=None, clip_denoised: bool = False, callback=None,
                             progress: bool = False, return_trajectory: bool = False, order: int = 2,
                             sigma_schedule: str = "timesteps", rho: float = KARRAS_RHO,
                             sigma_max: float | None = KARRAS_SIGMA_MAX, denoised_fn=None) -> SampleOutput:
    """DPM-Solver++(2M) SDE on ``steps`` timesteps; one model call per step, fresh noise per step.

    The same grid, history and final step as :func:`dpm_solver_pp_sample`, with the SDE update
    (diffusers' ``algorithm_type="sde-dpmsolver++"``). ``order`` 1 is the DDPM posterior step on
    the grid (= DDIM with eta = 1). ``generator``: one torch.Generator or one per sample.
    """
    return _multistep(model, diffusion, x_T, stochastic=True, steps=steps, spacing=spacing, generator=generator,
                      model_kwargs=model_kwargs, clip_denoised=clip_denoised, callback=callback, progress=progress,
                      return_trajectory=return_trajectory, order=order, sigma_schedule=sigma_schedule, rho=rho,
                      sigma_max=sigma_max, denoised_fn=denoised_fn)


def _multistep(model, diffusion, x_T, *, stochastic: bool, steps, spacing, generator, model_kwargs, clip_denoised,
               callback, progress, return_trajectory, order, sigma_schedule, rho, sigma_max,
               denoised_fn) -> SampleOutput:
    check_x_T(x_T)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    check_sigma_schedule(sigma_schedule, rho, sigma_max)
    if sigma_schedule == "karras":
        diffusion.respaced(None, spacing)   # validates the spacing name, though it does not apply here
        chain = diffusion.respaced(karras_timesteps(diffusion, steps, rho, sigma_max))
    else:
        chain = diffusion.respaced(steps, spacing)
    abar = chain.terms.alphas_cumprod  # float64, index i = tau_{i+1}
    alpha = [math.sqrt(a) for a in abar]
    sigma = [math.sqrt(1.0 - a) for a in abar]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
    counted = CountingModel(model)
    n = chain.num_timesteps
    rec = Recorder(n, return_trajectory=return_trajectory, callback=callback, progress=progress,
                   desc="DPM-Solver++ SDE" if stochastic else "DPM-Solver++")
    x = x_T
    x0_prev = None  # pred_x0 at the previous (noisier) step, for the 2M correction
    for k, i in enumerate(reversed(range(n))):
        t = batch_t(i, x)
        out = chain.p_mean_variance(counted, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                    model_kwargs=model_kwargs)
        x0 = out["pred_x0"]
        alpha_s, sigma_s = alpha[i], sigma[i]
        alpha_t, sigma_t = (alpha[i - 1], sigma[i - 1]) if i > 0 else (1.0, 0.0)
        exp_neg_h = (sigma_t / alpha_t) / (sigma_s / alpha_s)  # e^{-h}, h = lambda_t - lambda_s
        if order == 1 or x0_prev is None or i == 0:
            D = x0
        else:
            r = (lam[i] - lam[i + 1]) / (lam[i - 1] - lam[i])  # r_i = h_{i+1} / h_i
            D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev  # DPM-Solver++ Alg. 2
        if not stochastic:
            x_next = (sigma_t / sigma_s) * x - alpha_t * (exp_neg_h - 1.0) * D  # DPM-Solver++ eq. 9
        else:
            keep = 1.0 - exp_neg_h**2  # 1 - e^{-2h}
            x_next = (sigma_t / sigma_s) * exp_neg_h * x + alpha_t * keep * D  # SDE-DPM-Solver++(2M)
            if sigma_t > 0:
                x_next = x_next + sigma_t * math.sqrt(keep) * randn(x.shape, generator, device=x.device,
                                                                    dtype=x.dtype)
        rec.step(k, int(chain.timestep_map[i]), x, x0)
        x0_prev = x0
        x = x_next
    return rec.finish(x, counted.nfe, [int(s) for s in chain.timestep_map[::-1]])
