"""The saved config of a run folder of any kind, for resuming it."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import AutoencoderRunConfig, ClassifierRunConfig, RunConfig, RunSpec
from .autoencoder import autoencoder_checkpoint, load_autoencoder_config
from .checkpoint import AE_CONFIG_NAME, CLASSIFIER_CONFIG_NAME, resolve_checkpoint
from .classifier import classifier_checkpoint, load_classifier_config
from .diffusion import load_checkpoint_config


def saved_run_config(kind: str, path: str | os.PathLike) -> tuple[Path, RunSpec]:
    """``(checkpoint folder, the config saved in it)`` of a run of ``kind`` (a run or checkpoint folder);
    a CheckpointError for a folder of another kind."""
    if kind == RunConfig.KIND:
        ckpt = resolve_checkpoint(path)
        return ckpt, load_checkpoint_config(ckpt)
    if kind == ClassifierRunConfig.KIND:
        ckpt = classifier_checkpoint(path)
        return ckpt, load_classifier_config(ckpt / CLASSIFIER_CONFIG_NAME)
    if kind == AutoencoderRunConfig.KIND:
        ckpt = autoencoder_checkpoint(path)
        return ckpt, load_autoencoder_config(ckpt / AE_CONFIG_NAME)
    raise ValueError(f"unknown run kind {kind!r}")
