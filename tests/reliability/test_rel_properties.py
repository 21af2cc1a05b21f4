"""Property-based tests (hypothesis): schedule and sampler invariants, and the config parser
against random input (it may only ever raise ConfigError, with a one-line message)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from difflab.config import SECTIONS, ConfigError, resolve_config, run_config_from_dict
from difflab.diffusion import DiffusionConfig
from difflab.samplers import ddim_sample
from difflab.schedules import SCHEDULES, SPACINGS, make_betas, respaced_betas, schedule_terms, space_timesteps

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Ts = st.integers(min_value=1, max_value=2000)


# ----------------------------------------------------------------------------- schedules
@FAST
@given(name=st.sampled_from(SCHEDULES), T=Ts)
def test_alphas_cumprod_decrease_strictly_inside_0_1(name, T):
    terms = schedule_terms(make_betas(name, T))
    abar = terms.alphas_cumprod
    assert abar.dtype == np.float64 and len(abar) == T
    assert np.all(abar > 0) and np.all(abar <= 1)
    assert np.all(np.diff(abar) < 0)
    # DDPM eq. 7: 0 <= beta-tilde_t <= beta_t (beta-tilde_1 = 0)
    assert np.all(terms.posterior_variance >= 0)
    assert np.all(terms.posterior_variance <= terms.betas * (1 + 1e-12))
    assert terms.posterior_variance[0] == 0
    assert np.all(np.isfinite(terms.posterior_log_variance_clipped))


@FAST
@given(name=st.sampled_from(SCHEDULES), T=Ts, data=st.data())
def test_respaced_betas_keep_alphas_cumprod(name, T, data):
    abar = schedule_terms(make_betas(name, T)).alphas_cumprod
    ts = sorted(data.draw(st.sets(st.integers(0, T - 1), min_size=1, max_size=min(T, 50))))
    sub = schedule_terms(respaced_betas(abar, ts))
    # equal up to float64 round-off (1 - (1 - r) loses relative precision when alpha-bar is ~1e-7)
    np.testing.assert_allclose(sub.alphas_cumprod, abar[ts], rtol=1e-10, atol=1e-15)
    assert np.all(sub.betas > 0) and np.all(sub.betas <= 1)


@FAST
@given(T=Ts, data=st.data(), spacing=st.sampled_from(SPACINGS))
def test_space_timesteps_gives_sorted_unique_in_range_steps(T, data, spacing):
    S = data.draw(st.integers(1, T))
    try:
        ts = space_timesteps(T, S, spacing)
    except ValueError as e:
        # only the quadratic parabola (ending at 0.8 T) may run out of room, and it says so
        assert spacing == "quadratic" and "cannot place" in str(e), (T, S, spacing, e)
        assume(False)
    assert len(ts) == S
    assert ts == sorted(set(ts))
    assert 0 <= ts[0] and ts[-1] <= T - 1
    if spacing in ("linspace", "leading"):
        assert ts[0] == 0
    if spacing == "trailing" or (spacing == "linspace" and S >= 2):   # both ends need two steps
        assert ts[-1] == T - 1


# np.arange(T, 0, -T/S) gives S+1 points for these (a float-step overshoot the trailing spacing once had)
@pytest.mark.parametrize("T, S", [(69, 25), (15, 13), (17, 7)])
def test_trailing_spacing_places_every_requested_step(T, S):
    ts = space_timesteps(T, S, "trailing")
    assert len(ts) == S and ts[-1] == T - 1 and ts[0] >= 0


@FAST
@given(T=Ts, S=st.integers(-5, 2100), spacing=st.text(max_size=8))
def test_space_timesteps_rejects_bad_requests_with_valueerror(T, S, spacing):
    assume(not (1 <= S <= T) or spacing not in SPACINGS)
    with pytest.raises(ValueError):
        space_timesteps(T, S, spacing)


# ----------------------------------------------------------------------------- DDIM
def _model(x_t, t, **kwargs):   # any fixed function works as an eps-model for shape/determinism laws
    return torch.tanh(x_t) * 0.5 + 0.01 * t.float().view(-1, 1, 1, 1) / 100


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(SCHEDULES), T=st.integers(2, 200), data=st.data(),
       eta=st.floats(0.0, 1.0), shape=st.sampled_from([(1, 1, 2, 2), (3, 2, 4, 4)]), seed=st.integers(0, 2**31))
def test_ddim_keeps_shapes_and_is_deterministic(name, T, data, eta, shape, seed):
    diffusion = DiffusionConfig(schedule=name, num_timesteps=T).build()
    steps = data.draw(st.integers(1, min(T, 12)))
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    before = x_T.clone()

    def run(eta_):
        return ddim_sample(_model, diffusion, x_T, steps=steps, eta=eta_,
                           generator=torch.Generator().manual_seed(seed + 1)).sample

    a = run(eta)
    assert a.shape == x_T.shape and a.dtype == x_T.dtype and torch.isfinite(a).all()
    assert torch.equal(x_T, before)                   # the caller's tensor is not mutated
    assert torch.equal(a, run(eta))                   # same generator -> same sample
    if eta == 0:                                      # eta = 0 ignores the generator entirely
        b = ddim_sample(_model, diffusion, x_T, steps=steps, eta=0.0, generator=torch.Generator().manual_seed(7))
        assert torch.equal(a, b.sample)


# ----------------------------------------------------------------------------- config parser
FIELDS = [f"{s}.{f}" for s, cls in SECTIONS.items() for f in cls.__dataclass_fields__]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=15),
                 st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(list(SECTIONS)), st.text(max_size=10)))


def _assert_clean(e: ConfigError) -> None:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)


@settings(max_examples=150, deadline=None)
@given(items=st.lists(st.tuples(keys, values), max_size=4))
def test_random_nested_configs_raise_only_config_errors(items):
    d: dict = {}
    for key, value in items:
        section, _, name = key.partition(".")
        if name:
            node = d.setdefault(section, {})
            if isinstance(node, dict):
                node[name] = value
        else:
            d[section] = value
    try:
        cfg = run_config_from_dict(d)
    except ConfigError as e:
        _assert_clean(e)
    else:   # whatever was accepted round-trips exactly
        assert run_config_from_dict(cfg.to_dict()) == cfg


@settings(max_examples=150, deadline=None)
@given(overrides=st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, st.text(max_size=20)),
                                    st.text(max_size=30)), max_size=3),
       preset=st.sampled_from(["tiny", "digits"]))
def test_random_override_strings_raise_only_config_errors(overrides, preset):
    try:
        cfg = resolve_config(preset, overrides=overrides)
    except ConfigError as e:
        _assert_clean(e)
    else:
        assert cfg.train.steps >= 1 and math.isfinite(cfg.train.lr) and math.isfinite(cfg.sample.eta)
