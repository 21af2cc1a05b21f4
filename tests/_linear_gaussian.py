"""Closed forms for Gaussian data driven by its exact denoiser (shared by tests; not a test module).

For x_0 ~ N(mu, Sigma), Sigma = U diag(lam) U^T, the optimal denoiser is affine in x_t and acts on
each eigen-direction k separately. With a = abar_t, y = x_t - sqrt(a) mu (in the eigenbasis):

    E[x_0 - mu | x_t] = c0 y,   c0 = sqrt(a) lam / (a lam + 1 - a)
    E[eps | x_t]      = c1 y,   c1 = sqrt(1 - a) / (a lam + 1 - a)

so every sampler step below is y_prev = A y + sigma z (z ~ N(0, 1)), and every term of the
variational bound has an expectation over the noise in closed form (given x_0). Everything
here is float64 numpy, written from the papers' equations, not from difflab's code.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

LN2 = math.log(2.0)


def linear_abar(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """alpha-bar of DDPM's linear schedule, from its definition (DDPM sec. 4)."""
    return np.cumprod(1.0 - np.linspace(beta_start, beta_end, T))


def cosine_abar(T: int, s: float = 0.008) -> np.ndarray:
    """alpha-bar of iDDPM eq. 17 with betas clipped at 0.999 (as the paper does)."""
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], 0.999)
    return np.cumprod(1.0 - betas)


# ------------------------------------------------------------------------------------ samplers
def step_coefficients(a: float, a_prev: float, lam: float, kind: str, eta: float = 0.0,
                      variance: str = "fixed_small", last: bool = False) -> tuple[float, float]:
    """(A, sigma^2) of one step y_prev = A y + sigma z from abar a to abar a_prev (1 at the end)."""
    c0 = math.sqrt(a) * lam / (a * lam + 1 - a)
    c1 = math.sqrt(1 - a) / (a * lam + 1 - a)
    if kind == "ddim":
        sig2 = eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)          # DDIM eq. 16, squared
        return math.sqrt(a_prev) * c0 + math.sqrt(max(1 - a_prev - sig2, 0.0)) * c1, sig2  # DDIM eq. 12
    beta = 1 - a / a_prev
    coef1 = math.sqrt(a_prev) * beta / (1 - a)                                # DDPM eq. 7
    coef2 = math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
    sig2 = 0.0 if last else (beta * (1 - a_prev) / (1 - a) if variance == "fixed_small" else beta)  # Alg. 2
    return coef1 * c0 + coef2, sig2


def sampler_law(abars: np.ndarray, mu: np.ndarray, cov: np.ndarray, kind: str, eta: float = 0.0,
                variance: str = "fixed_small"):
    """Exact law N(mean, covariance) of a DDPM / DDIM sample from x_T ~ N(0, I).

    ``abars`` are the alpha-bars of the steps taken, noisiest first. Per eigen-direction the
    variance propagates as V_prev = A^2 V + sigma^2 from V_T = 1, and the mean offset
    -sqrt(abar_T) mu_k is multiplied by the product of the A's.
    Returns (mean [D], covariance [D, D], per-step noise gains [S, D]) where the gain of step i
    is sigma_i times the product of the later A's: how much of that step's noise reaches x_0.
    """
    lams, U = np.linalg.eigh(cov)
    S = len(abars)
    var, mult, gains = np.ones(len(lams)), np.ones(len(lams)), np.zeros((S, len(lams)))
    for k, lam in enumerate(lams):
        V, M = 1.0, 1.0
        for i, a in enumerate(abars):
            a_prev = abars[i + 1] if i + 1 < S else 1.0
            A, sig2 = step_coefficients(a, a_prev, lam, kind, eta, variance, last=i == S - 1)
            V, M = A * A * V + sig2, A * M
            gains[:i, k] *= A
            gains[i, k] = math.sqrt(sig2)
        var[k], mult[k] = V, M
    mean = mu - U @ (mult * (U.T @ (math.sqrt(abars[0]) * mu)))
    return mean, U @ np.diag(var) @ U.T, gains


def _x0_estimate(a: float, lams: np.ndarray, mu_e: np.ndarray):
    """E[x_0 | x_t] = g x_t + h per eigen-direction at abar a (g = c0, h = mu (1 - c0 sqrt(a)))."""
    g = math.sqrt(a) * lams / (a * lams + 1 - a)
    return g, mu_e * (1 - g * math.sqrt(a))


