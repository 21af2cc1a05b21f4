"""Samplers and the likelihood bound driven by the exact denoiser of Gaussian-mixture data."""

import math

import pytest
import torch

from difflab.diffusion import GaussianDiffusion
from difflab.exact import GaussianMixture
from difflab.rng import randn
from difflab.samplers import ddim_invert, ddim_sample, ddpm_sample
from difflab.schedules import make_betas

N = 3000


def gaussian():
    return GaussianMixture([[0.5, -0.3]], [[[0.30, 0.12], [0.12, 0.10]]])


def linear_gaussian_prediction(d, gm, steps, spacing, kind, eta=0.0, variance="fixed_small"):
    """Exact law of a sampler's output for Gaussian data driven by the exact eps.

    In the eigenbasis of Sigma each direction (variance lam) is independent and every
    update is linear-Gaussian: y_prev = A y + sigma z with y = x - sqrt(abar) mu, so the
    output variance follows V_prev = A^2 V + sigma^2, starting from V_T = 1 (x_T ~ N(0, I)).
    Returns the predicted mean and covariance of the sample.
    """
    from difflab.schedules import space_timesteps
    ts = space_timesteps(1000, steps, spacing) if steps else list(range(1000))
    abar_all = d.terms.alphas_cumprod
    abars = [abar_all[t] for t in ts][::-1]
    lams, U = torch.linalg.eigh(gm.covs[0])
    out_var = []
    for lam in lams.tolist():
        V, M = 1.0, 1.0   # variance of y, and the factor multiplying the initial offset -sqrt(abar_T) mu
        for i, a in enumerate(abars):
            ap = abars[i + 1] if i + 1 < len(abars) else 1.0
            c0 = math.sqrt(a) * lam / (a * lam + 1 - a)          # E[x0 - mu | y] = c0 y
            c1 = math.sqrt(1 - a) / (a * lam + 1 - a)            # E[eps | y] = c1 y
            if kind == "ddim":
                sig2 = eta**2 * (1 - ap) / (1 - a) * (1 - a / ap)
                A = math.sqrt(ap) * c0 + math.sqrt(max(1 - ap - sig2, 0.0)) * c1
            else:
                beta = 1 - a / ap
                coef1 = math.sqrt(ap) * beta / (1 - a)
                coef2 = math.sqrt(1 - beta) * (1 - ap) / (1 - a)
                A = coef1 * c0 + coef2
                small = beta * (1 - ap) / (1 - a)
                sig2 = 0.0 if i == len(abars) - 1 else (small if variance == "fixed_small" else beta)
            V, M = A * A * V + sig2, A * M
        out_var.append(V)
    cov = U @ torch.diag(torch.tensor(out_var, dtype=torch.float64)) @ U.T
    mean = gm.means[0] - M * math.sqrt(abars[0]) * gm.means[0]
    return mean, cov


def check_moments(samples, mean, cov, n):
    # sampling error: mean ~ sqrt(var / n), covariance entries ~ sqrt(2 / n) var; allow 4.5 standard errors
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert torch.all((samples.mean(0) - mean).abs() < 4.5 * se), (samples.mean(0), mean)
    emp = torch.cov(samples.T)
    tol = 4.5 * math.sqrt(2.0 / n) * float(torch.diagonal(cov).max())
    assert torch.all((emp - cov).abs() < tol), (emp, cov)


@pytest.mark.parametrize("kind,kwargs", [
    ("ddpm", dict(steps=None)),
    ("ddpm", dict(steps=50)),
    ("ddpm", dict(steps=50, variance="fixed_large")),
    ("ddim", dict(steps=50, eta=0.0)),
    ("ddim", dict(steps=50, eta=1.0)),
    ("ddim", dict(steps=20, eta=0.5, spacing="trailing")),
])
def test_samplers_reproduce_gaussian(kind, kwargs):
    d = GaussianDiffusion(make_betas("linear", 1000))
    gm = gaussian()
    g = torch.Generator().manual_seed(1)
    x_T = randn((N, 2), g, dtype=torch.float64)
    sampler = ddpm_sample if kind == "ddpm" else ddim_sample
    out = sampler(gm.eps_model(d.terms.alphas_cumprod), d, x_T, generator=g, **kwargs)
    mean, cov = linear_gaussian_prediction(d, gm, kwargs.get("steps"), kwargs.get("spacing", "linspace"), kind,
                                           eta=kwargs.get("eta", 0.0), variance=kwargs.get("variance") or "fixed_small")
    # the sampler's output has exactly the law the update equations predict ...
    check_moments(out.sample, mean, cov, N)
    # ... and, on the full chain, that law is the data distribution (few-step chains are
    # biased by their discretisation; test_discretisation_error_shrinks_with_steps covers them)
    if kwargs.get("steps") is None:
        assert torch.allclose(cov, gm.covariance(), rtol=0.03)   # T = 1000: ~1.5% first-order shrink
        check_moments(out.sample, gm.mean(), gm.covariance(), N)


