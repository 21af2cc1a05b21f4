"""The contract every sampler in ``SAMPLERS`` keeps (see difflab/samplers/base.py).

Shapes, determinism, batch-size independence with per-sample generators, no mutation of
inputs, trajectory / callback bookkeeping, honest NFE counts, and ValueError on bad input.
Parametrized over the registry, so a newly registered sampler is checked automatically, and
over the Karras grid of every sampler that offers ``sigma_schedule``.
"""

import inspect

import pytest
import torch

from difflab.diffusion import GaussianDiffusion
from difflab.guidance import classifier_free, null_label
from difflab.rng import per_sample_generators
from difflab.samplers import SAMPLERS, get_sampler
from difflab.schedules import make_betas

D64 = torch.float64
T = 100
STEPS = 5
# options that make each sampler exercise its randomness, where it has any
OPTIONS = {"ddim": {"eta": 1.0}}
STOCHASTIC = {"ddpm", "ddim", "dpm++2m-sde"}
# network evaluations for STEPS steps: one per step, except Heun's 2 per step less the final Euler step
EXPECTED_NFE = {"heun": 2 * STEPS - 1}
NAMES = sorted(SAMPLERS)
# every sampler, and every sampler with a sigma_schedule on the Karras grid: case -> (name, options)
CASES = {**{n: (n, {}) for n in NAMES},
         **{f"{n}[karras]": (n, {"sigma_schedule": "karras"}) for n in NAMES
            if "sigma_schedule" in inspect.signature(SAMPLERS[n]).parameters}}


