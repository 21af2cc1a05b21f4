"""A small time-conditioned MLP denoiser for 2-D (or any flat) toy data."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .embeddings import timestep_embedding


@dataclass(frozen=True)
class ToyMLPConfig:
    dim: int = 2
    hidden: int = 128
    depth: int = 3
    time_dim: int = 64
    learn_sigma: bool = False

    def __post_init__(self):
        for name in ("dim", "hidden", "depth", "time_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ToyMLPConfig.{name} must be a positive integer, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class ToyMLP(nn.Module):
    """eps(x_t, t): x_t and a sinusoidal timestep embedding through residual SiLU layers."""

    def __init__(self, config: ToyMLPConfig = ToyMLPConfig()):
        super().__init__()
        self.config = config
        c = config
        self.time = nn.Sequential(nn.Linear(c.time_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.inp = nn.Linear(c.dim, c.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
            for _ in range(c.depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, c.dim * (2 if c.learn_sigma else 1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"ToyMLP expects x of shape [B, {self.config.dim}], got {tuple(x.shape)}")
        h = self.inp(x) + self.time(timestep_embedding(t, self.config.time_dim))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
