"""Reading a KL autoencoder run folder (``difflab train-autoencoder``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import AutoencoderRunConfig, load_config
from ..nn.autoencoder import AutoencoderKL
from .checkpoint import AE_CONFIG_NAME, checkpoint_of_kind, load_config_and_weights

DISC_NAME = "discriminator.safetensors"


def autoencoder_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder of an autoencoder run (its latest) or of a checkpoint path; a clear
    error for anything else."""
    return checkpoint_of_kind(path, AE_CONFIG_NAME, "is not an autoencoder run "
                                                    "(train one with: difflab train-autoencoder --preset mnist-f4)")


def load_autoencoder_config(path: str | os.PathLike) -> AutoencoderRunConfig:
    return load_config(path, AutoencoderRunConfig.KIND)


def load_autoencoder(path: str | os.PathLike, *, device: str | torch.device = "cpu", use_ema: bool = True
                     ) -> tuple[AutoencoderKL, AutoencoderRunConfig, Path]:
    """``(autoencoder in eval mode, its run config, the checkpoint folder)`` of a trained run; its EMA
    weights when it was trained with ``train.ema_decay`` (and ``use_ema``)."""
    ckpt = autoencoder_checkpoint(path)
    ae, cfg = load_config_and_weights(ckpt, AE_CONFIG_NAME, "autoencoder", load_autoencoder_config, AutoencoderKL,
                                      use_ema)
    return ae.eval().to(device), cfg, ckpt
