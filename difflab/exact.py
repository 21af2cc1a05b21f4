"""Exact denoisers for Gaussian-mixture data.

If x_0 ~ sum_k w_k N(mu_k, Sigma_k) then x_t = a x_0 + s eps (a = sqrt(abar_t),
s = sqrt(1 - abar_t)) is again a mixture, sum_k w_k N(a mu_k, a^2 Sigma_k + s^2 I), so
the score and the optimal (MMSE) noise prediction are known in closed form:

    score(x_t)   = sum_k r_k(x_t) * -(a^2 Sigma_k + s^2 I)^{-1} (x_t - a mu_k)
    eps*(x_t, t) = -s * score(x_t)

with r_k the posterior responsibilities. A sampler driven by ``eps*`` must reproduce
the data distribution, which lets us test samplers, guidance and likelihoods without
training anything. Works on flat data ``[B, D]``; float64 throughout.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class GaussianMixture:
    """A Gaussian mixture in D dimensions and its exact diffusion denoiser."""

    def __init__(self, means, covs, weights=None):
        self.means = torch.as_tensor(np.asarray(means), dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError("means must have shape [K, D]")
        K, D = self.means.shape
        covs = torch.as_tensor(np.asarray(covs), dtype=torch.float64)
        if covs.ndim == 1:  # one isotropic variance per component
            covs = covs[:, None, None] * torch.eye(D, dtype=torch.float64)
        if covs.shape != (K, D, D):
            raise ValueError(f"covs must have shape [K, D, D] = [{K}, {D}, {D}], got {tuple(covs.shape)}")
        self.covs = covs
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(
            np.asarray(weights), dtype=torch.float64)
        self.weights = w / w.sum()
        self.K, self.D = K, D
        # Sigma_k = U_k diag(lam_k) U_k^T, so a^2 Sigma_k + s^2 I = U_k diag(a^2 lam_k + s^2) U_k^T
        self._lam, self._U = torch.linalg.eigh(self.covs)

    # ------------------------------------------------------------------ data distribution
    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        second = sum(self.weights[k] * (self.covs[k] + torch.outer(self.means[k], self.means[k]))
                     for k in range(self.K))
        return second - torch.outer(m, m)

    def sample(self, n: int, generator: torch.Generator | None = None, component: int | None = None):
        """n samples (float64) and their component labels."""
        if component is None:
            ks = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            ks = torch.full((n,), component, dtype=torch.long)
        z = torch.randn(n, self.D, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)
        return self.means[ks] + torch.einsum("nij,nj->ni", chol[ks], z), ks

    def log_prob(self, x: torch.Tensor, a: float = 1.0, s2: float = 0.0) -> torch.Tensor:
        """log density of a x_0 + sqrt(s2) eps at x (default: the data density itself)."""
        return torch.logsumexp(self._component_log_probs(x, a, s2) + torch.log(self.weights), dim=-1)

    def _component_terms(self, x, a, s2):
        """Per-component log N(x; a mu_k, a^2 Sigma_k + s2 I) [n, K] and the solves Cov_k^-1 (x - a mu_k) [n, K, D]."""
        x = x.to(torch.float64)
        lam = a**2 * self._lam + s2                                      # [K, D]
        diff = x[:, None, :] - a * self.means                            # [n, K, D]
        proj = torch.matmul(diff.transpose(0, 1), self._U).transpose(0, 1)   # U^T diff, [n, K, D]
        maha = (proj**2 / lam).sum(-1)
        logp = -0.5 * (maha + torch.log(lam).sum(-1) + self.D * math.log(2 * math.pi))
        sol = torch.matmul((proj / lam).transpose(0, 1), self._U.transpose(1, 2)).transpose(0, 1)
        return logp, sol

    def _component_log_probs(self, x, a, s2):
        return self._component_terms(x, a, s2)[0]

    # ------------------------------------------------------------------ exact denoiser
    def score(self, x_t: torch.Tensor, abar: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """grad log q_t(x_t) (or of q_t(x_t | y) for component labels y), abar per example."""
        x = x_t.to(torch.float64)
        abar = abar.to(torch.float64).reshape(-1).cpu()
        values = torch.unique(abar)
        out = None if len(values) == 1 else torch.empty_like(x)
        for value in values:
            rows = slice(None) if out is None else (abar == value).nonzero().reshape(-1)
            a, s2 = math.sqrt(float(value)), 1.0 - float(value)
            logp, sol = self._component_terms(x[rows], a, s2)
            if y is not None:
                r = torch.nn.functional.one_hot(y[rows].long().cpu(), self.K).to(torch.float64)
            elif self.K == 1:
                r = torch.ones_like(logp)
            else:
                r = torch.softmax(logp + torch.log(self.weights), dim=-1)   # responsibilities [n, K]
            score = -(r[..., None] * sol).sum(1)
            if out is None:
                return score
            out[rows] = score
        return out

    def class_log_prob(self, x_t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """log p(y = k | x_t) for every component k: [B, K], differentiable in x_t (abar per example)."""
        x = x_t.to(torch.float64)
        abar = abar.to(torch.float64).reshape(-1, 1, 1)
        lam = abar * self._lam + (1 - abar)                                  # [B, K, D]
        diff = x[:, None, :] - torch.sqrt(abar) * self.means                 # [B, K, D]
        proj = torch.matmul(diff.transpose(0, 1), self._U).transpose(0, 1)   # [B, K, D]
        logp = -0.5 * ((proj**2 / lam).sum(-1) + torch.log(lam).sum(-1))   # constants cancel
        return torch.log_softmax(logp + torch.log(self.weights), dim=-1)

    def eps_model(self, alphas_cumprod, conditional: bool = False):
        """A model function ``model(x_t, t, y=None) -> eps*`` for the training chain's alphas_cumprod.

        With ``conditional`` the label ``y`` selects the component (``y == K`` is the null
        class: the unconditional eps), as a class-conditional network would.
        """
        abar_table = torch.as_tensor(np.asarray(alphas_cumprod), dtype=torch.float64)

        def model(x_t, t, y=None):
            abar = abar_table[t.cpu()]
            s = torch.sqrt(1 - abar)[:, None]
            if y is None or not conditional:
                eps = -s * self.score(x_t, abar)
            else:
                y = y.cpu()
                cond = y < self.K
                eps = -s * self.score(x_t, abar)
                if cond.any():
                    eps[cond] = -s[cond] * self.score(x_t[cond], abar[cond], y[cond])
            return eps.to(x_t.dtype)

        return model
