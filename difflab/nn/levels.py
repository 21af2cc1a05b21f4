"""Where attention sits in a U-Net: resolution entries -> level indices.

A U-Net with ``L = len(channel_mult)`` levels works at ``image_size / 2**level`` pixels on
level ``0 .. L-1``. ``attention_resolutions`` and ``cross_attention_resolutions`` name levels
in either of two forms, mixed freely:

* a fraction of the image size, ``"1/F"`` with ``F = 2**level`` (``"1/1"`` = full size,
  ``"1/4"`` = two levels down): the downsampling factor, as latent-diffusion's configs count
  it. It names the same level whatever ``image_size`` is, so a preset keeps working when the
  image size changes; every preset uses this form.
* a pixel size (an int, the original form): it must be one of the level sizes, so it
  breaks when ``image_size`` changes. Configs written with it keep building the same network.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

_FRACTION = re.compile(r"^\s*1\s*/\s*(\d+)\s*$")


def level_resolutions(image_size: int, num_levels: int) -> list[int]:
    """Spatial size at each level: ``image_size / 2**i``."""
    return [image_size // 2**i for i in range(num_levels)]


def level_fractions(num_levels: int) -> list[str]:
    """The fraction spelling of every level: ``["1/1", "1/2", "1/4", ...]``."""
    return [f"1/{2**i}" for i in range(num_levels)]


def fraction_level(entry: str) -> int | None:
    """``"1/4"`` -> 2 (the level whose downsampling factor is 4); None when ``entry`` is not
    ``"1/F"`` with ``F`` a power of two."""
    m = _FRACTION.match(entry)
    if m is None:
        return None
    factor = int(m.group(1))
    if factor < 1 or factor & (factor - 1):
        return None
    return factor.bit_length() - 1


def resolution_levels(entries: Iterable[Any], image_size: int, num_levels: int,
                      name: str = "attention_resolutions") -> tuple[int, ...]:
    """Sorted level indices named by ``entries`` (pixel sizes and/or ``"1/F"`` fractions).

    Raises ``ValueError`` naming the entries that are not levels of this network and what
    is allowed in both forms.
    """
    if not isinstance(entries, tuple):
        raise ValueError(f"{name} must be a tuple, got {entries!r}")
    sizes = level_resolutions(image_size, num_levels)
    fractions = level_fractions(num_levels)
    levels: set[int] = set()
    bad_pixels: list[int] = []
    for e in entries:
        if isinstance(e, bool) or not isinstance(e, (int, str)):
            raise ValueError(f"{name} entries must be pixel sizes (int) or fractions of image_size like '1/4', "
                             f"got {e!r}")
        if isinstance(e, int):
            if e in sizes:
                levels.add(sizes.index(e))
            else:
                bad_pixels.append(e)
            continue
        level = fraction_level(e)
        if level is None or level >= num_levels:
            why = ("not a fraction 1/F with F a power of two" if level is None
                   else f"this network has {num_levels} level(s)")
            raise ValueError(f"{name}: {e!r} is not a level ({why}); allowed: fractions {fractions} of "
                             f"image_size, or pixel sizes {sizes}")
        levels.add(level)
    if bad_pixels:
        raise ValueError(f"{name} {bad_pixels} are not level resolutions; allowed: {sizes} (pixels at "
                         f"image_size={image_size}), or fractions of image_size {fractions}, which keep "
                         f"working when image_size changes")
    return tuple(sorted(levels))
