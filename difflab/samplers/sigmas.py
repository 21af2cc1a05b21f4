"""Noise-level grids for the ODE/SDE solvers: the chain's own timesteps, or Karras et al.'s sigmas.

A VP chain x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps has the variance-exploding noise level

    sigma_t = sqrt((1 - abar_t) / abar_t)        (EDM's sigma; abar = 1 / (1 + sigma^2))

and a grid of noise levels is a choice of where the solver stops. Two grids are offered to the
solvers with a ``sigma_schedule`` option:

- ``"timesteps"``: the sigmas of the timesteps that ``steps`` and ``spacing`` pick (as DDIM does).
- ``"karras"``: EDM eq. 5 with rho = 7, which spaces sigma^(1/rho) uniformly between the chain's
  smallest and largest sigma: the steps crowd towards the clean end, where the images get their
  detail.

Karras levels fall between training timesteps. :func:`karras_timesteps` snaps them to the
nearest training timestep (by linear interpolation in log sigma and rounding, the timesteps
diffusers' ``use_karras_sigmas=True`` evaluates its network at), so a solver that walks them
calls the model only at integer timesteps with the exact noise level of each; Heun's
``sigma_schedule="karras"`` instead keeps the exact sigmas and calls the model at fractional
timesteps (heun.py).
"""

from __future__ import annotations

import numpy as np

SIGMA_SCHEDULES = ("timesteps", "karras")
KARRAS_RHO = 7.0          # EDM section 3, "rho = 7"
KARRAS_SIGMA_MAX = 80.0   # EDM Table 1, sigma_max for data in [-1, 1]


def check_sigma_schedule(sigma_schedule: str, rho: float, sigma_max: float | None = None) -> None:
    if sigma_schedule not in SIGMA_SCHEDULES:
        raise ValueError(f"unknown sigma_schedule {sigma_schedule!r}; allowed: {', '.join(SIGMA_SCHEDULES)}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if sigma_max is not None and not sigma_max > 0:
        raise ValueError(f"sigma_max must be > 0 or None, got {sigma_max}")


def check_step_count(steps, diffusion, what: str = "sigma_schedule='karras'") -> int:
    """``steps`` as an int in [1, T] (a Karras grid needs a count, not a list of timesteps)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= diffusion.num_timesteps:
        raise ValueError(f"{what} needs steps as a count in [1, {diffusion.num_timesteps}], got {steps!r}")
    return int(steps)


def chain_sigmas(diffusion) -> np.ndarray:
    """sigma of every timestep of ``diffusion``'s chain (float64, increasing with the index)."""
    abar = diffusion.terms.alphas_cumprod
    return np.sqrt((1 - abar) / abar)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = KARRAS_RHO) -> np.ndarray:
    """EDM eq. 5: n noise levels from sigma_max down to sigma_min, denser near sigma_min.

        sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    """
    ramp = np.linspace(0.0, 1.0, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def sigma_to_timestep(sigma: np.ndarray, diffusion) -> np.ndarray:
    """Fractional training timestep of each sigma: linear in log sigma between the chain's steps."""
    return np.interp(np.log(sigma), np.log(chain_sigmas(diffusion)), diffusion.timestep_map.astype(np.float64))


def karras_range(diffusion, sigma_max: float | None = None) -> tuple[float, float]:
    """(sigma_min, sigma_max) of a Karras grid on ``diffusion``: the chain's smallest and largest sigma,
    the top capped at ``sigma_max`` when given."""
    sig = chain_sigmas(diffusion)
    top = float(sig[-1]) if sigma_max is None else min(float(sig[-1]), float(sigma_max))
    return float(sig[0]), top


def karras_timesteps(diffusion, steps: int, rho: float = KARRAS_RHO,
                     sigma_max: float | None = KARRAS_SIGMA_MAX) -> list[int]:
    """The training timesteps (increasing) nearest to ``steps`` Karras levels on ``diffusion``, between
    the chain's smallest sigma and ``sigma_max`` (None: its largest, as diffusers does).

    Levels that round onto the same timestep (possible near t = 0 with many steps on a long
    chain) are kept once, so the list can be shorter than ``steps``.
    """
    steps = check_step_count(steps, diffusion)
    lo, hi = karras_range(diffusion, sigma_max)
    t = np.round(sigma_to_timestep(karras_sigmas(lo, hi, steps, rho), diffusion)).astype(np.int64)
    return sorted({int(s) for s in t})
