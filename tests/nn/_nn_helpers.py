"""Shared helpers for the nn tests (not a test module)."""

import torch

from difflab.nn import UNet, get_unet_preset


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Give zero-initialised parameters (output convs/projections) small random values,
    so that every layer affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0 and p.ndim > 0:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def full_tiny(**overrides) -> UNet:
    """The tiny preset with every conditioning path switched on."""
    kw = dict(num_classes=3, cond_channels=2, context_dim=6, cross_attention_resolutions=(8, 4),
              use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True)
    kw.update(overrides)
    torch.manual_seed(0)
    return perturb_(UNet(get_unet_preset("tiny", **kw)))


def inputs(model: UNet, b: int = 2, seq: int = 5, seed: int = 0) -> dict:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    out = dict(x=torch.randn(b, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g),
               t=torch.randint(0, 1000, (b,), generator=g))
    if cfg.num_classes is not None:
        out["y"] = torch.randint(0, cfg.num_classes, (b,), generator=g)
    if cfg.cond_channels:
        out["cond"] = torch.randn(b, cfg.cond_channels, cfg.image_size, cfg.image_size, generator=g)
    if cfg.context_dim is not None:
        out["context"] = torch.randn(b, seq, cfg.context_dim, generator=g)
    return out