def dpm_solver_law(abars: np.ndarray, mu: np.ndarray, cov: np.ndarray, order: int = 2):
    """Exact law N(mean, covariance) of DPM-Solver++ (1 or 2M) from x_T ~ N(0, I) (DPM-Solver++
    eq. 9 and Alg. 2, written from the paper): the sample is affine in x_T, x_k = A_k x_T,k + B_k in
    each eigen-direction, and the solver's steps act on (A, B). ``abars`` noisiest first; the last
    step lands on abar = 1 and returns the last x_0 estimate."""
    lams, U = np.linalg.eigh(cov)
    mu_e = U.T @ mu
    alpha, sigma = np.sqrt(abars), np.sqrt(1 - abars)
    lam = np.log(alpha / sigma)                     # half log-SNR, increasing along the walk
    A, B = np.ones_like(lams), np.zeros_like(lams)
    prev = None
    S = len(abars)
    for j in range(S):
        g, h = _x0_estimate(abars[j], lams, mu_e)
        x0 = (g * A, g * B + h)
        a_t, s_t = (alpha[j + 1], sigma[j + 1]) if j + 1 < S else (1.0, 0.0)
        e = (s_t / a_t) / (sigma[j] / alpha[j])     # e^{-h_j}
        if order == 1 or prev is None or j == S - 1:
            D = x0
        else:
            r = (lam[j] - lam[j - 1]) / (lam[j + 1] - lam[j])          # previous step / this step
            D = tuple((1 + 1 / (2 * r)) * c - 1 / (2 * r) * p for c, p in zip(x0, prev))
        A, B = (s_t / sigma[j]) * A - a_t * (e - 1) * D[0], (s_t / sigma[j]) * B - a_t * (e - 1) * D[1]
        prev = x0
    return U @ B, U @ np.diag(A**2) @ U.T


def heun_law(sigmas: np.ndarray, mu: np.ndarray, cov: np.ndarray):
    """Exact law of EDM's Heun sampler (Alg. 1, S_churn = 0) from VP noise x_T ~ N(0, I): in EDM's
    variables x = x_T sqrt(1 + sigma_0^2), D(x; sigma) = E[x_0 | x_t = x / sqrt(1 + sigma^2)],
    d = (x - D) / sigma, an Euler step to the next sigma and, unless it is 0, the trapezoidal
    correction. ``sigmas`` noisiest first, without the final 0."""
    lams, U = np.linalg.eigh(cov)
    mu_e = U.T @ mu

    def slope(A, B, s):                               # d = (x - D(x; s)) / s, affine in x_T
        a = 1 / (1 + s * s)
        g, h = _x0_estimate(a, lams, mu_e)
        return (A - g * math.sqrt(a) * A) / s, (B - g * math.sqrt(a) * B - h) / s

    A, B = np.full_like(lams, math.sqrt(1 + sigmas[0] ** 2)), np.zeros_like(lams)
    for i, s in enumerate(sigmas):
        s_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
        dA, dB = slope(A, B, s)
        A_next, B_next = A + (s_next - s) * dA, B + (s_next - s) * dB
        if s_next > 0:
            dA2, dB2 = slope(A_next, B_next, s_next)
            A_next, B_next = A + (s_next - s) * (dA + dA2) / 2, B + (s_next - s) * (dB + dB2) / 2
        A, B = A_next, B_next
    return U @ B, U @ np.diag(A**2) @ U.T


