"""Explicit randomness.

A ``Generator`` argument is either one ``torch.Generator`` for the whole batch, a list
of generators (one per sample, EDM's stacked generator: results then do not depend on
batch size), or ``None`` (torch's global generator).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

Generator = Union[None, torch.Generator, Sequence[torch.Generator]]


def per_sample_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per sample, seeded from ``seeds``."""
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


def randn(shape: Sequence[int], generator: Generator = None, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape``; with a list of generators, row i uses generator i."""
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if isinstance(generator, torch.Generator) else device
        out = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
        return out.to(device) if device is not None else out
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in gens]
    out = torch.stack(rows)
    return out.to(device) if device is not None else out


def randint(high: int, size: int, generator: Generator = None, *, device=None) -> torch.Tensor:
    """Uniform integers in [0, high); per-sample generators give one draw each."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if isinstance(generator, torch.Generator) else device
        out = torch.randint(0, high, (size,), generator=generator, device=gen_device)
    else:
        gens = list(generator)
        if len(gens) != size:
            raise ValueError(f"got {len(gens)} generators for a batch of {size}")
        out = torch.cat([torch.randint(0, high, (1,), generator=g, device=g.device) for g in gens])
    return out.to(device) if device is not None else out
