"""Writing files so that a crash never leaves a half-written one: the one atomic-write helper.

:func:`atomic_write` hands ``write`` a temporary path in the destination's folder, flushes it
to disk and renames it over the destination (``os.replace`` is atomic on POSIX and Windows):
a reader sees the old file or the new one, never a mix. The fsync helpers are shared with the
checkpoint writer (``difflab.runs.checkpoint``), which makes whole folders appear the same way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder (its entries: names created, renamed or removed); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file, or a folder a writer made (e.g. a saved autoencoder) with everything in it."""
    path = Path(path)
    if not path.is_dir():
        fsync_file(path)
        return
    for p in sorted(path.rglob("*")):
        fsync_file(p) if p.is_file() else fsync_dir(p)
    fsync_dir(path)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *, mode: int = 0o644,
                 sync: bool = True, suffix: str = ".tmp") -> Path:
    """Create or replace ``path`` atomically: ``write(tmp)`` writes a temporary file next to it, which
    is (with ``sync``) flushed to disk and renamed over ``path``. On any error the temporary file is
    removed and ``path`` is untouched. ``suffix``: the temporary file's (a writer that appends its own
    extension, like ``numpy.savez``, needs it). Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)          # mkstemp makes 0600
        if sync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, sync: bool = True) -> Path:
    """``path.write_text(text)`` (UTF-8), atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), sync=sync)
