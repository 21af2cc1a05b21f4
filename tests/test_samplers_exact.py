"""Samplers and the likelihood bound driven by the exact denoiser of Gaussian-mixture data."""

import math

import numpy as np
import pytest
import torch

from _linear_gaussian import (bound_terms_given_noise, cosine_abar, dpm_solver_law, expected_bound_bpd, heun_law,
                              linear_abar, quantize, sampler_law)

import difflab.samplers.ddim as ddim_module
import difflab.samplers.ddpm as ddpm_module
from difflab.diffusion import GaussianDiffusion
from difflab.exact import GaussianMixture
from difflab.rng import randn
from difflab.samplers import ddim_invert, ddim_sample, ddpm_sample, dpm_solver_pp_sample, heun_sample
from difflab.schedules import make_betas, space_timesteps

N = 3000


def gaussian():
    return GaussianMixture([[0.5, -0.3]], [[[0.30, 0.12], [0.12, 0.10]]])


def linear_gaussian_prediction(gm, steps, spacing, kind, eta=0.0, variance="fixed_small"):
    """Exact law (mean, covariance) of a sampler's output for Gaussian data driven by the exact eps,
    from the update equations (tests/_linear_gaussian.py), on DDPM's linear schedule with T = 1000."""
    ts = space_timesteps(1000, steps, spacing) if steps else list(range(1000))
    mean, cov, _ = sampler_law(linear_abar(1000)[ts][::-1], gm.means[0].numpy(), gm.covs[0].numpy(), kind,
                               eta=eta, variance=variance)
    return torch.from_numpy(mean), torch.from_numpy(cov)


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
    mean, cov = linear_gaussian_prediction(gm, kwargs.get("steps"), kwargs.get("spacing", "linspace"), kind,
                                           eta=kwargs.get("eta", 0.0), variance=kwargs.get("variance") or "fixed_small")
    # the sampler's output has exactly the law the update equations predict ...
    check_moments(out.sample, mean, cov, N)
    # ... and, on the full chain, that law is the data distribution (few-step chains are
    # biased by their discretisation; test_discretisation_error_shrinks_with_steps covers them)
    if kwargs.get("steps") is None:
        assert torch.allclose(cov, gm.covariance(), rtol=0.03)   # T = 1000: ~1.5% first-order shrink
        check_moments(out.sample, gm.mean(), gm.covariance(), N)


SAMPLER_CASES = [
    ("ddpm", dict(steps=None)),
    ("ddpm", dict(steps=50)),
    ("ddpm", dict(steps=50, variance="fixed_large")),
    ("ddpm", dict(steps=20, spacing="trailing", variance="fixed_small")),
    ("ddim", dict(steps=50, eta=0.0)),
    ("ddim", dict(steps=50, eta=1.0)),
    ("ddim", dict(steps=20, eta=0.5, spacing="trailing")),
]


def probed_law(kind, kwargs, gm, monkeypatch):
    """The sampler's own output law, exactly, without drawing a sample.

    For Gaussian data and the exact (affine) denoiser, a DDPM / DDIM sample is affine in x_T and in
    the noise z_i drawn at each step: x_0 = m + J_T x_T + sum_i J_i z_i. The sampler draws its noise
    through ``randn``, once per step; it is replaced here by probe noise, so one batch holds a row
    with no input (giving m), rows with x_T = e_d (columns of J_T) and rows with z_i = e_d (columns
    of J_i). For x_T, z_i ~ N(0, I) the law is then N(m, J_T J_T^T + sum_i J_i J_i^T).
    Returns (mean, covariance, [J_i]) as numpy arrays.
    """
    d = GaussianDiffusion(make_betas("linear", 1000))
    D = gm.D
    steps = len(space_timesteps(1000, kwargs["steps"], kwargs.get("spacing", "linspace"))) if kwargs["steps"] else 1000
    draws = steps if kind == "ddpm" or kwargs.get("eta", 0.0) > 0 else 0
    B = 1 + D + draws * D
    x_T = torch.zeros(B, D, dtype=torch.float64)
    x_T[1:1 + D] = torch.eye(D, dtype=torch.float64)
    calls = []

    def probe_noise(shape, generator=None, *, device=None, dtype=torch.float32):
        assert tuple(shape) == (B, D) and len(calls) < draws, "more noise draws than one per step"
        z = torch.zeros(B, D, dtype=dtype)
        row = 1 + D + len(calls) * D
        z[row:row + D] = torch.eye(D, dtype=dtype)
        calls.append(row)
        return z

    module = ddpm_module if kind == "ddpm" else ddim_module
    monkeypatch.setattr(module, "randn", probe_noise)
    sampler = ddpm_sample if kind == "ddpm" else ddim_sample
    out = sampler(gm.eps_model(d.terms.alphas_cumprod), d, x_T, **kwargs).sample.numpy()
    assert len(calls) == draws
    m = out[0]
    J_T = (out[1:1 + D] - m).T
    J = [(out[1 + D + i * D:1 + D + (i + 1) * D] - m).T for i in range(draws)]
    return m, J_T @ J_T.T + sum((j @ j.T for j in J), np.zeros((D, D))), J


