import math

import torch

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


def test_nll_rejects_unscaled_images():
    import pytest
    d = GaussianDiffusion(make_betas("linear", 10))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        evaluate_nll(lambda x, t: x, d, torch.full((2, 2), 3.0))
