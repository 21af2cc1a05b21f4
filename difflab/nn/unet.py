"""The diffusion U-Net (DDPM / improved-diffusion / guided-diffusion / latent-diffusion layout).

Notation
--------
x_t      noisy input ``[B, C, H, W]``
t        timestep ``[B]`` (long indices of the training chain, or float)
y        class labels ``[B]`` in ``0 .. num_classes``; ``num_classes`` is the null class
context  conditioning tokens ``[B, L, context_dim]``; ``context_mask`` ``[B, L]`` True = real
cond     image concatenated to ``x_t`` on the channel axis ``[B, cond_channels, H, W]``
emb      time (+ class) embedding ``[B, 4 * model_channels]`` fed to every ResNet block

Structure: ``conv_in`` -> per level ``num_res_blocks`` x (ResBlock [+ SelfAttention2d]
[+ SpatialTransformer]) then a downsample (not after the last level) -> middle
(ResBlock, [SelfAttention2d], [SpatialTransformer], ResBlock) -> per level, mirrored,
``num_res_blocks + 1`` blocks each taking a skip connection, then an upsample ->
GroupNorm, SiLU, zero-initialised ``conv_out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SelfAttention2d, SpatialTransformer, zero_module
from .base import ConfigMixin, check_int, validate_encoder_fields
from .embeddings import ClassEmbedding, TimestepEmbedding
from .levels import resolution_levels

# ----------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class UNetConfig(ConfigMixin):
    """Architecture of a ``UNet``; validated on construction (``ValueError`` says what is wrong).

    Resolutions (``attention_resolutions``, ``cross_attention_resolutions``) name levels, which
    work at ``image_size / 2**level`` pixels: as fractions of the image size (``"1/4"``: the
    form that survives a change of ``image_size``) or as pixel sizes (``7``); see
    ``difflab.nn.levels``. ``image_size`` must be divisible by ``2**(len(channel_mult) - 1)``. Level ``i`` has ``model_channels * channel_mult[i]``
    channels. Heads: ``num_head_channels`` channels per head when it is not -1, else
    ``num_heads`` heads. The middle block has self-attention when ``mid_attention`` and a
    cross-attention transformer whenever ``context_dim`` is set.
    """

    image_size: int = 32
    in_channels: int = 3
    out_channels: int | None = None          # None = in_channels; doubled when learn_sigma
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int | str, ...] = (16,)   # levels with self-attention: "1/F" or pixels
    mid_attention: bool = True                # self-attention in the middle block
    num_heads: int = 1
    num_head_channels: int = -1              # -1 = use num_heads
    dropout: float = 0.0
    num_classes: int | None = None           # None = unconditional
    cond_channels: int = 0                   # channels of an image concatenated to x_t
    context_dim: int | None = None           # None = no cross-attention
    cross_attention_resolutions: tuple[int | str, ...] = ()
    transformer_depth: int = 1
    resblock_updown: bool = False
    use_scale_shift_norm: bool = False
    norm_groups: int = 32
    learn_sigma: bool = False
    use_checkpoint: bool = False
    # Defaults: guided-diffusion's (difflab's since the start); diffusers' google/ddpm-* checkpoints use
    # False, 1, 0 and 1e-6 (difflab.interop.diffusers reads them from a UNet2DModel config)
    flip_sin_to_cos: bool = True             # timestep features [cos, sin] (False: [sin, cos])
    freq_shift: float = 0.0                  # frequencies max_period ** (-i / (model_channels // 2 - freq_shift))
    downsample_padding: int = 1              # 1: stride-2 conv padded 1 all round; 0: padded 1 right and bottom
    norm_eps: float = 1e-5                   # epsilon of every GroupNorm

    def __post_init__(self):
        validate_encoder_fields(self)
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)   # noqa: E731
        for ok, field, allowed in (
                (isinstance(self.flip_sin_to_cos, bool), "flip_sin_to_cos", "true or false"),
                (number(self.freq_shift) and 0 <= self.freq_shift < self.model_channels // 2, "freq_shift",
                 f"a number in [0, model_channels // 2 = {self.model_channels // 2})"),
                (self.downsample_padding in (0, 1) and not isinstance(self.downsample_padding, bool),
                 "downsample_padding", "0 or 1"),
                (number(self.norm_eps) and 0 < self.norm_eps < 1, "norm_eps", "a number in (0, 1)")):
            if not ok:
                raise ValueError(f"{field} must be {allowed}, got {getattr(self, field)!r}")
        if self.out_channels is not None:
            check_int("out_channels", self.out_channels, 1)
        if self.num_classes is not None:
            check_int("num_classes (or None)", self.num_classes, 1)
        check_int("cond_channels", self.cond_channels, 0)
        check_int("transformer_depth", self.transformer_depth, 1)
        if not isinstance(self.cross_attention_resolutions, tuple):
            raise ValueError(f"cross_attention_resolutions must be a tuple, got {self.cross_attention_resolutions!r}")
        if self.context_dim is None:
            if self.cross_attention_resolutions:
                raise ValueError("cross_attention_resolutions is set but context_dim is None; set context_dim")
        else:
            check_int("context_dim (or None)", self.context_dim, 1)
            resolution_levels(self.cross_attention_resolutions, self.image_size, len(self.channel_mult),
                              "cross_attention_resolutions")

    @property
    def resolved_out_channels(self) -> int:
        out = self.in_channels if self.out_channels is None else self.out_channels
        return 2 * out if self.learn_sigma else out


# ----------------------------------------------------------------------------------------
# Blocks


class Dropout(nn.Module):
    """Element-wise dropout (Srivastava et al. 2014), cheaper on CPU than ``nn.Dropout``.

    ``torch.bernoulli_`` draws one 32-bit number per element and was ~8% of a training
    step's time; here each element gets 16 uniform bits (four per 64-bit draw from torch's
    global generator), kept when the bits say so. The drop probability is realised as
    ``p_eff = round(p * 2**16) / 2**16`` (within 8e-6 of ``p``) and kept values are scaled
    by ``1 / (1 - p_eff)``, so ``E[out] = x`` exactly. Identity in eval mode or when p = 0.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.drop_levels = int(round(p * 65536))     # of 65536 equally likely 16-bit values

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_levels == 0:
            return x
        return _DropoutFn.apply(x, self.drop_levels)


