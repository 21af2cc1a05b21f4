"""Noise-aware classifier ``p(y | x_t, t)`` for classifier guidance (guided-diffusion's
``EncoderUNetModel`` with attention pooling).

Notation
--------
x_t      noisy image ``[B, C, H, W]``
t        timestep ``[B]``
logits   ``[B, num_classes]``; guidance uses ``grad_x log_softmax(logits)[y]``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import resolve_heads
from .embeddings import TimestepEmbedding
from .base import ConfigMixin, check_int, validate_encoder_fields
from .levels import level_resolutions
from .unet import build_encoder, build_middle, prefer_channels_last, run_block


@dataclass(frozen=True)
class ClassifierConfig(ConfigMixin):
    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int | str, ...] = (7,)   # "1/F" fractions or pixel sizes (nn.levels)
    mid_attention: bool = True
    num_heads: int = 1
    num_head_channels: int = -1
    dropout: float = 0.0
    resblock_updown: bool = False
    use_scale_shift_norm: bool = False
    norm_groups: int = 32
    pool: str = "attention"          # "attention" (CLIP-style attention pooling) or "adaptive" (mean)
    use_checkpoint: bool = False

    def __post_init__(self):
        validate_encoder_fields(self)
        check_int("num_classes", self.num_classes, 1)
        if self.pool not in ("attention", "adaptive"):
            raise ValueError(f"pool must be 'attention' or 'adaptive', got {self.pool!r}")


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling: the mean token (plus a learned position embedding) attends
    over all pixels; its output, projected, is the result."""

    def __init__(self, spatial: int, channels: int, heads: int, out_dim: int):
        super().__init__()
        self.heads = heads
        self.pos_embed = nn.Parameter(torch.randn(spatial * spatial + 1, channels) / channels**0.5)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.pos_embed.to(tokens.dtype)
        n, d = tokens.shape[1], c // self.heads
        q, k, v = self.qkv(tokens).view(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v)      # only the pooled query
        return self.proj(out.transpose(1, 2).reshape(b, c))


class EncoderClassifier(nn.Module):
    """``classifier(x_t, t) -> logits [B, num_classes]``: the U-Net's down path and middle
    block with timestep conditioning, then GroupNorm, SiLU and pooling."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if not isinstance(config, ClassifierConfig):
            raise ValueError(f"EncoderClassifier expects a ClassifierConfig, got {type(config).__name__}")
        self.config = cfg = config
        emb_dim = 4 * cfg.model_channels
        self.time_embed = TimestepEmbedding(cfg.model_channels, emb_dim)
        self.input_blocks, _, ch = build_encoder(cfg, cfg.in_channels, emb_dim)
        self.middle_block = build_middle(cfg, ch, emb_dim, cfg.mid_attention)
        self.out_norm = nn.GroupNorm(cfg.norm_groups, ch)
        if cfg.pool == "attention":
            spatial = level_resolutions(cfg.image_size, len(cfg.channel_mult))[-1]
            heads = resolve_heads(ch, cfg.num_heads, cfg.num_head_channels)
            self.pool = AttentionPool2d(spatial, ch, heads, cfg.num_classes)
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, cfg.num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"x must be [B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}], "
                             f"got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [{x.shape[0]}], got {tuple(t.shape)}")
        emb_act = F.silu(self.time_embed(t))
        ckpt = cfg.use_checkpoint and self.training
        h = prefer_channels_last(x)
        for block in self.input_blocks:
            h = run_block(block, ckpt, h, emb_act)
        h = run_block(self.middle_block, ckpt, h, emb_act)
        return self.pool(F.silu(self.out_norm(h)))
