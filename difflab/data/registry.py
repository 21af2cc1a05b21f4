"""``load_dataset``: one entry point, a registry of named datasets.

=================  ==========================================  ====================  =====
name               source                                      splits                hflip
=================  ==========================================  ====================  =====
``digits``         scikit-learn's bundled 8x8 digits            train / test / all    no
``mnist``          IDX files (``.gz`` MD5-checked)              train / test          no
``fashion-mnist``  IDX files (``.gz`` MD5-checked)              train / test          no
``cifar10``        ``cifar-10-python.tar.gz`` (MD5-checked)     train / test          yes
``folder``         a folder of PNG/JPEG/WebP images (``root``)  see below             yes
=================  ==========================================  ====================  =====

For ``folder``, ``split`` selects ``root/<split>`` when that sub-folder exists; otherwise
the whole of ``root`` is the ``train`` split and asking for another split is an error.
``root`` defaults to :data:`DEFAULT_ROOT` ``/<name>`` for the downloadable sets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

from difflab.data.cifar import CIFAR10_CLASSES, load_cifar10_split
from difflab.data.dataset import ImageDataset
from difflab.data.digits import load_digits_split
from difflab.data.folder import load_image_folder
from difflab.data.idx import FASHION_MNIST, MNIST, load_idx_split
from difflab.data.transforms import adapt_images, check_channels, check_image_size

DEFAULT_ROOT = Path("~/.cache/difflab/data").expanduser()


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: how to load one split as ``(images uint8, labels)``."""

    name: str
    description: str
    load: Callable[..., tuple]  # (root, split, download, verify_md5) -> (images, labels)
    class_names: tuple[str, ...]
    hflip: bool


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", "scikit-learn 8x8 digits, 1 channel, 10 classes (embedded)",
                          lambda root, split, download, verify_md5: load_digits_split(split),
                          tuple(str(i) for i in range(10)), hflip=False),
    "mnist": DatasetSpec("mnist", "MNIST 28x28, 1 channel, 10 classes",
                         lambda root, split, download, verify_md5:
                         load_idx_split(MNIST, root, split, download, verify_md5),
                         MNIST.class_names, hflip=False),
    "fashion-mnist": DatasetSpec("fashion-mnist", "Fashion-MNIST 28x28, 1 channel, 10 classes",
                                 lambda root, split, download, verify_md5:
                                 load_idx_split(FASHION_MNIST, root, split, download, verify_md5),
                                 FASHION_MNIST.class_names, hflip=False),
    "cifar10": DatasetSpec("cifar10", "CIFAR-10 32x32, 3 channels, 10 classes",
                           load_cifar10_split, CIFAR10_CLASSES, hflip=True),
}
FOLDER = "folder"


def folder_split_root(root: str | os.PathLike, split: str = "train") -> Path:
    """The folder that holds ``split`` of a folder dataset: ``root/<split>`` when that sub-folder
    exists, else ``root`` itself (which is then the ``train`` split; other splits are an error)."""
    if not isinstance(split, str) or split in ("", ".", "..") or any(c in split for c in "/\\\0"):
        raise ValueError(f"split must be a plain sub-folder name of {root} (e.g. 'train'), got {split!r}")
    folder = Path(root)
    if (folder / split).is_dir():
        return folder / split
    if split != "train":
        raise ValueError(f"{root} has no {split!r} sub-folder; without one, the whole folder is the 'train' split")
    return folder


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(DATASETS) + [FOLDER]


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                 image_size: int | None = None, channels: int | None = None, download: bool = False,
                 labels_from_folders: bool = False, skip_corrupt: bool = False, *,
                 verify_md5: bool = True, captions_file: str | os.PathLike | None = None,
                 hflip: bool | None = None, files: Collection[str] | None = None) -> ImageDataset:
    """Load dataset ``name`` (see the module table) as an in-memory :class:`ImageDataset`.

    Args:
        root: folder holding the files (required for ``folder``).
        split: which split (see the table).
        image_size: resize (shorter side, bicubic) and center-crop to this square size.
        channels: 1 (grayscale) or 3 (RGB); ``None`` keeps the source's channels.
        download: fetch missing files from the official mirrors (MD5-checked).
        labels_from_folders / skip_corrupt / captions_file: folder datasets only.
        files: folder datasets only: load just these images (paths relative to the split's
            folder, :func:`folder_split_root`), e.g. one side of a held-out split.
        verify_md5: check downloaded-format files against the official MD5s.
        hflip: override the dataset's default for random horizontal flips.
    """
    check_image_size(image_size)
    check_channels(channels)
    if name == FOLDER:
        if root is None:
            raise ValueError("load_dataset('folder') needs root=<folder of images>")
        return load_image_folder(folder_split_root(root, split), image_size=image_size, channels=channels,
                                 labels_from_folders=labels_from_folders, captions_file=captions_file,
                                 skip_corrupt=skip_corrupt, hflip=True if hflip is None else hflip,
                                 split=split, files=files)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(list_datasets())} "
                         f"(use name='folder' with root=<path> for your own images)")
    if labels_from_folders or captions_file is not None or files is not None:
        raise ValueError(f"labels_from_folders, captions_file and files apply to 'folder' datasets, not {name!r}")
    spec = DATASETS[name]
    root = Path(root) if root is not None else DEFAULT_ROOT / name
    images, labels = spec.load(root, split, download, verify_md5)
    images = adapt_images(images, image_size, channels)
    return ImageDataset(images=images, labels=labels, class_names=list(spec.class_names), name=name,
                        split=split, hflip=spec.hflip if hflip is None else hflip)
