"""A held-out split of a folder of images, and the fingerprint of its files.

Each image goes to the held-out side when the hash of its path is below ``fraction``::

    u(path) = int(sha256(f"{seed}:{path}")[:16], 16) / 2**64      in [0, 1)
    held out  <=>  u(path) < fraction

``path`` is the image's path relative to the dataset folder (POSIX form, as
:func:`difflab.data.folder.list_image_files` gives it), so the split does not depend on where
the folder lives, on the order files are listed in, or on which other files exist: adding
images never moves an image from one side to the other, and about ``fraction`` of the images
(exactly so in expectation) are held out. The split is written into the run folder
(:data:`SPLIT_FILE`, JSON) and read back on resume; :func:`extend_split` assigns images added
since then without ever moving a held-out image into training.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from difflab.files import write_text_atomic

DEFAULT_HOLDOUT_FRACTION = 0.1
DEFAULT_HOLDOUT_SEED = 0
SPLIT_FILE = "split.json"
SPLIT_FORMAT = 1


def holdout_score(path: str, seed: int = DEFAULT_HOLDOUT_SEED) -> float:
    """``u(path)`` in [0, 1): the uniform hash that decides which side ``path`` falls on."""
    digest = hashlib.sha256(f"{seed}:{path}".encode("utf-8")).hexdigest()
    return int(digest[:16], 16) / 2**64


def _check_fraction(fraction: float) -> None:
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0):
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction!r}")


@dataclass(frozen=True)
class HoldoutSplit:
    """Two disjoint, sorted lists of image paths (relative to the dataset folder)."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    fraction: float = DEFAULT_HOLDOUT_FRACTION
    seed: int = DEFAULT_HOLDOUT_SEED

    def __post_init__(self):
        _check_fraction(self.fraction)
        both = set(self.train) & set(self.heldout)
        if both:
            raise ValueError(f"a held-out split must not overlap the training set; {len(both)} file(s) are on both "
                             f"sides, e.g. {sorted(both)[:3]}")
        for name in ("train", "heldout"):
            paths = getattr(self, name)
            if len(set(paths)) != len(paths):
                raise ValueError(f"the {name} side of the split lists a file twice")

    def to_dict(self) -> dict[str, Any]:
        return {"format": SPLIT_FORMAT, "rule": "sha256(f'{seed}:{path}') / 2**64 < fraction",
                "fraction": self.fraction, "seed": self.seed, "n_train": len(self.train),
                "n_heldout": len(self.heldout), "train": list(self.train), "heldout": list(self.heldout)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "split") -> "HoldoutSplit":
        if not isinstance(d, dict) or not {"train", "heldout", "fraction", "seed"} <= set(d):
            raise ValueError(f"{where} must be a JSON object with 'train', 'heldout', 'fraction' and 'seed'")
        if d.get("format", SPLIT_FORMAT) != SPLIT_FORMAT:
            raise ValueError(f"{where}: unsupported split format {d.get('format')!r} (expected {SPLIT_FORMAT})")
        for key in ("train", "heldout"):
            if not isinstance(d[key], list) or not all(isinstance(p, str) for p in d[key]):
                raise ValueError(f"{where}: '{key}' must be a list of paths")
        try:
            return cls(train=tuple(d["train"]), heldout=tuple(d["heldout"]), fraction=float(d["fraction"]),
                       seed=int(d["seed"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None


def split_files(files: Iterable[str], fraction: float = DEFAULT_HOLDOUT_FRACTION,
                seed: int = DEFAULT_HOLDOUT_SEED) -> HoldoutSplit:
    """Split ``files`` (relative paths) into training and held-out images by :func:`holdout_score`.

    Raises ``ValueError`` when either side would be empty (too few images for ``fraction``).
    """
    _check_fraction(fraction)
    files = sorted(set(files))
    heldout = tuple(p for p in files if holdout_score(p, seed) < fraction)
    train = tuple(p for p in files if holdout_score(p, seed) >= fraction)
    if not heldout or not train:
        side = "held-out" if not heldout else "training"
        raise ValueError(f"a held-out fraction of {fraction} leaves the {side} side of {len(files)} image(s) empty; "
                         "use more images or another fraction")
    return HoldoutSplit(train=train, heldout=heldout, fraction=float(fraction), seed=int(seed))


def extend_split(saved: HoldoutSplit, files: Iterable[str]) -> HoldoutSplit:
    """The split of ``files`` (the folder now) that keeps ``saved``: an image held out before stays held
    out, an image trained on before stays in training, new images follow the rule, and images that are
    gone are dropped. Nothing held out ever enters training."""
    files = set(files)
    held, trained = set(saved.heldout), set(saved.train)
    new = files - held - trained
    heldout = (held & files) | {p for p in new if holdout_score(p, saved.seed) < saved.fraction}
    return HoldoutSplit(train=tuple(sorted(files - heldout)), heldout=tuple(sorted(heldout)),
                        fraction=saved.fraction, seed=saved.seed)


def write_split(split: HoldoutSplit, path: str | os.PathLike) -> Path:
    """Write ``split`` as JSON, atomically (a run folder's :data:`SPLIT_FILE`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(split.to_dict(), indent=1) + "\n")
    return path


def read_split(path: str | os.PathLike) -> HoldoutSplit:
    """Read a split written by :func:`write_split`; a clear ``ValueError`` when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} not found: no held-out split was written there") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable split file ({type(e).__name__}: {e})") from None
    return HoldoutSplit.from_dict(data, where=str(path))


def fingerprint_files(root: str | os.PathLike, files: Iterable[str]) -> str:
    """SHA-256 over the sorted relative paths and the bytes of each file: names a dataset's content
    (caches keyed by it are invalidated by any added, removed, renamed or edited image)."""
    root = Path(root)
    h = hashlib.sha256()
    for rel in sorted(set(files)):
        h.update(rel.encode("utf-8") + b"\0")
        file_hash = hashlib.sha256()
        with open(root / rel, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                file_hash.update(chunk)
        h.update(file_hash.digest())
    return h.hexdigest()
