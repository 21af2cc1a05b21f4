"""A folder of images (searched recursively) as an :class:`ImageDataset`.

* Images: ``.png``, ``.jpg``, ``.jpeg``, ``.webp`` (extension, any case). Other files are
  ignored and reported in one warning with their count; hidden files (``.name``) are
  skipped silently.
* Every image is converted to ``channels`` (1 = ``L``, 3 = ``RGB``; transparency is
  composited onto white) and, with ``image_size``, resized (shorter side, bicubic) and
  center-cropped to a square. ``channels=None`` means 1 if every image is grayscale,
  else 3. Without ``image_size`` all images must already share one size.
* ``labels_from_folders=True``: the label of an image is the index of its immediate
  sub-folder of ``root`` in the sorted list of such folders holding images.
* Captions: a caption file at the root (``captions.jsonl``, ``metadata.jsonl`` or
  ``captions.csv``; or ``captions_file=...``) maps paths relative to ``root`` to text;
  otherwise a sidecar ``<stem>.txt`` beside the image is used. The file wins where both
  exist. Paths in the caption file must stay inside ``root`` (no ``..``, not absolute, no
  symbolic link resolving outside it), and a sidecar that is a symbolic link resolving outside
  ``root`` is refused: an untrusted folder cannot make difflab read other files as captions.
* Corrupt or unreadable images raise one ``ValueError`` listing them all, unless
  ``skip_corrupt=True``, which warns with the count and the names and leaves them out.
* ``files=[...]`` loads only those images (paths relative to ``root``, as
  :func:`list_image_files` gives them; e.g. one side of a held-out split). Class indices then
  come from every class sub-folder of ``root``, so both sides of a split share them; pass
  ``image_size`` and ``channels`` too, so that both sides get the same shape.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Collection

import torch
from PIL import Image

from difflab.data.dataset import ImageDataset
from difflab.data.transforms import (check_channels, check_image_size, convert_channels,
                                     pil_to_tensor, resize_center_crop)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_FILES = ("captions.jsonl", "metadata.jsonl", "captions.csv")
_PATH_KEYS = ("file", "file_name", "path", "image")
_TEXT_KEYS = ("caption", "text")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
_MAX_NAMES = 10


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:_MAX_NAMES])
    return shown + (f", ... ({len(paths) - _MAX_NAMES} more)" if len(paths) > _MAX_NAMES else "")


def _scan(root: Path) -> tuple[list[Path], list[Path]]:
    """Sorted image files and other (non-hidden) files under ``root``."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            (images if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(p)
    return sorted(images, key=lambda p: p.relative_to(root).as_posix()), others


