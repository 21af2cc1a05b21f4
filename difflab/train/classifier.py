"""Training the noise-aware classifier p_phi(y | x_t, t) used by classifier guidance.

As in guided diffusion (Dhariwal & Nichol 2021, section 4.1, ``classifier_train.py``) the
classifier sees images from the forward process of the diffusion it will guide:

    t ~ U{0..T-1},  eps ~ N(0, I),  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps     (DDPM eq. 4)
    loss = cross_entropy(classifier(x_t, t), y)

so it must use the same schedule and T as that diffusion (``--diffusion-from RUN`` copies
them from a trained run). Batches, timesteps and noise come from one explicit
``torch.Generator`` whose state is checkpointed: a resumed run repeats an uninterrupted one.

Layout of a classifier run folder (the checkpoint helpers of ``difflab.train.checkpoint``)::

    RUN_DIR/classifier.yaml                  the resolved ClassifierRunConfig
    RUN_DIR/checkpoints/latest               names the newest complete checkpoint
    RUN_DIR/checkpoints/step_00000500/
        model.safetensors                    the classifier's weights
        training_state.pt                    optimiser, generator, data position, step
        classifier.yaml                      the config that produced it
    RUN_DIR/metrics.jsonl, metrics.csv, loss.png
    RUN_DIR/accuracy.json, accuracy.md       held-out accuracy per noise level (timestep bucket)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from ..config import (
    ConfigError,
    DataConfig,
    apply_overrides,
    build_section,
    merge,
    read_config_file,
)
from ..data.transforms import random_hflip, uint8_to_float
from ..diffusion import DiffusionConfig
from ..nn.classifier import ClassifierConfig, EncoderClassifier
from ..nn.presets import get_classifier_preset
from ..rng import randint, randn
from .checkpoint import (
    MODEL_NAME,
    STATE_NAME,
    CheckpointError,
    _corrupt,
    _write_text_atomic,
    list_checkpoints,
    load_checkpoint_config,
    load_state_into,
    load_training_state,
    load_weights,
    read_latest,
    resolve_checkpoint,
    save_checkpoint_files,
    write_config_yaml,
)
from .loop import (
    IndexStream,
    _stderr_log,
    _StopRequest,
    check_images_fit,
    plot_metrics,
    resolve_device,
)
from .metrics import MetricsLogger

CLASSIFIER_CONFIG_NAME = "classifier.yaml"
ACCURACY_JSON = "accuracy.json"
ACCURACY_MD = "accuracy.md"
STATE_FORMAT = 1
#: Held-out accuracy is reported for t in [b_i T, b_{i+1} T): with T = 1000 the buckets are
#: [0, 100), [100, 300), [300, 500), [500, 700), [700, 900), [900, 1000).
BUCKET_FRACTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Optimisation of the noise-aware classifier (guided diffusion: AdamW 3e-4, weight decay 0.05)."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.05
    grad_clip: float = 1.0            # max global grad norm; 0 disables clipping
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_split: str = "test"          # held-out split for the per-noise-level accuracy
    eval_n: int = 1000                # held-out images per noise level (at most the split's size)
    num_threads: int = 0
    device: str = "auto"

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "eval_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "num_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"train.lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("train.weight_decay and train.grad_clip must be >= 0")
        if self.device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass(frozen=True)
class ClassifierRunConfig:
    """Everything that defines a classifier run: network, diffusion (must match the guided model), data, train."""

    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(labels=True))
    train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)

    def __post_init__(self):
        m, d = self.model, self.data
        if d.image_size is not None and d.image_size != m.image_size:
            raise ConfigError(f"data.image_size={d.image_size} differs from model.image_size={m.image_size}")
        if d.channels is not None and d.channels != m.in_channels:
            raise ConfigError(f"data.channels={d.channels} differs from model.in_channels={m.in_channels}")

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for name in CLASSIFIER_SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: (list(v) if isinstance(v := getattr(section, f.name), tuple) else v)
                         for f in dataclasses.fields(section)}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClassifierRunConfig":
        if not isinstance(d, Mapping):
            raise ConfigError(f"a classifier config must be a mapping with sections {', '.join(CLASSIFIER_SECTIONS)}")
        unknown = sorted(set(d) - set(CLASSIFIER_SECTIONS))
        if unknown:
            raise ConfigError(f"unknown classifier config section(s) {unknown}; allowed: {', '.join(CLASSIFIER_SECTIONS)}")
        def unknown_key(key: str) -> ConfigError:
            section = key.split(".", 1)[0]
            names = sorted(f.name for f in dataclasses.fields(CLASSIFIER_SECTIONS[section]))
            close = difflib.get_close_matches(key.split(".", 1)[1], names, n=1, cutoff=0.6)
            hint = f"; did you mean '{section}.{close[0]}'?" if close else f"; allowed in {section}: {', '.join(names)}"
            return ConfigError(f"unknown classifier config key {key!r}{hint}")

        return cls(**{name: build_section(section_cls, name, d.get(name, {}) or {}, unknown_key)
                      for name, section_cls in CLASSIFIER_SECTIONS.items()})


CLASSIFIER_SECTIONS: dict[str, type] = {"model": ClassifierConfig, "diffusion": DiffusionConfig, "data": DataConfig,
                                        "train": ClassifierTrainConfig}

CLASSIFIER_RUN_PRESETS: dict[str, ClassifierRunConfig] = {
    # For tests: the tiny diffusion preset's chain (linear, T=100) on 8x8 digits, a few ms a step.
    "tiny": ClassifierRunConfig(
        model=get_classifier_preset("tiny", num_classes=10),
        diffusion=DiffusionConfig(schedule="linear", num_timesteps=100),
        data=DataConfig(dataset="digits", labels=True),
        train=ClassifierTrainConfig(steps=20, batch_size=16, lr=1e-3, log_every=5, checkpoint_every=10,
                                    eval_n=64)),
    # Guides the 'digits' diffusion preset (cosine, T=1000).
    "digits": ClassifierRunConfig(
        model=get_classifier_preset("digits"),
        diffusion=DiffusionConfig(schedule="cosine", num_timesteps=1000),
        data=DataConfig(dataset="digits", labels=True),
        train=ClassifierTrainConfig(steps=3000, batch_size=128, lr=1e-3, checkpoint_every=1000)),
    # Guides the 'mnist' diffusion preset (cosine, T=1000).
    "mnist": ClassifierRunConfig(
        model=get_classifier_preset("mnist"),
        diffusion=DiffusionConfig(schedule="cosine", num_timesteps=1000),
        data=DataConfig(dataset="mnist", labels=True),
        train=ClassifierTrainConfig(steps=10_000, batch_size=128, lr=3e-4, checkpoint_every=2000)),
}


def resolve_classifier_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                              overrides=(), diffusion_from: str | os.PathLike | None = None,
                              base: ClassifierRunConfig | None = None) -> ClassifierRunConfig:
    """``base`` (or ``preset``, default ``digits``) <- file <- the run ``diffusion_from`` <- ``section.key=value``.

    ``diffusion_from`` (a diffusion run or checkpoint folder) supplies the diffusion section and
    the image shape and data of the model to be guided, so the classifier sees the same x_t.
    """
    file_data = read_config_file(config_file) if config_file is not None else {}
    file_preset = file_data.pop("preset", None)
    if base is None:
        name = preset or file_preset or "digits"
        if name not in CLASSIFIER_RUN_PRESETS:
            raise ConfigError(f"unknown classifier preset {name!r}; available: {', '.join(CLASSIFIER_RUN_PRESETS)}")
        base = CLASSIFIER_RUN_PRESETS[name]
    d = merge(base.to_dict(), file_data)
    if diffusion_from is not None:
        run_cfg = load_checkpoint_config(resolve_checkpoint(diffusion_from))
        m, data = run_cfg.model, run_cfg.data
        from_run = {"diffusion": {f.name: getattr(run_cfg.diffusion, f.name)
                                  for f in dataclasses.fields(run_cfg.diffusion)},
                    "model": {"image_size": m.image_size, "in_channels": m.in_channels},
                    "data": {"dataset": data.dataset, "root": data.root, "image_size": data.image_size,
                             "channels": data.channels}}
        if m.num_classes is not None:
            from_run["model"]["num_classes"] = m.num_classes
        d = merge(d, from_run)
        # a learned variance is irrelevant to the classifier; keep the chain only
        d["diffusion"]["variance"], d["diffusion"]["loss"] = "fixed_small", "simple"
    d = apply_overrides(d, overrides)
    return ClassifierRunConfig.from_dict(d)


def save_classifier_config(cfg: ClassifierRunConfig, path: str | os.PathLike) -> Path:
    return write_config_yaml(cfg, path)


def load_classifier_config(path: str | os.PathLike) -> ClassifierRunConfig:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return ClassifierRunConfig.from_dict(data or {})


# ----------------------------------------------------------------------------- checkpoints
def save_classifier_checkpoint(run_dir: str | os.PathLike, step: int, *, model_state: dict[str, torch.Tensor],
                               training_state: dict[str, Any], config: ClassifierRunConfig, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically (the same writer as diffusion runs), point ``latest`` at it."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    return save_checkpoint_files(run_dir, step, {
        MODEL_NAME: lambda path: save_file(state, str(path), metadata={"step": str(step)}),
        STATE_NAME: lambda path: torch.save(training_state, path),
        CLASSIFIER_CONFIG_NAME: lambda path: save_classifier_config(config, path),
    }, keep=keep)


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


def _classifier_checkpoint(path: str | os.PathLike) -> Path:
    ckpt = resolve_checkpoint(path)
    if not (ckpt / CLASSIFIER_CONFIG_NAME).is_file():
        if (ckpt / "config.yaml").is_file():
            raise CheckpointError(f"{path} is a diffusion run, not a classifier run "
                                  "(train one with: difflab train-classifier --diffusion-from RUN)")
        raise _corrupt(ckpt, f"{CLASSIFIER_CONFIG_NAME} is missing", "file not found")
    return ckpt


def load_classifier(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> LoadedClassifier:
    """Load a classifier run folder's latest checkpoint (or a given checkpoint folder), in eval mode."""
    ckpt = _classifier_checkpoint(path)
    try:
        cfg = load_classifier_config(ckpt / CLASSIFIER_CONFIG_NAME)
    except (ConfigError, yaml.YAMLError) as e:
        raise _corrupt(ckpt, f"{CLASSIFIER_CONFIG_NAME} is not a valid classifier config", str(e)) from None
    model = EncoderClassifier(cfg.model)
    load_state_into(model, load_weights(ckpt, MODEL_NAME), ckpt, MODEL_NAME)
    model.eval().requires_grad_(False)
    step = int(ckpt.name.split("_")[-1]) if ckpt.name.startswith("step_") else -1
    return LoadedClassifier(cfg, model.to(device), cfg.diffusion.build(), ckpt, step)


