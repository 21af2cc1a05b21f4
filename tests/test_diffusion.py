import math

import numpy as np
import pytest
import torch

from _linear_gaussian import discretized_log_likelihood, gaussian_kl, linear_abar

from difflab.diffusion import DiffusionConfig, GaussianDiffusion
from difflab.losses import LOG2, discretized_gaussian_log_likelihood, normal_kl
from difflab.schedules import make_betas

D64 = torch.float64


def diff(**kw):
    return GaussianDiffusion(make_betas("linear", 1000), **kw)


def test_q_sample_closed_form_and_statistics():
    d = diff()
    x0 = torch.randn(4, 3, dtype=D64)
    noise = torch.randn(4, 3, dtype=D64)
    t = torch.tensor([0, 10, 500, 999])
    abar = np.cumprod(1 - make_betas("linear", 1000))
    expected = torch.stack([math.sqrt(abar[i]) * x0[k] + math.sqrt(1 - abar[i]) * noise[k]
                            for k, i in enumerate(t.tolist())])
    torch.testing.assert_close(d.q_sample(x0, t, noise), expected, rtol=0, atol=1e-12)
    # the empirical distribution of x_t given x_0 matches q(x_t | x_0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7, dtype=D64)
    tt = torch.full((20000,), 300)
    xt = d.q_sample(x0, tt, torch.randn(20000, 1, generator=g, dtype=D64))
    mean, var, _ = d.q_mean_variance(x0[:1], tt[:1])
    assert float(xt.mean()) == pytest.approx(float(mean), abs=0.02)
    assert float(xt.var()) == pytest.approx(float(var), rel=0.03)


def test_posterior_is_the_bayes_posterior():
    # q(x_{t-1}|x_t,x_0) from q(x_t|x_{t-1}) q(x_{t-1}|x_0) by completing the square
    d = diff()
    b = d.terms.betas
    abar = d.terms.alphas_cumprod
    x0, xt = torch.tensor([[0.3]], dtype=D64), torch.tensor([[-0.8]], dtype=D64)
    t = 400
    prec = (1 - b[t]) / b[t] + 1 / (1 - abar[t - 1])
    mean = ((math.sqrt(1 - b[t]) / b[t]) * xt + (math.sqrt(abar[t - 1]) / (1 - abar[t - 1])) * x0) / prec
    m, v, lv = d.q_posterior_mean_variance(x0, xt, torch.tensor([t]))
    assert float(m) == pytest.approx(float(mean), rel=1e-10)
    assert float(v) == pytest.approx(1 / prec, rel=1e-10)
    assert float(lv) == pytest.approx(math.log(1 / prec), rel=1e-10)


def test_conversions_round_trip():
    d = diff()
    x0, eps = torch.randn(5, 2, dtype=D64), torch.randn(5, 2, dtype=D64)
    t = torch.tensor([0, 1, 250, 700, 999])
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.pred_x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(d.eps_from_pred_x0(xt, t, x0), eps)
    v = d.v_from_x0_eps(x0, t, eps)
    torch.testing.assert_close(d.pred_x0_from_v(xt, t, v), x0)
    torch.testing.assert_close(d.eps_from_v(xt, t, v), eps)
    torch.testing.assert_close(d.eps_from_score(xt, t, d.score_from_eps(xt, t, eps)), eps)
    s1m = torch.sqrt(1 - torch.as_tensor(d.terms.alphas_cumprod)[t])[:, None]
    torch.testing.assert_close(d.score_from_eps(xt, t, eps), -eps / s1m)
    for pred in ("eps", "x0", "v"):
        dd = d.with_options(prediction=pred)
        out = dd.from_x0_eps(xt, t, x0, eps)
        px0, pe = dd.to_x0_eps(xt, t, out)
        torch.testing.assert_close(px0, x0)
        torch.testing.assert_close(pe, eps)


def test_normal_kl_properties():
    m, lv = torch.randn(10, dtype=D64), torch.randn(10, dtype=D64)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(10, dtype=D64))
    # against the textbook formula for one pair
    kl = normal_kl(torch.tensor(1.0, dtype=D64), torch.tensor(math.log(0.5), dtype=D64),
                   torch.tensor(0.0, dtype=D64), torch.tensor(math.log(2.0), dtype=D64))
    s1, s2 = math.sqrt(0.5), math.sqrt(2.0)
    assert float(kl) == pytest.approx(math.log(s2 / s1) + (s1**2 + 1) / (2 * s2**2) - 0.5)
    assert torch.all(normal_kl(m, lv, m + 1, lv - 0.3) > 0)


