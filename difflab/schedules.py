"""Noise schedules and their derived quantities, and timestep respacing.

Pure float64 math on numpy arrays: no ``nn.Module``, no torch. Indices are 0-based:
index ``t`` here is the paper's timestep ``t + 1`` (DDPM counts 1..T).

Notation (DDPM / Improved DDPM):

================================  ==========================================================
``betas[t]``                      beta_t, variance of q(x_t | x_{t-1})
``alphas[t]``                     alpha_t = 1 - beta_t
``alphas_cumprod[t]``             alpha-bar_t = prod_{s<=t} alpha_s
``alphas_cumprod_prev[t]``        alpha-bar_{t-1} (1 at the first step)
``posterior_variance[t]``         beta-tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
``posterior_mean_coef1/2``        coefficients of x_0 and x_t in mu-tilde_t (DDPM eq. 7)
``log_fixed_large_variance``      log beta_t (DDPM's sigma_t^2 = beta_t), beta-tilde_2 at the first step
================================  ==========================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SCHEDULES = ("linear", "cosine", "scaled_linear", "sigmoid")
SPACINGS = ("linspace", "leading", "trailing", "quadratic")


def _check_T(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM section 4: betas increasing linearly from beta_1 = 1e-4 to beta_T = 0.02."""
    _check_T(num_timesteps)
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def betas_from_alphas_cumprod(alphas_cumprod: np.ndarray, max_beta: float = 0.999) -> np.ndarray:
    """Invert alpha-bar_t = prod (1 - beta_s): beta_t = 1 - abar_t / abar_{t-1}, clipped."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    prev = np.concatenate([[1.0], abar[:-1]])
    return np.minimum(1.0 - abar / prev, max_beta)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """iDDPM eq. 17: abar_t = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2); betas clipped at 0.999."""
    _check_T(num_timesteps)
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def scaled_linear_betas(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    """Latent-diffusion schedule: sqrt(beta) linear between sqrt(beta_start) and sqrt(beta_end)."""
    _check_T(num_timesteps)
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def sigmoid_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Betas following a sigmoid over [-6, 6], rescaled to [beta_start, beta_end]."""
    _check_T(num_timesteps)
    x = np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-x)) * (beta_end - beta_start) + beta_start


def make_betas(name: str, num_timesteps: int = 1000, **kwargs) -> np.ndarray:
    """Betas for a named schedule (one of ``SCHEDULES``)."""
    table = {
        "linear": linear_betas,
        "cosine": cosine_betas,
        "scaled_linear": scaled_linear_betas,
        "sigmoid": sigmoid_betas,
    }
    if name not in table:
        raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    return table[name](num_timesteps, **kwargs)


@dataclass(frozen=True, eq=False)
class ScheduleTerms:
    """All quantities derived from ``betas`` (float64 arrays of length T)."""

    betas: np.ndarray
    alphas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    alphas_cumprod_next: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    log_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    log_fixed_large_variance: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)


