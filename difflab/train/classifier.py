"""Training the noise-aware classifier p_phi(y | x_t, t) used by classifier guidance: the classifier
task of the training engine.

As in guided diffusion (Dhariwal & Nichol 2021, section 4.1, ``classifier_train.py``) the
classifier sees images from the forward process of the diffusion it will guide:

    t ~ U{0..T-1},  eps ~ N(0, I),  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps     (DDPM eq. 4)
    loss = cross_entropy(classifier(x_t, t), y)

so it must use the same schedule and T as that diffusion (``--diffusion-from RUN`` copies
them from a trained run). The engine gives it everything a diffusion run gets (resume bit for
bit, EMA, LR decay, the time budget, torchrun, mixed precision).

Layout of a classifier run folder::

    RUN_DIR/classifier.yaml                  the resolved ClassifierRunConfig
    RUN_DIR/checkpoints/latest               names the newest complete checkpoint
    RUN_DIR/checkpoints/step_00000500/
        model.safetensors                    the classifier's weights
        ema.safetensors                      their moving average (with train.ema_decay)
        training_state.pt                    optimiser, generator, data position, step
        classifier.yaml                      the config that produced it
    RUN_DIR/metrics.jsonl, metrics.csv, loss.png
    RUN_DIR/tensorboard/                     TensorBoard event files (train.tensorboard)
    RUN_DIR/accuracy.json, accuracy.md       held-out accuracy per noise level (timestep bucket)
    RUN_DIR/accuracy.png                     the same as a bar chart
    RUN_DIR/samples/step_00000500.png        with train.sample_every: the chart at that step (and rows
                                             heldout_accuracy/tLO-HI, heldout_loss/tLO-HI in metrics.jsonl)
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..config import ClassifierRunConfig, resolve_classifier_config as resolve_from_config
from ..data.transforms import random_hflip, uint8_to_float
from ..files import write_text_atomic
from ..nn.classifier import EncoderClassifier
from ..rng import randint, randn
from ..runs import (CLASSIFIER_CONFIG_NAME, classifier_checkpoint, load_checkpoint_config, load_classifier_config,
                    resolve_checkpoint)
from ..viz import new_figure, save_figure
from .data import IndexStream, check_batch, check_images_fit, load_images
from .engine import train_task
from .heldout import SplitWriter, heldout_data
from .runtime import stderr_log
from .task import Callback, Env, Networks, Task, TrainResult, Update, resumable

ACCURACY_JSON = "accuracy.json"
ACCURACY_MD = "accuracy.md"
ACCURACY_PNG = "accuracy.png"
#: Held-out accuracy is reported for t in [b_i T, b_{i+1} T): with T = 1000 the buckets are
#: [0, 100), [100, 300), [300, 500), [500, 700), [700, 900), [900, 1000).
BUCKET_FRACTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def resolve_classifier_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                              overrides=(), diffusion_from: str | os.PathLike | None = None,
                              base: ClassifierRunConfig | None = None) -> ClassifierRunConfig:
    """``base`` (or ``preset``, default ``digits``) <- file <- the run ``diffusion_from`` <- ``section.key=value``.

    ``diffusion_from`` (a diffusion run or checkpoint folder) supplies the diffusion section and
    the image shape and data of the model to be guided, so the classifier sees the same x_t.
    """
    guided = load_checkpoint_config(resolve_checkpoint(diffusion_from)) if diffusion_from is not None else None
    return resolve_from_config(preset, config_file, overrides, guided=guided, base=base)


# ----------------------------------------------------------------------------- the loss and its evaluation
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


def accuracy_metrics(rows: list[dict], num_timesteps: int) -> dict[str, float]:
    """The metrics row of :func:`accuracy_by_noise_level`: ``heldout_accuracy/t000-100`` and
    ``heldout_loss/t000-100`` per bucket (timesteps zero-padded to T's width, so the tags sort by noise)."""
    width = len(str(num_timesteps))
    out = {}
    for r in rows:
        bucket = f"t{r['t_min']:0{width}d}-{r['t_max']:0{width}d}"
        out[f"heldout_accuracy/{bucket}"] = r["accuracy"]
        out[f"heldout_loss/{bucket}"] = r["loss"]
    return out


def plot_accuracy(rows: list[dict], path: str | os.PathLike, num_classes: int, title: str) -> Path:
    """Bar chart of the held-out accuracy per noise level, with chance (1 / classes) marked."""
    fig = new_figure((6.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    labels = [f"[{r['t_min']}, {r['t_max']})" for r in rows]
    bars = ax.bar(range(len(rows)), [r["accuracy"] for r in rows], color="C0")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(1.0 / num_classes, color="C3", linestyle="--", linewidth=1, label=f"chance (1/{num_classes})")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("timestep t (more noise to the right)")
    ax.set_ylabel("held-out accuracy")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title(textwrap.fill(title, 72), fontsize=9)
    return save_figure(fig, path)


def accuracy_markdown(rows: list[dict], title: str) -> str:
    lines = [f"## {title}", "", "| timesteps t | accuracy | cross-entropy | n |", "|---|---|---|---|"]
    lines += [f"| [{r['t_min']}, {r['t_max']}) | {r['accuracy']:.3f} | {r['loss']:.3f} | {r['n']} |" for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the task
@dataclass
class ClassifierTrainResult(TrainResult):
    accuracy: list[dict] | None = None      # held-out accuracy per timestep bucket
    accuracy_json: Path | None = None
    accuracy_md: Path | None = None
    accuracy_png: Path | None = None


class ClassifierTask(Task):
    """Cross-entropy of the classifier on x_t at every noise level (see the module docstring)."""

    config_name = CLASSIFIER_CONFIG_NAME
    desc = "train classifier"
    sample_tag = "heldout_accuracy"
    result_class = ClassifierTrainResult

    def __init__(self, config: ClassifierRunConfig, dataset=None, eval_dataset=None):
        self.config, self.dataset, self.eval_dataset = config, dataset, eval_dataset
        self.held: tuple | None = None     # (x, y, dataset) of the held-out images, once loaded
        self.held_tried = False

    def check_resume(self, path: Path) -> Path:
        ckpt = classifier_checkpoint(path)
        return resumable(ckpt, load_classifier_config(ckpt / CLASSIFIER_CONFIG_NAME), self.config,
                         ("model", "diffusion"), "data/train")

    def _load(self, split: str, log):
        ds = load_images(self.config.data, log, split=split, labels_from_folders=self.config.data.dataset == "folder")
        check_images_fit(ds, self.config.model, labels_needed_by="a classifier needs labels")
        return ds

    def setup(self, env: Env) -> None:
        cfg = self.config
        ds = self.dataset if self.dataset is not None else self._load(cfg.data.split, env.log)
        if self.dataset is not None:
            check_images_fit(ds, cfg.model, labels_needed_by="a classifier needs labels")
        check_batch(len(ds), ds, cfg.train.batch_size)
        self.images, self.labels = ds.images.to(env.device), ds.labels.to(env.device)
        self.hflip = ds.hflip if cfg.data.hflip is None else cfg.data.hflip
        self.diffusion = cfg.diffusion.build()
        self.num_examples, self.ds_name, self.env = len(ds), ds.name, env

    def build(self, env: Env) -> Networks:
        tc = self.config.train
        self.model = EncoderClassifier(self.config.model).to(env.device)
        opt = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)
        return Networks(self.model, {"optimizer": opt})

    def describe(self, nparams: int, step: int) -> str:
        tc, d = self.config.train, self.config.diffusion
        return (f"training a {nparams / 1e6:.2f}M-parameter noise-aware classifier on {self.env.device}: "
                f"{self.ds_name} ({self.num_examples} images), {d.schedule} schedule T={self.diffusion.num_timesteps}, "
                f"batch {tc.batch_size}, steps {step} -> {tc.steps}")

    def draw(self, stream: IndexStream, gen: torch.Generator, env: Env):
        tc, device = self.config.train, env.device
        idx = stream.next(tc.batch_size)
        x_0 = uint8_to_float(self.images[idx.to(device)])
        if self.hflip:
            x_0 = random_hflip(x_0, gen)
        y = self.labels[idx.to(device)]
        t = randint(self.diffusion.num_timesteps, tc.batch_size, gen).to(device)        # t ~ U{0..T-1}
        noise = randn(x_0.shape, gen).to(device)                                        # eps ~ N(0, I)
        s = env.shard
        return x_0[s], y[s], t[s], noise[s]

    def step(self, batch, step: int) -> Iterator[Update]:
        x_0, y, t, noise = batch
        loss, logits = classifier_loss(self.model, self.diffusion, x_0, y, t, noise)
        yield Update("optimizer", loss, {"train_accuracy": float((logits.argmax(1) == y).float().mean())})

    def postfix(self, means: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{means['loss']:.3f}", "acc": f"{means['train_accuracy']:.2f}"}

    def held_out(self) -> tuple | None:
        """``(x, y, dataset)``: ``train.eval_n`` held-out images (a seeded draw from ``train.eval_split``)
        and labels, loaded once; None (said once) when the split cannot be loaded."""
        if not self.held_tried:
            self.held_tried = True
            tc, held = self.config.train, self.eval_dataset
            if held is None:
                try:
                    held = self._load(tc.eval_split, self.env.log)
                except (ValueError, OSError) as e:
                    self.env.log(f"note: no held-out accuracy ({self.config.data.dataset} split {tc.eval_split!r} "
                                 f"could not be loaded: {str(e).splitlines()[0]})")
                    return None
            n = min(len(held), tc.eval_n)
            order = torch.randperm(len(held), generator=torch.Generator().manual_seed(tc.seed))[:n]
            self.held = (*held.get_batch(order), held)
        return self.held

    def evaluate(self, model: torch.nn.Module, path: Path, *, log_rows: bool, note: str = ""
                 ) -> tuple[list[dict], str] | None:
        """Held-out accuracy per noise level: ``(rows, title)``, a chart at ``path`` and (``log_rows``) their
        metrics row through ``env.log_metrics``; None without held-out images."""
        if self.held_out() is None:
            return None
        x, y, held = self.held
        rows = accuracy_by_noise_level(model, self.diffusion, x, y, seed=self.config.train.seed)
        if log_rows:
            self.env.log_metrics(accuracy_metrics(rows, self.diffusion.num_timesteps))
        title = f"held-out accuracy per noise level: {held.name} {held.split} split, n={len(x)}{note}"
        plot_accuracy(rows, path, self.config.model.num_classes, title)
        return rows, title

    def sample(self, model: torch.nn.Module, path: Path) -> Path | None:
        return path if self.evaluate(model, path, log_rows=True) is not None else None

    def finish(self, model: torch.nn.Module, result: ClassifierTrainResult) -> None:
        cfg = self.config
        T = self.diffusion.num_timesteps
        png = result.run_dir / ACCURACY_PNG
        # the curve's last point when one was asked for (train.sample_every); the tables and chart either way
        out = self.evaluate(model, png, log_rows=cfg.train.sample_every > 0,
                            note=f", step {result.step}, {cfg.diffusion.schedule} schedule T={T}")
        if out is None:
            return
        (rows, title), (x, _, held) = out, self.held
        result.accuracy, result.accuracy_png = rows, png
        doc: dict[str, Any] = {"dataset": held.name, "split": held.split, "n": len(x), "step": result.step,
                               "checkpoint": str(result.checkpoint), "schedule": cfg.diffusion.schedule,
                               "num_timesteps": T, "buckets": rows}
        result.accuracy_json = write_text_atomic(result.run_dir / ACCURACY_JSON, json.dumps(doc, indent=2) + "\n")
        result.accuracy_md = write_text_atomic(result.run_dir / ACCURACY_MD, accuracy_markdown(rows, title))
        self.env.log_figure(self.sample_tag, png)


def train_classifier(config: ClassifierRunConfig, run_dir: str | os.PathLike, *, resume: bool | str = False,
                     dataset=None, eval_dataset=None, progress: bool = True,
                     log: Callable[[str], None] = stderr_log, callbacks: Sequence[Callback] = ()
                     ) -> ClassifierTrainResult:
    """Train the noise-aware classifier of ``config`` into ``run_dir`` (``resume=True``: from its latest
    checkpoint); at the end, report held-out accuracy per noise level. ``dataset`` / ``eval_dataset``:
    ImageDatasets to use instead of loading ``config.data`` (train split / ``train.eval_split``).

    A folder with ``data.holdout_fraction > 0`` trains on the training side of its held-out split and
    measures its accuracy on the held-out side (RUN_DIR/split.json, kept on resume, as a diffusion run
    does). ``--diffusion-from`` copies the diffusion run's fraction and seed, and the split is a rule
    per image path, so the classifier holds out exactly the images its diffusion run held out."""
    callbacks = list(callbacks)
    held = heldout_data(config.data, run_dir, bool(resume), log, labels_from_folders=True) if dataset is None else None
    if held is not None and held.split is not None:
        dataset = held.train
        if eval_dataset is None:
            eval_dataset = dataclasses.replace(held.load_heldout(log, config.train.eval_split), split="held-out")
        callbacks.append(SplitWriter(held.split))
    return train_task(ClassifierTask(config, dataset, eval_dataset), run_dir, resume=resume, progress=progress,
                      log=log, callbacks=callbacks)


__all__ = [
    "ACCURACY_JSON", "ACCURACY_MD", "ACCURACY_PNG", "BUCKET_FRACTIONS", "ClassifierTask", "ClassifierTrainResult",
    "accuracy_by_noise_level", "accuracy_markdown", "accuracy_metrics", "classifier_loss", "plot_accuracy", "resolve_classifier_config",
    "timestep_buckets", "train_classifier",
]
