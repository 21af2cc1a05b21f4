import math

import numpy as np
import pytest
import torch
from _linear_gaussian import cosine_abar, sampler_law
from scipy.special import ndtr

from difflab.diffusion import GaussianDiffusion
from difflab.exact import GaussianMixture
from difflab.guidance import classifier_free, classifier_guidance, dynamic_threshold, null_label
from difflab.rng import randn
from difflab.samplers import ddim_sample, ddpm_sample
from difflab.schedules import make_betas, space_timesteps

D64 = torch.float64


def mixture():
    # two overlapping components: guidance visibly sharpens the class
    return GaussianMixture([[-0.4, 0.0], [0.4, 0.2]], [0.08, 0.08], weights=[0.5, 0.5])


def exact_classifier(gm, d):
    abar = torch.as_tensor(d.terms.alphas_cumprod, dtype=D64)

    def classifier(x, t):
        return gm.class_log_prob(x.to(D64), abar[t.long()])   # log-probabilities are valid logits

    return classifier


def posterior_accuracy(gm, x, k):
    """Fraction of samples whose exact posterior class (at t = 0) is k."""
    return float((gm.class_log_prob(x, torch.ones(len(x), dtype=D64)).argmax(1) == k).double().mean())


# ---------------------------------------------------------------- formulas
def test_cfg_formula_single_batched_call_and_conventions():
    calls = []

    def model(x, t, y):
        calls.append(x.shape[0])
        return x * 0 + y.to(x.dtype)[:, None] * 10 + 1   # cond -> 10y+1, null (y=5) -> 51

    x, t, y = torch.zeros(3, 2), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    g = classifier_free(model, 2.0, uncond=null_label(5))
    out = g(x, t, y=y)
    assert calls == [6]                                   # one call, conditional and null rows together
    c, u = y.float()[:, None] * 10 + 1, torch.full((3, 1), 51.0)
    torch.testing.assert_close(out, (3 * c - 2 * u).expand(3, 2))
    torch.testing.assert_close(classifier_free(model, 3.0, uncond=null_label(5), convention="scale")(x, t, y=y), out)
    torch.testing.assert_close(classifier_free(model, 0.0, uncond=null_label(5))(x, t, y=y), c.expand(3, 2))


def test_cfg_keeps_conditional_learned_variance():
    def model(x, t, y):
        mean = y.float()[:, None, None, None].expand(-1, 1, 2, 2)
        return torch.cat([mean, -mean], 1)

    out = classifier_free(model, 1.0, uncond=null_label(9))(torch.zeros(2, 1, 2, 2), torch.tensor([0, 0]),
                                                             y=torch.tensor([1, 2]))
    assert torch.allclose(out[:, 0], (2 * torch.tensor([1.0, 2.0]) - 9)[:, None, None].expand(2, 2, 2))
    assert torch.allclose(out[:, 1], -torch.tensor([1.0, 2.0])[:, None, None].expand(2, 2, 2))


