"""Which featurizer measures a run's samples, in order of availability (:func:`plan_featurizer`):

1. the FID Inception network, when its weights file is present (the published FID's features;
   get it once: download ``FID_WEIGHTS_URL`` to :func:`default_inception_weights`);
2. else the dataset's evaluation classifier, when one is cached (``difflab eval train-featurizer``);
3. else, for labelled data, that classifier once trained (the plan says where it will go);
4. else nothing: unlabelled data without the Inception weights has no featurizer, and the plan
   says so and what can still be measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from difflab.eval.classifier import WEIGHTS_NAME, default_cache_dir
from difflab.eval.featurizers import Featurizer
from difflab.eval.folder_classifier import classifier_featurizer
from difflab.eval.inception import FID_WEIGHTS_URL, InceptionFeaturizer

INCEPTION_WEIGHTS_NAME = FID_WEIGHTS_URL.rsplit("/", 1)[-1]     # pt_inception-2015-12-05-6726825d.pth
SAMPLE_METRICS = ("fd", "precision", "recall")
# what a run can report without a featurizer: the denoising loss on held-out images (cheap, every
# evaluation) and the negative log-likelihood in bits/dim (`difflab eval nll`, T network passes per image)
FEATURE_FREE_METRICS = ("heldout_loss", "nll_bits_per_dim")
KINDS = ("inception", "classifier", "train-classifier", "none")


def default_inception_weights(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the FID Inception weights are looked for: ``<cache_dir>/weights/pt_inception-2015-12-05-6726825d.pth``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "weights" / INCEPTION_WEIGHTS_NAME


@dataclass(frozen=True)
class FeaturizerPlan:
    """What will measure samples, and why.

    Attributes:
        kind: one of :data:`KINDS`.
        path: the Inception weights file, or the classifier's directory (existing, or where the
            one to train goes); None for ``none``.
        message: one line for the user: what is used and why, or what cannot be computed and why.
        metrics: what can be reported: :data:`SAMPLE_METRICS` with a featurizer, else
            :data:`FEATURE_FREE_METRICS`.
    """

    kind: str
    path: Path | None
    message: str
    metrics: tuple[str, ...]


def plan_featurizer(*, labelled: bool, classifier_dir: str | os.PathLike | None = None,
                    inception_weights: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None = None) -> FeaturizerPlan:
    """The featurizer to use, in order of availability (see the module docstring).

    ``inception_weights``: the weights file (default: :func:`default_inception_weights`); a path given
    explicitly must exist. ``classifier_dir``: where the dataset's evaluation classifier is (or
    would be) cached; ``labelled``: whether the data have class labels to train one on.
    """
    if inception_weights is not None and not Path(inception_weights).is_file():
        raise ValueError(f"FID Inception weights {inception_weights} not found (download {FID_WEIGHTS_URL})")
    weights = Path(inception_weights) if inception_weights is not None else default_inception_weights(cache_dir)
    if weights.is_file():
        return FeaturizerPlan("inception", weights, f"featurizer: FID Inception-v3 pool3 features ({weights})",
                              SAMPLE_METRICS)
    no_inception = f"no FID Inception weights at {weights}"
    if classifier_dir is not None and (Path(classifier_dir) / WEIGHTS_NAME).is_file():
        return FeaturizerPlan("classifier", Path(classifier_dir),
                              f"featurizer: the dataset's evaluation classifier in {classifier_dir} ({no_inception})",
                              SAMPLE_METRICS)
    if labelled:
        where = f" into {classifier_dir}" if classifier_dir is not None else ""
        return FeaturizerPlan("train-classifier", Path(classifier_dir) if classifier_dir is not None else None,
                              f"featurizer: an evaluation classifier trained on the labelled training images{where} "
                              f"({no_inception})", SAMPLE_METRICS)
    return FeaturizerPlan(
        "none", None,
        f"no featurizer for Frechet distance or precision/recall: the images have no class labels (class "
        f"sub-folders) to train an evaluation classifier on, and there are {no_inception} (download "
        f"{FID_WEIGHTS_URL} there to use them). What can be measured: the denoising loss on the held-out "
        f"images, and bits/dim with 'difflab eval nll'", FEATURE_FREE_METRICS)


def open_featurizer(plan: FeaturizerPlan, key: str | None = None, device: str | torch.device = "cpu") -> Featurizer:
    """The featurizer of an ``inception`` or ``classifier`` plan (``key`` names a classifier's dataset).
    ``train-classifier`` plans are opened after training (``difflab.eval.folder_classifier``)."""
    if plan.kind == "inception":
        return InceptionFeaturizer.from_weights(plan.path, device=device)
    if plan.kind == "classifier":
        return classifier_featurizer(plan.path, key or plan.path.name, device)
    raise ValueError(f"a {plan.kind!r} plan has no featurizer to open yet: {plan.message}")
