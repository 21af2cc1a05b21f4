"""difflab's ``UNet`` <-> diffusers' ``UNet2DModel``: configs and state dicts, both ways.

Pure data (dicts of plain values and of tensors): nothing here imports diffusers.

The two networks are the same DDPM / ADM U-Net when

- difflab's ``conv_in`` width (``model_channels``) is the first level's width
  (``channel_mult[0] == 1``: diffusers' ``conv_in`` writes ``block_out_channels[0]``);
- a level has self-attention on its way down exactly when it has it on its way up
  (difflab's ``attention_resolutions`` serve both paths);
- every attention layer of one network has the same head width (diffusers'
  ``attention_head_dim``) or one head as wide as its block (``attention_head_dim=None``);
- there is no cross-attention and no concatenated image (those are ``UNet2DConditionModel``
  and friends in diffusers).

The fields each side names differently, left = difflab ``UNetConfig``, right = diffusers::

    image_size                   sample_size
    model_channels * channel_mult block_out_channels
    num_res_blocks               layers_per_block (up blocks: layers_per_block + 1)
    attention_resolutions        Attn{Down,Up}Block2D at those levels
    mid_attention                add_attention
    num_head_channels / -1       attention_head_dim / None
    resblock_updown              ResnetDownsampleBlock2D / downsample_type="resnet" (and up)
    use_scale_shift_norm         resnet_time_scale_shift="scale_shift"
    norm_groups                  norm_num_groups (and attn_norm_num_groups)
    num_classes + 1 (null class) num_class_embeds
    flip_sin_to_cos, freq_shift, downsample_padding, norm_eps: the same names
"""

from __future__ import annotations

from typing import Any

import torch

from ..nn.levels import level_fractions, resolution_levels
from ..nn.unet import UNetConfig

_TIME_EMBED_MULT = 4             # both networks: time embedding width = 4 * conv_in width
_DOWN_TYPES = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
_UP_TYPES = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D")
_ACTIVATIONS = ("silu", "swish")  # diffusers' names of the one activation difflab's U-Net uses
# Older diffusers checkpoints (e.g. google/ddpm-cifar10-32 as first uploaded) name attention weights so.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class InteropError(ValueError):
    """A model, config or folder that the other library cannot represent; the message names the field."""


# ----------------------------------------------------------------------------- configs
def _attention_widths(cfg: UNetConfig) -> set[int]:
    attn = resolution_levels(cfg.attention_resolutions, cfg.image_size, len(cfg.channel_mult))
    widths = {cfg.model_channels * m for level, m in enumerate(cfg.channel_mult) if level in attn}
    if cfg.mid_attention:
        widths.add(cfg.model_channels * cfg.channel_mult[-1])
    return widths


