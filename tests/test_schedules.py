import math
from fractions import Fraction

import numpy as np
import pytest

from difflab import schedules as S


def test_linear_endpoints():
    b = S.linear_betas(1000)
    assert b.dtype == np.float64 and len(b) == 1000
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    assert np.all(np.diff(b) > 0)


def test_cosine_matches_iddpm_eq17():
    T, s = 1000, 0.008
    b = S.cosine_betas(T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    abar = np.cumprod(1 - b)
    for t in (1, 10, 500, 900):
        # abar for the paper's step t (our index t-1), unaffected by clipping away from the end
        assert abar[t - 1] == pytest.approx(f(t) / f(0), rel=1e-10)
    assert b.max() <= 0.999 and b[-1] == pytest.approx(0.999)


def test_scaled_linear_and_sigmoid():
    b = S.scaled_linear_betas(10, 0.00085, 0.012)
    assert np.allclose(np.sqrt(b), np.linspace(0.00085**0.5, 0.012**0.5, 10))
    sg = S.sigmoid_betas(100)
    assert np.all(np.diff(sg) > 0) and 1e-4 <= sg[0] and sg[-1] <= 0.02


@pytest.mark.parametrize("T", [1, 2, 11, 1000])
def test_sigmoid_betas_values(T):
    """beta_i = beta_start + (beta_end - beta_start) / (1 + exp(-x_i)), x_i evenly spaced over [-6, 6]:
    so beta_1 = beta_start + 0.0025 (beta_end - beta_start), the middle one halfway, the last
    beta_start + 0.9975 (beta_end - beta_start). Written here with math.exp; float64 rounding only."""
    b = S.sigmoid_betas(T, beta_start=1e-4, beta_end=0.02)
    xs = [-6.0 + 12.0 * i / (T - 1) for i in range(T)] if T > 1 else [-6.0]
    expected = [1e-4 + (0.02 - 1e-4) / (1 + math.exp(-x)) for x in xs]
    np.testing.assert_allclose(b, expected, rtol=1e-12, atol=0)
    assert b[0] == pytest.approx(1e-4 + 0.0199 / (1 + math.exp(6)), rel=1e-12)
    if T > 1:
        assert b[-1] == pytest.approx(1e-4 + 0.0199 / (1 + math.exp(-6)), rel=1e-12)
    if T == 11:
        assert b[5] == pytest.approx((1e-4 + 0.02) / 2, rel=1e-12)


def test_quadratic_spacing_values():
    """DDIM appendix (its code's "quad" skip type): t_i = floor((i sqrt(0.8 T) / (S - 1))^2), i.e.
    floor(0.8 T i^2 / (S - 1)^2), computed here in exact rational arithmetic."""
    assert S.space_timesteps(1000, 10, "quadratic") == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    for T, S_ in ((1000, 10), (1000, 37), (250, 12), (100, 20)):
        exact = [int(Fraction(4 * T * i * i, 5 * (S_ - 1) ** 2)) for i in range(S_)]
        # early steps of the parabola fall on the same integer: each is pushed past its predecessor
        for i in range(1, S_):
            exact[i] = max(exact[i], exact[i - 1] + 1)
        assert S.space_timesteps(T, S_, "quadratic") == exact, (T, S_)


def test_terms_closed_form():
    b = S.make_betas("linear", 50)
    tm = S.schedule_terms(b)
    abar = np.cumprod(1 - b)
    assert np.allclose(tm.alphas_cumprod, abar, rtol=0, atol=1e-15)
    assert tm.alphas_cumprod_prev[0] == 1.0 and np.allclose(tm.alphas_cumprod_prev[1:], abar[:-1])
    t = 20
    bt = b[t] * (1 - abar[t - 1]) / (1 - abar[t])  # DDPM eq. 7
    assert tm.posterior_variance[t] == pytest.approx(bt, rel=1e-12)
    assert tm.posterior_variance[0] == 0.0
    assert tm.posterior_log_variance_clipped[0] == pytest.approx(math.log(tm.posterior_variance[1]))
    assert tm.posterior_mean_coef1[t] == pytest.approx(math.sqrt(abar[t - 1]) * b[t] / (1 - abar[t]))
    assert tm.posterior_mean_coef2[t] == pytest.approx(math.sqrt(1 - b[t]) * (1 - abar[t - 1]) / (1 - abar[t]))
    assert np.allclose(tm.sqrt_recipm1_alphas_cumprod**2, 1 / abar - 1)
    assert tm.log_fixed_large_variance[5] == pytest.approx(math.log(b[5]))


@pytest.mark.parametrize("spacing", S.SPACINGS)
@pytest.mark.parametrize("steps", [1, 10, 50, 1000])
def test_spacings(spacing, steps):
    ts = S.space_timesteps(1000, steps, spacing)
    assert len(ts) == steps and ts == sorted(ts) and 0 <= ts[0] and ts[-1] <= 999


def test_spacing_details():
    assert S.space_timesteps(1000, 10, "leading") == list(range(0, 1000, 100))
    assert S.space_timesteps(1000, 10, "trailing")[-1] == 999
    assert S.space_timesteps(1000, 10, "linspace")[0] == 0 and S.space_timesteps(1000, 10, "linspace")[-1] == 999
    assert S.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert len(S.space_timesteps(1000, "10,20")) == 30
    assert S.space_timesteps(100, [5, 1, 5]) == [1, 5]


def test_linspace_and_section_spacing_values():
    """linspace: t_i = round(i (T - 1) / (S - 1)), evenly spaced with both ends (iDDPM sec. 4).
    Section counts "a,b,...": the iDDPM code's space_timesteps: T is cut into equal sections (the
    first T mod n one longer) and section k takes count_k steps round(j (size_k - 1) / (count_k - 1))
    from its start. Exact rational arithmetic here; the counts avoid ties at .5."""
    for S_ in (30, 50):
        assert S.space_timesteps(1000, S_, "linspace") == [round(Fraction(999 * i, S_ - 1)) for i in range(S_)]
    expected, start = [], 0
    for size, count in ((334, 10), (333, 15), (333, 20)):
        expected += [start + round(Fraction((size - 1) * j, count - 1)) for j in range(count)]
        start += size
    assert S.space_timesteps(1000, "10,15,20") == expected
    assert S.space_timesteps(1000, "10,20")[:10] == [0, 55, 111, 166, 222, 277, 333, 388, 444, 499]


def test_respaced_betas_keep_alphas_cumprod():
    b = S.make_betas("cosine", 1000)
    abar = np.cumprod(1 - b)
    ts = S.space_timesteps(1000, 25)
    nb = S.respaced_betas(abar, ts)
    assert np.allclose(np.cumprod(1 - nb), abar[ts], rtol=1e-12)


@pytest.mark.parametrize("call,match", [
    (lambda: S.make_betas("quartic", 10), "unknown schedule"),
    (lambda: S.linear_betas(0), "positive integer"),
    (lambda: S.space_timesteps(100, 0), "between 1 and T"),
    (lambda: S.space_timesteps(100, 101), "between 1 and T"),
    (lambda: S.space_timesteps(100, 10, "cubic"), "unknown spacing"),
    (lambda: S.space_timesteps(100, [0, 100]), r"\[0, 99\]"),
    (lambda: S.schedule_terms([0.1, 1.5]), r"\(0, 1\]"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
