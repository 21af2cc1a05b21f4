"""DPM-Solver++(2M) and EDM Heun: parity with diffusers, the designed differences, exact-model quality.

Parity: the same betas, the same deterministic model and the same timesteps go through our
sampler and a loop over diffusers' ``DPMSolverMultistepScheduler`` (algorithm_type
"dpmsolver++", solver_order 2) / ``HeunDiscreteScheduler``. The schedulers are built from our
betas and then given our float64 ``alphas_cumprod`` before ``set_timesteps`` (both compute their
sigmas from it), so the only float32 left is diffusers' own: it stores ``sigmas`` in float32
and DPM-Solver's ``step`` casts the sample to float32. The tolerance is therefore 1e-5 and the
DPM-Solver comparison runs in float32.

Quality: with the exact eps of a Gaussian mixture (difflab.exact) the samplers must reproduce
the data mean and covariance within sampling error at ~20 network evaluations.
"""

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, HeunDiscreteScheduler

from _mixture_moments import MIXTURE, N_SAMPLES, moments_ok
from difflab.diffusion import GaussianDiffusion
from difflab.samplers import ddim_sample, dpm_solver_pp_sample, heun_sample
from difflab.samplers.sigmas import karras_sigmas, sigma_to_timestep
from difflab.schedules import make_betas

D64 = torch.float64
T = 1000
PRED_TO_DIFFUSERS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def smooth_model(x, t, **_):
    """Deterministic, smooth, nonlinear stand-in for a network; t may be integer or fractional.

    t enters as t / 100, so an off-by-one (or rounded) timestep moves the output by ~1e-2.
    """
    tt = t.to(D64).reshape(-1, *([1] * (x.ndim - 1))) / 100.0
    return (0.7 * torch.tanh(x) * torch.cos(0.3 * tt) + 0.3 * torch.sin(0.5 * x + tt)).to(x.dtype)


