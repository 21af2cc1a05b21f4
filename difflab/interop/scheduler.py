"""difflab's diffusion and sampling config <-> a diffusers scheduler config (plain dicts).

Names, left = difflab, right = diffusers (``DDPMScheduler`` / ``DDIMScheduler``)::

    diffusion.num_timesteps          num_train_timesteps
    diffusion.schedule linear        beta_schedule "linear" (beta_start, beta_end)
                       scaled_linear "scaled_linear" (beta_start, beta_end)
                       cosine        "squaredcos_cap_v2" (iDDPM eq. 17, s = 0.008, betas <= 0.999)
                       sigmoid       trained_betas (DDIMScheduler has no "sigmoid")
    diffusion.prediction eps/x0/v    prediction_type "epsilon" / "sample" / "v_prediction"
    diffusion.variance               variance_type "fixed_small" / "fixed_large" / "learned_range"
    sample.clip_denoised             clip_sample (clip_sample_range 1)
    sample.spacing                   timestep_spacing

Sampling steps: diffusers' ``DDIMScheduler`` steps from ``t`` to ``t - T // S`` whatever the
spacing, which is the DDIM update on the chosen steps only for "leading" spacing (and for
"trailing" when ``S`` divides ``T``); difflab's default spacing ("linspace") is not uniform,
so an export writes "leading" for it, and ``difflab sample --spacing leading`` then draws
the same images as diffusers' ``DDIMPipeline``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..config import SampleConfig
from ..diffusion import DiffusionConfig
from ..schedules import make_betas
from .unet2d import InteropError

PREDICTION_TO_DIFFUSERS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
PREDICTION_FROM_DIFFUSERS = {v: k for k, v in PREDICTION_TO_DIFFUSERS.items()}
# diffusers' "learned" reads the output as a variance, difflab's (iDDPM's) as a log-variance: not the same model
VARIANCE_FROM_DIFFUSERS = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
                           "fixed_large": "fixed_large", "fixed_large_log": "fixed_large",
                           "learned_range": "learned_range"}
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler")   # the ones whose configs difflab reads
EXACT_DDIM_SPACINGS = ("leading", "trailing")
_DEFAULT_BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "sigmoid": (1e-4, 0.02)}
_COSINE = {"s": 0.008, "max_beta": 0.999}
_MATCH_RTOL = 1e-6            # trained_betas written as float32 still match a named schedule


def _named_schedule(cfg: DiffusionConfig) -> dict[str, Any] | None:
    """diffusers' beta_schedule fields for ``cfg``'s schedule, or None when it needs trained_betas."""
    kw = dict(cfg.schedule_kwargs)
    if cfg.schedule in ("linear", "scaled_linear") and set(kw) <= {"beta_start", "beta_end"}:
        start, end = _DEFAULT_BETAS[cfg.schedule]
        return {"beta_schedule": cfg.schedule, "beta_start": float(kw.get("beta_start", start)),
                "beta_end": float(kw.get("beta_end", end))}
    if cfg.schedule == "cosine" and {**_COSINE, **kw} == _COSINE:
        return {"beta_schedule": "squaredcos_cap_v2"}
    return None


def scheduler_config(diffusion: DiffusionConfig, sample: SampleConfig, *,
                     drop_learned_variance: bool = False) -> tuple[dict[str, Any], list[str]]:
    """``DDPMScheduler(**config)`` for a run, and notes on what was adapted (to show the user)."""
    notes = []
    if diffusion.variance == "learned":
        raise InteropError("diffusion.variance='learned' (the output is a log-variance): diffusers' 'learned' reads "
                           "it as a variance; only 'learned_range' maps")
    if diffusion.variance == "learned_range":
        if not drop_learned_variance:
            raise InteropError("diffusion.variance='learned_range': the U-Net's extra variance channels have no place "
                               "in diffusers' DDIMScheduler; export with --drop-learned-variance (DDIM uses the mean "
                               "only; DDPM then samples with sigma^2 = beta-tilde)")
        notes.append("learned variance left out: the exported U-Net outputs the mean channels only and the scheduler "
                     "uses variance_type='fixed_small'")
    variance = "fixed_large" if diffusion.variance == "fixed_large" else "fixed_small"
    named = _named_schedule(diffusion)
    if named is None:
        betas = make_betas(diffusion.schedule, diffusion.num_timesteps, **diffusion.schedule_kwargs)
        named = {"trained_betas": [float(b) for b in betas]}
        kwargs = f" {dict(diffusion.schedule_kwargs)}" if diffusion.schedule_kwargs else ""
        notes.append(f"schedule {diffusion.schedule!r}{kwargs} written as trained_betas (diffusers' DDIMScheduler has "
                     "no name for it)")
    spacing = sample.spacing or "linspace"
    if spacing not in EXACT_DDIM_SPACINGS:
        notes.append(f"timestep_spacing='leading' (the run samples with {spacing!r} spacing, on which diffusers' "
                     "DDIMScheduler does not take exact DDIM steps); `difflab sample --spacing leading` matches it")
        spacing = "leading"
    config = dict(num_train_timesteps=diffusion.num_timesteps, **named,
                  prediction_type=PREDICTION_TO_DIFFUSERS[diffusion.prediction], variance_type=variance,
                  clip_sample=bool(sample.clip_denoised), clip_sample_range=1.0, timestep_spacing=spacing,
                  steps_offset=0)
    return config, notes


def _sigmoid_ends(betas: np.ndarray) -> tuple[float, float]:
    """beta_start, beta_end of a sigmoid schedule from its first and last beta (two linear equations)."""
    a, c = 1 / (1 + math.exp(6.0)), 1 / (1 + math.exp(-6.0))     # sigmoid(-6), sigmoid(6)
    b0, b1 = float(betas[0]), float(betas[-1])
    end = (b1 * (1 - a) - b0 * (1 - c)) / (c - a)
    return (b0 - a * end) / (1 - a), end


def match_schedule(betas: np.ndarray) -> tuple[str, dict[str, float]] | None:
    """A named difflab schedule (with its kwargs) that reproduces ``betas``, or None."""
    betas = np.asarray(betas, dtype=np.float64)
    T = len(betas)
    ends = {"beta_start": float(betas[0]), "beta_end": float(betas[-1])}
    candidates = [("cosine", {})]
    if T > 1:
        candidates += [("linear", ends), ("scaled_linear", ends),
                       ("sigmoid", dict(zip(("beta_start", "beta_end"), _sigmoid_ends(betas))))]
    for name, kw in candidates:
        try:
            ours = make_betas(name, T, **kw)
        except ValueError:
            continue
        if np.allclose(ours, betas, rtol=_MATCH_RTOL, atol=0):
            return name, _without_defaults(name, kw)
    return None


def _without_defaults(name: str, kw: dict[str, float]) -> dict[str, float]:
    defaults = _DEFAULT_BETAS.get(name)
    if defaults is not None and all(math.isclose(kw[k], d, rel_tol=1e-9) for k, d in
                                    zip(("beta_start", "beta_end"), defaults)):
        return {}
    return kw


def diffusion_from_scheduler(config: dict[str, Any], *, learn_sigma: bool
                             ) -> tuple[DiffusionConfig, dict[str, Any], list[str]]:
    """(DiffusionConfig, SampleConfig fields, notes) for a diffusers scheduler config.

    ``learn_sigma``: the U-Net outputs twice its input channels. Raises :class:`InteropError`
    naming a field whose value changes the model's meaning and has no difflab equivalent;
    sampling-only settings difflab lacks become notes."""
    name = config.get("_class_name", "DDPMScheduler")
    if name not in SCHEDULERS:
        raise InteropError(f"scheduler _class_name={name!r}: difflab reads {', '.join(SCHEDULERS)} configs")
    get = config.get
    T = get("num_train_timesteps", 1000)
    if get("rescale_betas_zero_snr", False):
        raise InteropError("scheduler rescale_betas_zero_snr=True: difflab has no zero-terminal-SNR schedule")
    if get("trained_betas") is not None:
        betas = np.asarray(get("trained_betas"), dtype=np.float64)
        if betas.ndim != 1 or len(betas) != T:
            raise InteropError(f"scheduler trained_betas: {betas.shape} values for num_train_timesteps={T}")
        found = match_schedule(betas)
        if found is None:
            raise InteropError(f"scheduler trained_betas=[{betas[0]:.6g}, ..., {betas[-1]:.6g}] ({T} values) matches "
                               "none of difflab's schedules (linear, scaled_linear, cosine, sigmoid)")
        schedule, kwargs = found
    else:
        beta_schedule = get("beta_schedule", "linear")
        table = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine",
                 "sigmoid": "sigmoid"}
        if beta_schedule not in table:
            raise InteropError(f"scheduler beta_schedule={beta_schedule!r}: difflab has {', '.join(table)}")
        schedule = table[beta_schedule]
        kwargs = {} if schedule == "cosine" else _without_defaults(schedule, {
            "beta_start": float(get("beta_start", 1e-4)), "beta_end": float(get("beta_end", 0.02))})
    prediction = get("prediction_type", "epsilon")
    if prediction not in PREDICTION_FROM_DIFFUSERS:
        raise InteropError(f"scheduler prediction_type={prediction!r}: difflab predicts "
                           f"{', '.join(PREDICTION_FROM_DIFFUSERS)}")
    variance_type = get("variance_type", "fixed_small") if name == "DDPMScheduler" else "fixed_small"
    if variance_type not in VARIANCE_FROM_DIFFUSERS:
        raise InteropError(f"scheduler variance_type={variance_type!r}: difflab has "
                           f"{', '.join(VARIANCE_FROM_DIFFUSERS)} (diffusers' 'learned' reads the output as a "
                           "variance, difflab's as a log-variance)")
    variance = VARIANCE_FROM_DIFFUSERS[variance_type]
    if learn_sigma != (variance == "learned_range"):
        raise InteropError(f"scheduler variance_type={variance_type!r} with a U-Net that outputs "
                           f"{'twice' if learn_sigma else 'as many'} channels as it reads: "
                           + ("the extra channels are a learned variance only with 'learned_range'" if learn_sigma
                              else "'learned_range' needs twice the channels"))
    try:
        diffusion = DiffusionConfig(schedule=schedule, num_timesteps=int(T), prediction=PREDICTION_FROM_DIFFUSERS[
            prediction], variance=variance, schedule_kwargs=kwargs)
    except ValueError as e:
        raise InteropError(f"scheduler config: {e}") from None
    clip = bool(get("clip_sample", True))
    if clip and float(get("clip_sample_range", 1.0)) != 1.0:
        raise InteropError(f"scheduler clip_sample_range={get('clip_sample_range')!r}: difflab clips predicted x_0 "
                           "to [-1, 1]")
    spacing = get("timestep_spacing", "leading")
    if spacing not in ("linspace", "leading", "trailing"):
        raise InteropError(f"scheduler timestep_spacing={spacing!r}: difflab has linspace, leading, trailing")
    notes = []
    if spacing == "leading":   # diffusers' default; difflab's samplers each have their own (DPM-Solver: trailing)
        spacing = None
        notes.append("sample.spacing left to each sampler's default; `difflab sample --spacing leading` visits the "
                     "timesteps diffusers' schedulers visit by default")
    if get("steps_offset", 0):
        notes.append(f"steps_offset={get('steps_offset')} is not carried over (difflab's sampling steps start at 0)")
    if get("thresholding", False):
        notes.append(f"thresholding=True is a sampling option in difflab: add `--dynamic-threshold "
                     f"{get('dynamic_thresholding_ratio', 0.995)}` to difflab sample")
    if get("set_alpha_to_one", True) is False:
        notes.append("set_alpha_to_one=False is not carried over (difflab's DDIM ends at alpha-bar = 1)")
    sample = {"clip_denoised": clip, "spacing": spacing, "steps": min(SampleConfig().steps, int(T))}
    return diffusion, sample, notes
