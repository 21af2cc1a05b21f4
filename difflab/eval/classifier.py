"""The clean evaluation classifier: a compact CNN for small 1-channel images (MNIST-like).

It is trained once on clean data (no diffusion noise, no augmentation) and then frozen.
Its penultimate activations are the feature space of ``ClassifierFeaturizer``
(``difflab.eval.featurizers``): a cheap, domain-specific stand-in for Inception features
when the data are handwritten digits, where ImageNet features are a poor fit.

Architecture (``image_size`` = s, a multiple of 4; inputs of any other size are resized to
s x s with bilinear interpolation, antialiased when shrinking)::

    conv3x3(C -> w0) BN ReLU, maxpool2           s   -> s/2
    conv3x3(w0 -> w1) BN ReLU, conv3x3(w1 -> w1) BN ReLU, maxpool2   s/2 -> s/4
    flatten, linear(w1 (s/4)^2 -> feature_dim), ReLU      <- features (penultimate layer)
    dropout, linear(feature_dim -> num_classes)           <- logits

Weights are stored as ``model.safetensors`` with ``config.json`` beside them (never pickle).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from difflab.eval.featurizers import Featurizer, check_images, resize
from difflab.files import atomic_write

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class EvalClassifierConfig:
    """Shape of the evaluation classifier. ``image_size`` is what the network sees."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    widths: tuple[int, int] = (32, 64)
    feature_dim: int = 128
    dropout: float = 0.25

    def __post_init__(self):
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.image_size < 4 or self.image_size % 4 != 0:
            raise ValueError(f"image_size must be a positive multiple of 4, got {self.image_size}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if len(self.widths) != 2 or min(self.widths) < 1:
            raise ValueError(f"widths must be two positive ints, got {self.widths}")
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EvalClassifierConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown EvalClassifierConfig fields {sorted(unknown)}; allowed: {sorted(known)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        return cls(**d)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class EvalClassifier(nn.Module):
    """Compact CNN; ``features(x)`` is the penultimate layer, ``forward(x)`` the logits."""

    def __init__(self, config: EvalClassifierConfig = EvalClassifierConfig()):
        super().__init__()
        self.config = config
        w0, w1 = config.widths
        self.block1 = _conv_bn_relu(config.in_channels, w0)
        self.block2 = nn.Sequential(_conv_bn_relu(w0, w1), _conv_bn_relu(w1, w1))
        side = config.image_size // 4
        self.fc = nn.Linear(w1 * side * side, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, in_channels, H, W]`` in [-1, 1], any H, W -> ``[N, feature_dim]``."""
        assert x.ndim == 4 and x.shape[1] == self.config.in_channels, x.shape
        x = resize(x, self.config.image_size)
        h = F.max_pool2d(self.block1(x), 2)
        h = F.max_pool2d(self.block2(h), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


# ----------------------------------------------------------------------------- validation


def _check_labels(labels: torch.Tensor, n: int, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be a 1-D tensor of length {n}, got {getattr(labels, 'shape', type(labels))}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")


# ----------------------------------------------------------------------------- training


def train_eval_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: EvalClassifierConfig | None = None,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvalClassifier:
    """Train an ``EvalClassifier`` on clean ``images`` ([N, C, H, W] in [-1, 1]) and ``labels``.

    AdamW with a one-cycle schedule (linear warm-up for 10% of the steps, cosine decay to 0),
    cross-entropy, no augmentation. ``seed`` fixes the initialisation, the shuffling and dropout;
    the global torch RNG state is left as it was. Returns the model in eval mode on ``device``.
    """
    if config is None:
        config = EvalClassifierConfig(in_channels=images.shape[1] if isinstance(images, torch.Tensor) and images.ndim == 4 else 1)
    check_images(images, channels=config.in_channels)
    _check_labels(labels, images.shape[0], config.num_classes)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")

    n = images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EvalClassifier(config).to(device)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        # Resize once up front rather than every step (the network would do it anyway).
        x_all = resize(images.float(), config.image_size)
        y_all = labels.long()
        model.train()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="train eval classifier", unit="step")
        step = 0
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                x, y = x_all[idx].to(device), y_all[idx].to(device)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar is not None:
            bar.close()
    return model.eval()


@torch.no_grad()
def predict(model: EvalClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels ``LongTensor[N]`` for ``images`` in [-1, 1]."""
    check_images(images, channels=model.config.in_channels)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(images[i : i + batch_size].to(device).float()).argmax(1).cpu() for i in range(0, images.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out)


def evaluate_accuracy(model: EvalClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` whose predicted class equals ``labels``."""
    _check_labels(labels, images.shape[0], model.config.num_classes)
    return float((predict(model, images, batch_size) == labels.long().cpu()).double().mean())


# ----------------------------------------------------------------------------- persistence


def save_eval_classifier(model: EvalClassifier, directory: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (atomically, each file).

    ``metadata`` (JSON-serialisable: dataset, accuracy, training time ...) is stored under
    the ``"metadata"`` key of ``config.json``; the network shape is under ``"config"``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    doc = {"kind": "difflab.eval.EvalClassifier", "config": model.config.to_dict(), "metadata": metadata or {}}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p)))
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(doc, indent=2) + "\n"))
    return directory


def load_eval_classifier(directory: str | os.PathLike, device: str | torch.device = "cpu") -> EvalClassifier:
    """Load a classifier written by ``save_eval_classifier``; returned in eval mode."""
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise ValueError(f"{directory} is not an eval-classifier directory: need {CONFIG_NAME} and {WEIGHTS_NAME}")
    doc = json.loads(cfg_path.read_text())
    if doc.get("kind") != "difflab.eval.EvalClassifier" or "config" not in doc:
        raise ValueError(f"{cfg_path} does not describe a difflab.eval.EvalClassifier")
    model = EvalClassifier(EvalClassifierConfig.from_dict(doc["config"]))
    model.load_state_dict(load_file(str(w_path)), strict=True)
    return model.to(device).eval()


def load_metadata(directory: str | os.PathLike) -> dict:
    """The ``metadata`` dict stored beside a saved classifier."""
    return json.loads((Path(directory) / CONFIG_NAME).read_text()).get("metadata", {})


def default_cache_dir() -> Path:
    """``~/.cache/difflab`` (pass ``cache_dir`` explicitly to put it elsewhere)."""
    return Path.home() / ".cache" / "difflab"


def default_classifier_path(dataset_name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory where the evaluation classifier for ``dataset_name`` is cached."""
    if not dataset_name or not all(c.isalnum() or c in "._-" for c in dataset_name):
        raise ValueError(f"dataset_name must be non-empty and use only letters, digits, '.', '_', '-': {dataset_name!r}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "eval_classifier" / dataset_name


def load_or_train_eval_classifier(
    dataset_name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    **train_kwargs,
) -> EvalClassifier:
    """Load the cached classifier for ``dataset_name``, or train it on (images, labels) and cache it."""
    path = default_classifier_path(dataset_name, cache_dir)
    if (path / WEIGHTS_NAME).is_file():
        return load_eval_classifier(path, device=device)
    t0 = time.perf_counter()
    model = train_eval_classifier(images, labels, device=device, **train_kwargs)
    meta = {"dataset": dataset_name, "train_size": int(images.shape[0]), "train_seconds": time.perf_counter() - t0}
    meta.update({k: v for k, v in train_kwargs.items() if isinstance(v, (int, float, str, bool))})
    save_eval_classifier(model, path, metadata=meta)
    return model


# ----------------------------------------------------------------------------- featurizer


class ClassifierFeaturizer(Featurizer):
    """Penultimate-layer features (``feature_dim``, post-ReLU) of a trained ``EvalClassifier``.

    ``name`` must identify the weights (it names cached statistics); ``from_directory``
    derives it from the dataset recorded beside the weights: ``eval-classifier-<dataset>``.
    """

    def __init__(self, model: EvalClassifier, name: str, device: str | torch.device | None = None):
        if not name:
            raise ValueError("a ClassifierFeaturizer needs a non-empty name identifying its weights")
        self.model = model if device is None else model.to(device)
        self.name = name
        self.feature_dim = model.config.feature_dim
        self.image_size = model.config.image_size
        self.channels = model.config.in_channels
        self.device = next(model.parameters()).device

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, device: str | torch.device = "cpu", name: str | None = None):
        model = load_eval_classifier(directory, device=device)
        if name is None:
            name = f"eval-classifier-{load_metadata(directory).get('dataset', Path(directory).name)}"
        return cls(model, name)

    def module(self) -> nn.Module:
        return self.model

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)
