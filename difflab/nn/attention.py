"""Attention layers for image feature maps, all built on ``F.scaled_dot_product_attention``.

Notation
--------
x        feature map ``[B, C, H, W]``; inside attention it is read as tokens ``[B, N, C]``,
         ``N = H * W``
context  conditioning tokens ``[B, L, D]`` (e.g. text-encoder states)
mask     ``context_mask`` ``[B, L]`` bool, True = real token, False = padding

The layers read the feature map as ``x.permute(0, 2, 3, 1)`` (``[B, H, W, C]``). When ``x``
is stored channels-last this is a free view, so no transpose copies are made on the way
into or out of attention (the U-Net keeps its activations channels-last on CPU for this
reason and for oneDNN's convolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (output layers start as the identity residual)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def resolve_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Number of heads: ``channels // num_head_channels`` when that is set (not -1),
    otherwise ``num_heads``."""
    if num_head_channels == -1:
        heads = num_heads
    else:
        if channels % num_head_channels:
            raise ValueError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
        heads = channels // num_head_channels
    if heads < 1 or channels % heads:
        raise ValueError(f"{channels} channels cannot be split into {heads} attention heads")
    return heads


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, H*W, C]`` (a view when ``x`` is channels-last)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def _from_tokens(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B, H*W, C] -> [B, C, H, W]`` stored channels-last (a view, no copy)."""
    b, n, c = tokens.shape
    return tokens.view(b, h, w, c).permute(0, 3, 1, 2)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual:
    ``x + proj_out(attn(GroupNorm(x)))`` (guided-diffusion's ``AttentionBlock``).

    ``qkv`` holds ``[W_q; W_k; W_v]`` stacked on the output axis; channel ``h * d + j`` of
    each of them is entry ``j`` of head ``h``.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, norm_groups: int = 32,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.num_heads = resolve_heads(channels, num_heads, num_head_channels)
        self.norm = nn.GroupNorm(norm_groups, channels, eps=norm_eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        qkv = self.qkv(_to_tokens(self.norm(x)))                    # [B, N, 3C]
        q, k, v = qkv.view(b, h * w, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, d]
        out = F.scaled_dot_product_attention(q, k, v)              # softmax(q k^T / sqrt(d)) v
        out = self.proj_out(out.transpose(1, 2).reshape(b, h * w, c))
        return x + _from_tokens(out, h, w)


class MultiHeadAttention(nn.Module):
    """Attention on token sequences ``[B, N, C]``; keys/values come from ``context``
    (cross-attention) or from the queries themselves (self-attention).

    A padding mask marks real context tokens True. A row whose context is all padding
    attends to nothing: its output is exactly zero (not NaN), so the residual stream is
    left unchanged.
    """

    def __init__(self, query_dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"query_dim={query_dim} is not divisible by heads={heads}")
        self.heads = heads
        kv_dim = query_dim if context_dim is None else context_dim
        self.is_cross = context_dim is not None
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_kv = nn.Linear(kv_dim, 2 * query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        heads, d = self.heads, c // self.heads
        kv_in = x if context is None else context
        q = self.to_q(x).view(b, n, heads, d).transpose(1, 2)
        k, v = self.to_kv(kv_in).view(b, kv_in.shape[1], 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v)
            return self.to_out(out.transpose(1, 2).reshape(b, n, c))
        has_token = mask.any(dim=1)                                  # [B]
        # Rows with no real token would softmax over an empty set (NaN); let them attend
        # to everything and zero their result below.
        safe_mask = mask | ~has_token[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe_mask[:, None, None, :])
        out = self.to_out(out.transpose(1, 2).reshape(b, n, c))
        return out * has_token[:, None, None].to(out.dtype)


class FeedForward(nn.Module):
    """GEGLU feed-forward (Shazeer 2020), as in latent-diffusion's transformer blocks."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(a * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to ``context``, feed-forward."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = MultiHeadAttention(dim, heads, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Cross-attention transformer on a feature map (latent-diffusion's ``SpatialTransformer``):
    ``x + proj_out(blocks(proj_in(GroupNorm(x)), context))`` with ``proj_out`` zero-initialised."""

    def __init__(self, channels: int, context_dim: int, num_heads: int = 1, num_head_channels: int = -1,
                 depth: int = 1, norm_groups: int = 32, norm_eps: float = 1e-5):
        super().__init__()
        heads = resolve_heads(channels, num_heads, num_head_channels)
        self.context_dim = context_dim
        self.norm = nn.GroupNorm(norm_groups, channels, eps=norm_eps)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim) for _ in range(depth))
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(_to_tokens(self.norm(x)))
        for block in self.blocks:
            tokens = block(tokens, context, mask)
        return x + _from_tokens(self.proj_out(tokens), h, w)