# ------------------------------------------------------------------------------------ the bound
def normal_cdf(x: np.ndarray, cdf: str = "exact") -> np.ndarray:
    """Phi(x): scipy's ndtr, or the tanh approximation of the DDPM / improved-diffusion code."""
    if cdf == "exact":
        return ndtr(x)
    return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_log_likelihood(x: np.ndarray, mean: np.ndarray, log_scale: np.ndarray,
                               cdf: str = "exact") -> np.ndarray:
    """log P(x) in nats for 8-bit data in [-1, 1] (DDPM eq. 13), written as improved-diffusion's
    ``discretized_gaussian_log_likelihood``: bins of half-width 1/255, edge bins to +-infinity."""
    centred = x - mean
    inv_std = np.exp(-log_scale)
    cdf_plus = normal_cdf(inv_std * (centred + 1.0 / 255.0), cdf)
    cdf_min = normal_cdf(inv_std * (centred - 1.0 / 255.0), cdf)
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    log_delta = np.log(np.maximum(cdf_plus - cdf_min, 1e-12))
    return np.where(x < -0.999, log_cdf_plus, np.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def gaussian_kl(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)) of scalars, in nats (the textbook formula)."""
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


def expected_bound_bpd(x_0: np.ndarray, mu: np.ndarray, cov: np.ndarray, abar: np.ndarray, variance: str,
                       quadrature_nodes: int = 80) -> dict[str, np.ndarray]:
    """E over the noise of every term of the bound (DDPM eq. 5), in bits/dim, per image [n, D].

    The model is the exact denoiser of N(mu, cov) with sigma_t^2 = beta-tilde_t ("fixed_small") or
    beta_t ("fixed_large"), both beta-tilde_2 at the first step. Given x_0 the error of the x_0
    estimate, r = x_0 - E[x_0 | x_t], has in direction k the second moment
    (1 - c0 sqrt(a))^2 (x_0 - mu)_k^2 + c0^2 (1 - a), so with mu-tilde - mu_theta = coef1 r:

        E[L_{t-1}] = 1/2 (log(sigma^2 / beta-tilde) + beta-tilde / sigma^2 - 1) + coef1^2 E|r|^2 / (2 D sigma^2)
        L_T        = 1/2 (-1 - log(1 - a_T) + (1 - a_T) + a_T x_0^2)          (mean over dims)
        E[L_0]     = E[-log P(x_0 | E[x_0 | x_1], sigma_1)], P as in DDPM eq. 13: the decoder mean is
                     Gaussian in the noise, integrated by Gauss-Hermite quadrature per pixel.

    Returns per-image arrays ``prior``, ``terms`` [n, T] (index t = L_t) and ``total``.
    """
    n, D = x_0.shape
    T = len(abar)
    lams, U = np.linalg.eigh(cov)
    dev = (x_0 - mu) @ U                                     # x_0 - mu in the eigenbasis [n, D]
    abar_prev = np.append(1.0, abar[:-1])
    betas = 1.0 - abar / abar_prev
    tilde = betas * (1.0 - abar_prev) / (1.0 - abar)         # DDPM eq. 7
    terms = np.zeros((n, T))
    for t in range(1, T):
        a = abar[t]
        c0 = math.sqrt(a) * lams / (a * lams + 1 - a)
        r2 = ((1 - c0 * math.sqrt(a)) ** 2 * dev**2 + c0**2 * (1 - a)).sum(1)      # E|r|^2 given x_0
        sig2 = tilde[t] if variance == "fixed_small" else betas[t]
        coef1 = math.sqrt(abar_prev[t]) * betas[t] / (1 - a)
        terms[:, t] = (0.5 * (math.log(sig2 / tilde[t]) + tilde[t] / sig2 - 1.0)
                       + coef1**2 * r2 / (2 * D * sig2)) / LN2
    # L_0: the decoder mean E[x_0 | x_1] = mu + G (x_1 - sqrt(a) mu), x_1 = sqrt(a) x_0 + sqrt(1 - a) eps
    a = abar[0]
    G = U @ np.diag(math.sqrt(a) * lams / (a * lams + 1 - a)) @ U.T
    centre = mu + math.sqrt(a) * (x_0 - mu) @ G.T                 # [n, D]
    spread = math.sqrt(1 - a) * np.sqrt((G**2).sum(1))            # std of each pixel's mean [D]
    nodes, weights = np.polynomial.hermite_e.hermegauss(quadrature_nodes)
    weights = weights / weights.sum()                             # E over xi ~ N(0, 1)
    means = centre[..., None] + spread[None, :, None] * nodes     # [n, D, nodes]
    log_scale = 0.5 * math.log(tilde[1])
    ll = discretized_log_likelihood(x_0[..., None], means, np.full_like(means, log_scale))
    terms[:, 0] = -(ll @ weights).mean(1) / LN2
    aT = abar[-1]
    prior = (0.5 * (-1.0 - math.log(1 - aT) + (1 - aT) + aT * x_0**2)).mean(1) / LN2
    return {"prior": prior, "terms": terms, "total": prior + terms.sum(1)}


def bound_terms_given_noise(x_0: np.ndarray, noise: np.ndarray, mu: np.ndarray, cov: np.ndarray,
                            abar: np.ndarray, variance: str, cdf: str = "exact") -> np.ndarray:
    """Every term of the bound (bits/dim) for given noise: ``noise[:, t]`` builds x_t for term t.

    x_t = sqrt(a) x_0 + sqrt(1 - a) eps (DDPM eq. 4); the model mean is mu-tilde(E[x_0 | x_t], x_t)
    (DDPM eq. 7 with the exact x_0 estimate), so L_{t-1} is the KL of two Gaussians with the same
    mean coefficients and L_0 the discretized decoder at the x_0 estimate. Returns [n, T].
    """
    n, T, D = noise.shape
    lams, U = np.linalg.eigh(cov)
    abar_prev = np.append(1.0, abar[:-1])
    betas = 1.0 - abar / abar_prev
    tilde = betas * (1.0 - abar_prev) / (1.0 - abar)
    terms = np.zeros((n, T))
    for t in range(T):
        a = abar[t]
        x_t = math.sqrt(a) * x_0 + math.sqrt(1 - a) * noise[:, t]
        G = U @ np.diag(math.sqrt(a) * lams / (a * lams + 1 - a)) @ U.T
        pred_x0 = mu + (x_t - math.sqrt(a) * mu) @ G.T
        if t == 0:
            ll = discretized_log_likelihood(x_0, pred_x0, np.full_like(x_0, 0.5 * math.log(tilde[1])), cdf)
            terms[:, 0] = -ll.mean(1) / LN2
            continue
        coef1 = math.sqrt(abar_prev[t]) * betas[t] / (1 - a)
        coef2 = math.sqrt(1 - betas[t]) * (1 - abar_prev[t]) / (1 - a)
        sig2 = tilde[t] if variance == "fixed_small" else betas[t]
        kl = gaussian_kl(coef1 * x_0 + coef2 * x_t, tilde[t], coef1 * pred_x0 + coef2 * x_t, sig2)
        terms[:, t] = kl.mean(1) / LN2
    return terms


def quantize(x: np.ndarray) -> np.ndarray:
    """Round to the 256-level grid of 8-bit images in [-1, 1]."""
    return np.clip(np.round((x + 1) * 127.5), 0, 255) / 127.5 - 1
