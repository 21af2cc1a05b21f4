"""MNIST and Fashion-MNIST from IDX files.

IDX format (LeCun et al.): big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim``
uint32 sizes, then the data. Images are ``idx3`` (N x 28 x 28 uint8), labels ``idx1``.
Files may be gzipped (``.gz``, as published) or plain. The official MD5s are those of
the ``.gz`` files; plain files are checked structurally only (header, sizes, counts).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difflab.data.download import check_md5, download_file

_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class IdxSource:
    """Where one IDX dataset lives and what its files must hash to."""

    name: str
    mirrors: tuple[str, ...]
    md5: dict  # gz file name -> official md5
    class_names: tuple[str, ...]
    splits: dict  # split -> (images file stem, labels file stem, count)


_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}

MNIST = IdxSource(
    name="mnist",
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "http://yann.lecun.com/exdb/mnist/"),
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    class_names=tuple(str(i) for i in range(10)),
    splits=_SPLITS,
)

# Official MD5s as published by Zalando Research and used by torchvision's FashionMNIST
# (not verifiable offline here: no copy of the files is available in this workspace).
FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    splits=_SPLITS,
)


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped if the name ends in ``.gz``).

    Raises ``ValueError`` naming the file on a bad magic number, wrong number of
    dimensions, or a truncated / oversized body.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"cannot read IDX file {path}: {type(e).__name__}: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"{path} is not an IDX file: only {len(raw)} bytes")
    zero0, zero1, dtype_code, ndim = raw[:4]
    if zero0 != 0 or zero1 != 0 or dtype_code != _IDX_UBYTE or ndim == 0:
        raise ValueError(f"{path} is not an unsigned-byte IDX file: bad magic number "
                         f"0x{raw[:4].hex()} (expected 0x000008NN)")
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: header needs {header} bytes, file has {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape, dtype=np.int64))
    body = len(raw) - header
    if body != size:
        what = "truncated" if body < size else "longer than its header says"
        raise ValueError(f"{path} is {what}: header says shape {shape} ({size} bytes), "
                         f"found {body} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_dir(source: IdxSource, root: str | os.PathLike) -> Path | None:
    """The folder under ``root`` holding ``source``'s files, trying common layouts."""
    root = Path(root)
    stems = [s for pair in source.splits.values() for s in pair[:2]]
    candidates = [root, root / source.name, root / source.name.replace("-", "_"),
                  root / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[source.name] / "raw"]
    for d in candidates:
        if d.is_dir() and any((d / s).exists() or (d / f"{s}.gz").exists() for s in stems):
            return d
    return None


def _locate(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"missing file {stem}.gz (or {stem}) in {folder}")


def download_idx(source: IdxSource, folder: str | os.PathLike) -> Path:
    """Download all of ``source``'s ``.gz`` files into ``folder`` (MD5-checked)."""
    folder = Path(folder)
    for fname, md5 in source.md5.items():
        download_file([m + fname for m in source.mirrors], folder / fname, md5)
    return folder


def load_idx_split(source: IdxSource, root: str | os.PathLike, split: str, download: bool = False,
                   verify_md5: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 1, 28, 28], labels LongTensor[N])`` for one split."""
    if split not in source.splits:
        raise ValueError(f"{source.name}: unknown split {split!r}; allowed: {sorted(source.splits)}")
    folder = find_idx_dir(source, root)
    if folder is None:
        if not download:
            raise ValueError(f"{source.name} files not found under {root}; put the four IDX files "
                             f"({', '.join(source.md5)}) there or pass download=True")
        folder = download_idx(source, Path(root) / source.name)
    img_stem, lbl_stem, _count = source.splits[split]
    img_path, lbl_path = _locate(folder, img_stem), _locate(folder, lbl_stem)
    if verify_md5:
        for p in (img_path, lbl_path):
            if p.name in source.md5:
                check_md5(p, source.md5[p.name])
    images = read_idx(img_path, expected_ndim=3)
    labels = read_idx(lbl_path, expected_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{img_path} has {images.shape[0]} images but {lbl_path} has {labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= len(source.class_names):
        raise ValueError(f"{lbl_path} has label {int(labels.max())}; allowed 0..{len(source.class_names) - 1}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
