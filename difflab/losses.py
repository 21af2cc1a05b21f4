"""Likelihood building blocks: Gaussian KL, discretized Gaussian log-likelihood.

All functions are elementwise (no reduction) and work in the dtype of their inputs;
``mean_flat`` reduces over every dimension but the batch.
"""

from __future__ import annotations

import math

import torch

LOG2 = math.log(2.0)
#: Normal CDFs for the discretized decoder L_0: "exact" (erf) or "approx" (the tanh approximation
#: of the DDPM / improved-diffusion code; L_0 moves by a few parts in 10^4).
CDFS = ("exact", "approx")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats.

    KL = 1/2 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))
    """
    ref = next(a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor))
    logvar1, logvar2 = (a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=ref.dtype, device=ref.device)
                        for a in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Tanh approximation of the standard normal CDF, as in the DDPM / iDDPM code:
    Phi(x) ~ 1/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Exact standard normal CDF via erf."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor,
                                        *, num_bins: int = 256, exact_cdf: bool = True) -> torch.Tensor:
    """log P(x) in nats for data on ``num_bins`` levels in [-1, 1] under N(means, exp(log_scales)^2).

    DDPM section 3.3, eq. 13: the decoder p(x_0 | x_1) integrates the Gaussian over the
    bin [x - 1/255, x + 1/255]; the edge bins extend to -inf and +inf, so the
    probabilities of all bins sum to one. ``exact_cdf=False`` uses the tanh approximation of
    the normal CDF that the DDPM and improved-diffusion code use (``CDFS``: "approx").
    """
    if x.shape != means.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but means {tuple(means.shape)}")
    cdf = standard_normal_cdf if exact_cdf else approx_standard_normal_cdf
    half_bin = 1.0 / (num_bins - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = cdf(inv_std * (centered + half_bin))
    cdf_min = cdf(inv_std * (centered - half_bin))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    edge = 1.0 - 1e-3
    return torch.where(
        x < -edge,
        log_cdf_plus,
        torch.where(x > edge, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )
