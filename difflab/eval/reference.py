"""Samples measured against held-out images, always beside the floor.

The floor is the same measurement for real images: ``n`` training images against the same
held-out reference. A model whose samples reach it is as close to the held-out images as
the training data is; Frechet distance is biased upwards at small ``n``, so the floor is
computed at the same ``n`` as the samples, and every figure is reported as ``fd`` and
``fd / floor_fd``.

Typical use (once per run, then at every evaluation)::

    ref = prepare_reference(featurizer, heldout_images, train_images, n=1000)
    result = evaluate_against(ref, samples)    # samples: n images in [-1, 1]
    print(format_result(result))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from difflab.eval.featurizers import Featurizer, check_images
from difflab.eval.frechet import FeatureStats, compute_stats, frechet_distance
from difflab.eval.prdc import precision_recall


@dataclass(frozen=True, eq=False)
class HeldoutReference:
    """The held-out statistics (with features, for precision/recall) and the floor at ``n``."""

    featurizer: Featurizer
    stats: FeatureStats
    n: int
    k: int
    floor: dict


def _measure(featurizer: Featurizer, images: torch.Tensor, ref: FeatureStats, k: int, batch_size: int) -> dict:
    feats = featurizer.features(images, batch_size=batch_size)
    stats = compute_stats(feats, featurizer.name, "samples", "generated")
    return {"fd": frechet_distance(stats, ref), **precision_recall(ref.features, feats, k=k)}


def prepare_reference(featurizer: Featurizer, heldout: torch.Tensor, train: torch.Tensor, n: int, *,
                      dataset: str = "dataset", k: int = 3, seed: int = 0, batch_size: int = 256) -> HeldoutReference:
    """Features of every held-out image, and the floor: ``n`` training images (a seeded random subset;
    all of them when there are fewer) measured against them. Images are ``[N, C, H, W]`` in [-1, 1]."""
    check_images(heldout, "held-out images")
    check_images(train, "training images")
    if heldout.shape[0] <= k:
        raise ValueError(f"need more than k={k} held-out images for precision/recall, got {heldout.shape[0]}")
    n = min(n, train.shape[0])
    if n <= k:
        raise ValueError(f"need more than k={k} images to measure, got n={n}")
    feats = featurizer.features(heldout, batch_size=batch_size)
    stats = compute_stats(feats, featurizer.name, dataset, "heldout", keep_features=True)
    idx = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    floor = _measure(featurizer, train[idx], stats, k, batch_size)
    return HeldoutReference(featurizer=featurizer, stats=stats, n=n, k=k, floor=floor)


def evaluate_against(ref: HeldoutReference, samples: torch.Tensor, batch_size: int = 256) -> dict:
    """Frechet distance and precision/recall of ``samples`` (exactly ``ref.n`` of them) against the
    held-out images, with the floor beside them: ``{"fd", "precision", "recall", "n", "floor_fd",
    "floor_precision", "floor_recall", "fd_over_floor", "featurizer", "reference"}``."""
    check_images(samples, "samples")
    if samples.shape[0] != ref.n:
        raise ValueError(f"the floor was computed at n={ref.n}; measure exactly that many samples, "
                         f"got {samples.shape[0]}")
    got = _measure(ref.featurizer, samples, ref.stats, ref.k, batch_size)
    floor_fd = ref.floor["fd"]
    return {**got, "n": ref.n, "floor_fd": floor_fd, "floor_precision": ref.floor["precision"],
            "floor_recall": ref.floor["recall"], "fd_over_floor": got["fd"] / floor_fd if floor_fd > 0 else None,
            "featurizer": ref.featurizer.name, "reference": f"{ref.stats.dataset}/heldout (n={ref.stats.n})"}


def format_result(r: dict) -> str:
    """One line: each figure beside its floor, with the featurizer and the reference named."""
    ratio = f", {r['fd_over_floor']:.2f}x" if r.get("fd_over_floor") is not None else ""
    return (f"FD {r['fd']:.4g} (floor {r['floor_fd']:.4g}{ratio}) | precision {r['precision']:.3f} "
            f"(floor {r['floor_precision']:.3f}) | recall {r['recall']:.3f} (floor {r['floor_recall']:.3f}) | "
            f"n={r['n']} | featurizer {r['featurizer']} | reference {r['reference']}")
