"""DPM-Solver++(2M) SDE and the Karras grid: parity with diffusers, the designed differences, exact models.

Parity: the same betas, the same deterministic model, the same timesteps and the same per-step
noise go through our sampler and through a loop over diffusers' ``DPMSolverMultistepScheduler``
(``algorithm_type="sde-dpmsolver++"``, or "dpmsolver++" for the Karras ODE). As in
test_parity_fast_samplers.py the scheduler gets our float64 ``alphas_cumprod``; diffusers keeps
its sigmas in float32 and casts the sample to float32 in ``step``, so the comparison runs in
float32 with tolerance 1e-5.

Noise: our SDE draws ``difflab.rng.randn(x.shape, generator)`` once per step after the model call,
except on the last step (to sigma = 0, where the noise term vanishes); the diffusers loop gets
the same draws from a same-seeded generator as ``variance_noise`` (zeros on its last step).
"""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from _mixture_moments import MIXTURE, N_SAMPLES, moments_ok
from difflab.diffusion import GaussianDiffusion
from difflab.exact import GaussianMixture
from difflab.rng import per_sample_generators
from difflab.samplers import ddim_sample, dpm_solver_pp_sample, dpm_solver_pp_sde_sample, heun_sample, karras_timesteps
from difflab.samplers.sigmas import chain_sigmas, karras_sigmas
from difflab.schedules import make_betas

D64 = torch.float64
T = 1000
PRED_TO_DIFFUSERS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def smooth_model(x, t, **_):
    """Deterministic, smooth, nonlinear stand-in for a network (t enters as t / 100)."""
    tt = t.to(D64).reshape(-1, *([1] * (x.ndim - 1))) / 100.0
    return (0.7 * torch.tanh(x) * torch.cos(0.3 * tt) + 0.3 * torch.sin(0.5 * x + tt)).to(x.dtype)


def _x_T(shape=(3, 2, 4, 4), dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _diffusion(prediction="eps", schedule="linear"):
    return GaussianDiffusion(make_betas(schedule, T), prediction=prediction)


def _scheduler(diffusion, algorithm_type, **config):
    sched = DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=diffusion.terms.betas,
                                        prediction_type=PRED_TO_DIFFUSERS[diffusion.prediction],
                                        algorithm_type=algorithm_type, solver_order=2, **config)
    sched.alphas_cumprod = torch.from_numpy(diffusion.terms.alphas_cumprod.copy())  # float64 tables
    return sched