@pytest.mark.parametrize("kind,kwargs", SAMPLER_CASES)
def test_sampler_output_law_is_the_propagated_linear_gaussian_law(kind, kwargs, monkeypatch):
    """Exact, sample-free: the law the sampler really produces equals the law propagated from the
    paper's update equations (DDPM Alg. 2 with sigma_t^2 = beta-tilde or beta, no noise at the last
    step; DDIM eqs. 12 and 16). This sees the noise level of every step, which moment checks on a
    few thousand samples cannot (N = 3000 resolves it to ~12% of the largest variance)."""
    gm = gaussian()
    spacing = kwargs.get("spacing", "linspace")
    ts = space_timesteps(1000, kwargs["steps"], spacing) if kwargs["steps"] else list(range(1000))
    mean, cov, gains = sampler_law(linear_abar(1000)[ts][::-1], gm.means[0].numpy(), gm.covs[0].numpy(), kind,
                                   eta=kwargs.get("eta", 0.0), variance=kwargs.get("variance", "fixed_small"))
    got_mean, got_cov, J = probed_law(kind, kwargs, gm, monkeypatch)
    # Tolerance: both sides are float64 with O(1) values; rounding over <= 1000 steps stays below
    # ~1e-13, so 1e-10 has a 1000x margin. The smallest bug this must see, noise added at DDPM's last
    # step, changes the covariance by sigma_1^2 >= 5e-5.
    np.testing.assert_allclose(got_mean, mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got_cov, cov, rtol=0, atol=1e-10)
    # and step by step: the noise of step i reaches x_0 through U diag(gain_i) U^T
    lams, U = np.linalg.eigh(gm.covs[0].numpy())
    expected_J = [U @ np.diag(g) @ U.T for g in gains] if J else []
    if kind == "ddim" and not kwargs.get("eta"):
        assert not J and not gains.any()
    for i, (j, e) in enumerate(zip(J, expected_J)):
        np.testing.assert_allclose(j, e, rtol=0, atol=1e-10, err_msg=f"noise gain of step {i}")
    assert not J or not J[-1].any() if kind == "ddpm" else True    # DDPM Alg. 2: z = 0 at the last step


