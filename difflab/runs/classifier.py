"""Reading a noise-aware classifier run folder (``difflab train-classifier``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ClassifierRunConfig, load_config, save_config
from ..nn.classifier import EncoderClassifier
from .checkpoint import (CLASSIFIER_CONFIG_NAME, MODEL_NAME, STATE_NAME, checkpoint_of_kind, checkpoint_step,
                         load_config_and_weights, save_checkpoint_files, weights_writer)


def classifier_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder of a classifier run (its latest) or a checkpoint path; a clear error otherwise."""
    return checkpoint_of_kind(path, CLASSIFIER_CONFIG_NAME, "is not a classifier run (train one with: "
                                                            "difflab train-classifier --diffusion-from RUN)")


def load_classifier_config(path: str | os.PathLike) -> ClassifierRunConfig:
    return load_config(path, ClassifierRunConfig.KIND)


@dataclass
class LoadedClassifier:
    """A trained noise-aware classifier ready for guidance: ``classifier(x_t, t) -> logits``."""

    config: ClassifierRunConfig
    model: EncoderClassifier
    diffusion: Any
    checkpoint: Path
    step: int

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes


def load_classifier(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    use_ema: bool = True) -> LoadedClassifier:
    """Load a classifier run folder's latest checkpoint (or a given checkpoint folder), in eval mode;
    its EMA weights when it was trained with ``train.ema_decay`` (and ``use_ema``)."""
    ckpt = classifier_checkpoint(path)
    model, cfg = load_config_and_weights(ckpt, CLASSIFIER_CONFIG_NAME, "classifier", load_classifier_config,
                                         EncoderClassifier, use_ema)
    model.eval().requires_grad_(False)
    return LoadedClassifier(cfg, model.to(device), cfg.diffusion.build(), ckpt, checkpoint_step(ckpt))


def save_classifier_checkpoint(run_dir: str | os.PathLike, step: int, *, model_state: dict[str, torch.Tensor],
                               training_state: dict[str, Any], config: ClassifierRunConfig, keep: int = 2) -> Path:
    """Write a classifier checkpoint atomically (the writer of every run kind), point ``latest`` at it."""
    return save_checkpoint_files(run_dir, step, {
        MODEL_NAME: weights_writer(model_state, step),
        STATE_NAME: lambda path: torch.save(training_state, path),
        CLASSIFIER_CONFIG_NAME: lambda path: save_config(config, path),
    }, keep=keep)