# ----------------------------------------------------------------------------- the step
def classifier_loss(classifier, diffusion, x_0: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, logits) of ``classifier`` on x_t ~ q(x_t | x_0) (DDPM eq. 4)."""
    x_t = diffusion.q_sample(x_0, t, noise)
    logits = classifier(x_t, t)
    return F.cross_entropy(logits, y), logits


def timestep_buckets(num_timesteps: int, fractions=BUCKET_FRACTIONS) -> list[tuple[int, int]]:
    """Non-empty [lo, hi) timestep ranges at the given fractions of T."""
    edges = sorted({min(num_timesteps, round(f * num_timesteps)) for f in fractions} | {0, num_timesteps})
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


@torch.no_grad()
def accuracy_by_noise_level(classifier, diffusion, images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0,
                            batch_size: int = 256, buckets: list[tuple[int, int]] | None = None) -> list[dict]:
    """Accuracy on ``images`` (float, [-1, 1]) noised to a timestep drawn uniformly from each bucket.

    Every bucket uses the same images, with timesteps and noise from a generator seeded ``seed``.
    """
    buckets = buckets or timestep_buckets(diffusion.num_timesteps)
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    rows = []
    for lo, hi in buckets:
        gen = torch.Generator().manual_seed(seed)
        correct, nll = 0, 0.0
        for start in range(0, len(images), batch_size):
            x_0 = images[start:start + batch_size]
            y = labels[start:start + batch_size]
            t = lo + randint(hi - lo, len(x_0), gen)
            noise = randn(x_0.shape, gen)
            x_t = diffusion.q_sample(x_0, t, noise)
            logits = classifier(x_t.to(device), t.to(device)).float().cpu()
            correct += int((logits.argmax(1) == y).sum())
            nll += float(F.cross_entropy(logits, y, reduction="sum"))
        rows.append({"t_min": lo, "t_max": hi, "accuracy": correct / len(images), "loss": nll / len(images),
                     "n": len(images)})
    classifier.train(was_training)
    return rows


def accuracy_markdown(rows: list[dict], title: str) -> str:
    lines = [f"## {title}", "", "| timesteps t | accuracy | cross-entropy | n |", "|---|---|---|---|"]
    lines += [f"| [{r['t_min']}, {r['t_max']}) | {r['accuracy']:.3f} | {r['loss']:.3f} | {r['n']} |" for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- train
@dataclass
class ClassifierTrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    checkpoint: Path | None
    accuracy: list[dict] | None = None      # held-out accuracy per timestep bucket
    accuracy_json: Path | None = None
    accuracy_md: Path | None = None
    metrics: Path | None = None
    loss_plot: Path | None = None
    last_loss: float | None = None


def _load_data(cfg: ClassifierRunConfig, split: str, log):
    from ..data import load_dataset

    d = cfg.data
    ds = load_dataset(d.dataset, root=d.root, split=split, image_size=d.image_size, channels=d.channels,
                      download=d.download, labels_from_folders=d.dataset == "folder", skip_corrupt=d.skip_corrupt,
                      hflip=d.hflip)
    check_images_fit(ds, cfg.model, labels_needed_by="a classifier needs labels")
    return ds


def train_classifier(config: ClassifierRunConfig, run_dir: str | os.PathLike, *, resume: bool = False,
                     dataset=None, eval_dataset=None, progress: bool = True,
                     log: Callable[[str], None] = _stderr_log) -> ClassifierTrainResult:
    """Train the noise-aware classifier of ``config`` into ``run_dir`` (``resume=True``: from its latest
    checkpoint); at the end, report held-out accuracy per noise level. ``dataset`` / ``eval_dataset``:
    ImageDatasets to use instead of loading ``config.data`` (train split / ``train.eval_split``)."""
    tc = config.train
    run_dir = Path(run_dir)
    device = resolve_device(tc.device)
    threads = torch.get_num_threads()
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    try:
        return _train_classifier(config, run_dir, device, resume, dataset, eval_dataset, progress, log)
    finally:
        torch.set_num_threads(threads)


def _train_classifier(config, run_dir: Path, device, resume, dataset, eval_dataset, progress, log):
    tc = config.train
    ckpt = None
    if resume:
        ckpt = _classifier_checkpoint(run_dir)
        saved = load_classifier_config(ckpt / CLASSIFIER_CONFIG_NAME)
        if saved.model != config.model or saved.diffusion != config.diffusion:
            raise ConfigError(f"cannot resume {ckpt}: its model/diffusion config differs from the one given "
                              "(only data/train settings may change on resume)")
    elif list_checkpoints(run_dir) or read_latest(run_dir) is not None:
        raise ConfigError(f"{run_dir} already holds checkpoints; resume them (--resume) or choose another output "
                          "folder (--out)")

    ds = dataset if dataset is not None else _load_data(config, config.data.split, log)
    if tc.batch_size > len(ds):
        raise ConfigError(f"train.batch_size={tc.batch_size} is larger than the {len(ds)} training images")
    images, labels = ds.images.to(device), ds.labels.to(device)
    hflip = ds.hflip if config.data.hflip is None else config.data.hflip
    diffusion = config.diffusion.build()
    T = diffusion.num_timesteps

    torch.manual_seed(tc.seed)
    model = EncoderClassifier(config.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    stream = IndexStream(len(ds), gen)
    torch.manual_seed(tc.seed + 1)
    step = 0
    if ckpt is not None:
        step = _restore(ckpt, model, opt, gen, stream, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_classifier_config(config, run_dir / CLASSIFIER_CONFIG_NAME)
    nparams = sum(p.numel() for p in model.parameters())
    log(f"training a {nparams / 1e6:.2f}M-parameter noise-aware classifier on {device}: {ds.name} ({len(ds)} images), "
        f"{config.diffusion.schedule} schedule T={T}, batch {tc.batch_size}, steps {step} -> {tc.steps}; "
        f"run folder {run_dir}")
    metrics = MetricsLogger(run_dir, resume_step=step, tensorboard=False)
    last_ckpt, last_loss = ckpt, None
    window_loss, window_correct, window_n, window_t0 = 0.0, 0, 0, time.perf_counter()
    t_start = time.perf_counter()
    bar = tqdm(total=tc.steps, initial=step, disable=not progress, desc="train classifier", unit="step",
               dynamic_ncols=True, file=sys.stderr)

    def checkpoint_now() -> Path:
        state = {"format": STATE_FORMAT, "step": step, "optimizer": opt.state_dict(),
                 "data_generator": gen.get_state(), "data_stream": stream.state_dict(),
                 "rng_cpu": torch.get_rng_state()}
        return save_classifier_checkpoint(run_dir, step, model_state=model.state_dict(), training_state=state,
                                          config=config, keep=tc.keep_checkpoints)

    interrupted = False
    with _StopRequest(log) as stop:
        model.train()
        while step < tc.steps:
            if stop.signum is not None:
                interrupted = True
                break
            idx = stream.next(tc.batch_size)
            x_0 = uint8_to_float(images[idx.to(device)])
            if hflip:
                x_0 = random_hflip(x_0, gen)
            y = labels[idx.to(device)]
            t = randint(T, tc.batch_size, gen).to(device)        # t ~ U{0..T-1}
            noise = randn(x_0.shape, gen).to(device)
            loss, logits = classifier_loss(model, diffusion, x_0, y, t, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            loss_value = float(loss.item())
            if not math.isfinite(loss_value):
                bar.close()
                raise RuntimeError(f"classifier loss is {loss_value} at step {step + 1}; try a lower train.lr"
                                   + (f" (last checkpoint: {last_ckpt})" if last_ckpt else ""))
            opt.step()
            step += 1
            last_loss = loss_value
            window_loss += loss_value
            window_correct += int((logits.argmax(1) == y).sum())
            window_n += 1
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.steps:
                elapsed = time.perf_counter() - window_t0
                mean_loss = window_loss / window_n
                acc = window_correct / (window_n * tc.batch_size)
                bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{acc:.2f}")
                metrics.log({"step": step, "loss": mean_loss, "train_accuracy": acc, "lr": tc.lr,
                             "images_per_s": window_n * tc.batch_size / max(elapsed, 1e-9),
                             "elapsed_s": time.perf_counter() - t_start})
                window_loss, window_correct, window_n, window_t0 = 0.0, 0, 0, time.perf_counter()
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                last_ckpt = checkpoint_now()
        if interrupted and (last_ckpt is None or not last_ckpt.name.endswith(f"{step:08d}")):
            last_ckpt = checkpoint_now()
    bar.close()
    metrics.close()
    result = ClassifierTrainResult(run_dir, step, interrupted, last_ckpt, metrics=metrics.jsonl, last_loss=last_loss)
    result.loss_plot = plot_metrics(run_dir)
    if interrupted:
        return result

    held = eval_dataset if eval_dataset is not None else _load_held_out(config, log)
    if held is not None:
        n = min(len(held), tc.eval_n)
        order = torch.randperm(len(held), generator=torch.Generator().manual_seed(tc.seed))[:n]
        x, y = held.get_batch(order)
        rows = accuracy_by_noise_level(model, diffusion, x, y, seed=tc.seed)
        result.accuracy = rows
        title = (f"held-out accuracy per noise level: {held.name} {held.split} split, n={n}, "
                 f"step {step}, {config.diffusion.schedule} schedule T={T}")
        doc = {"dataset": held.name, "split": held.split, "n": n, "step": step, "checkpoint": str(last_ckpt),
               "schedule": config.diffusion.schedule, "num_timesteps": T, "buckets": rows}
        result.accuracy_json = run_dir / ACCURACY_JSON
        _write_text_atomic(result.accuracy_json, json.dumps(doc, indent=2) + "\n")
        result.accuracy_md = run_dir / ACCURACY_MD
        _write_text_atomic(result.accuracy_md, accuracy_markdown(rows, title))
    return result


def _load_held_out(config: ClassifierRunConfig, log):
    split = config.train.eval_split
    try:
        return _load_data(config, split, log)
    except (ValueError, OSError) as e:
        log(f"note: no held-out accuracy ({config.data.dataset} split {split!r} could not be loaded: "
            f"{str(e).splitlines()[0]})")
        return None


def _restore(ckpt: Path, model, opt, gen, stream, log) -> int:
    state = load_training_state(ckpt)
    load_state_into(model, load_weights(ckpt, MODEL_NAME), ckpt, MODEL_NAME)
    try:
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["data_generator"])
        stream.load_state_dict(state["data_stream"])
        torch.set_rng_state(state["rng_cpu"].clone())
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {ckpt} has an unusable training state ({type(e).__name__}: {e})") from None
    log(f"resuming from {ckpt} (step {state['step']})")
    return int(state["step"])


__all__ = [
    "ACCURACY_JSON", "ACCURACY_MD", "BUCKET_FRACTIONS", "CLASSIFIER_RUN_PRESETS", "ClassifierRunConfig",
    "ClassifierTrainConfig", "ClassifierTrainResult", "LoadedClassifier", "accuracy_by_noise_level",
    "classifier_loss", "load_classifier", "resolve_classifier_config", "save_classifier_checkpoint",
    "timestep_buckets", "train_classifier",
]
