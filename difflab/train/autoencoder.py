"""Training the first stage of latent diffusion, the KL autoencoder (``difflab.nn.autoencoder``):
the autoencoder task of the training engine.

One step (latent-diffusion's ``AutoencoderKL.training_step`` with ``LPIPSWithDiscriminator``
minus the perceptual term), two updates:

1. draw a batch ``x`` (indices from a shuffled epoch order, optional flips) and the posterior
   noise ``eps`` for ``z = mean + std * eps`` from the engine's data generator;
2. autoencoder update on ``mean(rec + kl_weight * kl + d_weight * g_loss)``
   (:func:`~difflab.nn.autoencoder.autoencoder_loss`; the adversarial term only from
   ``model.disc_start`` on);
3. from ``model.disc_start`` on (and with ``model.disc_weight > 0``), a discriminator update on the
   hinge loss (:func:`~difflab.nn.autoencoder.discriminator_loss`).

Held-out reconstruction quality (the ``train.eval_split`` split, or for datasets without
one the last ``train.eval_n`` training images, left out of training) is written at the end:
PSNR of the posterior-mean reconstruction and the Frechet distance between the features of the
reconstructions and of the same held-out originals (``difflab.eval``, the dataset's clean
evaluation classifier: see :func:`find_eval_classifier`; skipped with a note when there is none),
``reconstruction.json`` and ``reconstructions.png``.

Layout of an autoencoder run folder::

    RUN_DIR/autoencoder.yaml                 the resolved AutoencoderRunConfig
    RUN_DIR/checkpoints/latest               names the newest complete checkpoint
    RUN_DIR/checkpoints/step_00000500/
        model.safetensors                    the autoencoder's weights
        ema.safetensors                      their moving average (with train.ema_decay)
        discriminator.safetensors            the PatchGAN discriminator's weights
        training_state.pt                    optimisers, generator, data position, step
        autoencoder.yaml                     the config that produced it
    RUN_DIR/metrics.jsonl, metrics.csv, loss.png
    RUN_DIR/tensorboard/                     TensorBoard event files (train.tensorboard)
    RUN_DIR/reconstruction.json, reconstructions.png
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..config import AutoencoderRunConfig, ConfigError
from ..data.transforms import random_hflip, uint8_to_float
from ..eval import ClassifierFeaturizer, default_classifier_path, load_metadata, psnr, reconstruction_quality
from ..files import write_text_atomic
from ..nn.autoencoder import AutoencoderKL, PatchDiscriminator, autoencoder_loss, discriminator_loss
from ..rng import randn
from ..runs import AE_CONFIG_NAME, DISC_NAME, autoencoder_checkpoint, load_autoencoder_config
from ..viz import save_grid
from .data import IndexStream, check_batch, check_images_fit, load_images
from .engine import train_task
from .runtime import stderr_log
from .task import Callback, Env, Networks, Task, TrainResult, Update, resumable

RECONSTRUCTION_JSON = "reconstruction.json"


def eval_classifier_dirs(dataset: str) -> list[Path]:
    """Where ``train.eval_classifier=auto`` looks for ``dataset``'s evaluation classifier: the cache
    that ``difflab evaluate`` fills (``~/.cache/difflab/eval_classifier/<dataset>``). Any other saved
    classifier is named with ``train.eval_classifier=FOLDER``."""
    return [default_classifier_path(dataset)]


def find_eval_classifier(dataset: str) -> Path | None:
    """The first folder of :func:`eval_classifier_dirs` that holds a saved evaluation classifier
    trained on ``dataset`` (by the ``dataset`` recorded beside its weights); None if there is none.
    Nothing is trained here: a missing classifier means no Frechet distance."""
    for directory in eval_classifier_dirs(dataset):
        if (directory / "model.safetensors").is_file() and (directory / "config.json").is_file():
            try:
                trained_on = load_metadata(directory).get("dataset", dataset)
            except (OSError, ValueError):
                continue
            if trained_on == dataset:
                return directory
    return None


def fd_featurizer(config: AutoencoderRunConfig, device, log):
    """``(ClassifierFeaturizer or None, its folder or None)`` for ``train.eval_classifier``; resolved
    before training so that a bad folder is reported before any time is spent."""
    choice, dataset = config.train.eval_classifier, config.data.dataset
    if choice == "none":
        return None, None
    directory = find_eval_classifier(dataset) if choice == "auto" else Path(choice)
    if directory is None:
        log(f"note: no evaluation classifier for {dataset} (looked in "
            f"{', '.join(map(str, eval_classifier_dirs(dataset)))}); the Frechet distance of reconstructions is "
            "skipped (difflab evaluate trains and caches one; or set train.eval_classifier=FOLDER)")
        return None, None
    try:
        featurizer = ClassifierFeaturizer.from_directory(directory, device=device)
        trained_on = load_metadata(directory).get("dataset")
    except (OSError, ValueError) as e:
        raise ConfigError(f"train.eval_classifier={choice}: {e}") from None
    if trained_on not in (None, dataset):
        log(f"note: train.eval_classifier={choice} was trained on {trained_on}, not on {dataset}")
    return featurizer, directory


@torch.no_grad()
def reconstruction_grid(ae: AutoencoderKL, x: torch.Tensor, path: Path) -> Path:
    """Held-out originals (top row) and their posterior-mean reconstructions (bottom row)."""
    device = next(ae.parameters()).device
    was_training = ae.training
    ae.eval()
    x_rec = ae.decode(ae.encode(x.to(device)).mode()).clamp(-1, 1).cpu()
    ae.train(was_training)
    return save_grid(torch.cat([x, x_rec]), path, nrow=len(x))


@dataclass
class AutoencoderTrainResult(TrainResult):
    quality: dict | None = None          # held-out reconstruction quality
    quality_json: Path | None = None
    reconstructions: Path | None = None  # grid: held-out originals (top) and reconstructions (bottom)


class AutoencoderTask(Task):
    """The KL autoencoder and its PatchGAN discriminator, two optimisers (see the module docstring)."""

    config_name = AE_CONFIG_NAME
    desc = "train autoencoder"
    sample_tag = "reconstructions"
    result_class = AutoencoderTrainResult

    def __init__(self, config: AutoencoderRunConfig, dataset=None, eval_dataset=None):
        self.config, self.dataset, self.eval_dataset = config, dataset, eval_dataset

    def check_resume(self, path: Path) -> Path:
        ckpt = autoencoder_checkpoint(path)
        return resumable(ckpt, load_autoencoder_config(ckpt / AE_CONFIG_NAME), self.config, ("model",), "data/train")

    def _load(self, split: str, log):
        ds = load_images(self.config.data, log, split=split, labels_from_folders=False)
        check_images_fit(ds, self.config.model, labels_needed_by=None)
        return ds

    def _train_and_held_out(self, log):
        """(training images uint8, held-out images uint8, description of the held-out set, dataset)."""
        cfg = self.config
        ds = self.dataset if self.dataset is not None else self._load(cfg.data.split, log)
        check_images_fit(ds, cfg.model, labels_needed_by=None)
        held = self.eval_dataset
        if held is None and self.dataset is None and cfg.train.eval_split != cfg.data.split:
            try:
                held = self._load(cfg.train.eval_split, log)
            except (ValueError, OSError) as e:
                log(f"note: {cfg.data.dataset} split {cfg.train.eval_split!r} unavailable ({str(e).splitlines()[0]}); "
                    f"holding out the last {cfg.train.eval_n} training images instead")
        if held is not None:
            return ds.images, held.images[:cfg.train.eval_n], f"{held.name} {held.split} split", ds
        n = min(cfg.train.eval_n, len(ds) // 5)     # a held-out slice of at most a fifth of the data
        if n < 1:
            raise ConfigError(f"{ds.name} has only {len(ds)} images: too few to hold any out for evaluation")
        return ds.images[:-n], ds.images[-n:], f"the last {n} images of {ds.name} {ds.split} (not trained on)", ds

    def setup(self, env: Env) -> None:
        cfg = self.config
        train_images, self.held_images, self.held_name, ds = self._train_and_held_out(env.log)
        self.featurizer, self.featurizer_dir = fd_featurizer(cfg, env.device, env.log)
        if self.featurizer is not None and len(self.held_images) < 2:
            env.log(f"note: only {len(self.held_images)} held-out image; the Frechet distance of reconstructions "
                    "is skipped")
            self.featurizer = None
        check_batch(len(train_images), ds, cfg.train.batch_size)
        self.images = train_images.to(env.device)
        self.hflip = ds.hflip if cfg.data.hflip is None else cfg.data.hflip
        self.use_disc = cfg.model.disc_weight > 0
        self.num_examples, self.ds_name, self.env = len(train_images), ds.name, env

    def build(self, env: Env) -> Networks:
        tc, mc = self.config.train, self.config.model
        self.ae = AutoencoderKL(mc).to(env.device)
        self.disc = PatchDiscriminator.from_config(mc).to(env.device)
        opt = torch.optim.AdamW(self.ae.parameters(), lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)
        d_opt = torch.optim.AdamW(self.disc.parameters(), lr=tc.disc_lr or tc.lr, betas=tc.adam_betas,
                                  weight_decay=tc.weight_decay)
        return Networks(self.ae, {"optimizer": opt, "disc_optimizer": d_opt}, {DISC_NAME: self.disc})

    def describe(self, nparams: int, step: int) -> str:
        tc, mc = self.config.train, self.config.model
        c, h, w = mc.latent_shape
        return (f"training a {nparams / 1e6:.2f}M-parameter KL autoencoder ({mc.in_channels}x{mc.image_size}x"
                f"{mc.image_size} -> {c}x{h}x{w}) on {self.env.device}: {self.ds_name} ({self.num_examples} images), "
                f"batch {tc.batch_size}, steps {step} -> {tc.steps}"
                + (f", discriminator from step {mc.disc_start}" if self.use_disc else ""))

    def draw(self, stream: IndexStream, gen: torch.Generator, env: Env):
        tc = self.config.train
        x = uint8_to_float(self.images[stream.next(tc.batch_size).to(env.device)])
        if self.hflip:
            x = random_hflip(x, gen)
        eps = randn((tc.batch_size, *self.config.model.latent_shape), gen).to(env.device)   # z = mean + std * eps
        return x[env.shard], eps[env.shard]

    def step(self, batch, step: int) -> Iterator[Update]:
        x, eps = batch
        mc = self.config.model
        out = autoencoder_loss(self.ae, x, step=step, discriminator=self.disc if self.use_disc else None, noise=eps)
        logs = {k: float(out[k].detach().mean()) for k in ("rec", "kl", "g_loss")}
        logs["psnr_db"] = float(psnr(x, out["x_rec"].clamp(-1, 1)).mean())
        yield Update("optimizer", out["loss"].mean(), {**logs, "d_loss": 0.0})
        if self.use_disc and step >= mc.disc_start:
            d_loss = discriminator_loss(self.disc, x, out["x_rec"], step=step, config=mc)["loss"].mean()
            yield Update("disc_optimizer", d_loss, {"d_loss": float(d_loss.detach())}, clip=False)

    def postfix(self, means: dict[str, float]) -> dict[str, str]:
        return {"rec": f"{means['rec']:.1f}", "psnr": f"{means['psnr_db']:.1f}"}

    def sample(self, model: torch.nn.Module, path: Path) -> Path:
        return reconstruction_grid(model, uint8_to_float(self.held_images[:8]), path)

    def finish(self, model: torch.nn.Module, result: AutoencoderTrainResult) -> None:
        held = uint8_to_float(self.held_images)
        quality = reconstruction_quality(model, held, featurizer=self.featurizer)
        doc = {"held_out": self.held_name, "step": result.step, "checkpoint": str(result.checkpoint), **quality,
               "reconstruction": "posterior mean, clamped to [-1, 1]; PSNR on the [0, 1] scale"}
        if self.featurizer is not None:
            doc.update(fd_classifier=str(self.featurizer_dir),
                       fd_reference=f"features of the same {len(held)} held-out originals (fd_featurizer); "
                                    "0 = reconstructions indistinguishable from them")
        else:
            doc.update(fd=None, fd_note=f"no evaluation classifier (train.eval_classifier="
                                        f"{self.config.train.eval_classifier})")
        result.quality = doc
        result.quality_json = write_text_atomic(result.run_dir / RECONSTRUCTION_JSON, json.dumps(doc, indent=2) + "\n")
        result.reconstructions = reconstruction_grid(model, held[:8], result.run_dir / "reconstructions.png")
        self.env.log_figure(self.sample_tag, result.reconstructions)


def train_autoencoder(config: AutoencoderRunConfig, run_dir: str | os.PathLike, *, resume: bool | str = False,
                      dataset=None, eval_dataset=None, progress: bool = True,
                      log: Callable[[str], None] = stderr_log, callbacks: Sequence[Callback] = ()
                      ) -> AutoencoderTrainResult:
    """Train the autoencoder of ``config`` into ``run_dir`` (``resume=True``: from its latest
    checkpoint); at the end, report held-out reconstruction quality. ``dataset`` / ``eval_dataset``:
    ImageDatasets to use instead of loading ``config.data`` (without ``eval_dataset``, a given
    ``dataset`` has its last ``train.eval_n`` images held out)."""
    return train_task(AutoencoderTask(config, dataset, eval_dataset), run_dir, resume=resume, progress=progress,
                      log=log, callbacks=callbacks)


__all__ = ["AutoencoderTask", "AutoencoderTrainResult", "eval_classifier_dirs", "find_eval_classifier",
           "fd_featurizer", "reconstruction_grid", "train_autoencoder"]
