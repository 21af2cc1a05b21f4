"""Drawing images from a trained network with a :class:`~difflab.config.SampleConfig`.

Shared by the grids written during training and ``difflab sample``. Sample ``i`` uses its
own generator seeded ``seed * SEED_STRIDE + i`` (EDM's per-sample seeds), so an image does
not depend on how many are drawn or on the batch size.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .config import SampleConfig
from .guidance import CONVENTIONS, classifier_free, classifier_guidance, dynamic_threshold, null_label
from .rng import per_sample_generators, randn
from .samplers import SampleOutput, get_sampler

SEED_STRIDE = 1 << 20   # sample i of seed s uses generator seed s * SEED_STRIDE + i


def class_labels(n: int, num_classes: int | None, class_label: int | None = None) -> torch.Tensor | None:
    """Labels for ``n`` samples: all ``class_label``, or 0, 1, ..., num_classes-1, 0, 1 ... (None if unconditional)."""
    if num_classes is None:
        if class_label is not None:
            raise ValueError("this model is unconditional; it takes no class label")
        return None
    if class_label is not None:
        if not 0 <= class_label <= num_classes:
            raise ValueError(f"class label must be in 0..{num_classes - 1} ({num_classes} = the null class), "
                             f"got {class_label}")
        return torch.full((n,), class_label, dtype=torch.long)
    return torch.arange(n) % num_classes


@torch.no_grad()
def sample_images(model, diffusion, cfg: SampleConfig, *, shape: tuple[int, int, int], n: int | None = None,
                  num_classes: int | None = None, class_label: int | None = None, device="cpu",
                  return_trajectory: bool = False, progress: bool = False, labels: torch.Tensor | None = None,
                  seed_indices: Sequence[int] | None = None, sampler_options: dict | None = None,
                  model_kwargs: dict[str, torch.Tensor] | None = None) -> SampleOutput:
    """``n`` (default ``cfg.n``) images of ``shape`` = (C, H, W) in [-1, 1], drawn in batches of ``cfg.batch_size``.

    With ``return_trajectory`` the trajectory and pred_x0 lists cover all ``n`` images.
    ``labels`` (``LongTensor[n]``) replaces the labels made from ``num_classes`` / ``class_label``;
    ``seed_indices`` (default 0..n-1) gives the index i of each sample's seed ``seed * SEED_STRIDE + i``
    (equal indices share their starting noise, e.g. one column of a class grid);
    ``sampler_options`` are passed to the sampler last (e.g. from :func:`build_guided_model`);
    ``model_kwargs``: per-sample conditioning tensors (``n`` rows each: prompts' tokens or context,
    a concatenated ``cond`` image), sliced with the batches and moved to ``device``.
    """
    n = cfg.n if n is None else n
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} samples")
    for key, value in (model_kwargs or {}).items():
        if len(value) != n:
            raise ValueError(f"model_kwargs[{key!r}] has {len(value)} rows for {n} samples")
    seed_indices = list(range(n)) if seed_indices is None else [int(i) for i in seed_indices]
    if len(seed_indices) != n:
        raise ValueError(f"got {len(seed_indices)} seed indices for {n} samples")
    sampler = get_sampler(cfg.sampler)
    params = inspect.signature(sampler).parameters
    options = dict(steps=cfg.steps, clip_denoised=cfg.clip_denoised, return_trajectory=return_trajectory,
                   progress=progress)
    if cfg.spacing is not None:
        options["spacing"] = cfg.spacing
    if "eta" in params:
        options["eta"] = cfg.eta
    options.update(sampler_options or {})
    gens = per_sample_generators([cfg.seed * SEED_STRIDE + i for i in seed_indices])
    labels = class_labels(n, num_classes, class_label) if labels is None else labels.long()
    outs = []
    for start in range(0, n, cfg.batch_size):
        g = gens[start:start + cfg.batch_size]
        x_T = randn((len(g), *shape), g).to(device)
        kwargs = {} if labels is None else {"y": labels[start:start + len(g)].to(device)}
        kwargs.update({k: v[start:start + len(g)].to(device) for k, v in (model_kwargs or {}).items()})
        outs.append(sampler(model, diffusion, x_T, generator=g, model_kwargs=kwargs, **options))
    if len(outs) == 1:
        return outs[0]
    cat = lambda xs: [torch.cat(parts) for parts in zip(*xs)] if xs[0] is not None else None  # noqa: E731
    # nfe is per sample: every batch takes the same steps
    return SampleOutput(sample=torch.cat([o.sample for o in outs]), nfe=outs[0].nfe,
                        timesteps=outs[0].timesteps, trajectory=cat([o.trajectory for o in outs]),
                        pred_x0s=cat([o.pred_x0s for o in outs]))


# ----------------------------------------------------------------------------- guidance
@dataclass(frozen=True)
class GuidanceOptions:
    """How to guide a trained run's sampling (everything off by default).

    ``guidance_scale``: classifier-free guidance weight w (``convention="w"``: eps~ = (1 + w) eps_c
    - w eps_null, w = 0 the plain conditional model) or scale s = 1 + w (``convention="scale"``);
    None = no classifier-free guidance. ``rescale``: phi of guidance rescaling (needs
    ``guidance_scale``). ``dynamic_threshold``: Imagen's percentile p for pred_x0 (None = off).
    ``classifier_scale``: s of classifier guidance (used when a classifier is given).
    """

    guidance_scale: float | None = None
    convention: str = "w"
    rescale: float = 0.0
    dynamic_threshold: float | None = None
    classifier_scale: float = 1.0

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"guidance convention must be one of {', '.join(CONVENTIONS)}, got {self.convention!r}")
        if self.guidance_scale is not None and not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance scale must be >= 0, got {self.guidance_scale}")
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"guidance rescale must lie in [0, 1], got {self.rescale}")
        if self.rescale > 0 and self.guidance_scale is None:
            raise ValueError("guidance rescale acts on classifier-free guidance: give a guidance scale too")
        if self.dynamic_threshold is not None and not 0.0 < self.dynamic_threshold <= 1.0:
            raise ValueError(f"dynamic-threshold percentile must lie in (0, 1], got {self.dynamic_threshold}")
        if self.classifier_scale < 0:
            raise ValueError(f"classifier scale must be >= 0, got {self.classifier_scale}")


@dataclass
class GuidedModel:
    """What :func:`sample_images` needs to sample a run with guidance.

    ``model``: the guided model function; ``diffusion``: the chain to hand to the sampler;
    ``sampler_options``: extra sampler arguments (``steps=None`` when ``diffusion`` is already
    the respaced DDPM chain, ``denoised_fn`` for dynamic thresholding); ``num_classes``: the
    classes a sample may be asked for (None: no labels at all); ``description``: one line.
    """

    model: Callable
    diffusion: Any
    sampler_options: dict
    num_classes: int | None
    description: str

    def check_class_label(self, class_label: int | None) -> None:
        if class_label is None:
            return
        if self.num_classes is None:
            raise ValueError("this model is unconditional and no classifier guides it: it takes no class label")
        if not 0 <= class_label < self.num_classes:
            raise ValueError(f"class label must be in 0..{self.num_classes - 1} for guided sampling, got {class_label}")


def check_classifier_matches(run, classifier) -> None:
    """Raise ValueError unless the noise-aware ``classifier`` (a LoadedClassifier) fits ``run`` (a LoadedRun)."""
    m, c = run.config.model, classifier.config.model
    where = f"the classifier {classifier.checkpoint}"
    if m.num_classes is not None and c.num_classes != m.num_classes:
        raise ValueError(f"{where} has {c.num_classes} classes but the model has {m.num_classes}")
    if (c.image_size, c.in_channels) != (m.image_size, m.in_channels):
        raise ValueError(f"{where} takes {c.in_channels}x{c.image_size}x{c.image_size} images but the model makes "
                         f"{m.in_channels}x{m.image_size}x{m.image_size}")
    dc, dm = classifier.config.diffusion, run.config.diffusion
    if dc.num_timesteps != dm.num_timesteps:
        raise ValueError(f"{where} was trained on a diffusion with T={dc.num_timesteps} but the model has "
                         f"T={dm.num_timesteps} (train it with --diffusion-from the model's run)")
    if not np.allclose(classifier.diffusion.terms.alphas_cumprod, run.diffusion.terms.alphas_cumprod, rtol=1e-6,
                       atol=1e-9):
        raise ValueError(f"{where} was trained on the {dc.schedule} schedule but the model on the {dm.schedule} "
                         "schedule (train it with --diffusion-from the model's run)")


def with_default_guidance(model, config, prompts=None):
    """``model`` with the run's default classifier-free guidance (``config.sample.guidance_scale``, the w
    convention), as :func:`build_guided_model` applies it without options: the null condition is the
    empty prompt of ``prompts`` (a text run's :class:`~difflab.conditioning.Prompts`) or
    the null class. Unchanged when no default is set or the model takes no class or prompt."""
    w = config.sample.guidance_scale
    if w is None:
        return model
    if prompts is not None:
        return classifier_free(model, w, uncond=prompts.uncond)
    if config.model.num_classes is not None:
        return classifier_free(model, w, uncond=null_label(config.model.num_classes))
    return model


def build_guided_model(run, sample: SampleConfig, guidance: GuidanceOptions | None = None,
                       classifier=None) -> GuidedModel:
    """The guided model function for a :class:`~difflab.runs.LoadedRun` sampled as ``sample`` says
    (without ``guidance``: classifier-free guidance by ``sample.guidance_scale`` when that is set).

    Classifier-free guidance wraps the network first (one batched call, null class =
    ``model.num_classes``); classifier guidance (``classifier``: a
    :class:`~difflab.runs.LoadedClassifier` on the same device) wraps the result,
    with guided diffusion's DDPM mean shift for the ``ddpm`` sampler (on the respaced chain
    being sampled) and the eps rule (eq. 14) for every other sampler.
    """
    g = guidance or GuidanceOptions(guidance_scale=sample.guidance_scale)   # default: the run's own guidance
    m = run.config.model
    model, diffusion, options, parts = run.model, run.diffusion, {}, []
    num_classes = m.num_classes
    prompts = run.conditioning.prompts if getattr(run, "conditioning", None) is not None else None
    if g.guidance_scale is not None and prompts is not None:   # text: the empty prompt is the null condition
        if run.config.train.class_dropout <= 0:
            raise ValueError("classifier-free guidance needs the empty prompt, but this model was trained with "
                             "train.class_dropout=0 (no caption dropout), so the null condition was never trained")
        model = classifier_free(model, g.guidance_scale, uncond=prompts.uncond, convention=g.convention,
                                rescale=g.rescale)
        parts.append(f"classifier-free guidance {'w' if g.convention == 'w' else 's'}={g.guidance_scale:g} "
                     "(null condition: the empty prompt)" + (f", rescale {g.rescale:g}" if g.rescale else ""))
    elif g.guidance_scale is not None:
        if m.num_classes is None:
            raise ValueError("classifier-free guidance needs a class-conditional model trained with label dropout; "
                             "this model is unconditional (model.num_classes is null)")
        if run.config.train.class_dropout <= 0:
            raise ValueError(f"classifier-free guidance needs the null class (label {m.num_classes}), but this model "
                             "was trained with train.class_dropout=0, so the null class was never trained")
        model = classifier_free(model, g.guidance_scale, uncond=null_label(m.num_classes), convention=g.convention,
                                rescale=g.rescale)
        parts.append(f"classifier-free guidance {'w' if g.convention == 'w' else 's'}={g.guidance_scale:g}"
                     + (f", rescale {g.rescale:g}" if g.rescale else ""))
    if classifier is not None:
        check_classifier_matches(run, classifier)
        if sample.sampler == "ddpm":
            rule = "mean_shift"
            diffusion = run.diffusion.respaced(sample.steps, sample.spacing or "linspace")
            options["steps"] = None          # the chain handed over is the one sampled
        else:
            rule = "eps"
        model = classifier_guidance(model, classifier.model, diffusion, g.classifier_scale, rule=rule,
                                    model_takes_labels=m.num_classes is not None)
        num_classes = classifier.num_classes
        parts.append(f"classifier guidance s={g.classifier_scale:g} ({rule} rule)")
    if g.dynamic_threshold is not None:
        options["denoised_fn"] = dynamic_threshold(g.dynamic_threshold)
        parts.append(f"dynamic thresholding p={g.dynamic_threshold:g}")
    return GuidedModel(model, diffusion, options, num_classes, ", ".join(parts) or "no guidance")


def class_grid_labels(num_classes: int, per_class: int) -> tuple[torch.Tensor, list[int]]:
    """Labels and seed indices of a class grid: row k holds ``per_class`` samples of class k; column j
    uses seed index j in every row (the same starting noise for every class)."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return labels, [j for _ in range(num_classes) for j in range(per_class)]