class CountingClassModel:
    """A smooth conditional model that counts its calls; y shifts the output per class."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        tt = t.to(D64).reshape(-1, *([1] * (x.ndim - 1))) / 20.0
        out = 0.6 * torch.tanh(x) * torch.cos(tt) + 0.2 * torch.sin(x + tt)
        if y is not None:
            out = out + 0.1 * y.to(D64).reshape(-1, *([1] * (x.ndim - 1)))
        return out.to(x.dtype)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(make_betas("linear", T))


def _x_T(n=4, seed=0, dtype=D64):
    return torch.randn(n, 2, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _run(case, diffusion, x_T, model=None, **kwargs):
    name, options = CASES[case]
    model = model if model is not None else CountingClassModel()
    return get_sampler(name)(model, diffusion, x_T, steps=STEPS, **{**OPTIONS.get(name, {}), **options, **kwargs})


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_output_shape_and_dtype(name, diffusion, dtype):
    x_T = _x_T(dtype=dtype)
    out = _run(name, diffusion, x_T, generator=torch.Generator().manual_seed(1))
    assert out.sample.shape == x_T.shape and out.sample.dtype == dtype
    assert torch.isfinite(out.sample).all()
    assert len(out.timesteps) == STEPS


@pytest.mark.parametrize("name", CASES)
def test_deterministic_for_a_fixed_generator(name, diffusion):
    x_T = _x_T()
    a = _run(name, diffusion, x_T, generator=torch.Generator().manual_seed(3)).sample
    b = _run(name, diffusion, x_T, generator=torch.Generator().manual_seed(3)).sample
    assert torch.equal(a, b)
    c = _run(name, diffusion, x_T, generator=torch.Generator().manual_seed(4)).sample
    if CASES[name][0] in STOCHASTIC:
        assert (a - c).abs().max() > 1e-3  # the generator really drives the noise
    else:
        assert torch.equal(a, c)  # deterministic solvers ignore it


@pytest.mark.parametrize("name", CASES)
def test_batch_of_n_equals_n_singles(name, diffusion):
    seeds = [10, 11, 12]
    x_T = _x_T(n=3)
    y = torch.tensor([0, 2, 1])
    batch = _run(name, diffusion, x_T, generator=per_sample_generators(seeds), model_kwargs={"y": y}).sample
    for i, s in enumerate(seeds):
        single = _run(name, diffusion, x_T[i:i + 1], generator=per_sample_generators([s]),
                      model_kwargs={"y": y[i:i + 1]}).sample
        torch.testing.assert_close(batch[i:i + 1], single, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_inputs_are_not_mutated(name, diffusion):
    x_T = _x_T()
    y = torch.tensor([0, 1, 2, 3])
    x_copy, y_copy = x_T.clone(), y.clone()
    kwargs = {"y": y}
    tables = diffusion.terms.alphas_cumprod.copy()
    out = _run(name, diffusion, x_T, model_kwargs=kwargs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_T, x_copy) and torch.equal(y, y_copy)
    assert kwargs.keys() == {"y"} and kwargs["y"] is y
    assert (diffusion.terms.alphas_cumprod == tables).all()
    assert out.sample.data_ptr() != x_T.data_ptr()


@pytest.mark.parametrize("name", CASES)
def test_trajectory_and_callback(name, diffusion):
    x_T = _x_T()
    calls = []
    out = _run(name, diffusion, x_T, return_trajectory=True, generator=torch.Generator().manual_seed(0),
               callback=lambda i, t, x_t, pred_x0: calls.append((i, t, x_t.shape, pred_x0.shape)))
    assert [c[0] for c in calls] == list(range(STEPS))
    assert [c[1] for c in calls] == out.timesteps
    assert all(c[2] == x_T.shape and c[3] == x_T.shape for c in calls)
    assert len(out.trajectory) == STEPS + 1 and len(out.pred_x0s) == STEPS
    torch.testing.assert_close(out.trajectory[0], x_T, rtol=1e-12, atol=1e-12)  # starts at x_T ...
    assert torch.equal(out.trajectory[-1], out.sample)                         # ... ends at the sample
    # the timesteps go from noisy to clean
    assert out.timesteps == sorted(out.timesteps, reverse=True)
    plain = _run(name, diffusion, x_T, generator=torch.Generator().manual_seed(0))
    assert plain.trajectory is None and plain.pred_x0s is None
    assert torch.equal(plain.sample, out.sample)  # recording does not change the result


@pytest.mark.parametrize("name", CASES)
def test_nfe_counts_real_model_calls(name, diffusion):
    model = CountingClassModel()
    out = _run(name, diffusion, _x_T(), model=model, generator=torch.Generator().manual_seed(0))
    assert out.nfe == model.calls == EXPECTED_NFE.get(CASES[name][0], STEPS)


@pytest.mark.parametrize("name", CASES)
def test_nfe_counts_both_halves_of_classifier_free_guidance(name, diffusion):
    """The usual convention: a guided step is two network evaluations, though both halves share a batch."""
    model = CountingClassModel()
    guided = classifier_free(model, 0.5, uncond=null_label(3))
    out = _run(name, diffusion, _x_T(), model=guided, generator=torch.Generator().manual_seed(0),
               model_kwargs={"y": torch.tensor([0, 1, 2, 0])})
    assert out.nfe == 2 * model.calls == 2 * EXPECTED_NFE.get(CASES[name][0], STEPS)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("bad", [
    dict(steps=0), dict(steps=-3), dict(steps=T + 1), dict(spacing="bogus"), dict(steps=None, spacing="bogus"),
])
def test_bad_inputs_raise_value_error(name, diffusion, bad):
    sampler, options = CASES[name]
    kwargs = {"steps": STEPS, **options, **bad}
    with pytest.raises(ValueError):
        get_sampler(sampler)(CountingClassModel(), diffusion, _x_T(), **kwargs)


@pytest.mark.parametrize("name", [n for n in NAMES if "eta" in inspect.signature(SAMPLERS[n]).parameters])
def test_negative_eta_raises(name, diffusion):
    with pytest.raises(ValueError, match="eta"):
        get_sampler(name)(CountingClassModel(), diffusion, _x_T(), steps=STEPS, eta=-0.1)


@pytest.mark.parametrize("name", NAMES)
def test_non_tensor_or_integer_start_raises(name, diffusion):
    with pytest.raises(ValueError):
        get_sampler(name)(CountingClassModel(), diffusion, torch.zeros(2, 3, dtype=torch.long), steps=STEPS)


def test_unknown_sampler_name_raises():
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("euler_a")


def test_every_sampler_shares_the_common_signature():
    common = ["steps", "spacing", "generator", "model_kwargs", "clip_denoised", "callback", "progress",
              "return_trajectory"]
    for name, fn in SAMPLERS.items():
        params = inspect.signature(fn).parameters
        assert list(params)[:3] == ["model", "diffusion", "x_T"], name
        for p in common:
            assert p in params and params[p].kind is inspect.Parameter.KEYWORD_ONLY, (name, p)


def test_fast_samplers_reject_unsupported_options(diffusion):
    with pytest.raises(ValueError, match="eta"):
        get_sampler("dpm++2m")(CountingClassModel(), diffusion, _x_T(), steps=STEPS, eta=0.5)
    with pytest.raises(ValueError, match="order"):
        get_sampler("dpm++2m")(CountingClassModel(), diffusion, _x_T(), steps=STEPS, order=3)
    with pytest.raises(ValueError, match="sigma_schedule"):
        get_sampler("heun")(CountingClassModel(), diffusion, _x_T(), steps=STEPS, sigma_schedule="cosine")
    for name in ("heun", "dpm++2m", "dpm++2m-sde"):
        with pytest.raises(ValueError, match="karras"):
            get_sampler(name)(CountingClassModel(), diffusion, _x_T(), steps=[1, 5], sigma_schedule="karras")
        with pytest.raises(ValueError, match="sigma_schedule"):
            get_sampler(name)(CountingClassModel(), diffusion, _x_T(), steps=STEPS, sigma_schedule="Karras")
        with pytest.raises(ValueError, match="rho"):
            get_sampler(name)(CountingClassModel(), diffusion, _x_T(), steps=STEPS, sigma_schedule="karras", rho=0)
        with pytest.raises(ValueError, match="sigma_max"):
            get_sampler(name)(CountingClassModel(), diffusion, _x_T(), steps=STEPS, sigma_schedule="karras",
                              sigma_max=-1.0)
