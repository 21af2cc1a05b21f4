"""Training data for every task: loading a config's dataset, checking it fits the network, and the
index stream whose state (with the data generator's) is the data position of a checkpoint."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..config import ConfigError, DataConfig
from ..data import check_batch_size, load_dataset


class IndexStream:
    """Batches of dataset indices: a fresh permutation each epoch, the remainder dropped.

    Its state (permutation, position, epoch) plus the generator's state is the data position.
    """

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.perm: torch.Tensor | None = None
        self.pos, self.epoch = 0, 0

    def next(self, batch_size: int) -> torch.Tensor:
        if self.perm is None or self.pos + batch_size > self.n:
            if self.perm is not None:
                self.epoch += 1
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + batch_size]
        self.pos += batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        perm = self.perm if self.perm is not None else torch.empty(0, dtype=torch.long)
        return {"perm": perm, "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.perm = s["perm"] if s["perm"].numel() else None
        self.pos, self.epoch = int(s["pos"]), int(s["epoch"])


def load_images(d: DataConfig, log: Callable[[str], None], *, split: str | None = None,
                labels_from_folders: bool | None = None, files=None):
    """The dataset named by ``d`` (its ``split``, or the one given; ``files``: a folder's images to read,
    e.g. one side of a held-out split), reporting skipped unreadable files."""
    folders = d.labels and d.dataset == "folder" if labels_from_folders is None else labels_from_folders
    ds = load_dataset(d.dataset, root=d.root, split=split or d.split, image_size=d.image_size, channels=d.channels,
                      download=d.download, labels_from_folders=folders, skip_corrupt=d.skip_corrupt, hflip=d.hflip,
                      files=files)
    if ds.skipped:
        log(f"skipped {len(ds.skipped)} unreadable file(s): {', '.join(map(str, ds.skipped[:5]))}"
            + (" ..." if len(ds.skipped) > 5 else ""))
    return ds


def check_images_fit(ds, m, *, labels_needed_by: str | None) -> None:
    """Raise ConfigError unless the images fit model config ``m`` (image_size, in_channels) and,
    when ``labels_needed_by`` names who needs them, the dataset has labels that fit m.num_classes."""
    h, w = ds.image_size
    if (h, w) != (m.image_size, m.image_size):
        raise ConfigError(f"the {ds.name} images are {h}x{w} but model.image_size={m.image_size}; "
                          f"set data.image_size={m.image_size} (resize) or model.image_size={h}")
    if ds.channels != m.in_channels:
        raise ConfigError(f"the {ds.name} images have {ds.channels} channel(s) but model.in_channels={m.in_channels}; "
                          f"set data.channels={m.in_channels} or model.in_channels={ds.channels}")
    if labels_needed_by is not None:
        if ds.labels is None:
            raise ConfigError(f"{labels_needed_by} but {ds.name} has no labels "
                              "(for a folder, put each class's images in its own sub-folder)")
        if ds.num_classes > m.num_classes:
            raise ConfigError(f"{ds.name} has {ds.num_classes} classes but model.num_classes={m.num_classes}; "
                              f"set model.num_classes={ds.num_classes}")


def check_batch(n_images: int, ds, batch_size: int) -> None:
    """Raise ConfigError unless a global batch of ``batch_size`` fits the ``n_images`` trained on."""
    try:
        check_batch_size(ds, batch_size)
    except ValueError as e:
        raise ConfigError(f"train.batch_size: {e}") from None
    if batch_size > n_images:
        raise ConfigError(f"train.batch_size={batch_size} is larger than the {n_images} training images")
