"""Reading a diffusion run folder: its config, its latent space / text encoder, its network for sampling."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..conditioning import LATENT_DIR, TEXT_ENCODER_JSON, RunConditioning
from ..config import ConfigError, RunConfig, load_config
from ..latent import LatentDiffusion
from ..nn.text import TextEncoderConfig
from ..nn.unet import UNet
from .checkpoint import (AE_CONFIG_NAME, CLASSIFIER_CONFIG_NAME, CONFIG_NAME, EMA_NAME, MODEL_NAME, CheckpointError,
                         checkpoint_error, checkpoint_step, load_state_into, load_weights, resolve_checkpoint)


def load_checkpoint_config(ckpt: Path) -> RunConfig:
    """The :class:`RunConfig` saved in a diffusion checkpoint folder (a clear error for another run kind)."""
    path = ckpt / CONFIG_NAME
    for other, kind in ((AE_CONFIG_NAME, "an autoencoder"), (CLASSIFIER_CONFIG_NAME, "a classifier")):
        if not path.is_file() and (ckpt / other).is_file():
            raise CheckpointError(f"{ckpt} belongs to {kind} run, not to a diffusion run")
    if not path.is_file():
        raise checkpoint_error(ckpt, f"{CONFIG_NAME} is missing", "file not found")
    try:
        return load_config(path)
    except ConfigError as e:
        raise checkpoint_error(ckpt, f"{CONFIG_NAME} is not a valid run config", str(e)) from None


def read_conditioning(config: RunConfig, ckpt: Path, device) -> tuple[LatentDiffusion | None, TextEncoderConfig | None]:
    """What a checkpoint holds besides the network: the latent space (autoencoder + scale factor) of a
    latent run and the trainable text encoder's config (vocabulary included) of a text run."""
    latent, text_config = None, None
    if config.latent.autoencoder is not None:
        try:
            latent = LatentDiffusion.load(ckpt / LATENT_DIR, device=device)
        except (ValueError, OSError) as e:
            raise checkpoint_error(ckpt, f"{LATENT_DIR}/ (the autoencoder and scale factor) is missing or unreadable",
                                   e) from None
    if config.cond.text == "trainable":
        try:
            text_config = TextEncoderConfig.from_dict(json.loads((ckpt / TEXT_ENCODER_JSON).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:
            raise checkpoint_error(ckpt, f"{TEXT_ENCODER_JSON} is missing or invalid", e) from None
    return latent, text_config


@dataclass
class LoadedRun:
    """A trained network ready to sample: its config, the module (eval mode), the diffusion."""

    config: RunConfig
    model: torch.nn.Module
    diffusion: Any
    checkpoint: Path
    step: int
    weights: str        # "ema" or "model"
    conditioning: RunConditioning | None = None   # latent / text / low-res runs


def load_run(path: str | os.PathLike, *, use_ema: bool = True, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run folder's latest checkpoint (or a given checkpoint folder) for sampling."""
    ckpt = resolve_checkpoint(path)
    cfg = load_checkpoint_config(ckpt)
    name = EMA_NAME if use_ema else MODEL_NAME
    tensors = load_weights(ckpt, name)
    conditioning = RunConditioning.for_sampling(cfg, *read_conditioning(cfg, ckpt, device), device)
    model = UNet(cfg.model) if conditioning is None else conditioning.network(UNet(cfg.model))
    load_state_into(model, tensors, ckpt, name)
    model.eval().requires_grad_(False)
    return LoadedRun(cfg, model.to(device), cfg.diffusion.build(), ckpt, checkpoint_step(ckpt),
                     "ema" if use_ema else "model", conditioning)
