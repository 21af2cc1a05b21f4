"""Choosing the classifier-free guidance weight by measurement at the end of training (``train.choose_guidance``).

The best weight depends on the data and on how far training got, so no rule of thumb sets it well:
on MNIST after 1,700 steps w = 0 and 0.25 tied and 0.5 was worse; on coloured MNIST after 2,500 steps
the rule's w = 0.21 gave FD 110 against the held-out images and w = 1 gave 59 (n=500). At the end of a
class-conditional run with evaluation, :class:`~difflab.train.evaluation.Evaluation` therefore draws
:data:`CHOOSE_SAMPLES` samples (at most ``train.eval_n``) from the final EMA weights at several weights (the
same seeds and labels for every weight) and keeps the one whose samples are nearest the **training** images: the Frechet
distance in the evaluation featurizer's space to up to :data:`REFERENCE_IMAGES` of them. The held-out
images that the run's figures are measured against play no part in the choice, so those figures are
not biased by it.

:func:`search_guidance` starts at the configured weight and doubles it while the distance falls; if
the first doubling does not help, it halves instead, then tries 0; last, a factor of sqrt(2) toward the
better neighbour of the best (at most six weights). The chosen weight is written into the run's config
(RUN/config.yaml and the final checkpoint's), so ``difflab sample`` and ``difflab eval fd`` use it; every weight tried and its distance go to
RUN/guidance.json and the log. The choice costs at most ``6 x 250 x sample.steps x 2`` network
evaluations per image after training (not training time): on one CPU core about 5 minutes for 28x28
MNIST with the automatic recipe's network.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

from ..config import save_config
from ..files import write_text_atomic
from ..runs import CONFIG_NAME

GUIDANCE_FILE = "guidance.json"
REFERENCE_IMAGES = 10_000
CHOOSE_SAMPLES = 250        # samples per weight (at most train.eval_n): the first of the evaluation's seeds
START_IF_ZERO = 0.25        # a run configured without guidance starts the search here (0 is tried too)


def search_guidance(measure: Callable[[float], float], start: float | None, *, max_tries: int = 6,
                    max_weight: float = 8.0) -> tuple[float, dict[float, float]]:
    """``(best weight, {weight: distance})``. ``measure(w)`` is the distance at weight ``w`` (lower is
    better); each weight is measured once, at most ``max_tries`` of them. From ``start``
    (:data:`START_IF_ZERO` when it is None or 0): double while the distance falls (up to ``max_weight``);
    if the first doubling did not help, halve at most twice while it falls, then try 0. Last, when the
    best weight's double and half were both measured, the geometric midpoint toward the better of them."""
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    tried: dict[float, float] = {}

    def better(w: float, than: float) -> bool:
        """Measure ``w`` (when there is room) and say whether it beats ``than``."""
        w = round(w, 3)
        if w not in tried:
            if len(tried) >= max_tries:
                return False
            tried[w] = float(measure(w))
        return tried[w] < tried[than]

    first = best = round(start if start else START_IF_ZERO, 3)
    tried[first] = float(measure(first))
    while best * 2 <= max_weight and better(best * 2, best):
        best = round(best * 2, 3)
    if best == first:
        for _ in range(2):
            if not better(best / 2, best):
                break
            best = round(best / 2, 3)
        if better(0.0, best):
            best = 0.0
    if best > 0:       # between the best and its better neighbour (a factor of 2 either side): the midpoint
        up, down = tried.get(round(best * 2, 3)), tried.get(round(best / 2, 3))
        if up is not None and down is not None:
            mid = best * math.sqrt(2) if up < down else best / math.sqrt(2)
            if better(mid, best):
                best = round(mid, 3)
    return best, tried


def apply_guidance(run_dir: str | Path, config, checkpoint: Path | None, weight: float, tried: dict[float, float],
                   detail: dict) -> object:
    """Write ``weight`` as ``sample.guidance_scale`` (0: null, no guidance) into the run's config and
    ``checkpoint``'s, and the search into RUN/guidance.json; returns the new config."""
    # w = 0 is the conditional model itself: no guidance, so sampling makes one network call, not two
    scale = float(weight) if weight > 0 else None
    new = dataclasses.replace(config, sample=dataclasses.replace(config.sample, guidance_scale=scale))
    run_dir = Path(run_dir)
    save_config(new, run_dir / CONFIG_NAME)
    if checkpoint is not None and (checkpoint / CONFIG_NAME).is_file():
        save_config(new, checkpoint / CONFIG_NAME)
    record = {"chosen": float(weight), "configured": config.sample.guidance_scale,
              "tried": [{"w": w, "fd_train": d} for w, d in sorted(tried.items())], **detail}
    write_text_atomic(run_dir / GUIDANCE_FILE, json.dumps(record, indent=2) + "\n")
    return new
