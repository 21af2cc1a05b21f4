"""A featurizer for a user's labelled folder: the clean evaluation classifier trained on the
training side of the folder's held-out split, cached per dataset.

The cache key is a fingerprint of the files (every path and every byte, see
:func:`difflab.data.fingerprint_files`) and of what shapes the classifier (image size,
channels, the split's fraction and seed), so editing, adding or removing one image trains a
new classifier, and an unchanged folder reuses the cached one wherever it lives. The
classifier never sees a held-out image; its accuracy on them is measured once and stored
beside the weights (``config.json`` metadata), so every later use can report it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from difflab.data import HoldoutSplit, ImageDataset, fingerprint_files, load_dataset
from difflab.eval.classifier import (
    WEIGHTS_NAME,
    ClassifierFeaturizer,
    EvalClassifierConfig,
    default_classifier_path,
    evaluate_accuracy,
    load_eval_classifier,
    load_metadata,
    save_eval_classifier,
    train_eval_classifier,
)

MIN_CLASSIFIER_SIDE = 16
MAX_CLASSIFIER_SIDE = 64   # larger images are shrunk for the classifier: its fc layer grows with the side squared


def classifier_side(image_size: int) -> int:
    """The side the evaluation classifier works at: the image side rounded up to a multiple of 4,
    within [MIN_CLASSIFIER_SIDE, MAX_CLASSIFIER_SIDE]."""
    return min(MAX_CLASSIFIER_SIDE, max(MIN_CLASSIFIER_SIDE, 4 * -(-image_size // 4)))


def default_classifier_epochs(n_train: int) -> int:
    """Epochs for the evaluation classifier: 30 below 5,000 training images, else 3."""
    return 30 if n_train < 5000 else 3


def featurizer_key(fingerprint: str, image_size: int, channels: int, split: HoldoutSplit) -> str:
    """The cache key of a folder's classifier (a file-name-safe string)."""
    spec = f"{fingerprint}:{image_size}:{channels}:{split.fraction}:{split.seed}"
    return "folder-" + hashlib.sha256(spec.encode()).hexdigest()[:16]


def classifier_featurizer(directory: str | os.PathLike, key: str, device: str | torch.device = "cpu"
                          ) -> ClassifierFeaturizer:
    """The featurizer of a saved classifier, named after the dataset key and the weights' digest
    (the name labels cached statistics and every reported figure)."""
    directory = Path(directory)
    model = load_eval_classifier(directory, device=device)
    digest = hashlib.sha1((directory / WEIGHTS_NAME).read_bytes()).hexdigest()[:8]
    return ClassifierFeaturizer(model, name=f"eval-classifier-{key}-{digest}")


@dataclass(frozen=True)
class FolderFeaturizer:
    """A folder's evaluation classifier as a featurizer, with what is known about it."""

    featurizer: ClassifierFeaturizer
    directory: Path
    key: str
    heldout_accuracy: float
    n_train: int
    n_heldout: int
    class_names: tuple[str, ...]
    cached: bool            # loaded from the cache (False: trained just now)
    train_seconds: float

    def describe(self) -> str:
        how = "cached" if self.cached else f"trained in {self.train_seconds:.0f} s"
        return (f"featurizer {self.featurizer.name}: evaluation classifier on {self.n_train} training images, "
                f"{len(self.class_names)} classes ({how}); held-out accuracy {self.heldout_accuracy:.3f} on "
                f"{self.n_heldout} images; in {self.directory}")


def folder_featurizer(root: str | os.PathLike, split: HoldoutSplit, *, image_size: int, channels: int,
                      cache_dir: str | os.PathLike | None = None, epochs: int | None = None, seed: int = 0,
                      train_ds: ImageDataset | None = None, heldout_ds: ImageDataset | None = None,
                      train_if_missing: bool = True, device: str | torch.device = "cpu",
                      progress: bool = False) -> FolderFeaturizer | None:
    """The evaluation classifier of the folder ``root`` (the folder the split's paths are relative to),
    loaded from the cache or trained on ``split.train`` and measured on ``split.heldout``.

    ``train_ds`` / ``heldout_ds``: the two sides already loaded (with labels, at ``image_size`` and
    ``channels``), to avoid reading the images again. Returns None when the classifier is not cached
    and ``train_if_missing`` is False. Raises ``ValueError`` when the images have no class labels.
    """
    root = Path(root)
    key = featurizer_key(fingerprint_files(root, split.train + split.heldout), image_size, channels, split)
    directory = default_classifier_path(key, cache_dir)
    if (directory / WEIGHTS_NAME).is_file():
        meta = load_metadata(directory)
        return FolderFeaturizer(classifier_featurizer(directory, key, device), directory, key,
                                float(meta["heldout_accuracy"]), int(meta["train_size"]), int(meta["heldout_size"]),
                                tuple(meta["class_names"]), cached=True, train_seconds=float(meta["train_seconds"]))
    if not train_if_missing:
        return None

    def load(files):
        return load_dataset("folder", root=root, files=files, image_size=image_size, channels=channels,
                            labels_from_folders=True)

    train_ds = train_ds if train_ds is not None else load(split.train)
    heldout_ds = heldout_ds if heldout_ds is not None else load(split.heldout)
    for ds in (train_ds, heldout_ds):
        if ds.labels is None:
            raise ValueError(f"{ds.name} has no class labels (class sub-folders): the evaluation classifier "
                             "needs them")
    if len(train_ds) != len(split.train) or len(heldout_ds) != len(split.heldout):
        raise ValueError("train_ds / heldout_ds must hold exactly the split's training / held-out images")
    num_classes = max(2, len(train_ds.class_names))
    epochs = epochs or default_classifier_epochs(len(train_ds))
    config = EvalClassifierConfig(in_channels=channels, image_size=classifier_side(image_size), num_classes=num_classes)
    t0 = time.perf_counter()
    model = train_eval_classifier(train_ds.to_float(), train_ds.labels, config=config, epochs=epochs, seed=seed,
                                  device=device, progress=progress)
    seconds = time.perf_counter() - t0
    accuracy = evaluate_accuracy(model, heldout_ds.to_float(), heldout_ds.labels)
    meta = {"dataset": key, "root": str(root), "train_size": len(train_ds), "heldout_size": len(heldout_ds),
            "heldout_accuracy": accuracy, "class_names": list(train_ds.class_names), "epochs": epochs, "seed": seed,
            "train_seconds": seconds, "split_fraction": split.fraction, "split_seed": split.seed}
    save_eval_classifier(model, directory, metadata=meta)
    return FolderFeaturizer(classifier_featurizer(directory, key, device), directory, key, accuracy, len(train_ds),
                            len(heldout_ds), tuple(train_ds.class_names), cached=False, train_seconds=seconds)
