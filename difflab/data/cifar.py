"""CIFAR-10 from the official python tarball (``cifar-10-python.tar.gz``).

The batches inside are pickles. Unpickling runs code chosen by the file, so they are
read with :class:`RestrictedUnpickler`, which resolves only the handful of globals a
pickled ``dict`` of numpy arrays needs and refuses everything else. The tarball is
never extracted to disk: members are read in memory, by exact name.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from difflab.data.download import check_md5, download_file

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_SPLITS = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_SIDE = 32


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _allowed_globals() -> dict[tuple[str, str], object]:
    import codecs

    reconstruct = _numpy_reconstruct()
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") at protocol <= 2.
        ("_codecs", "encode"): codecs.encode,
    }


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for dicts/lists/str/bytes/numbers and plain numpy arrays only."""

    def __init__(self, file, *, source: str = "<pickle>"):
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(
                f"{self._source}: refusing to load global {module}.{name} from a pickle; only "
                f"numpy arrays and builtin containers are allowed in a CIFAR batch") from None

    def persistent_load(self, pid):
        raise RefusedGlobal(f"{self._source}: persistent ids are not allowed")


def restricted_loads(data: bytes, source: str = "<pickle>"):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; errors become ``ValueError``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except RefusedGlobal as e:
        raise ValueError(str(e)) from e
    except Exception as e:  # noqa: BLE001 - truncated or garbled data
        raise ValueError(f"{source}: not a valid pickle ({type(e).__name__}: {e})") from e


def _key(d: dict, name: str, source: str):
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    raise ValueError(f"{source}: CIFAR batch has no {name!r} entry")


def parse_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, 32, 32], labels int64 [N])`` from one pickled batch."""
    d = restricted_loads(data, source)
    if not isinstance(d, dict):
        raise ValueError(f"{source}: CIFAR batch must be a dict, got {type(d).__name__}")
    images = _key(d, "data", source)
    labels = _key(d, "labels", source)
    side = _CIFAR_SIDE
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != 3 * side * side:
        raise ValueError(f"{source}: 'data' must be a uint8 array [N, {3 * side * side}], got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    if not isinstance(labels, (list, np.ndarray)) or not all(isinstance(v, (int, np.integer)) for v in labels):
        raise ValueError(f"{source}: 'labels' must be a list of integers")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{source}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise ValueError(f"{source}: labels must lie in 0..{len(CIFAR10_CLASSES) - 1}")
    return images.reshape(-1, 3, side, side), labels


def _read_members(root: Path, names: tuple[str, ...], verify_md5: bool) -> list[tuple[str, bytes]]:
    folder = root / CIFAR10_DIR if (root / CIFAR10_DIR).is_dir() else root
    if all((folder / n).is_file() for n in names):
        return [(str(folder / n), (folder / n).read_bytes()) for n in names]
    tarball = root / CIFAR10_TARBALL
    if not tarball.is_file():
        raise ValueError(f"CIFAR-10 not found under {root}: expected {CIFAR10_TARBALL} or a "
                         f"{CIFAR10_DIR}/ folder with {', '.join(names)}; or pass download=True")
    if verify_md5:
        check_md5(tarball, CIFAR10_MD5)
    out = []
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for n in names:
                member = f"{CIFAR10_DIR}/{n}"
                try:
                    info = tar.getmember(member)
                except KeyError:
                    raise ValueError(f"{tarball} has no member {member}") from None
                f = tar.extractfile(info) if info.isfile() else None
                if f is None:
                    raise ValueError(f"{tarball}: {member} is not a regular file")
                out.append((f"{tarball}:{member}", f.read()))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"cannot read {tarball}: {type(e).__name__}: {e}") from e
    return out


def load_cifar10_split(root: str | os.PathLike, split: str, download: bool = False,
                       verify_md5: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 3, 32, 32], labels LongTensor[N])`` for ``split``."""
    if split not in CIFAR10_SPLITS:
        raise ValueError(f"cifar10: unknown split {split!r}; allowed: {sorted(CIFAR10_SPLITS)}")
    root = Path(root)
    names = CIFAR10_SPLITS[split]
    have_dir = all((root / CIFAR10_DIR / n).is_file() for n in names)
    if download and not have_dir:
        download_file(CIFAR10_URL, root / CIFAR10_TARBALL, CIFAR10_MD5)
    parts = [parse_batch(data, src) for src, data in _read_members(root, names, verify_md5)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)
