"""A small time-conditioned MLP for 2-D (or any flat) toy data.

The same network serves as the denoiser eps(x_t, t) (optionally class-conditional, with the
null class ``num_classes`` for classifier-free guidance, as in :class:`~difflab.nn.UNet`) and,
with ``out_dim`` = the number of classes, as a noise-aware classifier p(y | x_t, t).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .embeddings import ClassEmbedding, timestep_embedding


@dataclass(frozen=True)
class ToyMLPConfig:
    dim: int = 2
    hidden: int = 128
    depth: int = 3
    time_dim: int = 64
    learn_sigma: bool = False
    num_classes: int = 0             # > 0: class-conditional (labels 0..K-1, K = the null class)
    out_dim: int | None = None       # None: dim (2 * dim with learn_sigma); a classifier sets its class count

    def __post_init__(self):
        for name in ("dim", "hidden", "depth", "time_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ToyMLPConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"ToyMLPConfig.num_classes must be an integer >= 0, got {self.num_classes!r}")
        if self.out_dim is not None and (not isinstance(self.out_dim, int) or self.out_dim < 1):
            raise ValueError(f"ToyMLPConfig.out_dim must be None or a positive integer, got {self.out_dim!r}")

    @property
    def resolved_out_dim(self) -> int:
        if self.out_dim is not None:
            return self.out_dim
        return self.dim * (2 if self.learn_sigma else 1)

    def to_dict(self) -> dict:
        return asdict(self)


class ToyMLP(nn.Module):
    """eps(x_t, t[, y]): x_t plus a sinusoidal timestep embedding (plus a class embedding when
    ``num_classes`` > 0) through residual SiLU layers."""

    def __init__(self, config: ToyMLPConfig = ToyMLPConfig()):
        super().__init__()
        self.config = config
        c = config
        self.time = nn.Sequential(nn.Linear(c.time_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.inp = nn.Linear(c.dim, c.hidden)
        self.label = ClassEmbedding(c.num_classes, c.hidden) if c.num_classes else None
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
            for _ in range(c.depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, c.resolved_out_dim))

    @property
    def null_class(self) -> int | None:
        """The label of the unconditional branch (classifier-free guidance), None if unconditional."""
        return self.label.null_class if self.label is not None else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"ToyMLP expects x of shape [B, {self.config.dim}], got {tuple(x.shape)}")
        if (y is not None) != (self.label is not None):
            raise ValueError("a class-conditional ToyMLP needs labels y (the null class for none)"
                             if self.label is not None else "this ToyMLP is unconditional: it takes no labels y")
        h = self.inp(x) + self.time(timestep_embedding(t, self.config.time_dim))
        if y is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"labels y must have shape [{x.shape[0]}], got {tuple(y.shape)}")
            h = h + self.label(y)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
