"""Drawing images from a trained run: the one path that ``difflab sample`` and ``difflab serve`` share.

A request is a :class:`~difflab.config.SampleConfig` (sampler, steps, eta, seed, n, batch size),
optionally a guided model (:func:`~difflab.sampling.build_guided_model`), and :class:`Conditions`:
what each image is conditioned on (class labels, prompts, low-resolution inputs), which starting
noise it uses and how many columns its grid has. :func:`draw` samples plain, latent, text and
super-resolution runs alike and returns decoded images in [-1, 1]; the same request gives the same
pixels whoever makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .config import SampleConfig
from .samplers import SampleOutput
from .sampling import class_grid_labels, class_labels, sample_images

MAX_GIF_FRAMES = 100   # a trajectory GIF keeps at most this many evenly spaced frames


@dataclass(frozen=True)
class Conditions:
    """What the images of one request are conditioned on (all None: ``sample.n`` unconditional images).

    ``labels``: one class per image; ``prompts``: one prompt per image; ``cond_images``: one
    high-resolution image per sample (float, [-1, 1]) whose low-resolution version conditions it;
    ``seed_indices``: sample i starts from the noise of seed index ``seed_indices[i]`` (equal
    indices, equal noise); ``nrow``: the grid's images per row (None: the grid's default).
    """

    labels: torch.Tensor | None = None
    prompts: tuple[str, ...] | None = None
    cond_images: torch.Tensor | None = None
    seed_indices: tuple[int, ...] | None = None
    nrow: int | None = None

    def count(self, default: int) -> int:
        """The number of images these conditions ask for (``default`` when none fixes it)."""
        for rows in (self.labels, self.prompts, self.cond_images, self.seed_indices):
            if rows is not None:
                return len(rows)
        return default


def class_conditions(num_classes: int | None, n: int, *, class_label: int | None = None,
                     grid_by_class: bool = False) -> Conditions:
    """``n`` images of ``class_label``, or of classes 0, 1, ..., K-1, 0, 1 ... in turn (one grid row per
    cycle when ``n`` is a multiple of K); ``grid_by_class``: one row of ``n`` images per class, column j
    starting from the same noise in every row. Unconditional (``num_classes`` None): no labels."""
    if grid_by_class:
        if num_classes is None:
            raise ValueError("a grid by class needs a class-conditional model")
        labels, seeds = class_grid_labels(num_classes, n)
        return Conditions(labels=labels, seed_indices=tuple(seeds), nrow=n)
    labels = class_labels(n, num_classes, class_label)
    nrow = num_classes if labels is not None and class_label is None and n % num_classes == 0 else None
    return Conditions(labels=labels, nrow=nrow)


def prompt_conditions(prompts: Sequence[str], per_prompt: int) -> Conditions:
    """``per_prompt`` images of each prompt, one grid row per prompt; column j starts from the same noise
    in every row."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("give at least one prompt")
    if any(not p.strip() for p in prompts):
        raise ValueError("a prompt must not be empty (the empty prompt is the null condition of guidance)")
    return Conditions(prompts=tuple(p for p in prompts for _ in range(per_prompt)),
                      seed_indices=tuple(j for _ in prompts for j in range(per_prompt)), nrow=per_prompt)


def low_res_conditions(images: torch.Tensor) -> Conditions:
    """One sample per high-resolution image of ``images`` (float [N, C, H, W] in [-1, 1]), conditioned
    on its low-resolution version; at most 8 per grid row."""
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a batch of images [N, C, H, W], got shape {tuple(images.shape)}")
    return Conditions(cond_images=images, nrow=min(len(images), 8))


def load_test_images(run, n: int) -> torch.Tensor:
    """The first ``n`` images of the test split of ``run``'s dataset, as float in [-1, 1]."""
    from .data import load_dataset

    d = run.config.data
    try:
        ds = load_dataset(d.dataset, root=d.root, split="test", image_size=d.image_size, channels=d.channels)
    except (ValueError, OSError) as e:
        raise ValueError(f"the test split of {d.dataset} could not be loaded ({str(e).splitlines()[0]})") from None
    if not 1 <= n <= len(ds):
        raise ValueError(f"the {d.dataset} test split has {len(ds)} images; asked for {n}")
    return ds.get_batch(range(n))[0]


@dataclass
class Drawn:
    """The result of :func:`draw`: ``images`` [n, C, H, W] in [-1, 1] on the CPU (latents decoded),
    the sampler's ``output`` (nfe, timesteps, trajectory if asked) and the grid's ``nrow``."""

    images: torch.Tensor
    output: SampleOutput
    nrow: int | None
    decode_frames: Callable[[list[torch.Tensor]], list[torch.Tensor]]

    def gif_frames(self, max_frames: int = MAX_GIF_FRAMES) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """At most ``max_frames`` evenly spaced (x_t, predicted x_0) frames of the trajectory, decoded to images;
        the first and the final frame are always kept."""
        xs, x0s = self.output.trajectory, self.output.pred_x0s
        if xs is None:
            raise ValueError("this sample was drawn without its trajectory (return_trajectory=False)")
        n = len(xs)
        if n > max_frames:
            keep = sorted({round(i * (n - 1) / (max_frames - 1)) for i in range(max_frames)})
            # pred_x0s has one entry fewer than xs (none for the final sample): the sample stands in for it
            padded = list(x0s) + [xs[-1]] if len(x0s) == n - 1 else list(x0s)
            xs, x0s = [xs[i] for i in keep], [padded[i] for i in keep]
        return self.decode_frames(list(xs)), self.decode_frames(list(x0s))


def draw(run, sample: SampleConfig, conditions: Conditions = Conditions(), *, guided=None, device="cpu",
         return_trajectory: bool = False, progress: bool = False, callback=None,
         sampler_options: dict | None = None) -> Drawn:
    """Sample ``run`` (a :class:`~difflab.runs.LoadedRun`) as ``sample`` and ``conditions`` say.

    ``guided``: a :class:`~difflab.sampling.GuidedModel` (None: the run's network as it is); ``callback``
    is handed to the sampler, ``callback(i, t, x_t, pred_x0)`` after each step of each batch of
    ``sample.batch_size`` images (raising from it stops sampling); ``sampler_options``: more arguments
    for the sampler (e.g. ``sigma_schedule="karras"``), after the guidance's own.
    """
    model, diffusion, options = ((guided.model, guided.diffusion, dict(guided.sampler_options)) if guided is not None
                                 else (run.model, run.diffusion, {}))
    options.update(sampler_options or {})
    if callback is not None:
        options["callback"] = callback
    c, m = conditions, run.config.model
    n = c.count(sample.n)
    common = dict(labels=c.labels, seed_indices=c.seed_indices, device=device, return_trajectory=return_trajectory,
                  progress=progress, sampler_options=options)
    cond = run.conditioning
    if cond is None:
        if c.prompts is not None or c.cond_images is not None:
            raise ValueError("this model takes no prompt and no low-resolution input")
        res = sample_images(model, diffusion, sample, shape=(m.in_channels, m.image_size, m.image_size), n=n, **common)
        return Drawn(res.sample.float().cpu(), res, c.nrow, lambda frames: frames)
    prompts = list(c.prompts) if c.prompts is not None else None
    images, res = cond.sample(model, diffusion, sample, prompts=prompts, cond_images=c.cond_images, n=n, **common)
    return Drawn(images, res, c.nrow, cond.decode_frames)
