"""What a dataset is, in the few facts a training recipe needs (:class:`DatasetFacts`).

:func:`inspect_folder` gathers them from a folder of images without decoding the pixels (image
headers only): count, sizes, channels, labels from class sub-folders, captions.
:func:`facts_of_dataset` gives the same facts for a loaded :class:`ImageDataset` (digits, MNIST).
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from difflab.data.dataset import ImageDataset
from difflab.data.folder import CAPTION_FILES, GRAY_MODES, list_image_files, read_captions_file
from difflab.data.registry import folder_split_root

_MAX_UNREADABLE = 10


@dataclass(frozen=True)
class DatasetFacts:
    """Facts about the images of one training set.

    Attributes:
        name: the dataset (``"mnist"``, ``"folder:/path"`` ...).
        count: number of images.
        image_size: the side of a square training image at the data's own resolution: the median of
            the images' shorter sides (the folder loader resizes the shorter side, then centre-crops).
        min_side / max_side: the smallest and largest shorter side.
        square: every image is square.
        channels: 1 when every image is greyscale, else 3.
        class_names: the class sub-folders (labels), or None when the images are not all in them.
        class_counts: images per class, in the order of ``class_names``.
        captions: how many images have a caption.
        unreadable: files whose header could not be read (they will stop loading: fix or remove them).
    """

    name: str
    count: int
    image_size: int
    min_side: int
    max_side: int
    square: bool
    channels: int
    class_names: tuple[str, ...] | None = None
    class_counts: tuple[int, ...] | None = None
    captions: int = 0
    unreadable: tuple[str, ...] = ()

    def __post_init__(self):
        if self.count < 1 or self.image_size < 1 or self.channels not in (1, 3):
            raise ValueError(f"dataset facts need count >= 1, image_size >= 1 and 1 or 3 channels; got {self!r}")
        if (self.class_names is None) != (self.class_counts is None):
            raise ValueError("class_names and class_counts go together")

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def describe(self) -> str:
        """One line for a log."""
        size = f"{self.image_size}x{self.image_size}" if self.min_side == self.max_side and self.square else \
            f"shorter side {self.min_side}..{self.max_side} (median {self.image_size})"
        labels = f"{self.num_classes} classes" if self.class_names is not None else "no labels"
        caps = f", {self.captions} captions" if self.captions else ""
        bad = f", {len(self.unreadable)} unreadable" if self.unreadable else ""
        return (f"{self.name}: {self.count} images, {size}, {'RGB' if self.channels == 3 else 'greyscale'}, "
                f"{labels}{caps}{bad}")


def inspect_folder(root: str | os.PathLike, split: str = "train", files: list[str] | None = None) -> DatasetFacts:
    """Facts about the images of a folder dataset (``root/<split>`` when it exists, as
    :func:`difflab.data.load_dataset` reads it); ``files`` restricts them to those relative paths
    (e.g. the training side of a held-out split)."""
    folder = folder_split_root(root, split)
    names = list_image_files(folder) if files is None else sorted(files)
    if not names:
        raise ValueError(f"image folder {folder} contains no images")
    sides, grey, square, unreadable = [], True, True, []
    for rel in names:
        try:
            with Image.open(folder / rel) as img:
                w, h = img.size
                mode = img.mode
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
            unreadable.append(rel)
            continue
        sides.append(min(w, h))
        square = square and w == h
        grey = grey and mode in GRAY_MODES
    if not sides:
        raise ValueError(f"none of the {len(names)} images under {folder} could be read")
    parts = [Path(rel).parts for rel in names]
    class_names = class_counts = None
    if all(len(p) > 1 for p in parts):
        counts = Counter(p[0] for p in parts)
        if len(counts) >= 2:
            class_names = tuple(sorted(counts))
            class_counts = tuple(counts[c] for c in class_names)
    return DatasetFacts(name=f"folder:{folder}", count=len(names), image_size=int(statistics.median_low(sides)),
                        min_side=min(sides), max_side=max(sides), square=square, channels=1 if grey else 3,
                        class_names=class_names, class_counts=class_counts,
                        captions=_count_captions(folder, names), unreadable=tuple(unreadable[:_MAX_UNREADABLE]))


def _count_captions(folder: Path, names: list[str]) -> int:
    caption_file = next((folder / n for n in CAPTION_FILES if (folder / n).is_file()), None)
    captioned = set()
    if caption_file is not None:
        resolved = {(folder / rel).resolve(): rel for rel in names}
        captioned = {resolved[p] for p in read_captions_file(folder, caption_file) if p in resolved}
    return len(captioned | {rel for rel in names if (folder / rel).with_suffix(".txt").is_file()})


def facts_of_dataset(ds: ImageDataset) -> DatasetFacts:
    """The same facts for a dataset already in memory."""
    h, w = ds.image_size
    class_names = class_counts = None
    if ds.labels is not None and ds.num_classes >= 2:
        class_names = tuple(ds.class_names)
        class_counts = tuple(int(c) for c in ds.labels.bincount(minlength=len(class_names)))
    return DatasetFacts(name=ds.name, count=len(ds), image_size=min(h, w), min_side=min(h, w), max_side=min(h, w),
                        square=h == w, channels=ds.channels, class_names=class_names, class_counts=class_counts,
                        captions=0 if ds.captions is None else sum(1 for c in ds.captions if c))
