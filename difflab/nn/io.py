"""Saving and loading networks: ``model.safetensors`` + ``config.json`` in a directory.

``config.json`` is ``{"format_version": 1, "class_name": "UNet", "config": {...}}``.
Weights are read with ``safetensors`` only (never pickle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_write
from .classifier import ClassifierConfig, EncoderClassifier
from .unet import UNet, UNetConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1
_MAX_LISTED = 5   # keys named in a mismatch message
MODEL_CLASSES: dict[str, tuple[type[nn.Module], type]] = {
    "UNet": (UNet, UNetConfig),
    "EncoderClassifier": (EncoderClassifier, ClassifierConfig),
}


def save_pretrained(module: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``module``'s weights and config to ``directory`` (created if needed); atomic per file."""
    from safetensors.torch import save_file

    class_name = type(module).__name__
    if class_name not in MODEL_CLASSES:
        raise ValueError(f"cannot save a {class_name}; supported: {sorted(MODEL_CLASSES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {"format_version": FORMAT_VERSION, "class_name": class_name, "config": module.config.to_dict()}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"class_name": class_name}))
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
    return directory


def _read_config(directory: Path):
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{path} not found: a saved model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not {"class_name", "config"} <= set(meta):
        raise ValueError(f"{path} must be an object with 'class_name' and 'config'")
    if meta.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {meta['format_version']!r} (expected {FORMAT_VERSION})")
    name = meta["class_name"]
    if name not in MODEL_CLASSES:
        raise ValueError(f"{path}: unknown class_name {name!r}; supported: {sorted(MODEL_CLASSES)}")
    model_cls, config_cls = MODEL_CLASSES[name]
    return model_cls, config_cls.from_dict(meta["config"])


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"{path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from None


def check_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise ``ValueError`` naming missing keys, unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(tensors)) if tensors[k].shape != expected[k].shape]
    def some(items: list[str]) -> str:   # a foreign file can differ in hundreds of keys: name a few
        shown = items[:_MAX_LISTED]
        return f"{shown}" + (f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys {some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys {some(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches [{'; '.join(shapes)}]")
    if problems:
        raise ValueError(f"{source} does not match the model config: " + "; ".join(problems))


def load_pretrained(directory: str | os.PathLike, expected_config=None, device: str | torch.device = "cpu"):
    """Rebuild the saved module from ``config.json`` and load ``model.safetensors`` into it.

    ``expected_config``: if given, the saved config must equal it (differing fields are named).
    """
    directory = Path(directory)
    model_cls, config = _read_config(directory)
    if expected_config is not None:
        if type(expected_config) is not type(config):
            raise ValueError(f"{directory} holds a {type(config).__name__}, expected a {type(expected_config).__name__}")
        if expected_config != config:
            want, got = expected_config.to_dict(), config.to_dict()
            diff = [f"{k}: saved {got[k]!r} vs expected {want[k]!r}" for k in want if want[k] != got[k]]
            raise ValueError(f"{directory}: config differs from the expected one: " + "; ".join(diff))
    tensors = _read_weights(directory / WEIGHTS_NAME)
    model = model_cls(config)
    check_state_dict(model, tensors, source=str(directory / WEIGHTS_NAME))
    model.load_state_dict(tensors)
    return model.to(device)


def diffusers_unet2d_kwargs(config: UNetConfig) -> dict:
    """Keyword arguments for ``diffusers.UNet2DModel`` building the same network as ``UNet(config)``.

    Only configs whose architecture diffusers' ``UNet2DModel`` can express are accepted:
    no class/image/text conditioning, conv resampling, additive timestep injection, the
    same head width at every attention layer and middle-block self-attention.
    """
    unsupported = []
    if config.num_classes is not None or config.cond_channels or config.context_dim is not None:
        unsupported.append("conditioning (num_classes / cond_channels / context_dim)")
    if config.resblock_updown:
        unsupported.append("resblock_updown")
    if config.use_scale_shift_norm:
        unsupported.append("use_scale_shift_norm")
    if not config.mid_attention:
        unsupported.append("mid_attention=False")
    if config.num_head_channels == -1 and len({config.model_channels * m for m in config.channel_mult}) > 1 \
            and config.num_heads != 1:
        unsupported.append("num_heads with varying widths (diffusers fixes the head width)")
    if unsupported:
        raise ValueError(f"no diffusers UNet2DModel equivalent for: {', '.join(unsupported)}")
    widths = tuple(config.model_channels * m for m in config.channel_mult)
    levels = len(widths)
    res = [config.image_size // 2**i for i in range(levels)]
    attn = [r in config.attention_resolutions for r in res]
    if config.num_head_channels != -1:
        head_dim = config.num_head_channels
    elif config.num_heads == 1:
        head_dim = None           # diffusers: one head as wide as the block
    else:
        head_dim = widths[0] // config.num_heads
    out = config.in_channels if config.out_channels is None else config.out_channels
    return dict(
        sample_size=config.image_size, in_channels=config.in_channels,
        out_channels=2 * out if config.learn_sigma else out,
        block_out_channels=widths, layers_per_block=config.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=head_dim, norm_num_groups=config.norm_groups, dropout=config.dropout,
        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, norm_eps=1e-5,
    )


def convert_diffusers_unet2d(state_dict: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """Rename a ``diffusers.UNet2DModel`` state dict (built with ``diffusers_unet2d_kwargs(config)``,
    e.g. google/ddpm-cifar10-32) into ``UNet(config)``'s keys. The two networks then compute
    the same function."""
    sd = dict(state_dict)
    out: dict[str, torch.Tensor] = {}

    def take(src: str, dst: str) -> None:
        for suffix in ("weight", "bias"):
            if f"{src}.{suffix}" in sd:
                out[f"{dst}.{suffix}"] = sd.pop(f"{src}.{suffix}")

    def resnet(src: str, dst: str) -> None:
        for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("time_emb_proj", "emb_proj"),
                     ("norm2", "norm2"), ("conv2", "conv2"), ("conv_shortcut", "skip")):
            take(f"{src}.{a}", f"{dst}.{b}")

    def attention(src: str, dst: str) -> None:
        take(f"{src}.group_norm", f"{dst}.norm")
        for suffix in ("weight", "bias"):
            out[f"{dst}.qkv.{suffix}"] = torch.cat([sd.pop(f"{src}.to_{n}.{suffix}") for n in "qkv"])
        take(f"{src}.to_out.0", f"{dst}.proj_out")

    n, levels = config.num_res_blocks, len(config.channel_mult)
    res = [config.image_size // 2**i for i in range(levels)]
    take("time_embedding.linear_1", "time_embed.linear_1")
    take("time_embedding.linear_2", "time_embed.linear_2")
    take("conv_in", "input_blocks.0.0")
    for level in range(levels):
        for i in range(n):
            dst = f"input_blocks.{1 + level * (n + 1) + i}"
            resnet(f"down_blocks.{level}.resnets.{i}", f"{dst}.0")
            if res[level] in config.attention_resolutions:
                attention(f"down_blocks.{level}.attentions.{i}", f"{dst}.1")
        if level != levels - 1:
            take(f"down_blocks.{level}.downsamplers.0.conv", f"input_blocks.{1 + level * (n + 1) + n}.0.conv")
    resnet("mid_block.resnets.0", "middle_block.0")
    attention("mid_block.attentions.0", "middle_block.1")
    resnet("mid_block.resnets.1", "middle_block.2")
    for j in range(levels):                       # j-th up block works at level levels-1-j
        has_attn = res[levels - 1 - j] in config.attention_resolutions
        for i in range(n + 1):
            dst = f"output_blocks.{j * (n + 1) + i}"
            resnet(f"up_blocks.{j}.resnets.{i}", f"{dst}.0")
            if has_attn:
                attention(f"up_blocks.{j}.attentions.{i}", f"{dst}.1")
        if j != levels - 1:
            take(f"up_blocks.{j}.upsamplers.0.conv", f"output_blocks.{j * (n + 1) + n}.{2 if has_attn else 1}.conv")
    take("conv_norm_out", "out_norm")
    take("conv_out", "out_conv")
    if sd:
        raise ValueError(f"unconverted diffusers keys: {sorted(sd)}")
    return out
