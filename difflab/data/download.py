"""Downloading and checksumming dataset files.

Only ``load_dataset(..., download=True)`` reaches the network. Files are written to a
temporary name and renamed into place once their MD5 matches, so an interrupted or
corrupted download never leaves a file that looks valid.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Sequence

_CHUNK = 1 << 20


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(path: str | os.PathLike, expected: str) -> None:
    """Raise ``ValueError`` naming ``path`` if its MD5 differs from ``expected``."""
    got = md5sum(path)
    if got != expected:
        raise ValueError(f"checksum mismatch for {path}: md5 {got}, expected {expected}; "
                         f"the file is corrupt or not the official one (delete it and download again)")


def download_file(urls: str | Sequence[str], dest: str | os.PathLike, md5: str | None = None,
                  timeout: float = 60.0) -> Path:
    """Fetch the first URL of ``urls`` that works into ``dest`` and verify ``md5``.

    An existing ``dest`` whose checksum matches is kept as is. Raises ``ValueError``
    (listing every URL tried and why it failed) when no mirror gives a valid file.
    """
    dest = Path(dest)
    if dest.exists() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in [urls] if isinstance(urls, str) else list(urls):
        fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out, _CHUNK)
            if md5 is not None:
                got = md5sum(tmp)
                if got != md5:
                    raise ValueError(f"md5 {got}, expected {md5}")
            os.replace(tmp, dest)
            return dest
        except Exception as e:  # noqa: BLE001 - try the next mirror, report all failures below
            errors.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise ValueError(f"could not download {dest.name} to {dest.parent}:\n  " + "\n  ".join(errors))