def list_image_files(root: str | os.PathLike) -> list[str]:
    """Paths (relative to ``root``, POSIX form, sorted) of the images :func:`load_image_folder` reads."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    return [p.relative_to(root).as_posix() for p in _scan(root)[0]]


def _select(root: Path, files: list[Path], wanted: Collection[str]) -> list[Path]:
    by_name = {p.relative_to(root).as_posix(): p for p in files}
    missing = sorted(set(wanted) - set(by_name))
    if missing:
        raise ValueError(f"{len(missing)} listed image(s) are not under {root} (removed or renamed?): "
                         f"{_names(missing)}")
    return [by_name[name] for name in sorted(set(wanted))]


def safe_relative_path(root: Path, rel: str, where: str) -> Path:
    """``root / rel`` after checking ``rel`` is relative and stays inside ``root``."""
    if not isinstance(rel, str) or not rel.strip():
        raise ValueError(f"{where}: image path must be a non-empty string, got {rel!r}")
    posix, win = PurePosixPath(rel.replace("\\", "/")), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts:
        raise ValueError(f"{where}: image path {rel!r} must be relative to the dataset folder "
                         f"and must not contain '..' or be absolute")
    full = (root / posix).resolve()
    if not full.is_relative_to(root.resolve()):
        raise ValueError(f"{where}: image path {rel!r} resolves outside the dataset folder {root}")
    return full


def _pick(record: dict, keys: tuple[str, ...], where: str):
    for k in keys:
        if k in record:
            return record[k]
    raise ValueError(f"{where}: expected one of the keys {list(keys)}, got {sorted(record)}")


def read_captions_file(root: Path, path: Path) -> dict[Path, str]:
    """Map resolved image path -> caption from a ``.jsonl`` or ``.csv`` caption file."""
    out: dict[Path, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read caption file {path}: {e}") from e
    if path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e})") from e
            if not isinstance(record, dict):
                raise ValueError(f"{where}: each line must be a JSON object")
            rel, caption = _pick(record, _PATH_KEYS, where), _pick(record, _TEXT_KEYS, where)
            if not isinstance(caption, str):
                raise ValueError(f"{where}: caption must be a string, got {type(caption).__name__}")
            out[safe_relative_path(root, rel, where)] = caption
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        for lineno, record in enumerate(reader, 2):
            where = f"{path}:{lineno}"
            out[safe_relative_path(root, _pick(record, _PATH_KEYS, where), where)] = \
                _pick(record, _TEXT_KEYS, where) or ""
    else:
        raise ValueError(f"caption file {path} must end in .jsonl or .csv")
    return out


def _open_image(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()  # decode fully now: truncated files fail here, not later
        return img.copy() if img.mode != "P" else img.convert("RGBA" if "transparency" in img.info else "RGB")


def load_image_folder(root: str | os.PathLike, *, image_size: int | None = None, channels: int | None = None,
                      labels_from_folders: bool = False, captions: bool = True,
                      captions_file: str | os.PathLike | None = None, skip_corrupt: bool = False,
                      hflip: bool = True, split: str = "train",
                      files: Collection[str] | None = None) -> ImageDataset:
    """Load every image under ``root``, or only ``files`` (see the module docstring for the rules)."""
    check_image_size(image_size)
    check_channels(channels)
    root = Path(root)
    if not root.exists():
        raise ValueError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    wanted = files
    files, others = _scan(root)
    all_files = files
    if wanted is not None:
        files = _select(root, files, wanted)

    caption_map: dict[Path, str] = {}
    cap_path = Path(captions_file) if captions_file is not None else None
    if cap_path is not None and not cap_path.is_absolute() and not cap_path.exists():
        cap_path = root / cap_path
    if cap_path is None and captions:
        cap_path = next((root / n for n in CAPTION_FILES if (root / n).is_file()), None)
    if cap_path is not None:
        if not cap_path.is_file():
            raise ValueError(f"caption file {cap_path} does not exist")
        caption_map = read_captions_file(root, cap_path)
        known = {p.resolve() for p in all_files}
        missing = [str(p) for p in caption_map if p not in known]
        if missing:
            raise ValueError(f"caption file {cap_path} names {len(missing)} image(s) not found "
                             f"under {root}: {_names(missing)}")

    sidecars = {p.with_suffix(".txt").resolve() for p in all_files} if captions else set()
    ignored = [p for p in others
               if p.resolve() not in sidecars and (cap_path is None or p.resolve() != cap_path.resolve())]
    if ignored:
        warnings.warn(f"{root}: ignored {len(ignored)} file(s) that are not {'/'.join(IMAGE_EXTENSIONS)} "
                      f"images: {_names([str(p.relative_to(root)) for p in ignored])}", stacklevel=2)
    if not files:
        raise ValueError(f"image folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)}, "
                         f"searched recursively)")

    loaded: list[tuple[Path, Image.Image]] = []
    corrupt: list[tuple[Path, str]] = []
    for p in files:
        try:
            loaded.append((p, _open_image(p)))
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
            corrupt.append((p, f"{type(e).__name__}: {e}"))
    if corrupt:
        msg = (f"{len(corrupt)} corrupt or unreadable image file(s) under {root}: "
               f"{_names([f'{p} ({why})' for p, why in corrupt])}")
        if not skip_corrupt:
            raise ValueError(msg + "; fix or remove them, or pass skip_corrupt=True to leave them out")
        warnings.warn("skipping " + msg, stacklevel=2)
    if not loaded:
        raise ValueError(f"image folder {root} has no readable images")

    if channels is None:
        channels = 1 if all(img.mode in GRAY_MODES for _, img in loaded) else 3
    if image_size is None:
        sizes = {img.size for _, img in loaded}
        if len(sizes) > 1:
            raise ValueError(f"images under {root} have {len(sizes)} different sizes "
                             f"(e.g. {sorted(sizes)[:3]} as W x H); pass image_size to resize and crop them")
        w, h = next(iter(sizes))
    else:
        w = h = image_size

    labels = class_names = None
    if labels_from_folders:
        top = [p.relative_to(root).parts for p, _ in loaded]
        loose = [str(p) for (p, _), parts in zip(loaded, top) if len(parts) == 1]
        if loose:
            raise ValueError(f"labels_from_folders=True needs every image inside a class sub-folder of "
                             f"{root}; these are not: {_names(loose)}")
        # with a file list, every class folder of root counts, so both sides of a split agree
        class_names = sorted({parts[0] for parts in top} if wanted is None else
                             {p.relative_to(root).parts[0] for p in all_files if len(p.relative_to(root).parts) > 1})
        index = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([index[parts[0]] for parts in top], dtype=torch.long)

    images = torch.empty((len(loaded), channels, h, w), dtype=torch.uint8)
    texts: list[str | None] = []
    for i, (p, img) in enumerate(loaded):
        img = convert_channels(img, channels)
        if image_size is not None:
            img = resize_center_crop(img, image_size)
        images[i] = pil_to_tensor(img)
        text = caption_map.get(p.resolve())
        if text is None and captions:
            side = p.with_suffix(".txt")
            if side.is_file():
                if not side.resolve().is_relative_to(root.resolve()):
                    raise ValueError(f"caption {side} is a symbolic link resolving outside the dataset folder "
                                     f"{root} ({side.resolve()}); replace it with a regular file")
                try:
                    text = side.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as e:
                    raise ValueError(f"cannot read caption {side}: {e}") from e
        texts.append(text)

    caption_list = None
    if any(t is not None for t in texts):
        missing = [str(p) for (p, _), t in zip(loaded, texts) if t is None]
        if missing:
            warnings.warn(f"{root}: {len(missing)} image(s) have no caption and get an empty one: "
                          f"{_names(missing)}", stacklevel=2)
        caption_list = [t or "" for t in texts]

    return ImageDataset(images=images, labels=labels, captions=caption_list, class_names=class_names,
                        name=f"folder:{root}", split=split, hflip=hflip,
                        skipped=[str(p) for p, _ in corrupt])