def test_cfg_rescale_matches_conditional_std():
    model = lambda x, t, y: torch.randn(x.shape, generator=torch.Generator().manual_seed(int(y[0]))) * (1 + y[:, None])
    x, t = torch.zeros(1, 64), torch.tensor([0])
    cond = model(x, t, y=torch.tensor([1]))
    out = classifier_free(model, 4.0, uncond=null_label(3), rescale=1.0)(x, t, y=torch.tensor([1]))
    assert float(out.std()) == pytest.approx(float(cond.std()), rel=1e-5)


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7])
def test_cfg_rescale_mixes_rescaled_and_plain_guidance_by_phi(phi):
    """Lin et al. 2024 eqs. 15-16: x_cfg = c + w (c - u); x_rescaled = x_cfg std(c) / std(x_cfg), per
    sample over all its dimensions; out = phi x_rescaled + (1 - phi) x_cfg. Written in numpy here,
    per sample, with several samples of different spread (float32 in, so rtol 1e-5)."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(4, 2, 3, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5, 3.0])[:, None, None, None]
    model = lambda x, t, y: x + table[y]                # class y's output; null class 3
    x, t, y = torch.randn(2, 2, 3, 3, generator=g), torch.tensor([5, 9]), torch.tensor([0, 2])
    w = 2.5
    out = classifier_free(model, w, uncond=null_label(3), rescale=phi)(x, t, y=y).numpy()
    for k in range(2):
        c, u = (x[k] + table[y[k]]).numpy(), (x[k] + table[3]).numpy()
        cfg = c + w * (c - u)
        expected = phi * cfg * c.std() / cfg.std() + (1 - phi) * cfg
        np.testing.assert_allclose(out[k], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_classifier_guidance_eps_rule_formula(prediction):
    d = GaussianDiffusion(make_betas("linear", 1000), prediction=prediction)
    x, t, y = torch.randn(4, 3, dtype=D64), torch.tensor([5, 100, 500, 999]), torch.tensor([0, 1, 0, 1])
    w_cls = torch.randn(2, 3, dtype=D64)
    classifier = lambda x, t: x @ w_cls.T * (1 + t[:, None] / 1000)
    model = lambda x, t: torch.sin(x) + t[:, None] / 1000
    guided = classifier_guidance(model, classifier, d, 2.5, rule="eps")
    _, eps = d.to_x0_eps(x, t, model(x, t))
    _, eps_g = d.to_x0_eps(x, t, guided(x, t, y=y))
    with torch.enable_grad():
        xx = x.clone().requires_grad_(True)
        lp = torch.log_softmax(classifier(xx, t), -1)[torch.arange(4), y].sum()
        (g,) = torch.autograd.grad(lp, xx)
    s1m = torch.sqrt(1 - torch.as_tensor(d.terms.alphas_cumprod)[t])[:, None]
    torch.testing.assert_close(eps_g, eps - s1m * 2.5 * g)   # guided-diffusion eq. 14


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_classifier_guidance_mean_shift_formula(variance):
    d = GaussianDiffusion(make_betas("linear", 1000), variance=variance, prediction="v").respace(range(0, 1000, 10))
    x, i, y = torch.randn(3, 2, dtype=D64), torch.tensor([0, 40, 99]), torch.tensor([1, 0, 1])
    classifier = lambda x, t: torch.stack([x.sum(1), -x[:, 0] * t / 999], 1)
    learned = variance == "learned_range"
    model = lambda x, t: torch.cat([torch.cos(x), torch.tanh(x)], 1) if learned else torch.cos(x)
    plain = d.p_mean_variance(model, x, i)
    guided = d.p_mean_variance(classifier_guidance(model, classifier, d, 3.0, rule="mean_shift"), x, i, model_kwargs={"y": y})
    with torch.enable_grad():
        xx = x.clone().requires_grad_(True)
        lp = torch.log_softmax(classifier(xx, d.model_timesteps(i)), -1)[torch.arange(3), y].sum()
        (g,) = torch.autograd.grad(lp, xx)
    torch.testing.assert_close(guided["mean"], plain["mean"] + 3.0 * plain["variance"] * g)   # mu + s Sigma g
    torch.testing.assert_close(guided["log_variance"], plain["log_variance"])


def test_mean_shift_needs_the_sampled_chain():
    d = GaussianDiffusion(make_betas("linear", 100))
    g = classifier_guidance(lambda x, t: x, lambda x, t: x, d.respace([0, 50, 99]), 1.0, rule="mean_shift")
    with pytest.raises(ValueError, match="not on the guidance chain"):
        g(torch.zeros(1, 2), torch.tensor([10]), y=torch.tensor([0]))


@pytest.mark.parametrize("call,match", [
    (lambda: classifier_free(lambda x, t: x, -1.0, uncond=null_label(1)), ">= 0"),
    (lambda: classifier_free(lambda x, t: x, 1.0, uncond=null_label(1), convention="gamma"), "convention"),
    (lambda: classifier_free(lambda x, t: x, 1.0, uncond=null_label(1), rescale=2), "rescale"),
    (lambda: classifier_guidance(lambda x, t: x, None, GaussianDiffusion(make_betas("linear", 10)), 1.0, rule="x"), "rule"),
    (lambda: classifier_free(lambda x, t, y: x, 1.0, uncond=null_label(1))(torch.zeros(1, 2), torch.tensor([0])), "'y'"),
    (lambda: dynamic_threshold(1.5), "percentile"),
])
def test_bad_guidance_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_dynamic_threshold():
    x0 = torch.tensor([[0.5, -0.2, 0.1, 0.3], [3.0, -4.0, 0.5, 1.0]])
    out = dynamic_threshold(1.0)(x0)
    torch.testing.assert_close(out[0], x0[0])            # s = max(percentile, 1) = 1: unchanged inside [-1, 1]
    torch.testing.assert_close(out[1], x0[1] / 4.0)      # s = 4: rescaled into [-1, 1]


@pytest.mark.parametrize("percentile", [0.5, 0.8, 0.995])
def test_dynamic_threshold_uses_the_percentile(percentile):
    """Imagen sec. 2.3: s = the p-th percentile of |pred_x0| per sample (linear interpolation between
    order statistics), at least 1; pred_x0 <- clip(pred_x0, -s, s) / s. The percentile is computed
    here by hand from the sorted values."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 1, 4, 5, generator=g, dtype=D64) * torch.tensor([4.0, 0.2, 2.0], dtype=D64)[:, None, None, None]
    out = dynamic_threshold(percentile)(x0)
    thresholds = []
    for k in range(3):
        v = sorted(abs(float(a)) for a in x0[k].flatten())
        pos = (len(v) - 1) * percentile
        lo = math.floor(pos)
        s = max(v[lo] + (pos - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo]), 1.0)
        thresholds.append(s)
        torch.testing.assert_close(out[k], x0[k].clamp(-s, s) / s, rtol=1e-6, atol=1e-7)
    assert thresholds[0] > 1.5 and thresholds[1] == 1.0     # rescaled, and only clipped at 1