def diffusers_loop(sched, x_T, seed=None):
    """diffusers' sampling loop; with ``seed`` the SDE's noise, drawn as ours draws it."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    x = x_T.clone()
    n = len(sched.timesteps)
    for k, t in enumerate(sched.timesteps):
        out = smooth_model(x, torch.full((x.shape[0],), int(t)))
        noise = None
        if g is not None:
            noise = torch.randn(x.shape, generator=g, dtype=x.dtype) if k < n - 1 else torch.zeros_like(x)
        x = sched.step(out, t, x, variance_noise=noise).prev_sample
    return x


# ------------------------------------------------------------------------------ SDE parity
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_sde_matches_diffusers_on_our_trailing_grid(prediction, steps):
    diffusion = _diffusion(prediction, "cosine")
    x_T = _x_T()
    out = dpm_solver_pp_sde_sample(smooth_model, diffusion, x_T, steps=steps,
                                   generator=torch.Generator().manual_seed(3))
    sched = _scheduler(diffusion, "sde-dpmsolver++", timestep_spacing="trailing")
    sched.set_timesteps(steps)
    assert out.timesteps == sched.timesteps.tolist()   # our default grid is diffusers' "trailing"
    assert out.nfe == steps
    torch.testing.assert_close(out.sample, diffusers_loop(sched, x_T, seed=3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_sde_matches_diffusers_on_its_own_spacings(spacing):
    diffusion = _diffusion("v")
    sched = _scheduler(diffusion, "sde-dpmsolver++", timestep_spacing=spacing)
    sched.set_timesteps(12)
    x_T = _x_T()
    out = dpm_solver_pp_sde_sample(smooth_model, diffusion, x_T, steps=sched.timesteps.tolist(),
                                   generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out.sample, diffusers_loop(sched, x_T, seed=4), rtol=1e-5, atol=1e-5)


def test_sde_parity_is_sensitive_to_the_noise_and_the_correction():
    """The comparison has teeth: another seed, or the first-order update, moves the sample clearly."""
    diffusion = _diffusion()
    sched = _scheduler(diffusion, "sde-dpmsolver++", timestep_spacing="trailing")
    sched.set_timesteps(10)
    x_T = _x_T()
    expected = diffusers_loop(sched, x_T, seed=5)
    other_seed = dpm_solver_pp_sde_sample(smooth_model, diffusion, x_T, steps=10,
                                          generator=torch.Generator().manual_seed(6))
    first = dpm_solver_pp_sde_sample(smooth_model, diffusion, x_T, steps=10, order=1,
                                     generator=torch.Generator().manual_seed(5))
    assert (other_seed.sample - expected).abs().max() > 1e-2
    assert (first.sample - expected).abs().max() > 1e-3


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_first_order_sde_is_ddim_eta_1(spacing):
    """One SDE step is the DDPM posterior step on the grid, i.e. DDIM eq. 12 with eta = 1 (same noise)."""
    diffusion = _diffusion("eps", "cosine")
    x_T = _x_T(dtype=D64)
    sde = dpm_solver_pp_sde_sample(smooth_model, diffusion, x_T, steps=15, spacing=spacing, order=1,
                                   generator=torch.Generator().manual_seed(7))
    ddim = ddim_sample(smooth_model, diffusion, x_T, steps=15, spacing=spacing, eta=1.0,
                       generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(sde.sample, ddim.sample, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------ Karras grid
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [5, 10, 25])
def test_karras_timesteps_are_diffusers_karras_timesteps(schedule, steps):
    """Uncapped (sigma_max=None), our snapped Karras grid is the timesteps diffusers' use_karras_sigmas=True
    evaluates its network at (diffusers rounds them for betas it is given as trained_betas)."""
    diffusion = _diffusion("eps", schedule)
    sched = _scheduler(diffusion, "dpmsolver++", use_karras_sigmas=True)
    sched.set_timesteps(steps)
    theirs = sorted(set(sched.timesteps.tolist()))
    assert karras_timesteps(diffusion, steps, sigma_max=None) == theirs
    if schedule == "linear":
        assert len(theirs) == steps


def test_karras_grid_caps_the_cosine_schedules_top():
    """Uncapped, 10 Karras levels on the cosine schedule (top sigma ~2e4) round onto only 7 distinct
    timesteps, half of them above sigma 80; the default cap (EDM's sigma_max = 80) keeps all 10."""
    diffusion = _diffusion("eps", "cosine")
    sig = chain_sigmas(diffusion)
    uncapped = karras_timesteps(diffusion, 10, sigma_max=None)
    capped = karras_timesteps(diffusion, 10, sigma_max=80.0)
    assert len(uncapped) == 7 and sum(sig[t] > 80 for t in uncapped) >= 3
    assert len(capped) == 10 and capped[0] == 0 and sig[capped[-1]] == pytest.approx(80, rel=0.02)
    levels = karras_sigmas(sig[0], 80.0, 10)[::-1]
    for t, level in zip(capped, levels):   # each level snapped to a neighbouring training timestep
        assert sig[max(t - 1, 0)] <= level <= sig[min(t + 1, T - 1)]


@pytest.mark.parametrize("algorithm_type,sampler", [("dpmsolver++", dpm_solver_pp_sample),
                                                    ("sde-dpmsolver++", dpm_solver_pp_sde_sample)])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_karras_solvers_match_diffusers_on_the_same_timesteps(algorithm_type, sampler, prediction):
    diffusion = _diffusion(prediction)
    x_T = _x_T()
    out = sampler(smooth_model, diffusion, x_T, steps=10, sigma_schedule="karras", sigma_max=None,
                  generator=torch.Generator().manual_seed(8))
    sched = _scheduler(diffusion, algorithm_type)
    sched.set_timesteps(timesteps=out.timesteps)
    seed = 8 if algorithm_type.startswith("sde") else None
    torch.testing.assert_close(out.sample, diffusers_loop(sched, x_T, seed), rtol=1e-5, atol=1e-5)


def test_karras_differs_from_diffusers_karras_by_the_snapping_only():
    """Designed difference: diffusers' use_karras_sigmas=True calls the network at the rounded timestep but
    converts its output with the unrounded Karras sigma; we use the rounded timestep's own sigma (the
    noise level the network was trained for at that t). The two grids differ by less than one
    training step, so the samples differ far less than they differ from the "timesteps" grid's."""
    diffusion = _diffusion("eps")
    x_T = _x_T()
    ours = dpm_solver_pp_sample(smooth_model, diffusion, x_T, steps=10, sigma_schedule="karras", sigma_max=None)
    sched = _scheduler(diffusion, "dpmsolver++", use_karras_sigmas=True)
    sched.set_timesteps(10)
    theirs = diffusers_loop(sched, x_T)
    uniform = dpm_solver_pp_sample(smooth_model, diffusion, x_T, steps=10)
    gap = float((ours.sample - theirs).abs().max())
    assert 1e-6 < gap < 0.1 * float((ours.sample - uniform.sample).abs().max())


def test_karras_options_change_the_grid():
    diffusion = _diffusion("eps", "cosine")
    seen = {}
    for key, kw in (("default", {}), ("rho3", {"rho": 3.0}), ("top20", {"sigma_max": 20.0})):
        out = dpm_solver_pp_sample(smooth_model, diffusion, _x_T(), steps=8, sigma_schedule="karras", **kw)
        seen[key] = out.timesteps
        assert out.timesteps == karras_timesteps(diffusion, 8, **kw)[::-1]
    assert len({tuple(v) for v in seen.values()}) == 3


# ------------------------------------------------------------------------------ exact-model quality
@pytest.fixture(scope="module")
def exact_setup():
    diffusion = _diffusion("eps", "cosine")
    model = MIXTURE.eps_model(diffusion.terms.alphas_cumprod)
    x_T = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(11), dtype=D64)
    return diffusion, model, x_T