@pytest.mark.parametrize("mean,log_scale", [(0.0, math.log(0.1)), (0.9, math.log(0.5)), (-1.0, math.log(0.01))])
def test_discretized_likelihood_sums_to_one(mean, log_scale):
    bins = torch.linspace(-1, 1, 256, dtype=D64)
    lp = discretized_gaussian_log_likelihood(bins, torch.full_like(bins, mean), torch.full_like(bins, log_scale))
    assert float(torch.exp(lp).sum()) == pytest.approx(1.0, abs=1e-9)


def test_variance_types():
    d = diff()
    x = torch.randn(3, 2, dtype=D64)
    t = torch.tensor([0, 5, 999])
    zeros = lambda x, t: torch.zeros_like(x)
    small = d.p_mean_variance(zeros, x, t)["log_variance"]
    large = d.with_options(variance="fixed_large").p_mean_variance(zeros, x, t)["log_variance"]
    b, pv = d.terms.betas, d.terms.posterior_variance
    assert float(small[1, 0]) == pytest.approx(math.log(pv[5]))
    assert float(small[0, 0]) == pytest.approx(math.log(pv[1]))  # clipped log at the first step
    assert float(large[1, 0]) == pytest.approx(math.log(b[5]))
    assert float(large[0, 0]) == pytest.approx(math.log(pv[1]))  # DDPM's first-step fix
    # learned_range: iDDPM eq. 15, v = (out + 1) / 2 interpolates log beta-tilde .. log beta
    dl = d.with_options(variance="learned_range")
    for raw, frac in ((-1.0, 0.0), (1.0, 1.0), (0.0, 0.5)):
        model = lambda x, t, raw=raw: torch.cat([torch.zeros_like(x), torch.full_like(x, raw)], 1)
        lv = dl.p_mean_variance(model, x, t)["log_variance"]
        exp = frac * math.log(b[5]) + (1 - frac) * math.log(pv[5])
        assert float(lv[1, 0]) == pytest.approx(exp)
    dlv = d.with_options(variance="learned")
    model = lambda x, t: torch.cat([torch.zeros_like(x), torch.full_like(x, -3.0)], 1)
    assert torch.all(dlv.p_mean_variance(model, x, t)["log_variance"] == -3.0)


def test_p_mean_matches_ddpm_eq11_and_clipping():
    d = diff()
    x = torch.randn(4, 3, dtype=D64)
    t = torch.tensor([3, 100, 600, 999])
    eps = torch.randn(4, 3, dtype=D64)
    out = d.p_mean_variance(lambda x, tt: eps, x, t)
    b = torch.as_tensor(d.terms.betas)[t][:, None]
    abar = torch.as_tensor(d.terms.alphas_cumprod)[t][:, None]
    # DDPM eq. 11: mu = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps)
    torch.testing.assert_close(out["mean"], (x - b / torch.sqrt(1 - abar) * eps) / torch.sqrt(1 - b))
    clipped = d.p_mean_variance(lambda x, tt: eps * 50, x, t, clip_denoised=True)
    assert clipped["pred_x0"].abs().max() <= 1.0
    # eps is made consistent with the clipped x_0
    torch.testing.assert_close(d.pred_x0_from_eps(x, t, clipped["eps"]), clipped["pred_x0"])


def test_respacing_maps_model_timesteps():
    d = diff()
    r = d.respace([0, 250, 500, 999])
    assert r.num_timesteps == 4
    seen = []
    model = lambda x, t: (seen.append(t.tolist()), torch.zeros_like(x))[1]
    r.p_mean_variance(model, torch.zeros(2, 1), torch.tensor([3, 1]))
    assert seen == [[999, 250]]
    np.testing.assert_allclose(r.terms.alphas_cumprod, d.terms.alphas_cumprod[[0, 250, 500, 999]], rtol=1e-12)
    rr = r.respace([1, 3])
    assert list(rr.timestep_map) == [250, 999]


def test_training_losses_simple_targets():
    torch.manual_seed(0)
    x0 = torch.randn(6, 2, dtype=D64)
    noise = torch.randn(6, 2, dtype=D64)
    t = torch.randint(0, 1000, (6,))
    for pred in ("eps", "x0", "v"):
        d = diff(prediction=pred)
        target = {"eps": noise, "x0": x0, "v": d.v_from_x0_eps(x0, t, noise)}[pred]
        perfect = lambda x, tt: target
        assert torch.allclose(d.training_losses(perfect, x0, t, noise=noise)["loss"], torch.zeros(6, dtype=D64))
        off = lambda x, tt: target + 1.0
        assert torch.allclose(d.training_losses(off, x0, t, noise=noise)["loss"], torch.ones(6, dtype=D64))