# ---------------------------------------------------------------- exact mixture: behaviour
N = 2000


def _sample(model, d, k, sampler=ddim_sample, seed=0, n=N, **kw):
    g = torch.Generator().manual_seed(seed)
    y = torch.full((n,), k)
    return sampler(model, d, randn((n, 2), g, dtype=D64), generator=g, model_kwargs={"y": y}, **kw).sample


def test_cfg_w0_reproduces_conditional_and_w_sharpens():
    gm = mixture()
    d = GaussianDiffusion(make_betas("cosine", 1000))
    model = gm.eps_model(d.terms.alphas_cumprod, conditional=True)
    # w = 0 samples the conditional N(mu_1, 0.08 I) through the 50-step DDIM chain, whose output law
    # is known exactly (tests/_linear_gaussian.py): N(mean, v I), v = 0.0726 (the chain shrinks it ~9%)
    ts = space_timesteps(1000, 50, "linspace")
    mean, cov, _ = sampler_law(cosine_abar(1000)[ts][::-1], gm.means[1].numpy(), 0.08 * np.eye(2), "ddim")
    v = cov[0, 0]
    s0 = _sample(classifier_free(model, 0.0, uncond=null_label(2)), d, 1, steps=50)
    # 4 standard errors: sqrt(v / N) for the mean, sqrt(2 / N) v for a variance, sqrt(1 / N) v off the diagonal
    assert torch.allclose(s0.mean(0), torch.from_numpy(mean), atol=4 * math.sqrt(v / N))
    emp = torch.cov(s0.T).numpy()
    assert abs(emp[0, 0] - v) < 4 * math.sqrt(2 / N) * v and abs(emp[1, 1] - v) < 4 * math.sqrt(2 / N) * v
    assert abs(emp[0, 1]) < 4 * v / math.sqrt(N)
    # so its posterior accuracy is Phi(distance of the mean from the bisector / sqrt(v)) = 0.937 (the
    # Bayes accuracy of the data, 0.928, with the chain's variance), within 4 binomial standard errors
    mu0, mu1 = gm.means[0].numpy(), gm.means[1].numpy()
    normal = (mu1 - mu0) / np.linalg.norm(mu1 - mu0)
    p_w0 = float(ndtr((mean - (mu0 + mu1) / 2) @ normal / math.sqrt(v)))
    # w > 0 pushes samples toward the class: higher posterior accuracy, mean further along mu_1 - mu_0
    acc, shift = [], []
    for w in (0.0, 0.3, 2.0):
        s = _sample(classifier_free(model, w, uncond=null_label(2)), d, 1, steps=50)
        acc.append(posterior_accuracy(gm, s, 1))
        shift.append(float(s[:, 0].mean()))
    assert abs(acc[0] - p_w0) < 4 * math.sqrt(p_w0 * (1 - p_w0) / N), (acc[0], p_w0)
    assert acc[0] < acc[1] <= acc[2] and shift[0] < shift[1] < shift[2], (acc, shift)


def test_exact_classifier_guidance_at_s1_is_the_conditional():
    gm = mixture()
    d = GaussianDiffusion(make_betas("cosine", 1000))
    uncond = gm.eps_model(d.terms.alphas_cumprod)
    cond = gm.eps_model(d.terms.alphas_cumprod, conditional=True)
    guided = classifier_guidance(uncond, exact_classifier(gm, d), d, 1.0, rule="eps")
    # deterministic DDIM from the same noise: in the continuous limit both follow the conditional ODE
    a = _sample(guided, d, 0, steps=100, n=500)
    b = _sample(cond, d, 0, steps=100, n=500)
    assert float((a - b).abs().max()) < 1e-6
    assert torch.allclose(a.mean(0), gm.means[0], atol=4 * math.sqrt(0.08 / 500))


def test_classifier_guidance_moves_samples_toward_class_with_ddpm_and_ddim():
    gm = mixture()
    d = GaussianDiffusion(make_betas("cosine", 1000))
    uncond = gm.eps_model(d.terms.alphas_cumprod)
    chain = d.respaced(100)
    for sampler, rule, diffusion in ((ddim_sample, "eps", d), (ddpm_sample, "mean_shift", chain)):
        accs = []
        for s in (0.0, 1.0, 4.0):
            model = classifier_guidance(uncond, exact_classifier(gm, d), diffusion, s, rule=rule)
            kw = dict(steps=50) if sampler is ddim_sample else dict(steps=None)
            accs.append(posterior_accuracy(gm, _sample(model, diffusion, 1, sampler=sampler, seed=3, **kw), 1))
        assert accs[0] < accs[1] < accs[2], (rule, accs)
        # unguided: the mixture is symmetric about the midpoint of its means (and x_T ~ N(0, I) about its
        # image, sqrt(abar_T) ~ 5e-5 times it), so half the samples fall on each side: 4 binomial SEs
        assert abs(accs[0] - 0.5) < 4 * math.sqrt(0.25 / N), (rule, accs)
