"""The page's form -> a sampling request, checked field by field with messages a learner can act on.

A :class:`Request` is exactly a ``difflab sample`` command (:meth:`Request.command` writes it out):
the page and the command line draw the same pixels for it. Only uploaded low-resolution images have
no command-line form.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..config import SampleConfig
from ..config.sections import MAX_SAMPLE_SEED
from ..data.transforms import uint8_to_float
from ..generate import Conditions, class_conditions, load_test_images, low_res_conditions, prompt_conditions
from ..latent import NUMBER_WORDS, TRAIN_TEMPLATES
from ..samplers import SAMPLERS
from ..sampling import GuidanceOptions
from .runs import CLASS, SUPER_RESOLUTION, TEXT, RunEntry

MAX_IMAGES = 256          # images of one request (per class, per prompt: MAX_PER_ROW)
MAX_PER_ROW = 64
MAX_PROMPTS = 16
TEST_SPLIT, UPLOAD = "test split", "upload"
ALL_CLASSES = "every class in turn"


class InputError(ValueError):
    """A form value the page cannot use; the message is shown on the page as it is."""


@dataclass(frozen=True)
class Form:
    """The values of the page's controls, as the browser sends them (numbers may be None or fractional)."""

    sampler: str
    steps: float | None
    seed: float | None
    n: float | None
    eta: float | None = None
    class_choice: str = ALL_CLASSES
    grid_by_class: bool = False
    prompts: str = ""
    guidance: float | None = None
    low_res_source: str = TEST_SPLIT
    uploads: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    """A checked request: the run, its sample settings and what the images are conditioned on."""

    entry: RunEntry
    sample: SampleConfig
    guidance: GuidanceOptions | None = None
    class_label: int | None = None
    grid_by_class: bool = False
    prompts: tuple[str, ...] | None = None
    from_test: int | None = None
    uploads: tuple[Path, ...] = ()

    def command(self) -> str | None:
        """The ``difflab sample`` command that draws the same images (None for uploaded inputs)."""
        if self.uploads:
            return None
        s, args = self.sample, ["difflab", "sample", "--checkpoint", str(self.entry.path)]
        args += ["--sampler", s.sampler, "--steps", str(s.steps)]
        if s.sampler == "ddim":
            args += ["--eta", f"{s.eta:g}"]
        args += ["--seed", str(s.seed)]
        if self.from_test is not None:
            args += ["--cond-from-test", str(self.from_test)]
        else:
            args += ["-n", str(s.n)]
        if self.class_label is not None:
            args += ["--class-label", str(self.class_label)]
        if self.grid_by_class:
            args.append("--grid-by-class")
        if self.prompts is not None:
            args += ["--prompt", *self.prompts]
        if self.guidance is not None:
            args += ["--guidance-scale", f"{self.guidance.guidance_scale:g}"]
        return " ".join(shlex.quote(a) for a in args + ["--gif"])

    def conditions(self, run) -> Conditions:
        """The :class:`~difflab.generate.Conditions` of this request for the loaded ``run``."""
        if self.prompts is not None:
            return prompt_conditions(self.prompts, self.sample.n)
        if self.from_test is not None:
            try:
                return low_res_conditions(load_test_images(run, self.from_test))
            except ValueError as e:
                raise InputError(f"Test images: {e}") from None
        if self.uploads:
            return low_res_conditions(upload_images(self.uploads, run))
        num_classes = run.config.model.num_classes if self.entry.kind == CLASS else None
        return class_conditions(num_classes, self.sample.n, class_label=self.class_label,
                                grid_by_class=self.grid_by_class)


def default_prompts(count: int = 4) -> str:
    """Prompts to start from for runs captioned from digit labels, one per line."""
    return "\n".join(TRAIN_TEMPLATES[0].format(word=w, digit=d) for d, w in enumerate(NUMBER_WORDS[:count]))