def _physical_shape(x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Shape of ``x`` as laid out in memory, and the permutation back to its logical shape."""
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return (x.shape[0], x.shape[2], x.shape[3], x.shape[1]), (0, 3, 1, 2)
    return tuple(x.shape), None


class _DropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, drop_levels: int) -> torch.Tensor:
        n = x.numel()
        bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        bits = bits.view(torch.int16)[:n]                 # uniform on [-32768, 32767]
        shape, perm = _physical_shape(x)
        keep = (bits >= drop_levels - 32768).view(shape)  # P(keep) = 1 - drop_levels / 65536
        if perm is not None:
            keep = keep.permute(perm)
        ctx.scale = 65536.0 / (65536 - drop_levels)
        ctx.save_for_backward(keep)                       # 1 byte per element, like native dropout
        return keep.to(x.dtype).mul_(ctx.scale).mul_(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return keep.to(grad_out.dtype).mul_(ctx.scale).mul_(grad_out), None


class Downsample(nn.Module):
    """Stride-2 3x3 convolution; ``padding=0`` pads one zero row and column at the bottom and
    right instead of one all round (the original DDPM code's and diffusers' ``downsample_padding=0``)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"downsample padding must be 0 or 1, got {padding!r}")
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, timestep injection, GroupNorm-SiLU-dropout-conv (zero-init), skip.

    With ``use_scale_shift_norm`` the embedding gives ``(scale, shift)`` and the second norm
    becomes ``GroupNorm(h) * (1 + scale) + shift`` (adaptive group norm, iDDPM / ADM);
    otherwise the embedding is added before it (DDPM). ``updown`` = "up" / "down" resamples
    inside the block (BigGAN-style, ADM's ``resblock_updown``).
    """

    def __init__(self, in_channels: int, emb_dim: int, out_channels: int, dropout: float = 0.0,
                 use_scale_shift_norm: bool = False, norm_groups: int = 32, updown: str | None = None,
                 norm_eps: float = 1e-5):
        super().__init__()
        if updown not in (None, "up", "down"):
            raise ValueError(f"updown must be None, 'up' or 'down', got {updown!r}")
        self.updown = updown
        self.use_scale_shift_norm = use_scale_shift_norm
        self.norm1 = nn.GroupNorm(norm_groups, in_channels, eps=norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels, eps=norm_eps)
        self.dropout = Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.updown == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.avg_pool2d(x, 2)

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        """``emb_act`` is ``SiLU(emb)`` (computed once per forward by the caller)."""
        h = F.silu(self.norm1(x))
        if self.updown is not None:
            h, x = self._resample(h), self._resample(x)
        h = self.conv1(h)
        e = self.emb_proj(emb_act)[:, :, None, None].to(h.dtype)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Block(nn.ModuleList):
    """A sequence of layers applied with the conditioning each one needs."""

    def forward(self, h, emb_act, context=None, context_mask=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb_act)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


def run_block(block: Block, use_checkpoint: bool, *args):
    """Run ``block``; with ``use_checkpoint`` and grad enabled, recompute it in backward."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def build_encoder(cfg, in_channels: int, emb_dim: int, context_dim: int | None = None,
                  cross_resolutions: tuple[int | str, ...] = (), transformer_depth: int = 1, *,
                  norm_eps: float = 1e-5, downsample_padding: int = 1):
    """The U-Net's down path: ``conv_in`` then per level res (+attn) blocks and a downsample.

    Returns ``(blocks, skip_channels, out_channels)``; ``skip_channels[i]`` is the width of
    the output of ``blocks[i]``.
    """
    def res_block(ch_in, ch_out, updown=None):
        return ResBlock(ch_in, emb_dim, ch_out, cfg.dropout, cfg.use_scale_shift_norm, cfg.norm_groups, updown,
                        norm_eps)

    num_levels = len(cfg.channel_mult)
    self_levels = resolution_levels(cfg.attention_resolutions, cfg.image_size, num_levels)
    cross_levels = resolution_levels(cross_resolutions, cfg.image_size, num_levels, "cross_attention_resolutions")

    def attn_layers(ch, level):
        layers = []
        if level in self_levels:
            layers.append(SelfAttention2d(ch, cfg.num_heads, cfg.num_head_channels, cfg.norm_groups, norm_eps))
        if context_dim is not None and level in cross_levels:
            layers.append(SpatialTransformer(ch, context_dim, cfg.num_heads, cfg.num_head_channels,
                                             transformer_depth, cfg.norm_groups, norm_eps))
        return layers

    ch = cfg.model_channels
    blocks = nn.ModuleList([Block([nn.Conv2d(in_channels, ch, 3, padding=1)])])
    skip_channels = [ch]
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            out = cfg.model_channels * mult
            layers = [res_block(ch, out)]
            ch = out
            layers += attn_layers(ch, level)
            blocks.append(Block(layers))
            skip_channels.append(ch)
        if level != len(cfg.channel_mult) - 1:
            down = res_block(ch, ch, "down") if cfg.resblock_updown else Downsample(ch, downsample_padding)
            blocks.append(Block([down]))
            skip_channels.append(ch)
    return blocks, skip_channels, ch