def test_hybrid_loss_stops_gradient_through_mean():
    d = diff(variance="learned_range", loss="hybrid")
    x0 = torch.rand(4, 2, dtype=D64) * 2 - 1
    t = torch.tensor([0, 1, 400, 999])
    noise = torch.randn(4, 2, dtype=D64)
    mean_p = torch.zeros(4, 2, dtype=D64, requires_grad=True)
    var_p = torch.zeros(4, 2, dtype=D64, requires_grad=True)
    model = lambda x, tt: torch.cat([mean_p, var_p], 1)
    terms = d.training_losses(model, x0, t, noise=noise)
    assert torch.allclose(terms["loss"], terms["mse"] + 0.001 * 1000 * terms["vb"])
    terms["vb"].sum().backward()
    assert mean_p.grad is None or torch.all(mean_p.grad == 0)   # vb does not train the mean
    assert var_p.grad.abs().sum() > 0
    # the vlb loss trains both
    dv = d.with_options(loss="vlb")
    mean_p.grad = None
    dv.training_losses(model, x0, t, noise=noise)["loss"].sum().backward()
    assert mean_p.grad.abs().sum() > 0


def test_min_snr_weights():
    d = diff(loss_weighting="min_snr", min_snr_gamma=5.0)
    t = torch.tensor([0, 999])
    w = d.loss_weights(t, torch.zeros(2, 1))
    snr = d.snr(t)
    assert float(w[0]) == pytest.approx(5.0 / float(snr[0]), rel=1e-5)  # high SNR: down-weighted
    assert float(w[1]) == pytest.approx(1.0)                             # low SNR: weight 1


@pytest.mark.parametrize("gamma", [0.5, 5.0, 20.0])
def test_min_snr_loss_is_min_snr_gamma_times_the_x0_error_for_every_target(gamma):
    """Hang et al. 2023: min-SNR-gamma weighting makes the loss min(SNR_t, gamma) |x_0 - pred_x0|^2
    whatever the network predicts. For fixed x_t, |eps - eps^|^2 = SNR |x_0 - x_0^|^2 and
    |v - v^|^2 = (SNR + 1) |x_0 - x_0^|^2, hence the weights min(SNR, g) / SNR (eps),
    min(SNR, g) / (SNR + 1) (v) and min(SNR, g) (x0). Checked at all 1000 timesteps (SNR from 4e-5
    to 1e4, so gamma clips some and not others), with pred_x0 and SNR from the paper's formulas.
    Float64 throughout: the largest rounding, dividing by sqrt(abar_999) ~ 6e-3, is ~1e-14 relative."""
    abar = torch.from_numpy(linear_abar(1000))[:, None]
    snr = abar / (1 - abar)
    t = torch.arange(1000)
    g = torch.Generator().manual_seed(0)
    x0, noise, err = (torch.randn(1000, 3, generator=g, dtype=D64) for _ in range(3))
    x_t = torch.sqrt(abar) * x0 + torch.sqrt(1 - abar) * noise                       # DDPM eq. 4
    targets = {"eps": noise, "x0": x0, "v": torch.sqrt(abar) * noise - torch.sqrt(1 - abar) * x0}
    for pred, target in targets.items():
        out = target + 0.1 * err
        pred_x0 = {"eps": (x_t - torch.sqrt(1 - abar) * out) / torch.sqrt(abar), "x0": out,
                   "v": torch.sqrt(abar) * x_t - torch.sqrt(1 - abar) * out}[pred]
        expected = torch.clamp(snr, max=gamma)[:, 0] * ((pred_x0 - x0) ** 2).mean(1)
        d = diff(prediction=pred, loss_weighting="min_snr", min_snr_gamma=gamma)
        loss = d.training_losses(lambda x, tt: out, x0, t, noise=noise)["loss"]
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0, msg=pred)


def test_prior_term_is_its_closed_form_when_abar_T_is_not_small():
    """L_T = KL(q(x_T | x_0) || N(0, I)) (DDPM eq. 5), per dimension
    1/2 (-1 - log(1 - a) + (1 - a) + a x_0^2) with a = abar_T. On 100 linear steps abar_T = 0.37, so
    the prior is ~0.1 bits/dim, not the ~1e-9 of a 1000-step chain, and its direction matters."""
    d = GaussianDiffusion(make_betas("linear", 100))
    a = float(linear_abar(100)[-1])
    assert 0.3 < a < 0.4
    x0 = torch.rand(5, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=D64) * 2 - 1
    per_dim = 0.5 * (-1 - math.log(1 - a) + (1 - a) + a * x0**2)
    expected = per_dim.mean(dim=(1, 2, 3)) / math.log(2)
    assert float(expected.min()) > 0.05
    torch.testing.assert_close(d.prior_bpd(x0), expected, rtol=1e-12, atol=0)