def test_discretisation_error_shrinks_with_steps():
    d = GaussianDiffusion(make_betas("linear", 1000))
    gm = gaussian()
    for kind, eta in (("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)):
        errs = [float((linear_gaussian_prediction(d, gm, s, "linspace", kind, eta=eta)[1]
                       - gm.covariance()).abs().max()) for s in (10, 50, 200, 1000)]
        assert errs == sorted(errs, reverse=True) and errs[-1] < 0.02 * float(gm.covariance().max()), (kind, errs)
    # DDIM eta = 0 at 50 steps is within 15% of the data covariance (it shrinks it a little)
    cov50 = linear_gaussian_prediction(d, gm, 50, "linspace", "ddim")[1]
    assert torch.allclose(cov50, gm.covariance(), rtol=0.15)


def test_ddim_reproduces_mixture_modes():
    gm = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [0.02, 0.05], weights=[0.3, 0.7])
    d = GaussianDiffusion(make_betas("cosine", 1000))
    g = torch.Generator().manual_seed(2)
    out = ddim_sample(gm.eps_model(d.terms.alphas_cumprod), d, randn((N, 2), g, dtype=torch.float64), steps=50)
    right = (out.sample[:, 0] > 0).double().mean()
    assert abs(float(right) - 0.7) < 4 * math.sqrt(0.21 / N)
    for k, side in ((0, out.sample[:, 0] < 0), (1, out.sample[:, 0] > 0)):
        assert torch.allclose(out.sample[side].mean(0), gm.means[k], atol=0.03)


def test_ddim_inversion_reconstructs():
    gm = gaussian()
    d = GaussianDiffusion(make_betas("cosine", 1000))
    model = gm.eps_model(d.terms.alphas_cumprod)
    x0, _ = gm.sample(200, torch.Generator().manual_seed(3))
    errors = {}
    for steps in (100, 500):
        inv = ddim_invert(model, d, x0, steps=steps)
        assert inv.nfe == steps and not torch.equal(inv.sample, x0)
        # the latent of Gaussian data under the probability-flow ODE is again standard normal
        assert abs(float(inv.sample.std()) - 1.0) < 0.1
        rec = ddim_sample(model, d, inv.sample, steps=steps, eta=0.0).sample
        errors[steps] = float((rec - x0).abs().max())
    # first-order method: the reconstruction error falls like 1 / steps
    assert errors[100] < 0.07 and errors[500] < 0.015 and errors[500] < errors[100] / 3


def test_bits_per_dim_bounds_exact_nll():
    # 8-bit data from a mixture; exact discrete NLL ~ -log p(x) - D log(2/255) (bins much narrower than the density)
    gm = GaussianMixture([[0.2, -0.1], [-0.3, 0.3]], [[[0.04, 0.01], [0.01, 0.02]], [[0.03, 0], [0, 0.05]]])
    g = torch.Generator().manual_seed(0)
    x, _ = gm.sample(1000, g)
    x = torch.clamp(torch.round((x + 1) * 127.5), 0, 255) / 127.5 - 1
    exact = (-gm.log_prob(x) / 2 - math.log(2 / 255)) / math.log(2)
    gaps = {}
    for variance in ("fixed_large", "fixed_small"):
        d = GaussianDiffusion(make_betas("cosine", 1000), variance=variance)
        out = d.bits_per_dim(gm.eps_model(d.terms.alphas_cumprod), x, generator=g)
        assert out["vb"].shape == (1000, 1000) and out["prior_bpd"].max() < 1e-6
        torch.testing.assert_close(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
        diff = out["total_bpd"] - exact
        se = float(diff.std()) / math.sqrt(len(diff))
        gaps[variance] = float(diff.mean())
        assert gaps[variance] > -3 * se       # an upper bound on the NLL ...
    assert gaps["fixed_large"] < 0.2          # ... close to it with sigma^2 = beta (DDPM's better-NLL choice)
    assert gaps["fixed_small"] > gaps["fixed_large"]
