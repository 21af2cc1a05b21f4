"""Named network configurations (DiT's ``DiT_models`` registry, as frozen dataclasses).

``get_unet_preset("mnist", dropout=0.0)`` returns the preset with fields overridden.
"""

from __future__ import annotations

import dataclasses

from .classifier import ClassifierConfig
from .unet import UNetConfig

UNET_PRESETS: dict[str, UNetConfig] = {
    # For tests: runs a forward in about a millisecond.
    "tiny": UNetConfig(image_size=8, in_channels=1, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=("1/2",), num_head_channels=8, norm_groups=4),
    # sklearn's 8x8 digits (values 0..16 rescaled to [-1, 1]): 8 -> 4 -> 2.
    "digits": UNetConfig(image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2, 2),
                         num_res_blocks=2, attention_resolutions=("1/2",), num_head_channels=16, dropout=0.1,
                         norm_groups=8),
    # MNIST 28x28: 28 -> 14 -> 7; self-attention only at 1/4 of the image size (7x7, 49 tokens), where
    # it is cheap.
    "mnist": UNetConfig(image_size=28, in_channels=1, model_channels=32, channel_mult=(1, 2, 2),
                        num_res_blocks=2, attention_resolutions=("1/4",), num_head_channels=16, dropout=0.1,
                        norm_groups=8),
    # DDPM paper's CIFAR-10 network (Ho et al. 2020, Appendix B): 35.7M parameters.
    "cifar10": UNetConfig(image_size=32, in_channels=3, model_channels=128, channel_mult=(1, 2, 2, 2),
                          num_res_blocks=2, attention_resolutions=("1/2",), num_heads=1, dropout=0.1,
                          norm_groups=32),
    # Latent diffusion on an 8x8x4 autoencoder latent with text cross-attention (context from a
    # 384-wide sentence encoder such as all-MiniLM-L6-v2).
    "latent": UNetConfig(image_size=8, in_channels=4, model_channels=64, channel_mult=(1, 2), num_res_blocks=2,
                         attention_resolutions=(), num_head_channels=32, context_dim=384,
                         cross_attention_resolutions=("1/1", "1/2"), transformer_depth=1, norm_groups=32),
    # Latent diffusion on the 7x7x4 latent of the mnist-f4 autoencoder: one level (7 is odd, so no
    # downsampling), self-attention in the middle, text cross-attention (a 64-wide trainable encoder).
    "latent-7": UNetConfig(image_size=7, in_channels=4, model_channels=64, channel_mult=(1,), num_res_blocks=2,
                           attention_resolutions=(), num_head_channels=32, context_dim=64,
                           cross_attention_resolutions=("1/1",), transformer_depth=1, norm_groups=32),
}

CLASSIFIER_PRESETS: dict[str, ClassifierConfig] = {
    "tiny": ClassifierConfig(image_size=8, in_channels=1, num_classes=3, model_channels=8, channel_mult=(1, 2),
                             num_res_blocks=1, attention_resolutions=("1/2",), num_head_channels=8, norm_groups=4),
    "digits": ClassifierConfig(image_size=8, in_channels=1, num_classes=10, model_channels=32,
                               channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=("1/2",),
                               num_head_channels=16, norm_groups=8),
    "mnist": ClassifierConfig(image_size=28, in_channels=1, num_classes=10, model_channels=32,
                              channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=("1/4",),
                              num_head_channels=16, norm_groups=8),
}


def _get(registry: dict, kind: str, name: str, overrides: dict):
    if name not in registry:
        raise ValueError(f"unknown {kind} preset {name!r}; available: {sorted(registry)}")
    cfg = registry[name]
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cfg)})
    if unknown:
        raise ValueError(f"unknown {type(cfg).__name__} fields in overrides: {unknown}")
    return dataclasses.replace(cfg, **overrides)


def get_unet_preset(name: str, **overrides) -> UNetConfig:
    return _get(UNET_PRESETS, "U-Net", name, overrides)


def get_classifier_preset(name: str, **overrides) -> ClassifierConfig:
    return _get(CLASSIFIER_PRESETS, "classifier", name, overrides)