def _vb_case(variance, cdf="exact"):
    """vb_term on a batch with t = 0 (the decoder) and t > 0 (KL terms), and the same terms written
    from the papers: DDPM eqs. 4, 5, 7 and 13, iDDPM eq. 15 for the learned range."""
    T = 1000
    abar = linear_abar(T)
    abar_prev = np.append(1.0, abar[:-1])
    betas = 1 - abar / abar_prev
    tilde = betas * (1 - abar_prev) / (1 - abar)
    log_tilde = np.log(np.append(tilde[1], tilde[1:]))       # beta-tilde_1 = 0: the first step uses beta-tilde_2
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([0, 0, 1, 10, 500, 999])
    x0 = torch.randint(0, 256, (6, 1, 4, 4), generator=g).to(D64) / 127.5 - 1
    x0[:, 0, 0, :2] = torch.tensor([-1.0, 1.0], dtype=D64)     # the edge bins too
    noise, eps_out, raw_var = (torch.randn(6, 1, 4, 4, generator=g, dtype=D64) for _ in range(3))
    raw_var = torch.tanh(raw_var)
    a = torch.from_numpy(abar)[t].reshape(-1, 1, 1, 1)
    x_t = torch.sqrt(a) * x0 + torch.sqrt(1 - a) * noise
    d = diff(variance=variance)
    model_out = eps_out if variance == "fixed_large" else torch.cat([eps_out, raw_var], 1)
    got, _ = d.vb_term(lambda x, tt: model_out, x0, x_t, t, cdf=cdf)
    expected = []
    for k, i in enumerate(t.tolist()):
        xk, xtk = x0[k].numpy(), x_t[k].numpy()
        pred_x0 = (xtk - math.sqrt(1 - abar[i]) * eps_out[k].numpy()) / math.sqrt(abar[i])
        coef1, coef2 = (math.sqrt(abar_prev[i]) * betas[i] / (1 - abar[i]),
                        math.sqrt(1 - betas[i]) * (1 - abar_prev[i]) / (1 - abar[i]))
        if variance == "fixed_large":
            log_var = np.full_like(xk, log_tilde[0] if i == 0 else math.log(betas[i]))
        else:
            frac = (raw_var[k].numpy() + 1) / 2
            log_var = frac * math.log(betas[i]) + (1 - frac) * log_tilde[i]
        mean = coef1 * pred_x0 + coef2 * xtk
        if i == 0:
            nats = -discretized_log_likelihood(xk, mean, 0.5 * log_var, cdf)
        else:
            nats = gaussian_kl(coef1 * xk + coef2 * xtk, tilde[i], mean, np.exp(log_var))
        expected.append(nats.mean() / math.log(2))
    return got, torch.tensor(expected, dtype=D64)


@pytest.mark.parametrize("variance", ["fixed_large", "learned_range"])
def test_vb_terms_are_the_gaussian_kl_and_the_discretized_decoder(variance):
    """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) in that direction, with model variance
    different from beta-tilde (so a reversed KL differs), and L_0 with log-scale log sigma = log
    sigma^2 / 2. Float64, values of ~1e-3 to 10 bits: 1e-9 relative is rounding with a wide margin."""
    got, expected = _vb_case(variance)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0)


def test_approx_cdf_decoder_is_the_ddpm_tanh_decoder():
    """cdf="approx" is the decoder of the DDPM / improved-diffusion code: the tanh approximation
    1/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) of the normal CDF, written independently in
    tests/_linear_gaussian.py after improved-diffusion's discretized_gaussian_log_likelihood."""
    got, expected = _vb_case("fixed_large", cdf="approx")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0)
    exact, _ = _vb_case("fixed_large")
    assert torch.all((got[:2] - exact[:2]).abs() > 1e-6 * exact[:2])    # the two t = 0 rows: the decoder
    torch.testing.assert_close(got[2:], exact[2:], rtol=0, atol=0)       # the KL terms use no CDF
    # the whole bound: only L_0 changes
    d = GaussianDiffusion(make_betas("linear", 10))
    x0 = torch.randint(0, 256, (3, 4), generator=torch.Generator().manual_seed(3)).to(D64) / 127.5 - 1
    model = lambda x, tt: torch.tanh(x)
    a = d.bits_per_dim(model, x0, generator=torch.Generator().manual_seed(4))
    b = d.bits_per_dim(model, x0, generator=torch.Generator().manual_seed(4), cdf="approx")
    torch.testing.assert_close(a["vb"][:, 1:], b["vb"][:, 1:], rtol=0, atol=0)
    assert not torch.equal(a["vb"][:, 0], b["vb"][:, 0])
    with pytest.raises(ValueError, match="unknown cdf 'erf'; allowed: exact, approx"):
        d.bits_per_dim(model, x0, cdf="erf")


