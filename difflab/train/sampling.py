"""Drawing images from a trained network with a :class:`~difflab.config.SampleConfig`.

Shared by the grids written during training and ``difflab sample``. Sample ``i`` uses its
own generator seeded ``seed * SEED_STRIDE + i`` (EDM's per-sample seeds), so an image does
not depend on how many are drawn or on the batch size.
"""

from __future__ import annotations

import inspect

import torch

from ..config import SampleConfig
from ..rng import per_sample_generators, randn
from ..samplers import SampleOutput, get_sampler

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
                  return_trajectory: bool = False, progress: bool = False) -> SampleOutput:
    """``n`` (default ``cfg.n``) images of ``shape`` = (C, H, W) in [-1, 1], drawn in batches of ``cfg.batch_size``.

    With ``return_trajectory`` the trajectory and pred_x0 lists cover all ``n`` images.
    """
    n = cfg.n if n is None else n
    sampler = get_sampler(cfg.sampler)
    params = inspect.signature(sampler).parameters
    options = dict(steps=cfg.steps, clip_denoised=cfg.clip_denoised, return_trajectory=return_trajectory,
                   progress=progress)
    if cfg.spacing is not None:
        options["spacing"] = cfg.spacing
    if "eta" in params:
        options["eta"] = cfg.eta
    gens = per_sample_generators([cfg.seed * SEED_STRIDE + i for i in range(n)])
    labels = class_labels(n, num_classes, class_label)
    outs = []
    for start in range(0, n, cfg.batch_size):
        g = gens[start:start + cfg.batch_size]
        x_T = randn((len(g), *shape), g).to(device)
        kwargs = {} if labels is None else {"y": labels[start:start + len(g)].to(device)}
        outs.append(sampler(model, diffusion, x_T, generator=g, model_kwargs=kwargs, **options))
    if len(outs) == 1:
        return outs[0]
    cat = lambda xs: [torch.cat(parts) for parts in zip(*xs)] if xs[0] is not None else None  # noqa: E731
    return SampleOutput(sample=torch.cat([o.sample for o in outs]), nfe=sum(o.nfe for o in outs),
                        timesteps=outs[0].timesteps, trajectory=cat([o.trajectory for o in outs]),
                        pred_x0s=cat([o.pred_x0s for o in outs]))
