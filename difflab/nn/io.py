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