def build_middle(cfg, ch: int, emb_dim: int, mid_attention: bool, context_dim: int | None = None,
                 transformer_depth: int = 1, *, norm_eps: float = 1e-5) -> Block:
    def res_block():
        return ResBlock(ch, emb_dim, ch, cfg.dropout, cfg.use_scale_shift_norm, cfg.norm_groups, norm_eps=norm_eps)

    layers = [res_block()]
    if mid_attention:
        layers.append(SelfAttention2d(ch, cfg.num_heads, cfg.num_head_channels, cfg.norm_groups, norm_eps))
    if context_dim is not None:
        layers.append(SpatialTransformer(ch, context_dim, cfg.num_heads, cfg.num_head_channels,
                                         transformer_depth, cfg.norm_groups, norm_eps))
    layers.append(res_block())
    return Block(layers)


def prefer_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Channels-last activations on CPU: oneDNN convolutions run on NHWC without
    re-layout, and attention reads pixels as tokens without a transpose copy."""
    if x.device.type == "cpu" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


# ----------------------------------------------------------------------------------------
# U-Net


class UNet(nn.Module):
    """``model(x_t, t, y=None, context=None, context_mask=None, cond=None) -> [B, C_out, H, W]``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise ValueError(f"UNet expects a UNetConfig, got {type(config).__name__}")
        self.config = cfg = config
        emb_dim = 4 * cfg.model_channels
        eps = cfg.norm_eps
        self.time_embed = TimestepEmbedding(cfg.model_channels, emb_dim, flip_sin_to_cos=cfg.flip_sin_to_cos,
                                            freq_shift=cfg.freq_shift)
        self.class_embed = ClassEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes is not None else None

        self.input_blocks, skip_channels, ch = build_encoder(
            cfg, cfg.in_channels + cfg.cond_channels, emb_dim, cfg.context_dim,
            cfg.cross_attention_resolutions, cfg.transformer_depth, norm_eps=eps,
            downsample_padding=cfg.downsample_padding)
        self.middle_block = build_middle(cfg, ch, emb_dim, cfg.mid_attention, cfg.context_dim, cfg.transformer_depth,
                                         norm_eps=eps)

        self.output_blocks = nn.ModuleList()
        levels = len(cfg.channel_mult)
        self_levels = resolution_levels(cfg.attention_resolutions, cfg.image_size, levels)
        cross_levels = resolution_levels(cfg.cross_attention_resolutions, cfg.image_size, levels)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out = cfg.model_channels * mult
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, out, cfg.dropout,
                                   cfg.use_scale_shift_norm, cfg.norm_groups, norm_eps=eps)]
                ch = out
                if level in self_levels:
                    layers.append(SelfAttention2d(ch, cfg.num_heads, cfg.num_head_channels, cfg.norm_groups, eps))
                if cfg.context_dim is not None and level in cross_levels:
                    layers.append(SpatialTransformer(ch, cfg.context_dim, cfg.num_heads, cfg.num_head_channels,
                                                     cfg.transformer_depth, cfg.norm_groups, eps))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, ch, cfg.dropout, cfg.use_scale_shift_norm,
                                           cfg.norm_groups, "up", eps) if cfg.resblock_updown else Upsample(ch))
                self.output_blocks.append(Block(layers))
        assert not skip_channels
        self.out_norm = nn.GroupNorm(cfg.norm_groups, ch, eps=eps)
        self.out_conv = zero_module(nn.Conv2d(ch, cfg.resolved_out_channels, 3, padding=1))

    @property
    def null_class(self) -> int | None:
        """The label meaning "no class" (``num_classes``), or None for an unconditional model."""
        return self.config.num_classes

    def _check_inputs(self, x, t, y, context, context_mask, cond) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"x must be [B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}], "
                             f"got {tuple(x.shape)}")
        b = x.shape[0]
        if t.shape != (b,):
            raise ValueError(f"t must have shape [{b}], got {tuple(t.shape)}")
        if (y is None) != (cfg.num_classes is None):
            raise ValueError("y (class labels) must be given exactly when the model is class-conditional "
                             f"(num_classes={cfg.num_classes}); use y=null_class for unconditional samples")
        if y is not None and y.shape != (b,):
            raise ValueError(f"y must have shape [{b}], got {tuple(y.shape)}")
        if (cond is None) != (cfg.cond_channels == 0):
            raise ValueError(f"cond must be given exactly when cond_channels > 0 (cond_channels={cfg.cond_channels})")
        if cond is not None and cond.shape != (b, cfg.cond_channels) + tuple(x.shape[2:]):
            raise ValueError(f"cond must be [{b}, {cfg.cond_channels}, {x.shape[2]}, {x.shape[3]}], "
                             f"got {tuple(cond.shape)}")
        if (context is None) != (cfg.context_dim is None):
            raise ValueError("context must be given exactly when the model has cross-attention "
                             f"(context_dim={cfg.context_dim}); pass an all-False context_mask for no tokens")
        if context is not None:
            if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
                raise ValueError(f"context must be [{b}, L, {cfg.context_dim}], got {tuple(context.shape)}")
            if context_mask is not None and (context_mask.dtype != torch.bool
                                             or context_mask.shape != context.shape[:2]):
                raise ValueError(f"context_mask must be a bool tensor of shape {tuple(context.shape[:2])}, "
                                 f"got {context_mask.dtype} {tuple(context_mask.shape)}")
        elif context_mask is not None:
            raise ValueError("context_mask given without context")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x, t, y, context, context_mask, cond)
        emb = self.time_embed(t)
        if self.class_embed is not None:
            emb = emb + self.class_embed(y)
        emb_act = F.silu(emb)

        h = x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1)
        h = prefer_channels_last(h)
        ckpt = self.config.use_checkpoint and self.training
        skips = []
        for block in self.input_blocks:
            h = run_block(block, ckpt, h, emb_act, context, context_mask)
            skips.append(h)
        h = run_block(self.middle_block, ckpt, h, emb_act, context, context_mask)
        for block in self.output_blocks:
            h = run_block(block, ckpt, torch.cat([h, skips.pop()], dim=1), emb_act, context, context_mask)
        out = self.out_conv(F.silu(self.out_norm(h)))
        return out.contiguous()
