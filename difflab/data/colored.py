"""Coloured MNIST: digits drawn in a random foreground colour on a random background colour.

A colour test set that no recipe was designed on: the shapes are MNIST's, but every image has
its own pair of colours, so a model must learn colour as well as shape. For image ``i`` of a
split, with stroke intensity ``alpha = mnist / 255`` (anti-aliased edges blend)::

    x = bg + alpha * (fg - bg)          fg, bg uniform in [0, 1]^3, |fg - bg| >= MIN_COLOUR_DISTANCE

Colours are drawn from a generator seeded by ``(seed, split)`` for every image of the source
split at once (``CANDIDATES`` pairs each; the first far enough apart wins, else the farthest),
so image ``i`` gets the same colours whatever subset is written, and the train and test
splits use separate streams. Digits are centred by padding 28 -> ``size`` (or resized when
``size`` < 28).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

MNIST_SIDE = 28
MIN_COLOUR_DISTANCE = 0.5    # Euclidean distance in RGB [0, 1]^3 (the cube's diagonal is 1.73)
CANDIDATES = 16              # colour pairs drawn per image; P(none far enough) < 1e-8


def split_seed(seed: int, split: str) -> int:
    """The generator seed of one split: a hash of (seed, split), so splits never share a stream."""
    return int(hashlib.sha256(f"colored-mnist:{seed}:{split}".encode()).hexdigest()[:15], 16)


def draw_colours(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background colours ``[n, 3]`` in [0, 1], at least MIN_COLOUR_DISTANCE apart
    (or the farthest of the CANDIDATES pairs drawn for an image)."""
    pairs = torch.rand(n, CANDIDATES, 2, 3, generator=generator, dtype=torch.float64)
    dist = (pairs[:, :, 0] - pairs[:, :, 1]).norm(dim=-1)                 # [n, CANDIDATES]
    ok = dist >= MIN_COLOUR_DISTANCE
    first_ok = torch.where(ok.any(1), ok.to(torch.int8).argmax(1), dist.argmax(1))
    chosen = pairs[torch.arange(n), first_ok]                              # [n, 2, 3]
    return chosen[:, 0], chosen[:, 1]


def colorize(digits: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, size: int = 32) -> torch.Tensor:
    """``digits`` uint8 ``[N, 1, 28, 28]`` (MNIST strokes, 0..255) -> uint8 RGB ``[N, 3, size, size]``."""
    if digits.dtype != torch.uint8 or digits.ndim != 4 or digits.shape[1] != 1:
        raise ValueError(f"digits must be uint8 [N, 1, H, W], got {digits.dtype} {tuple(digits.shape)}")
    if size < 4:
        raise ValueError(f"size must be >= 4, got {size}")
    alpha = digits.double() / 255.0
    side = alpha.shape[-1]
    if size >= side:
        before = (size - side) // 2
        alpha = F.pad(alpha, (before, size - side - before, before, size - side - before))
    else:
        alpha = F.interpolate(alpha, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = bg[:, :, None, None] + alpha * (fg - bg)[:, :, None, None]
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def colored_mnist(digits: torch.Tensor, seed: int, split: str, size: int = 32,
                  indices: torch.Tensor | None = None) -> torch.Tensor:
    """Coloured versions of ``digits[indices]`` (all of them by default): colours are drawn for
    every image of ``digits`` (the whole source split) and then indexed, so they do not depend
    on which images are kept."""
    g = torch.Generator().manual_seed(split_seed(seed, split))
    fg, bg = draw_colours(digits.shape[0], g)
    if indices is not None:
        digits, fg, bg = digits[indices], fg[indices], bg[indices]
    return colorize(digits, fg, bg, size)