@pytest.mark.parametrize("sampler,steps,options", [
    (dpm_solver_pp_sde_sample, 20, {}),
    (dpm_solver_pp_sde_sample, 50, {"sigma_schedule": "karras"}),
    (dpm_solver_pp_sample, 30, {"sigma_schedule": "karras"}),
])
def test_sde_and_karras_reproduce_mixture_moments(exact_setup, sampler, steps, options):
    diffusion, model, x_T = exact_setup
    out = sampler(model, diffusion, x_T, steps=steps, generator=per_sample_generators(range(N_SAMPLES)), **options)
    assert out.nfe == steps
    ok, mean_err, cov_err = moments_ok(out.sample)
    assert ok, (mean_err, cov_err)


def test_sde_at_20_steps_beats_ddim_eta_1(exact_setup):
    """The second-order SDE solver has a smaller covariance error than DDIM with eta = 1 (its first-order
    counterpart) at the same NFE and noise seeds."""
    diffusion, model, x_T = exact_setup
    cov = MIXTURE.covariance()
    errs = {}
    for name, f, kw in (("sde", dpm_solver_pp_sde_sample, {}),
                        ("ddim", ddim_sample, {"eta": 1.0, "spacing": "trailing"})):
        out = f(model, diffusion, x_T, steps=20, generator=torch.Generator().manual_seed(12), **kw)
        errs[name] = float((torch.cov(out.sample.T) - cov).abs().max())
    assert errs["sde"] < errs["ddim"] / 2, errs


def test_heun_karras_grid_is_shared(exact_setup):
    """Heun's Karras levels come from the same range helper: capped at sigma 80 by default."""
    diffusion, _, x_T = exact_setup
    seen = []
    heun_sample(lambda x, t: (seen.append(float(t[0])), torch.zeros_like(x))[1], diffusion, x_T[:2], steps=6,
                sigma_schedule="karras")
    sig = chain_sigmas(diffusion)
    top = np.interp(seen[0], np.arange(T), sig)
    assert top == pytest.approx(80.0, rel=1e-3)


def test_heun_converges_with_its_step_count_on_image_like_exact_data():
    """The MNIST model's Heun rows get worse from 11 to 21 NFE (benchmarks/RESULTS.md); with the exact denoiser
    of image-like data (16 "pixels" near +-0.9, the cosine schedule, pred_x0 clipped as in the benchmark) Heun's
    distance to the probability-flow ODE's solution falls at every step count, so neither the grid, the final
    Euler step to sigma = 0, the timestep/sigma conversion nor clipping is broken."""
    g = torch.Generator().manual_seed(0)
    means = (torch.randint(0, 2, (8, 16), generator=g) * 2 - 1).double() * 0.9
    mixture = GaussianMixture(means.numpy(), [0.01] * 8)
    diffusion = _diffusion("eps", "cosine")
    model = mixture.eps_model(diffusion.terms.alphas_cumprod)
    x_T = torch.randn(600, 16, generator=torch.Generator().manual_seed(11), dtype=D64)
    ode = dpm_solver_pp_sample(model, diffusion, x_T, steps=200, clip_denoised=True).sample
    errors = []
    for steps in (6, 11, 21, 31):
        out = heun_sample(model, diffusion, x_T, steps=steps, clip_denoised=True)
        errors.append(float((out.sample - ode).square().mean().sqrt()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 2, errors
