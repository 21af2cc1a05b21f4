"""Evaluation: featurizers, Frechet distance, precision/recall, and the one call the CLI uses.

Typical use::

    feat = ClassifierFeaturizer.from_directory("benchmarks/artifacts/eval_classifier_mnist")
    ref = load_or_compute_reference_stats(feat, test_images, "mnist", "test", cache_dir)
    evaluate_samples(samples, ref, feat)   # {"fd": ..., "precision": ..., "recall": ..., "n": ...}
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from difflab.eval.classifier import (
    ClassifierFeaturizer,
    EvalClassifier,
    EvalClassifierConfig,
    default_cache_dir,
    default_classifier_path,
    evaluate_accuracy,
    load_eval_classifier,
    load_metadata,
    load_or_train_eval_classifier,
    predict,
    save_eval_classifier,
    train_eval_classifier,
)
from difflab.eval.featurizers import Featurizer, check_images, convert_channels
from difflab.eval.folder_classifier import (
    FolderFeaturizer,
    classifier_featurizer,
    classifier_side,
    default_classifier_epochs,
    featurizer_key,
    folder_featurizer,
)
from difflab.eval.frechet import (
    FeatureStats,
    compute_stats,
    frechet_distance,
    frechet_distance_gaussians,
    stats_filename,
)
from difflab.eval.inception import (
    FID_WEIGHTS_URL,
    FIDInceptionV3,
    InceptionFeaturizer,
    load_fid_inception,
)
from difflab.eval.prdc import precision_recall
from difflab.eval.reconstruction import psnr, reconstruction_quality
from difflab.eval.reference import HeldoutReference, evaluate_against, format_result, prepare_reference
from difflab.eval.select import FeaturizerPlan, default_inception_weights, open_featurizer, plan_featurizer


def load_or_compute_reference_stats(
    featurizer: Featurizer,
    images: torch.Tensor | None,
    dataset: str,
    split: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    keep_features: bool = True,
    batch_size: int = 256,
    progress: bool = False,
) -> FeatureStats:
    """Reference statistics of ``images`` under ``featurizer``, cached as
    ``<cache_dir>/stats/<featurizer>__<dataset>__<split>.npz``.

    ``images`` may be None when the cache file is known to exist. ``keep_features`` stores
    the features too, so precision/recall can use the cache.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "stats" / stats_filename(featurizer.name, dataset, split)
    if path.is_file():
        stats = FeatureStats.load(path)
        if stats.featurizer_name != featurizer.name or stats.dim != featurizer.feature_dim:
            raise ValueError(f"{path} holds statistics of {stats.featurizer_name!r}, not of {featurizer.name!r}")
        if not keep_features or stats.features is not None:
            return stats
    if images is None:
        raise ValueError(f"no cached statistics at {path} and no images given to compute them")
    feats = featurizer.features(images, batch_size=batch_size, progress=progress)
    stats = compute_stats(feats, featurizer.name, dataset, split, keep_features=keep_features)
    stats.save(path)
    return stats


def evaluate_samples(
    samples: torch.Tensor,
    reference_stats: FeatureStats,
    featurizer: Featurizer,
    *,
    k: int = 3,
    batch_size: int = 256,
    density_coverage: bool = False,
    progress: bool = False,
) -> dict:
    """Frechet distance and (when ``reference_stats`` carries features) precision/recall of ``samples``.

    ``samples``: ``[N, C, H, W]`` in [-1, 1], N >= 2 (and N > k for precision/recall).
    Returns ``{"fd", "precision", "recall", "n", "featurizer", "reference"}`` (+ ``density``,
    ``coverage`` on request); precision/recall are None without reference features.
    """
    check_images(samples, "samples")
    if reference_stats.featurizer_name != featurizer.name:
        raise ValueError(
            f"reference statistics were computed with {reference_stats.featurizer_name!r}, "
            f"but the featurizer is {featurizer.name!r}"
        )
    if samples.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {samples.shape[0]}")
    feats = featurizer.features(samples, batch_size=batch_size, progress=progress)
    stats = compute_stats(feats, featurizer.name, "samples", "generated")
    out = {
        "fd": frechet_distance(stats, reference_stats),
        "precision": None,
        "recall": None,
        "n": int(samples.shape[0]),
        "featurizer": featurizer.name,
        "reference": f"{reference_stats.dataset}/{reference_stats.split} (n={reference_stats.n})",
    }
    if reference_stats.features is not None:
        pr = precision_recall(reference_stats.features, feats, k=k, density_coverage=density_coverage)
        out.update(pr)
    return out


__all__ = [
    "FeaturizerPlan",
    "FolderFeaturizer",
    "HeldoutReference",
    "classifier_featurizer",
    "classifier_side",
    "default_classifier_epochs",
    "default_inception_weights",
    "evaluate_against",
    "featurizer_key",
    "folder_featurizer",
    "format_result",
    "open_featurizer",
    "plan_featurizer",
    "prepare_reference",
    "psnr",
    "reconstruction_quality",
    "ClassifierFeaturizer",
    "EvalClassifier",
    "EvalClassifierConfig",
    "FID_WEIGHTS_URL",
    "FIDInceptionV3",
    "FeatureStats",
    "Featurizer",
    "InceptionFeaturizer",
    "check_images",
    "compute_stats",
    "convert_channels",
    "default_cache_dir",
    "default_classifier_path",
    "evaluate_accuracy",
    "evaluate_samples",
    "frechet_distance",
    "frechet_distance_gaussians",
    "load_eval_classifier",
    "load_fid_inception",
    "load_metadata",
    "load_or_compute_reference_stats",
    "load_or_train_eval_classifier",
    "precision_recall",
    "predict",
    "save_eval_classifier",
    "stats_filename",
    "train_eval_classifier",
]
