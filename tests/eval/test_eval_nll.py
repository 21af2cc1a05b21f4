import math

import numpy as np
import pytest
import torch
from _linear_gaussian import bound_terms_given_noise, linear_abar, quantize

from difflab.diffusion import GaussianDiffusion
from difflab.eval.nll import evaluate_nll, plot_nll_terms
from difflab.exact import GaussianMixture
from difflab.schedules import make_betas


def _data(n):
    gm = GaussianMixture([[0.1, -0.2]], [[[0.05, 0.01], [0.01, 0.04]]])
    x, _ = gm.sample(n, torch.Generator().manual_seed(0))
    return gm, torch.clamp(torch.round((x + 1) * 127.5), 0, 255) / 127.5 - 1


def test_nll_is_batch_independent_and_bounds_exact(tmp_path):
    gm, x = _data(40)
    d = GaussianDiffusion(make_betas("cosine", 100), variance="fixed_large")
    model = gm.eps_model(d.terms.alphas_cumprod)
    a = evaluate_nll(model, d, x, batch_size=40)
    b = evaluate_nll(model, d, x, batch_size=7)
    assert abs(a.bpd - b.bpd) < 1e-9 and a.n == 40 and a.terms.shape == (100,)
    exact = float(((-gm.log_prob(x) / 2 - math.log(2 / 255)) / math.log(2)).mean())
    assert a.bpd > exact - 3 * a.bpd_se
    assert a.decoder_bpd == a.terms[0] and a.prior_bpd < 1e-3
    assert plot_nll_terms(a, tmp_path / "terms.png").stat().st_size > 1000


@pytest.mark.parametrize("cdf", ["exact", "approx"])
def test_nll_is_the_bound_image_by_image_with_a_prior_that_matters(cdf):
    """evaluate_nll against the bound written from the papers (tests/_linear_gaussian.py), image by
    image, on 100 linear steps: abar_T = 0.37, so the prior L_T (~0.075 bits/dim here) is a real part
    of the figure. Image i's noise is replayed from its own generator (seed * 2**20 + i, one draw per
    term from t = T-1 down to 0). Float64 throughout; 1e-9 relative is rounding with a wide margin."""
    mu, cov = np.array([0.2, -0.1]), np.array([[0.04, 0.01], [0.01, 0.02]])
    gm = GaussianMixture([mu], [cov])
    x = torch.from_numpy(quantize(gm.sample(12, torch.Generator().manual_seed(0))[0].numpy()))
    d = GaussianDiffusion(make_betas("linear", 100), variance="fixed_large")
    res = evaluate_nll(gm.eps_model(d.terms.alphas_cumprod), d, x, batch_size=5, seed=3, cdf=cdf)
    noise = np.zeros((12, 100, 2))
    for i in range(12):
        g = torch.Generator().manual_seed(3 * 2**20 + i)
        for t in range(99, -1, -1):
            noise[i, t] = torch.randn(2, generator=g, dtype=torch.float64).numpy()
    terms = bound_terms_given_noise(x.numpy(), noise, mu, cov, linear_abar(100), "fixed_large", cdf)
    a = linear_abar(100)[-1]
    prior = (0.5 * (-1 - math.log(1 - a) + (1 - a) + a * x.numpy() ** 2)).mean(1) / math.log(2)  # DDPM eq. 5
    assert prior.mean() > 0.05
    np.testing.assert_allclose(res.per_image, terms.sum(1) + prior, rtol=1e-9)
    np.testing.assert_allclose(res.terms, terms.mean(0), rtol=1e-9)
    assert res.prior_bpd == pytest.approx(prior.mean(), rel=1e-9)
    assert res.decoder_bpd == pytest.approx(terms[:, 0].mean(), rel=1e-9)
    assert res.cdf == cdf and res.to_dict()["cdf"] == cdf


def test_nll_rejects_unscaled_images_and_unknown_cdfs():
    d = GaussianDiffusion(make_betas("linear", 10))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        evaluate_nll(lambda x, t: x, d, torch.full((2, 2), 3.0))
    with pytest.raises(ValueError, match="unknown cdf 'tanh'; allowed: exact, approx"):
        evaluate_nll(lambda x, t: x, d, torch.zeros(2, 2), cdf="tanh")