def test_config_build_and_validation():
    d = DiffusionConfig(schedule="cosine", num_timesteps=100, prediction="v").build()
    assert d.num_timesteps == 100 and d.prediction == "v"
    with pytest.raises(ValueError, match="unknown schedule"):
        DiffusionConfig(schedule="exp")
    with pytest.raises(ValueError, match="learned"):
        DiffusionConfig(loss="hybrid")
    with pytest.raises(ValueError, match="prediction target"):
        DiffusionConfig(prediction="score")


@pytest.mark.parametrize("x,t,match", [
    (torch.zeros(2, 3), torch.tensor([0, 1000]), r"\[0, 999\]"),
    (torch.zeros(2, 3), torch.tensor([-1, 3]), r"\[0, 999\]"),
    (torch.zeros(2, 3), torch.tensor([1, 2, 3]), "shape"),
    (torch.zeros(2, 3), torch.tensor([1.0, 2.0]), "integer"),
    (torch.zeros(2, 3, dtype=torch.long), torch.tensor([1, 2]), "floating"),
])
def test_bad_timesteps(x, t, match):
    with pytest.raises(ValueError, match=match):
        diff().q_sample(x, t, torch.zeros_like(x))


def test_model_output_shape_mismatch():
    d = diff()
    with pytest.raises(ValueError, match="expected"):
        d.p_mean_variance(lambda x, t: torch.zeros(2, 4), torch.zeros(2, 3), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="6 channels"):
        d.with_options(variance="learned").p_mean_variance(lambda x, t: x, torch.zeros(2, 3, 4, 4),
                                                           torch.tensor([1, 2]))


def test_q_step_chain_gives_the_closed_form_marginal():
    d = diff()
    x0 = torch.randn(3, 2, dtype=D64)
    # without noise, t steps scale x_0 by prod sqrt(alpha_s) = sqrt(abar_t)
    x = x0
    for i in range(400):
        x = d.q_step(x, torch.full((3,), i), torch.zeros_like(x))
    torch.testing.assert_close(x, math.sqrt(d.terms.alphas_cumprod[399]) * x0, rtol=1e-12, atol=0)
    # with noise, the chain's x_t has the mean and variance of q(x_t | x_0) (DDPM eq. 4)
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((20000, 1), -0.8, dtype=D64)
    x = x0
    for i in range(300):
        x = d.q_step(x, torch.full((20000,), i), torch.randn(20000, 1, generator=g, dtype=D64))
    mean, var, _ = d.q_mean_variance(x0[:1], torch.tensor([299]))
    assert float(x.mean()) == pytest.approx(float(mean), abs=0.02)
    assert float(x.var()) == pytest.approx(float(var), rel=0.03)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_bound_term_is_the_eps_error_weighted_by_eq12(variance):
    from difflab.losses import LOG2
    from difflab.schedules import eps_bound_weights

    d = diff(variance=variance)
    lam = eps_bound_weights(d.terms, variance)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 5, generator=g, dtype=D64) * 2 - 1
    eps = torch.randn(6, 5, generator=g, dtype=D64)
    t = torch.tensor([1, 2, 50, 300, 700, 999])
    x_t = d.q_sample(x0, t, eps)
    terms = []
    for scale in (0.0, 0.1, 0.3):
        err = scale * torch.randn(6, 5, generator=g, dtype=D64)
        vb, _ = d.vb_term(None, x0, x_t, t, model_output=eps + err)
        terms.append(vb - torch.as_tensor(lam[t.numpy()]) * (err**2).mean(1) / LOG2)
    # what remains after removing lambda_t ||eps - eps_theta||^2 does not depend on the error
    torch.testing.assert_close(terms[1], terms[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(terms[2], terms[0], rtol=1e-9, atol=1e-12)
    if variance == "fixed_small":   # and is zero when sigma_t^2 is the posterior's variance
        torch.testing.assert_close(terms[0], torch.zeros(6, dtype=D64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="fixed variance"):
        eps_bound_weights(d.terms, "learned")