def _x_T(shape=(3, 2, 4, 4), dtype=D64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _diffusion(prediction="eps", schedule="linear"):
    return GaussianDiffusion(make_betas(schedule, T), prediction=prediction)


def _scheduler(cls, diffusion, **config):
    sched = cls(num_train_timesteps=T, trained_betas=diffusion.terms.betas,
                prediction_type=PRED_TO_DIFFUSERS[diffusion.prediction], **config)
    sched.alphas_cumprod = torch.from_numpy(diffusion.terms.alphas_cumprod.copy())  # float64 tables
    return sched


# ------------------------------------------------------------------------------ DPM-Solver++(2M)
def diffusers_dpm_loop(sched, x_T):
    x = x_T.clone()
    for t in sched.timesteps:
        out = smooth_model(x, torch.full((x.shape[0],), int(t)))
        x = sched.step(out, t, x).prev_sample
    return x


def _dpm_scheduler(diffusion, **config):
    return _scheduler(DPMSolverMultistepScheduler, diffusion, algorithm_type="dpmsolver++", solver_order=2,
                      **config)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_dpm_solver_matches_diffusers_on_its_timesteps(prediction, steps, spacing):
    diffusion = _diffusion(prediction)
    sched = _dpm_scheduler(diffusion, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    x_T = _x_T(dtype=torch.float32)
    expected = diffusers_dpm_loop(sched, x_T)
    out = dpm_solver_pp_sample(smooth_model, diffusion, x_T, steps=sched.timesteps.tolist())
    assert out.timesteps == sched.timesteps.tolist()
    assert out.nfe == steps
    torch.testing.assert_close(out.sample, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing,steps", [("trailing", 8), ("trailing", 20), ("linspace", 10), ("leading", 12)])
def test_dpm_solver_our_spacings_match_diffusers(spacing, steps):
    """Our grids (including ones ending with a model call at t = 0) fed to diffusers as custom
    timesteps, on the cosine schedule; our "trailing" is diffusers' "trailing" exactly."""
    diffusion = _diffusion("eps", "cosine")
    x_T = _x_T(dtype=torch.float32)
    out = dpm_solver_pp_sample(smooth_model, diffusion, x_T, steps=steps, spacing=spacing)
    sched = _dpm_scheduler(diffusion)
    sched.set_timesteps(timesteps=out.timesteps)
    torch.testing.assert_close(out.sample, diffusers_dpm_loop(sched, x_T), rtol=1e-5, atol=1e-5)
    if spacing == "trailing":
        trailing = _dpm_scheduler(diffusion, timestep_spacing="trailing")
        trailing.set_timesteps(steps)
        assert out.timesteps == trailing.timesteps.tolist()


def test_dpm_solver_second_order_is_not_first_order():
    """The 2M correction is active: order 2 differs from order 1, which is exactly DDIM (eta 0)."""
    diffusion = _diffusion()
    x_T = _x_T()
    second = dpm_solver_pp_sample(smooth_model, diffusion, x_T, steps=10)
    first = dpm_solver_pp_sample(smooth_model, diffusion, x_T, steps=10, order=1)
    ddim = ddim_sample(smooth_model, diffusion, x_T, steps=10, spacing="trailing")
    torch.testing.assert_close(first.sample, ddim.sample, rtol=1e-10, atol=1e-10)  # DPM-Solver++ sec. 4
    assert (second.sample - first.sample).abs().max() > 1e-3


def test_dpm_solver_linspace_differs_from_diffusers_by_design():
    """Same name, different grid. diffusers' "linspace" for DPM-Solver takes S + 1 points of
    linspace(0, T-1) and drops t = 0 (its last step jumps from t = round((T-1)/S) to sigma = 0);
    ours is the DDIM/iDDPM grid shared by every difflab sampler, S points including t = 0, so our
    last model call is at t = 0 and the last step is the tiny one from sigma_0 to 0.
    """
    diffusion = _diffusion()
    sched = _dpm_scheduler(diffusion, timestep_spacing="linspace")
    sched.set_timesteps(10)
    x_T = _x_T(dtype=torch.float32)
    expected = diffusers_dpm_loop(sched, x_T)
    out = dpm_solver_pp_sample(smooth_model, diffusion, x_T, steps=10, spacing="linspace")
    assert sched.timesteps.tolist()[-1] == 100 and out.timesteps[-1] == 0
    assert out.timesteps[0] == sched.timesteps.tolist()[0] == 999
    assert (out.sample - expected).abs().max() > 1e-3
    # our default grid ("trailing") is within one timestep of diffusers' default one
    default = dpm_solver_pp_sample(smooth_model, diffusion, x_T, steps=10)
    assert np.abs(np.array(default.timesteps) - sched.timesteps.numpy()).max() <= 1


# ------------------------------------------------------------------------------ Heun (EDM)
def diffusers_heun_loop(sched, x_T):
    # start from EDM's x = x_T * sqrt(1 + sigma_max^2), as ours does; diffusers pipelines scale by
    # init_noise_sigma = sigma_max instead, an approximation of the same thing
    x = x_T * math.sqrt(1.0 + float(sched.sigmas[0]) ** 2)
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = smooth_model(inp, t.expand(x.shape[0]))
        x = sched.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("steps", [5, 10])
def test_heun_matches_diffusers_on_integer_timesteps(prediction, steps):
    diffusion = _diffusion(prediction)
    sched = _scheduler(HeunDiscreteScheduler, diffusion)
    timesteps = sorted({int(t) for t in np.linspace(0, T - 1, steps).round()}, reverse=True)
    sched.set_timesteps(timesteps=timesteps)
    x_T = _x_T()
    expected = diffusers_heun_loop(sched, x_T)
    out = heun_sample(smooth_model, diffusion, x_T, steps=steps, spacing="linspace", sigma_max=None)
    assert out.timesteps == timesteps
    assert out.nfe == 2 * steps - 1 == len(sched.timesteps)
    torch.testing.assert_close(out.sample, expected, rtol=1e-5, atol=1e-5)


def test_heun_clip_matches_diffusers():
    diffusion = _diffusion("eps")
    sched = _scheduler(HeunDiscreteScheduler, diffusion, clip_sample=True)
    sched.set_timesteps(timesteps=[999, 749, 499, 249, 0])
    x_T = _x_T()
    expected = diffusers_heun_loop(sched, x_T)
    out = heun_sample(smooth_model, diffusion, x_T, steps=[0, 249, 499, 749, 999], clip_denoised=True,
                      sigma_max=None)
    torch.testing.assert_close(out.sample, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [6, 12])
def test_heun_karras_sigmas_match_diffusers_with_fractional_timesteps(prediction, steps):
    """EDM's sigma schedule: both sides evaluate the model at the same fractional timesteps."""
    diffusion = _diffusion(prediction)
    sched = _scheduler(HeunDiscreteScheduler, diffusion, use_karras_sigmas=True)
    sched.set_timesteps(steps)
    x_T = _x_T()
    seen = []
    expected = diffusers_heun_loop(sched, x_T)
    out = heun_sample(lambda x, t: (seen.append(t), smooth_model(x, t))[1], diffusion, x_T, steps=steps,
                      sigma_schedule="karras", sigma_max=None)
    assert out.nfe == len(seen) == 2 * steps - 1
    assert all(t.dtype == x_T.dtype for t in seen)
    assert any(float(t[0]) != round(float(t[0])) for t in seen)  # really fractional
    torch.testing.assert_close(torch.tensor(out.timesteps, dtype=D64), sched.timesteps[::2].to(D64),
                               rtol=0, atol=1e-3)  # diffusers keeps timesteps in float32
    torch.testing.assert_close(out.sample, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_conversion_at_a_given_abar_matches_the_table_one(prediction):
    """GaussianDiffusion.to_x0_eps_at (Heun's conversion) equals to_x0_eps at training timesteps."""
    diffusion = _diffusion(prediction)
    x_t, out = _x_T(shape=(3, 5), seed=1), _x_T(shape=(3, 5), seed=2)
    t = torch.tensor([0, 400, 999])
    abar = torch.from_numpy(diffusion.terms.alphas_cumprod)[t][:, None]
    for got, want in zip(diffusion.to_x0_eps_at(x_t, abar, out), diffusion.to_x0_eps(x_t, t, out)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_karras_sigmas_and_timestep_interpolation():
    diffusion = _diffusion()
    abar = diffusion.terms.alphas_cumprod
    train_sigmas = np.sqrt((1 - abar) / abar)
    s = karras_sigmas(train_sigmas[0], train_sigmas[-1], 8)
    assert s[0] == pytest.approx(train_sigmas[-1]) and s[-1] == pytest.approx(train_sigmas[0])
    assert np.all(np.diff(s) < 0)
    # training sigmas map back to their own timesteps; a geometric midpoint maps between them
    np.testing.assert_allclose(sigma_to_timestep(train_sigmas[[0, 10, 500, 999]], diffusion), [0, 10, 500, 999],
                               atol=1e-9)
    mid = math.sqrt(train_sigmas[10] * train_sigmas[11])
    assert sigma_to_timestep(np.array([mid]), diffusion)[0] == pytest.approx(10.5)
    # on a respaced chain the result is still a *training* timestep
    chain = diffusion.respaced(10, "leading")
    assert sigma_to_timestep(train_sigmas[[300, 500]], chain) == pytest.approx([300, 500])


def test_heun_linspace_differs_from_diffusers_by_design():
    """diffusers' Heun "linspace" keeps the fractional timesteps linspace(0, T-1, S) (for S = 8:
    999, 856.29, 713.57, ...) and interpolates sigma *linearly* in t; ours rounds the grid to training timesteps,
    so the model is only ever called with integer t (the model contract). Same S, different
    noise levels, different samples; on the rounded grid the two agree (test above).
    """
    steps = 8  # 999 / 7 is not an integer
    diffusion = _diffusion()
    sched = _scheduler(HeunDiscreteScheduler, diffusion, timestep_spacing="linspace")
    sched.set_timesteps(steps)
    theirs = sched.timesteps[::2].tolist()
    assert any(t != round(t) for t in theirs)
    x_T = _x_T()
    seen = []
    out = heun_sample(lambda x, t: (seen.append(t), smooth_model(x, t))[1], diffusion, x_T, steps=steps,
                      spacing="linspace", sigma_max=None)
    assert all(t.dtype == torch.long for t in seen)
    assert out.timesteps == [round(t) for t in theirs]
    assert (out.sample - diffusers_heun_loop(sched, x_T)).abs().max() > 1e-3


# ------------------------------------------------------------------------------ exact-model quality
def continuous_eps_model(diffusion):
    """The exact eps at a fractional timestep: t -> sigma by linear interpolation of log sigma
    between training timesteps (the inverse of ``sigma_to_timestep``), then the mixture's score."""
    abar = diffusion.terms.alphas_cumprod
    log_sigmas = 0.5 * np.log((1 - abar) / abar)

    def model(x_t, t):
        log_sigma = np.interp(t.to(D64).numpy(), np.arange(len(abar)), log_sigmas)
        abar_t = torch.from_numpy(1 / (1 + np.exp(2 * log_sigma)))
        return -torch.sqrt(1 - abar_t)[:, None] * MIXTURE.score(x_t, abar_t)

    return model


@pytest.fixture(scope="module")
def exact_setup():
    diffusion = _diffusion()
    model = MIXTURE.eps_model(diffusion.terms.alphas_cumprod)
    x_T = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(11), dtype=D64)
    return diffusion, model, x_T


@pytest.fixture(scope="module")
def dpm_20(exact_setup):
    diffusion, model, x_T = exact_setup
    return dpm_solver_pp_sample(model, diffusion, x_T, steps=20)  # default spacing: "trailing"


def test_dpm_solver_reproduces_mixture_moments_at_20_nfe(dpm_20):
    assert dpm_20.nfe == 20
    ok, mean_err, cov_err = moments_ok(dpm_20.sample)
    assert ok, (mean_err, cov_err)


def test_heun_reproduces_mixture_moments_at_19_nfe(exact_setup):
    diffusion, model, x_T = exact_setup
    out = heun_sample(model, diffusion, x_T, steps=10)
    assert out.nfe == 19
    ok, mean_err, cov_err = moments_ok(out.sample)
    assert ok, (mean_err, cov_err)


def test_heun_karras_reproduces_mixture_moments_with_fractional_timesteps(exact_setup):
    diffusion, table_model, x_T = exact_setup
    model = continuous_eps_model(diffusion)
    # the continuous model agrees with the table-indexed one at integer timesteps
    t = torch.full((4,), 300)
    torch.testing.assert_close(model(x_T[:4], t), table_model(x_T[:4], t))
    out = heun_sample(model, diffusion, x_T, steps=20, sigma_schedule="karras")
    assert out.nfe == 39
    ok, mean_err, cov_err = moments_ok(out.sample)
    assert ok, (mean_err, cov_err)


def test_trailing_grid_is_the_better_default_for_dpm_solver(exact_setup, dpm_20):
    """Why dpm_solver_pp_sample defaults to "trailing": at 20 steps, the "linspace" grid's step
    into t = 0 follows a much shorter one, and the 2M extrapolation inflates the variance."""
    diffusion, model, x_T = exact_setup
    cov = MIXTURE.covariance()
    linspace = dpm_solver_pp_sample(model, diffusion, x_T, steps=20, spacing="linspace")
    err_linspace = (torch.cov(linspace.sample.T) - cov).abs().max()
    err_trailing = (torch.cov(dpm_20.sample.T) - cov).abs().max()
    assert err_trailing < err_linspace / 3


def test_moment_check_rejects_a_one_step_sampler(exact_setup):
    """The check has teeth: one DPM-Solver step returns E[x_0 | x_T], whose spread collapses."""
    diffusion, model, x_T = exact_setup
    out = dpm_solver_pp_sample(model, diffusion, x_T, steps=1)
    assert not moments_ok(out.sample)[0]


def test_heun_sigma_max_caps_the_first_level():
    # the cosine schedule's last level has sigma ~2e4; the default cap starts at the noisiest level <= 80
    diffusion = GaussianDiffusion(make_betas("cosine", 1000))
    seen = []
    x_T = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    heun_sample(lambda x, t: (seen.append(int(t[0])), torch.zeros_like(x))[1], diffusion, x_T, steps=5)
    abar = diffusion.terms.alphas_cumprod
    sig = ((1 - abar) / abar) ** 0.5
    assert sig[seen[0]] <= 80 < sig[seen[0] + 1]
    seen.clear()
    heun_sample(lambda x, t: (seen.append(int(t[0])), torch.zeros_like(x))[1], diffusion, x_T, steps=5,
                sigma_max=None)
    assert seen[0] == 999
    with pytest.raises(ValueError, match="sigma_max"):
        heun_sample(lambda x, t: x, diffusion, x_T, steps=5, sigma_max=0.0)
