"""The 2-D Gaussian mixture the samplers' exact-model quality tests draw from, and the moment check
they pass (shared by tests; not a test module)."""

import torch

from difflab.exact import GaussianMixture

MIXTURE = GaussianMixture(means=[[-1.5, 0.5], [1.0, -0.5], [0.5, 1.5]], covs=[0.10, 0.20, 0.05],
                          weights=[0.5, 0.3, 0.2])
N_SAMPLES = 3000


def moments_ok(x):
    """``(ok, mean_err, cov_err)``: the sample mean and covariance of ``x`` within 5 standard errors of
    the mixture's. A covariance entry's standard error is the Gaussian approximation's, doubled for the
    mixture's heavier tails."""
    n = x.shape[0]
    mean, cov = MIXTURE.mean(), MIXTURE.covariance()
    d = torch.diagonal(cov)
    mean_err = (x.mean(0) - mean).abs() / torch.sqrt(d / n)
    cov_err = (torch.cov(x.T) - cov).abs() / (2 * torch.sqrt((torch.outer(d, d) + cov**2) / n))
    return bool((mean_err < 5).all() and (cov_err < 5).all()), mean_err, cov_err
