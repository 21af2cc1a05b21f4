"""The held-out images of a diffusion run: what training never sees and evaluation measures against.

- A folder dataset with ``data.holdout_fraction > 0`` is split by :func:`difflab.data.split_files` (a hash
  of each image's path, seeded by ``data.holdout_seed``). The split is written to ``RUN_DIR/split.json``
  when training starts (:class:`SplitWriter`, rank 0, under the run-folder lock) and read back on resume
  (:func:`difflab.data.extend_split`: images added since are assigned by the rule, a held-out image
  never moves into training). Training loads only ``split.train``.
- A named dataset (digits, MNIST ...) is held out by its own split: ``train.eval_split`` (test).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import ConfigError, DataConfig
from ..data import (SPLIT_FILE, HoldoutSplit, ImageDataset, extend_split, folder_split_root, list_image_files,
                    read_split, split_files, write_split)
from .data import load_images
from .task import Callback, RunState


def split_path(run_dir: str | os.PathLike) -> Path:
    """Where a run keeps its held-out split."""
    return Path(run_dir) / SPLIT_FILE


def run_split(d: DataConfig, run_dir: str | os.PathLike, resume: bool) -> tuple[Path, HoldoutSplit] | None:
    """``(folder, split)`` of a run's folder dataset (paths relative to ``folder``), or None when the run
    holds nothing out. A new run splits by the rule; a resumed run keeps its saved split. Refuses
    what would train on held-out images: resuming without the saved split, or turning the split off."""
    saved = split_path(run_dir)
    if d.dataset != "folder" or d.holdout_fraction == 0:
        if resume and saved.is_file():
            raise ConfigError(f"{run_dir} holds images out of training ({saved}); data.holdout_fraction=0 would "
                              "train on them: keep the run's data settings")
        return None
    folder = folder_split_root(d.root, d.split)
    files = list_image_files(folder)
    if resume:
        if not saved.is_file():
            raise ConfigError(f"cannot resume with data.holdout_fraction={d.holdout_fraction}: {saved} is missing, "
                              "so the images this run trained on cannot be told from held-out ones")
        return folder, extend_split(read_split(saved), files)
    try:
        return folder, split_files(files, d.holdout_fraction, d.holdout_seed)
    except ValueError as e:
        raise ConfigError(f"data.holdout_fraction: {e}") from None


def is_labelled_folder(split: HoldoutSplit) -> bool:
    """Whether every image sits in a class sub-folder and there are at least two of them."""
    paths = split.train + split.heldout
    return all("/" in p for p in paths) and len({p.split("/", 1)[0] for p in paths}) >= 2


@dataclass
class HeldoutData:
    """The two sides of a run's data: ``train`` (what training reads, or None: the config's dataset as
    is) and how to load the held-out images; ``key`` names the dataset in featurizer caches."""

    data: DataConfig
    folder: Path | None = None
    split: HoldoutSplit | None = None
    train: ImageDataset | None = None

    @property
    def labelled(self) -> bool:
        if self.split is not None:
            return is_labelled_folder(self.split)
        return self.data.dataset != "folder" or self.data.labels

    def load_heldout(self, log: Callable[[str], None], eval_split: str) -> ImageDataset:
        """The held-out images (with labels when the data have them), at the training resolution."""
        d = self.data
        if self.split is not None:
            return load_images(d, log, files=self.split.heldout, labels_from_folders=self.labelled)
        try:
            return load_images(d, log, split=eval_split)
        except ValueError as e:
            raise ConfigError(f"evaluation during training needs held-out images: {e} (for a folder, set "
                              "data.holdout_fraction, e.g. 0.1)") from None

    def load_train(self, log: Callable[[str], None]) -> ImageDataset:
        """The training images (with labels when the data have them) for the floor and the featurizer."""
        if self.split is not None:
            if self.train is not None and (self.train.labels is not None or not self.labelled):
                return self.train
            return load_images(self.data, log, files=self.split.train, labels_from_folders=self.labelled)
        if self.train is not None and self.train.labels is not None:
            return self.train
        return load_images(self.data, log, labels_from_folders=self.labelled if self.data.dataset == "folder" else None)


def heldout_data(d: DataConfig, run_dir: str | os.PathLike, resume: bool, log: Callable[[str], None], *,
                 labels_from_folders: bool | None = None) -> HeldoutData:
    """The run's data split (see the module docstring); loads the training side of a folder split (with
    its class sub-folders as labels when ``labels_from_folders``; default: ``d.labels``)."""
    found = run_split(d, run_dir, resume)
    if found is None:
        return HeldoutData(d)
    folder, split = found
    log(f"held-out split: {len(split.heldout)} of {len(split.train) + len(split.heldout)} images of {folder} "
        f"({split.fraction:g}, seed {split.seed}) are never trained on; list in {split_path(run_dir)}")
    train = load_images(d, log, files=split.train, labels_from_folders=labels_from_folders)
    return HeldoutData(d, folder, split, train)


class SplitWriter(Callback):
    """Writes the run's held-out split into the run folder when training starts (rank 0)."""

    def __init__(self, split: HoldoutSplit):
        self.split = split

    def on_start(self, run: RunState) -> None:
        if run.env.info.is_main:
            write_split(self.split, split_path(run.run_dir))
