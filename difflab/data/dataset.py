"""The in-memory image dataset every loader returns, and batch helpers.

Images are stored as ``uint8`` ``[N, C, H, W]`` (0..255) and handed to the rest of
difflab as float tensors in ``[-1, 1]`` (``x = images / 127.5 - 1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from difflab.data.transforms import random_hflip, uint8_to_float


@dataclass
class ImageDataset:
    """Images held in memory.

    Attributes:
        images: ``uint8`` tensor ``[N, C, H, W]``.
        labels: ``LongTensor[N]`` of class indices ``0..num_classes-1``, or ``None``.
        captions: one string per image, or ``None``.
        class_names: names of the classes (index = label), or ``None``.
        name: the dataset's name (``"mnist"``, ``"folder:/path"`` ...).
        split: ``"train"``, ``"test"`` or ``"all"``.
        hflip: whether random horizontal flips suit this data (off for digits).
        skipped: files left out because they were corrupt (only with ``skip_corrupt``).
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    captions: list[str] | None = None
    class_names: list[str] | None = None
    name: str = "dataset"
    split: str = "train"
    hflip: bool = False
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"{self.name}: images must be a uint8 tensor [N, C, H, W], "
                             f"got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
        if x.shape[1] not in (1, 3):
            raise ValueError(f"{self.name}: images must have 1 or 3 channels, got {x.shape[1]}")
        n = x.shape[0]
        if self.labels is not None:
            if self.labels.dtype != torch.long or self.labels.shape != (n,):
                raise ValueError(f"{self.name}: labels must be a LongTensor[{n}], "
                                 f"got {self.labels.dtype} {tuple(self.labels.shape)}")
            if self.class_names is None:
                k = int(self.labels.max()) + 1 if n else 0
                self.class_names = [str(i) for i in range(k)]
            if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)):
                raise ValueError(f"{self.name}: labels must lie in 0..{len(self.class_names) - 1}")
        if self.captions is not None and len(self.captions) != n:
            raise ValueError(f"{self.name}: {len(self.captions)} captions for {n} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when the dataset has no labels)."""
        return len(self.class_names) if self.labels is not None and self.class_names else 0

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def to_float(self) -> torch.Tensor:
        """All images as ``float32`` in ``[-1, 1]``, ``[N, C, H, W]`` (a new tensor)."""
        return uint8_to_float(self.images)

    def get_batch(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, labels)`` for ``indices``: ``x`` float in ``[-1, 1]``; labels ``None`` if unlabelled."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {tuple(idx.shape)}")
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise ValueError(f"{self.name}: index out of range for a dataset of {n} images")
        x = uint8_to_float(self.images[idx])
        y = self.labels[idx] if self.labels is not None else None
        return x, y

    def get_captions(self, indices: Sequence[int] | torch.Tensor) -> list[str] | None:
        """Captions for ``indices`` (``None`` if the dataset has none)."""
        if self.captions is None:
            return None
        return [self.captions[int(i)] for i in torch.as_tensor(indices, dtype=torch.long)]

    def __repr__(self) -> str:
        extra = f", classes={self.num_classes}" if self.labels is not None else ""
        extra += ", captions" if self.captions is not None else ""
        return (f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={tuple(self.images.shape[1:])}{extra})")


def check_batch_size(dataset: ImageDataset, batch_size: int) -> int:
    """Raise ``ValueError`` unless ``1 <= batch_size <= len(dataset)``; return ``batch_size``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > len(dataset):
        raise ValueError(f"batch_size {batch_size} is larger than dataset {dataset.name!r} "
                         f"({dataset.split}), which has {len(dataset)} images; "
                         f"use batch_size <= {len(dataset)}")
    return batch_size


def iterate_batches(dataset: ImageDataset, batch_size: int, generator: torch.Generator | None = None,
                    *, shuffle: bool = True, drop_last: bool = True, hflip: bool | None = None,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """One epoch of ``(x, labels)`` batches.

    ``shuffle`` draws a permutation from ``generator``; ``hflip`` (default: ``dataset.hflip``)
    flips each image left-right with probability 1/2, also drawn from ``generator``.
    """
    check_batch_size(dataset, batch_size)
    n = len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    flip = dataset.hflip if hflip is None else hflip
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        x, y = dataset.get_batch(order[start:start + batch_size])
        if flip:
            x = random_hflip(x, generator)
        yield x, y


__all__ = ["ImageDataset", "check_batch_size", "iterate_batches"]