def unet2d_config(cfg: UNetConfig, *, out_channels: int | None = None) -> dict[str, Any]:
    """``UNet2DModel(**unet2d_config(cfg))`` is ``UNet(cfg)``'s network. ``out_channels``: another
    output width (e.g. ``in_channels`` to leave out learned-variance channels).

    Raises :class:`InteropError` naming each field diffusers' ``UNet2DModel`` cannot express."""
    problems = []
    if cfg.context_dim is not None:
        problems.append(f"context_dim={cfg.context_dim} (cross-attention: diffusers' UNet2DModel has none)")
    if cfg.cond_channels:
        problems.append(f"cond_channels={cfg.cond_channels} (an image concatenated to x_t: UNet2DModel has no input "
                        "for it)")
    if cfg.channel_mult[0] != 1:
        problems.append(f"channel_mult[0]={cfg.channel_mult[0]} (diffusers' conv_in writes the first level's width, "
                        "difflab's writes model_channels; only channel_mult[0]=1 maps)")
    widths = _attention_widths(cfg)
    if cfg.num_head_channels == -1 and cfg.num_heads > 1 and len(widths) > 1:
        problems.append(f"num_heads={cfg.num_heads} on attention layers of widths {sorted(widths)} (diffusers fixes "
                        "the head width, not the number of heads; use num_head_channels)")
    if problems:
        raise InteropError("no diffusers UNet2DModel equivalent for model." + "; model.".join(problems))
    levels = len(cfg.channel_mult)
    attn_levels = resolution_levels(cfg.attention_resolutions, cfg.image_size, levels)
    attn = [level in attn_levels for level in range(levels)]
    if cfg.num_head_channels != -1:
        head_dim = cfg.num_head_channels
    elif cfg.num_heads == 1 or not widths:
        head_dim = None                                   # diffusers: one head as wide as its block
    else:
        head_dim = next(iter(widths)) // cfg.num_heads
    plain_down, plain_up = ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if cfg.resblock_updown \
        else ("DownBlock2D", "UpBlock2D")
    resample = "resnet" if cfg.resblock_updown else "conv"
    scale_shift = cfg.use_scale_shift_norm
    return dict(
        sample_size=cfg.image_size, in_channels=cfg.in_channels,
        out_channels=cfg.resolved_out_channels if out_channels is None else out_channels,
        center_input_sample=False, time_embedding_type="positional", time_embedding_dim=None,
        freq_shift=int(cfg.freq_shift) if float(cfg.freq_shift).is_integer() else cfg.freq_shift,
        flip_sin_to_cos=cfg.flip_sin_to_cos,
        down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in attn),   # middle: UNetMidBlock2D
        up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attn)),
        block_out_channels=tuple(cfg.model_channels * m for m in cfg.channel_mult),
        layers_per_block=cfg.num_res_blocks, mid_block_scale_factor=1, downsample_padding=cfg.downsample_padding,
        downsample_type=resample, upsample_type=resample, dropout=cfg.dropout, act_fn="silu",
        attention_head_dim=head_dim, norm_num_groups=cfg.norm_groups,
        # with scale-shift ResBlocks diffusers' middle attention has no GroupNorm unless this is set
        attn_norm_num_groups=cfg.norm_groups if scale_shift else None,
        norm_eps=cfg.norm_eps, resnet_time_scale_shift="scale_shift" if scale_shift else "default",
        add_attention=cfg.mid_attention, class_embed_type=None,
        num_class_embeds=None if cfg.num_classes is None else cfg.num_classes + 1,
    )


# UNet2DModel's fields and their defaults (as of diffusers 0.42); a config.json may omit some.
_UNET2D_FIELDS: dict[str, Any] = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D", up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1, downsample_padding=1,
    downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu", attention_head_dim=8,
    norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5, resnet_time_scale_shift="default",
    add_attention=True, class_embed_type=None, num_class_embeds=None, num_train_timesteps=None,
)


def _refuse(field: str, value: Any, why: str) -> InteropError:
    return InteropError(f"UNet2DModel {field}={value!r}: {why}")


def _check_fixed(config: dict, field: str, allowed: tuple, why: str) -> None:
    if field in config and config[field] not in allowed:
        raise _refuse(field, config[field], why)


def _strip(name: str) -> str:
    return name[len("UNetRes"):] if isinstance(name, str) and name.startswith("UNetRes") else name


def _resampling(kinds: list[str], field: str) -> bool:
    """True for ResBlock resampling, False for convolutions; refuses a mixture."""
    if len(set(kinds)) > 1:
        raise _refuse(field, kinds, "difflab resamples every level the same way (all convolutions or all "
                                    "ResBlocks: model.resblock_updown)")
    return bool(kinds) and kinds[0] == "resnet"