def schedule_terms(betas: Sequence[float] | np.ndarray) -> ScheduleTerms:
    """Derive every schedule quantity from betas, in float64."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or len(betas) < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas <= 1)):
        raise ValueError("betas must lie in (0, 1]")
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    abar_next = np.append(abar[1:], 0.0)
    # DDPM eq. 7: beta-tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    # beta-tilde_1 = 0; its log is clipped to that of beta-tilde_2 (iDDPM code convention)
    if len(betas) > 1:
        log_var_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    else:
        log_var_clipped = np.log(np.maximum(posterior_variance, 1e-20))
    return ScheduleTerms(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        alphas_cumprod_next=abar_next,
        sqrt_alphas_cumprod=np.sqrt(abar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
        log_one_minus_alphas_cumprod=np.log(1.0 - abar),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=log_var_clipped,
        # DDPM eq. 7: mu-tilde_t = coef1 * x_0 + coef2 * x_t
        posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        # DDPM sigma_t^2 = beta_t, with beta-tilde_2 at the first step (iDDPM code) so L_0 stays finite
        log_fixed_large_variance=np.log(np.append(posterior_variance[1], betas[1:]) if len(betas) > 1 else betas),
    )


def eps_bound_weights(terms: ScheduleTerms, variance: str = "fixed_small") -> np.ndarray:
    """DDPM eq. 12: the weight lambda_t with which the bound term is the eps-prediction error,

        L_{t-1} = lambda_t ||eps - eps_theta(x_t, t)||^2 + C_t,
        lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha-bar_t))      (nats per dimension),

    for a fixed reverse variance sigma_t^2 (beta-tilde_t for ``fixed_small``, where C_t = 0;
    beta_t for ``fixed_large``, where C_t is the KL between the two variances). L_simple sets
    every lambda_t to 1. Index 0 is the decoder term L_0, which is not a KL: its entry uses
    the clipped variance of the code and only tells the scale.
    """
    if variance == "fixed_small":
        log_var = terms.posterior_log_variance_clipped
    elif variance == "fixed_large":
        log_var = terms.log_fixed_large_variance
    else:
        raise ValueError(f"eps_bound_weights needs a fixed variance: 'fixed_small' or 'fixed_large', got {variance!r}")
    return terms.betas**2 / (2.0 * np.exp(log_var) * terms.alphas * (1.0 - terms.alphas_cumprod))


def space_timesteps(num_timesteps: int, steps: int | Sequence[int] | str, spacing: str = "linspace") -> list[int]:
    """Choose a sub-sequence of the T timesteps (0-based, increasing) to sample on.

    ``steps`` is a count, an explicit list of indices, or an iDDPM-style string
    ("ddim50" or comma-separated section counts such as "10,15,20").

    Spacings, for a count S:
      - ``linspace``: round(linspace(0, T-1, S)) (iDDPM section 4, ends included)
      - ``leading``: 0, k, 2k, ... with k = T // S (DDIM code, diffusers "leading")
      - ``trailing``: T-1, T-1-k, ... with k = T / S (ends at the last step)
      - ``quadratic``: 0.8 T * linspace(0, 1, S)^2 (DDIM appendix, for CIFAR-10), with
        colliding early steps pushed apart so that all S steps are distinct
    """
    _check_T(num_timesteps)
    T = int(num_timesteps)
    if isinstance(steps, str):
        return _space_from_string(T, steps)
    if not isinstance(steps, (int, np.integer)):
        ts = sorted({int(s) for s in steps})
        if not ts:
            raise ValueError("an explicit timestep list must not be empty")
        if ts[0] < 0 or ts[-1] >= T:
            raise ValueError(f"explicit timesteps must lie in [0, {T - 1}], got {ts[0]}..{ts[-1]}")
        return ts
    S = int(steps)
    if S < 1 or S > T:
        raise ValueError(f"steps must be between 1 and T={T}, got {S}")
    if spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, S)).astype(np.int64)
    elif spacing == "leading":
        ts = np.arange(0, S) * (T // S)
    elif spacing == "trailing":
        # T - k T/S for k = 0..S-1 (np.arange with the float step -T/S can overshoot to S+1 points)
        ts = np.round(T - np.arange(S) * (T / S)).astype(np.int64)[::-1] - 1
    elif spacing == "quadratic":
        ts = (np.linspace(0, np.sqrt(T * 0.8), S) ** 2).astype(np.int64)
        # early steps of the parabola round onto the same integer: push each one past its predecessor
        for i in range(1, S):
            ts[i] = max(ts[i], ts[i - 1] + 1)
        if ts[-1] >= T:
            raise ValueError(f"spacing 'quadratic' cannot place {S} distinct steps in T={T}")
    else:
        raise ValueError(f"unknown spacing {spacing!r}; allowed: {', '.join(SPACINGS)} or an explicit list")
    ts = sorted({int(t) for t in ts})
    if len(ts) != S:
        raise ValueError(f"spacing {spacing!r} cannot place {S} distinct steps in T={T}")
    return ts


def _space_from_string(T: int, spec: str) -> list[int]:
    """iDDPM ``space_timesteps``: "ddimN" (strided, as in the DDIM paper) or section counts."""
    spec = spec.strip()
    if spec.startswith("ddim"):
        S = int(spec[len("ddim"):])
        for stride in range(1, T):
            if len(range(0, T, stride)) == S:
                return list(range(0, T, stride))
        raise ValueError(f"cannot create exactly {S} steps with an integer stride from T={T}")
    try:
        counts = [int(c) for c in spec.split(",")]
    except ValueError:
        raise ValueError(f"cannot parse timestep spec {spec!r}; use a count, 'ddimN' or 'a,b,c'") from None
    size_per, extra = divmod(T, len(counts))
    start, out = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size or count < 1:
            raise ValueError(f"cannot take {count} steps from a section of {size}")
        frac = 1.0 if count <= 1 else (size - 1) / (count - 1)
        out += [start + round(frac * j) for j in range(count)]
        start += size
    return sorted(set(out))


def respaced_betas(alphas_cumprod: np.ndarray, use_timesteps: Sequence[int]) -> np.ndarray:
    """iDDPM section 4: betas of the sub-chain on ``use_timesteps``.

    beta'_i = 1 - abar_{t_i} / abar_{t_{i-1}}, so the sub-chain has exactly the same
    alpha-bar at every kept step as the original chain.
    """
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    ts = list(use_timesteps)
    prev, out = 1.0, []
    for t in ts:
        out.append(1.0 - abar[t] / prev)
        prev = abar[t]
    return np.asarray(out, dtype=np.float64)
