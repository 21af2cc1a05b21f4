"""What the networks' config dataclasses share: integer checks, the encoder's fields, dict round-trip."""

from __future__ import annotations

import dataclasses
from typing import Any

from .attention import resolve_heads
from .levels import resolution_levels


def check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate_encoder_fields(cfg: Any) -> None:
    """Checks shared by the U-Net and the encoder classifier configs."""
    check_int("image_size", cfg.image_size, 1)
    check_int("in_channels", cfg.in_channels, 1)
    check_int("model_channels", cfg.model_channels, 1)
    check_int("num_res_blocks", cfg.num_res_blocks, 1)
    check_int("norm_groups", cfg.norm_groups, 1)
    if not isinstance(cfg.channel_mult, tuple) or not cfg.channel_mult:
        raise ValueError(f"channel_mult must be a non-empty tuple of ints, got {cfg.channel_mult!r}")
    for m in cfg.channel_mult:
        check_int("each channel_mult entry", m, 1)
    levels = len(cfg.channel_mult)
    factor = 2 ** (levels - 1)
    if cfg.image_size % factor:
        raise ValueError(
            f"image_size={cfg.image_size} is not divisible by 2**(levels-1)={factor} for "
            f"{levels} levels (channel_mult={cfg.channel_mult}); use fewer levels or a size divisible by {factor}"
        )
    for m in (1,) + cfg.channel_mult:
        ch = cfg.model_channels * m
        if ch % cfg.norm_groups:
            raise ValueError(f"channel width {ch} is not divisible by norm_groups={cfg.norm_groups}")
    resolution_levels(cfg.attention_resolutions, cfg.image_size, levels, "attention_resolutions")
    if cfg.num_head_channels != -1:
        check_int("num_head_channels (or -1)", cfg.num_head_channels, 1)
    check_int("num_heads", cfg.num_heads, 1)
    for m in cfg.channel_mult:   # every width that may carry attention must split into heads
        resolve_heads(cfg.model_channels * m, cfg.num_heads, cfg.num_head_channels)
    if not (isinstance(cfg.dropout, (int, float)) and 0.0 <= cfg.dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout!r}")


class ConfigMixin:
    """``to_dict`` / ``from_dict`` for frozen config dataclasses (tuples become lists in JSON)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {unknown}; allowed: {sorted(names)}")
        kwargs = {}
        for k, v in d.items():
            kwargs[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)