def unet_config_from_unet2d(config: dict[str, Any], *, image_size: int | None = None) -> UNetConfig:
    """The ``UNetConfig`` of a ``UNet2DModel`` ``config.json``; :class:`InteropError` names any
    field or value difflab cannot represent (nothing is dropped silently)."""
    known = set(_UNET2D_FIELDS) | {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}
    for k, v in config.items():
        if k not in known and v is not None:
            raise _refuse(k, v, "a field difflab does not know (a newer diffusers feature?)")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise InteropError(f"_class_name={config['_class_name']!r}: difflab imports UNet2DModel only")
    c = {**_UNET2D_FIELDS, **{k: v for k, v in config.items() if k in _UNET2D_FIELDS}}
    _check_fixed(c, "center_input_sample", (False,), "difflab feeds x_t unchanged")
    _check_fixed(c, "time_embedding_type", ("positional",), "difflab has sinusoidal timestep features only")
    _check_fixed(c, "mid_block_type", ("UNetMidBlock2D",), "difflab's U-Net always has a middle block")
    _check_fixed(c, "mid_block_scale_factor", (1, 1.0), "difflab's middle block does not rescale")
    _check_fixed(c, "act_fn", _ACTIVATIONS, "difflab's U-Net uses SiLU")
    _check_fixed(c, "resnet_time_scale_shift", ("default", "scale_shift"), "difflab adds the timestep embedding "
                                                                           "or applies it as scale and shift")
    _check_fixed(c, "class_embed_type", (None,), "difflab's class embedding is a table (num_class_embeds)")
    _check_fixed(c, "downsample_padding", (0, 1), "difflab pads its stride-2 convolution by 0 or 1")
    for field in ("downsample_type", "upsample_type"):
        _check_fixed(c, field, ("conv", "resnet"), "difflab resamples by convolution or by ResBlock")
    channels = [int(ch) for ch in c["block_out_channels"]]
    c0 = channels[0]
    if any(ch % c0 for ch in channels):
        raise _refuse("block_out_channels", channels, f"difflab's widths are multiples of the first ({c0})")
    if c["time_embedding_dim"] not in (None, _TIME_EMBED_MULT * c0):
        raise _refuse("time_embedding_dim", c["time_embedding_dim"], f"difflab's is {_TIME_EMBED_MULT} x "
                                                                     f"block_out_channels[0] = {4 * c0}")
    if c["norm_num_groups"] is None:
        raise _refuse("norm_num_groups", None, "difflab needs a GroupNorm group count")
    attn_groups = c["attn_norm_num_groups"]
    if attn_groups is not None and attn_groups != c["norm_num_groups"]:
        raise _refuse("attn_norm_num_groups", attn_groups, f"difflab's attention norms use norm_num_groups="
                                                           f"{c['norm_num_groups']}")
    if attn_groups is None and c["add_attention"] and c["resnet_time_scale_shift"] == "scale_shift":
        raise _refuse("attn_norm_num_groups", None, "with resnet_time_scale_shift='scale_shift' the middle attention "
                                                    "has no GroupNorm; difflab's attention always has one")
    down = [_strip(t) for t in c["down_block_types"]]
    up = [_strip(t) for t in c["up_block_types"]]
    if len(down) != len(channels) or len(up) != len(channels):
        raise _refuse("down_block_types", c["down_block_types"], "needs one down and one up block per "
                                                                 "block_out_channels entry")
    for field, types, allowed in (("down_block_types", down, _DOWN_TYPES), ("up_block_types", up, _UP_TYPES)):
        for i, t in enumerate(types):
            if t not in allowed:
                raise _refuse(f"{field}[{i}]", t, f"difflab's U-Net has {', '.join(allowed)} only")
    levels = len(channels)
    attn_down = [t == "AttnDownBlock2D" for t in down]
    attn_up = [t == "AttnUpBlock2D" for t in reversed(up)]
    if attn_down != attn_up:
        level = next(i for i in range(levels) if attn_down[i] != attn_up[i])
        raise _refuse(f"up_block_types[{levels - 1 - level}]", up[levels - 1 - level],
                      f"down_block_types[{level}] is {down[level]}: difflab puts self-attention at a resolution on "
                      "both paths or on neither")
    down_kinds = [{"DownBlock2D": "conv", "ResnetDownsampleBlock2D": "resnet"}.get(t, c["downsample_type"])
                  for t in down[:-1]]
    up_kinds = [{"UpBlock2D": "conv", "ResnetUpsampleBlock2D": "resnet"}.get(t, c["upsample_type"]) for t in up[:-1]]
    resnet_down = _resampling(down_kinds, "down-sampling (down_block_types / downsample_type)")
    resnet_up = _resampling(up_kinds, "up-sampling (up_block_types / upsample_type)")
    if levels > 1 and resnet_down != resnet_up:
        raise _refuse("upsample_type", "resnet" if resnet_up else "conv", "difflab resamples down and up the same "
                                                                          "way (model.resblock_updown)")
    size = c["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise _refuse("sample_size", size, "difflab's U-Net takes square images")
        size = size[0]
    if image_size is not None:
        size = image_size
    if size is None:
        raise _refuse("sample_size", None, "give the image size (--image-size)")
    fractions = level_fractions(levels)       # attention by fraction of the image size, as the presets place it
    num_class_embeds = c["num_class_embeds"]
    if num_class_embeds is not None and num_class_embeds < 2:
        raise _refuse("num_class_embeds", num_class_embeds, "difflab keeps the last class as the null class, so it "
                                                            "needs at least 2")
    head_dim = c["attention_head_dim"]
    if isinstance(head_dim, (list, tuple)):
        if len(set(head_dim)) != 1:
            raise _refuse("attention_head_dim", head_dim, "difflab uses one head width everywhere")
        head_dim = head_dim[0]
    try:
        return UNetConfig(
            image_size=int(size), in_channels=c["in_channels"], out_channels=c["out_channels"], model_channels=c0,
            channel_mult=tuple(ch // c0 for ch in channels), num_res_blocks=c["layers_per_block"],
            attention_resolutions=tuple(fractions[i] for i, a in enumerate(attn_down) if a),
            mid_attention=bool(c["add_attention"]),
            num_heads=1, num_head_channels=-1 if head_dim is None else int(head_dim), dropout=float(c["dropout"]),
            num_classes=None if num_class_embeds is None else num_class_embeds - 1,
            resblock_updown=levels > 1 and resnet_down,
            use_scale_shift_norm=c["resnet_time_scale_shift"] == "scale_shift", norm_groups=c["norm_num_groups"],
            flip_sin_to_cos=bool(c["flip_sin_to_cos"]), freq_shift=float(c["freq_shift"]),
            downsample_padding=c["downsample_padding"], norm_eps=float(c["norm_eps"]))
    except (ValueError, TypeError) as e:
        raise InteropError(f"UNet2DModel config cannot be a difflab U-Net: {e}") from None


# ----------------------------------------------------------------------------- state dicts
def _resampler(ours: str, theirs: str, resblock: bool) -> tuple[str, str, str]:
    """A down/upsampler: a ResBlock (``resblock_updown``) or a convolution called ``conv`` on both sides."""
    return (ours, theirs, "resnet") if resblock else (f"{ours}.conv", f"{theirs}.conv", "plain")


def _module_pairs(cfg: UNetConfig) -> list[tuple[str, str, str]]:
    """``(difflab prefix, diffusers prefix, kind)`` for every module with weights; kind is
    "plain" (same parameter names), "resnet" or "attention"."""
    n, levels = cfg.num_res_blocks, len(cfg.channel_mult)
    attn_levels = resolution_levels(cfg.attention_resolutions, cfg.image_size, levels)
    pairs = [("time_embed.linear_1", "time_embedding.linear_1", "plain"),
             ("time_embed.linear_2", "time_embedding.linear_2", "plain"),
             ("input_blocks.0.0", "conv_in", "plain")]
    if cfg.num_classes is not None:
        pairs.append(("class_embed.embedding", "class_embedding", "plain"))
    for level in range(levels):
        for i in range(n):
            ours = f"input_blocks.{1 + level * (n + 1) + i}"
            pairs.append((f"{ours}.0", f"down_blocks.{level}.resnets.{i}", "resnet"))
            if level in attn_levels:
                pairs.append((f"{ours}.1", f"down_blocks.{level}.attentions.{i}", "attention"))
        if level != levels - 1:
            pairs.append(_resampler(f"input_blocks.{1 + level * (n + 1) + n}.0", f"down_blocks.{level}.downsamplers.0",
                                    cfg.resblock_updown))
    pairs.append(("middle_block.0", "mid_block.resnets.0", "resnet"))
    if cfg.mid_attention:
        pairs.append(("middle_block.1", "mid_block.attentions.0", "attention"))
    pairs.append((f"middle_block.{2 if cfg.mid_attention else 1}", "mid_block.resnets.1", "resnet"))
    for j in range(levels):                       # up block j works at level levels-1-j
        has_attn = levels - 1 - j in attn_levels
        for i in range(n + 1):
            ours = f"output_blocks.{j * (n + 1) + i}"
            pairs.append((f"{ours}.0", f"up_blocks.{j}.resnets.{i}", "resnet"))
            if has_attn:
                pairs.append((f"{ours}.1", f"up_blocks.{j}.attentions.{i}", "attention"))
        if j != levels - 1:
            pairs.append(_resampler(f"output_blocks.{j * (n + 1) + n}.{2 if has_attn else 1}",
                                    f"up_blocks.{j}.upsamplers.0", cfg.resblock_updown))
    pairs += [("out_norm", "conv_norm_out", "plain"), ("out_conv", "conv_out", "plain")]
    return pairs


_RESNET = (("norm1", "norm1"), ("conv1", "conv1"), ("emb_proj", "time_emb_proj"), ("norm2", "norm2"),
           ("conv2", "conv2"), ("skip", "conv_shortcut"))
_SUFFIXES = ("weight", "bias")


def rename_legacy_attention(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old diffusers attention names (``query``/``key``/``value``/``proj_attn``) to today's
    (``to_q``/``to_k``/``to_v``/``to_out.0``); other keys are kept as they are."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) >= 3 and "attentions" in parts and parts[-2] in LEGACY_ATTENTION_NAMES:
            key = ".".join(parts[:-2] + [LEGACY_ATTENTION_NAMES[parts[-2]], parts[-1]])
        out[key] = value
    return out


def _pop(sd: dict, key: str) -> torch.Tensor:
    if key not in sd:
        raise InteropError(f"the diffusers weights have no {key!r} (the config and the weights disagree)")
    return sd.pop(key)


def state_dict_to_difflab(state_dict: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """A ``UNet2DModel`` state dict (today's or the legacy attention names) as ``UNet(cfg)``'s;
    every tensor is used, and a key left over is an :class:`InteropError`."""
    sd = rename_legacy_attention(state_dict)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, kind in _module_pairs(cfg):
        if kind == "attention":
            out[f"{ours}.norm.weight"] = _pop(sd, f"{theirs}.group_norm.weight")
            out[f"{ours}.norm.bias"] = _pop(sd, f"{theirs}.group_norm.bias")
            for s in _SUFFIXES:       # difflab's qkv stacks [W_q; W_k; W_v] on the output axis
                out[f"{ours}.qkv.{s}"] = torch.cat([_pop(sd, f"{theirs}.to_{n}.{s}") for n in "qkv"])
                out[f"{ours}.proj_out.{s}"] = _pop(sd, f"{theirs}.to_out.0.{s}")
            continue
        names = _RESNET if kind == "resnet" else (("", ""),)
        for a, b in names:
            for s in _SUFFIXES:
                src = ".".join(p for p in (theirs, b, s) if p)
                if src in sd:
                    out[".".join(p for p in (ours, a, s) if p)] = sd.pop(src)
    if sd:
        left = sorted(sd)
        raise InteropError(f"{len(left)} diffusers weights have no place in the difflab U-Net: {left[:5]}"
                           + (" ..." if len(left) > 5 else ""))
    return out


def state_dict_to_unet2d(state_dict: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """``UNet(cfg)``'s state dict in ``UNet2DModel``'s names (the inverse of :func:`state_dict_to_difflab`)."""
    sd = dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, kind in _module_pairs(cfg):
        if kind == "attention":
            out[f"{theirs}.group_norm.weight"] = sd.pop(f"{ours}.norm.weight")
            out[f"{theirs}.group_norm.bias"] = sd.pop(f"{ours}.norm.bias")
            for s in _SUFFIXES:
                for n, part in zip("qkv", sd.pop(f"{ours}.qkv.{s}").chunk(3)):
                    out[f"{theirs}.to_{n}.{s}"] = part.contiguous()
                out[f"{theirs}.to_out.0.{s}"] = sd.pop(f"{ours}.proj_out.{s}")
            continue
        names = _RESNET if kind == "resnet" else (("", ""),)
        for a, b in names:
            for s in _SUFFIXES:
                src = ".".join(p for p in (ours, a, s) if p)
                if src in sd:
                    out[".".join(p for p in (theirs, b, s) if p)] = sd.pop(src)
    if sd:
        raise InteropError(f"difflab weights with no place in UNet2DModel: {sorted(sd)[:5]}")
    return out