def _whole(label: str, value, lo: int, hi: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{label}: enter a whole number from {lo} to {hi}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a whole number from {lo} to {hi}, got {value!r}") from None
    if not math.isfinite(v) or v != int(v) or not lo <= v <= hi:
        raise InputError(f"{label} must be a whole number from {lo} to {hi}, got {v:g}")
    return int(v)


def _non_negative(label: str, value, hint: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label}: enter a number >= 0 ({hint})") from None
    if not math.isfinite(v) or v < 0:
        raise InputError(f"{label} must be a number >= 0 ({hint}), got {v:g}")
    return v


def parse_form(entry: RunEntry, form: Form) -> Request:
    """Check every value of ``form`` for ``entry``'s kind of model; raises :class:`InputError`."""
    if form.sampler not in SAMPLERS:
        raise InputError(f"Sampler must be one of {', '.join(sorted(SAMPLERS))}, got {form.sampler!r}")
    T = entry.config.diffusion.num_timesteps
    changes = dict(sampler=form.sampler, steps=_whole("Steps", form.steps, 1, T),
                   seed=_whole("Seed", form.seed, 0, MAX_SAMPLE_SEED))
    if form.sampler == "ddim":
        changes["eta"] = _non_negative("eta", form.eta, "0 = deterministic DDIM, 1 = as random as DDPM")
    kind, extra = entry.kind, {}
    per_row = kind == TEXT or (kind == CLASS and form.grid_by_class)
    if kind == SUPER_RESOLUTION:
        if form.low_res_source == UPLOAD:
            if not form.uploads:
                raise InputError("Low-resolution input: upload at least one image (or pick the test split)")
            if len(form.uploads) > MAX_IMAGES:
                raise InputError(f"Low-resolution input: at most {MAX_IMAGES} images, got {len(form.uploads)}")
            extra["uploads"] = tuple(Path(p) for p in form.uploads)
        else:
            extra["from_test"] = _whole("Number of test images", form.n, 1, MAX_IMAGES)
    else:
        label = "Images per class" if kind == CLASS and form.grid_by_class else \
            "Images per prompt" if kind == TEXT else "Number of images"
        changes["n"] = _whole(label, form.n, 1, MAX_PER_ROW if per_row else MAX_IMAGES)
    if kind == CLASS:
        if form.grid_by_class:
            extra["grid_by_class"] = True
        elif form.class_choice != ALL_CLASSES:
            k = entry.config.model.num_classes
            extra["class_label"] = _whole("Class", form.class_choice, 0, k - 1)
    if kind == TEXT:
        prompts = tuple(p.strip() for p in (form.prompts or "").splitlines() if p.strip())
        if not prompts:
            raise InputError("Prompts: write at least one prompt, one per line")
        if len(prompts) > MAX_PROMPTS:
            raise InputError(f"Prompts: at most {MAX_PROMPTS} prompts (one grid row each), got {len(prompts)}")
        extra["prompts"] = prompts
    if entry.guidance_available:
        w = _non_negative("Guidance weight", 0 if form.guidance is None else form.guidance,
                          "0 = the plain conditional model")
        if w > 0 or entry.config.sample.guidance_scale is not None:
            extra["guidance"] = GuidanceOptions(guidance_scale=w)
    try:
        sample = dataclasses.replace(entry.config.sample, **changes)
    except ValueError as e:   # ConfigError: a value SampleConfig refuses
        raise InputError(str(e)) from None
    return Request(entry, sample, **extra)


def upload_images(paths, run) -> torch.Tensor:
    """Uploaded pictures as super-resolution inputs: each is resized to the low resolution of ``run``
    (high-resolution side / cond.low_res_factor) and enlarged back with nearest neighbour, so that the
    run's own downsampling gives exactly the low-resolution picture; float [N, C, H, W] in [-1, 1]."""
    spec, factor = run.conditioning.image_spec, run.config.cond.low_res_factor
    side, channels = spec.image_size // factor, spec.in_channels
    out = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (side, side):
                    im = im.resize((side, side), Image.Resampling.BICUBIC)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise InputError(f"Low-resolution input: {Path(path).name} is not an image I can read ({e})") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        out.append(uint8_to_float(torch.from_numpy(a.copy())))
    low = torch.stack(out)
    return low.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
