"""Timestep and class embeddings.

Notation
--------
t       timestep, ``[B]`` (long indices of the training chain, or float)
dim     embedding width
emb     the conditioning vector fed to every ResNet block, ``[B, time_embed_dim]``
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, *, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding of ``t`` (Transformer positional encoding, DDPM Appendix B).

    Returns ``[B, dim]`` laid out as ``[cos(t w_i), sin(t w_i)]`` with
    ``w_i = max_period ** (-i / (dim // 2 - freq_shift))`` for ``i = 0 .. dim//2 - 1``.
    The defaults are the layout of guided-diffusion (and of diffusers with
    ``flip_sin_to_cos=True, freq_shift=0``); ``flip_sin_to_cos=False`` puts the sines first
    and ``freq_shift=1`` divides by ``dim // 2 - 1`` (the original DDPM code and the
    google/ddpm-* checkpoints). An odd ``dim`` is padded with one zero column.
    """
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor [B], got shape {tuple(t.shape)}")
    half = dim // 2
    if half - freq_shift <= 0:
        raise ValueError(f"freq_shift={freq_shift} must be smaller than dim // 2 = {half}")
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    )
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    parts = [torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features followed by a two-layer SiLU MLP: ``t -> emb``."""

    def __init__(self, in_dim: int, out_dim: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 0.0):
        super().__init__()
        self.in_dim = in_dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.in_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                                 freq_shift=self.freq_shift).to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(emb)))


class ClassEmbedding(nn.Module):
    """Class labels ``y in {0 .. num_classes}``; index ``num_classes`` is the null class
    (the "unconditional" label used by classifier-free guidance)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"class labels y must be an integer tensor, got {y.dtype}")
        # the range check reads the labels back (a graph break under torch.compile, which the
        # compiled path skips: nn.Embedding still rejects an index out of range there)
        checked = not (torch.jit.is_tracing() or torch.compiler.is_compiling())
        if checked and y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class), "
                f"got range [{int(y.min())}, {int(y.max())}]"
            )
        return self.embedding(y)