@pytest.mark.parametrize("kind,kwargs", [
    ("dpm", dict(steps=20)),                                  # the default grid, "trailing"
    ("dpm", dict(steps=10, spacing="linspace")),
    ("dpm", dict(steps=15, order=1)),
    ("heun", dict(steps=10, sigma_max=None)),
    ("heun", dict(steps=6, spacing="linspace", sigma_max=None)),
])
def test_deterministic_sampler_output_law_is_the_propagated_law(kind, kwargs):
    """DPM-Solver++ and EDM-Heun are deterministic and, for Gaussian data, affine in x_T: their
    output law N(m, J J^T) is read off probe rows (x_T = 0 and x_T = e_d) and compared with the law
    propagated from the papers' update rules (tests/_linear_gaussian.py). Float64: 1e-10 as above.
    The first-order solver is DDIM with eta = 0 (DPM-Solver++ sec. 4), so their laws coincide."""
    gm = gaussian()
    d = GaussianDiffusion(make_betas("linear", 1000))
    spacing = kwargs.get("spacing", "trailing")
    ts = space_timesteps(1000, kwargs["steps"], spacing)
    abars = linear_abar(1000)[ts][::-1]
    mu, cov = gm.means[0].numpy(), gm.covs[0].numpy()
    if kind == "dpm":
        mean, law_cov = dpm_solver_law(abars, mu, cov, order=kwargs.get("order", 2))
        sampler = dpm_solver_pp_sample
    else:
        mean, law_cov = heun_law(np.sqrt((1 - abars) / abars), mu, cov)
        sampler = heun_sample
    x_T = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)])
    out = sampler(gm.eps_model(d.terms.alphas_cumprod), d, x_T, **kwargs).sample.numpy()
    J = (out[1:] - out[0]).T
    np.testing.assert_allclose(out[0], mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(J @ J.T, law_cov, rtol=0, atol=1e-10)
    if kwargs.get("order") == 1:
        ddim_mean, ddim_cov, _ = sampler_law(abars, mu, cov, "ddim")
        np.testing.assert_allclose(law_cov, ddim_cov, rtol=0, atol=1e-12)
        np.testing.assert_allclose(mean, ddim_mean, rtol=0, atol=1e-12)


def test_discretisation_error_shrinks_with_steps():
    gm = gaussian()
    for kind, eta in (("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)):
        errs = [float((linear_gaussian_prediction(gm, s, "linspace", kind, eta=eta)[1]
                       - gm.covariance()).abs().max()) for s in (10, 50, 200, 1000)]
        assert errs == sorted(errs, reverse=True) and errs[-1] < 0.02 * float(gm.covariance().max()), (kind, errs)
    # DDIM eta = 0 at 50 steps is within 15% of the data covariance (it shrinks it a little)
    cov50 = linear_gaussian_prediction(gm, 50, "linspace", "ddim")[1]
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
        assert gaps[variance] > -3 * se       # an upper bound on the NLL
    # sigma^2 = beta gives the tighter bound (DDPM's better-NLL choice); how tight is checked against
    # its closed form in test_bits_per_dim_is_its_closed_form
    assert gaps["fixed_small"] > gaps["fixed_large"]


def test_bits_per_dim_is_its_closed_form():
    """The bound of Gaussian data under its exact denoiser, term by term, against its closed form.

    1. Exactly: bits_per_dim draws the noise of term t from ``generator`` in the order t = T-1 .. 0;
       replaying it, every term is a KL of two Gaussians (or the discretized decoder at t = 0) that
       tests/_linear_gaussian.py writes from DDPM eqs. 4, 5, 7 and 13. Both sides are float64; they
       differ by < 3e-12 bits/dim (rounding, amplified ~2e4 x where abar_T ~ 2e-9 turns eps into x_0),
       so 1e-10 absolute + 1e-8 relative is a margin of 30x, and any formula error shows in full.
    2. In expectation: E[term | x_0] is known in closed form too, so the mean over n images of the
       bound minus its expectation is 0 within 4 standard errors (false alarm ~6e-5). The decoder's
       noise makes that SE ~0.06 bits/dim at n = 500, so this part is a check of the noise law, and
       part 1 carries the precision (a reversed KL moves the bound by ~1 bit/dim, log sigma^2 used as
       the decoder's log-scale by ~20).
    3. The gap to the exact NLL is then known without sampling, and sigma^2 = beta's is the smaller.
    """
    mu, cov = np.array([0.2, -0.1]), np.array([[0.04, 0.01], [0.01, 0.02]])   # the edges are > 4 sd away
    gm = GaussianMixture([mu], [cov])
    x = torch.from_numpy(quantize(gm.sample(500, torch.Generator().manual_seed(5))[0].numpy()))
    abar = cosine_abar(1000)
    gaps = {}
    exact = (-gm.log_prob(x).numpy() / 2 - math.log(2 / 255)) / math.log(2)
    for variance in ("fixed_large", "fixed_small"):
        expected = expected_bound_bpd(x.numpy(), mu, cov, abar, variance)
        gaps[variance] = expected["total"].mean() - exact.mean()
        d = GaussianDiffusion(make_betas("cosine", 1000), variance=variance)
        out = d.bits_per_dim(gm.eps_model(d.terms.alphas_cumprod), x, generator=torch.Generator().manual_seed(6))
        replay = torch.Generator().manual_seed(6)
        noise = np.stack([torch.randn(x.shape, generator=replay, dtype=torch.float64).numpy()
                          for _ in range(1000)][::-1], axis=1)                       # [n, T, D], index t
        terms = bound_terms_given_noise(x.numpy(), noise, mu, cov, abar, variance)
        np.testing.assert_allclose(out["vb"].numpy(), terms, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(out["prior_bpd"].numpy(), expected["prior"], rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(out["total_bpd"].numpy(), terms.sum(1) + expected["prior"], rtol=1e-9)
        err = out["total_bpd"].numpy() - expected["total"]
        assert abs(err.mean()) < 4 * err.std(ddof=1) / math.sqrt(len(err)), (variance, err.mean())
    # an upper bound on the NLL: the expected gap is positive, and tighter with sigma^2 = beta
    assert 0 < gaps["fixed_large"] < gaps["fixed_small"], gaps
