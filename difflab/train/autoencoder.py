"""Training the first stage of latent diffusion: the KL autoencoder (``difflab.nn.autoencoder``).

One step (latent-diffusion's ``AutoencoderKL.training_step`` with ``LPIPSWithDiscriminator``
minus the perceptual term):

1. draw a batch ``x`` (indices from a shuffled epoch order, optional flips) and the posterior
   noise ``z = mean + std * eps`` from one explicit ``torch.Generator`` whose state is
   checkpointed, so a resumed run repeats an uninterrupted one bit for bit;
2. autoencoder step on ``mean(rec + kl_weight * kl + d_weight * g_loss)``
   (:func:`~difflab.nn.autoencoder.autoencoder_loss`; the adversarial term only from
   ``model.disc_start`` on);
3. from ``model.disc_start`` on (and with ``model.disc_weight > 0``), a discriminator step on the
   hinge loss (:func:`~difflab.nn.autoencoder.discriminator_loss`).

Held-out reconstruction quality (the ``train.eval_split`` split, or for datasets without
one the last ``train.eval_n`` training images, left out of training) is written at the end:
PSNR of the posterior-mean reconstruction and the Frechet distance between the features of the
reconstructions and of the same held-out originals (``difflab.eval``, the dataset's clean
evaluation classifier: see :func:`find_eval_classifier`; skipped with a note when there is none),
``reconstruction.json`` and ``reconstructions.png``.

Layout of an autoencoder run folder (the checkpoint writer of ``difflab.train.checkpoint``)::

    RUN_DIR/autoencoder.yaml                 the resolved AutoencoderRunConfig
    RUN_DIR/checkpoints/latest               names the newest complete checkpoint
    RUN_DIR/checkpoints/step_00000500/
        model.safetensors                    the autoencoder's weights
        discriminator.safetensors            the PatchGAN discriminator's weights
        training_state.pt                    optimisers, generator, data position, step
        autoencoder.yaml                     the config that produced it
    RUN_DIR/metrics.jsonl, metrics.csv, loss.png
    RUN_DIR/reconstruction.json, reconstructions.png
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import yaml
from tqdm.auto import tqdm

from ..config import ConfigError, DataConfig, apply_overrides, build_section, merge, read_config_file
from ..data.transforms import random_hflip, uint8_to_float
from ..nn.autoencoder import AutoencoderConfig, AutoencoderKL, PatchDiscriminator, autoencoder_loss, \
    discriminator_loss, get_ae_preset
from .checkpoint import MODEL_NAME, STATE_NAME, CheckpointError, _corrupt, _write_text_atomic, list_checkpoints, \
    load_state_into, load_training_state, load_weights, read_latest, resolve_checkpoint, save_checkpoint_files, \
    write_config_yaml
from .loop import IndexStream, _stderr_log, _StopRequest, check_images_fit, plot_metrics, resolve_device
from .metrics import MetricsLogger

AE_CONFIG_NAME = "autoencoder.yaml"
DISC_NAME = "discriminator.safetensors"
RECONSTRUCTION_JSON = "reconstruction.json"
STATE_FORMAT = 1


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """Optimisation of the autoencoder and its discriminator (Adam with betas (0.5, 0.9), as in
    latent-diffusion; ``disc_lr`` = None uses ``lr``)."""

    steps: int = 5000
    batch_size: int = 64
    lr: float = 4.5e-4
    disc_lr: float | None = None
    adam_betas: tuple[float, float] = (0.5, 0.9)
    grad_clip: float = 1.0            # max global grad norm of the autoencoder; 0 disables clipping
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_split: str = "test"          # held-out split for PSNR (a held-out training slice if the dataset has none)
    eval_n: int = 1000                # held-out images evaluated
    eval_classifier: str = "auto"     # FD featurizer: auto (the dataset's saved one, if any) | none | a folder
    num_threads: int = 0
    device: str = "auto"

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "eval_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "num_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "disc_lr"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"train.{name} must be a positive number, got {v}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ConfigError(f"train.adam_betas must lie in [0, 1), got {list(self.adam_betas)}")
        if self.device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if not isinstance(self.eval_classifier, str) or not self.eval_classifier.strip():
            raise ConfigError("train.eval_classifier must be 'auto', 'none' or the folder of an evaluation classifier "
                              f"(difflab.eval.save_eval_classifier), got {self.eval_classifier!r}")


@dataclass(frozen=True)
class AutoencoderRunConfig:
    """Everything that defines an autoencoder run: network + loss weights, data, training."""

    model: AutoencoderConfig = field(default_factory=lambda: get_ae_preset("mnist-f4"))
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="mnist"))
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)

    def __post_init__(self):
        m, d = self.model, self.data
        if d.image_size is not None and d.image_size != m.image_size:
            raise ConfigError(f"data.image_size={d.image_size} differs from model.image_size={m.image_size}")
        if d.channels is not None and d.channels != m.in_channels:
            raise ConfigError(f"data.channels={d.channels} differs from model.in_channels={m.in_channels}")

    def to_dict(self) -> dict[str, Any]:
        return {name: {f.name: (list(v) if isinstance(v := getattr(getattr(self, name), f.name), tuple) else v)
                       for f in dataclasses.fields(getattr(self, name))} for name in AE_SECTIONS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AutoencoderRunConfig":
        if not isinstance(d, Mapping) or set(d) - set(AE_SECTIONS):
            raise ConfigError(f"an autoencoder config must be a mapping with sections {', '.join(AE_SECTIONS)}"
                              + (f"; unknown: {sorted(set(d) - set(AE_SECTIONS))}" if isinstance(d, Mapping) else ""))

        def unknown_key(key: str) -> ConfigError:
            section = key.split(".", 1)[0]
            names = sorted(f.name for f in dataclasses.fields(AE_SECTIONS[section]))
            return ConfigError(f"unknown autoencoder config key {key!r}; allowed in {section}: {', '.join(names)}")

        try:
            return cls(**{name: build_section(section_cls, name, d.get(name, {}) or {}, unknown_key)
                          for name, section_cls in AE_SECTIONS.items()})
        except ValueError as e:   # AutoencoderConfig raises ValueError; report it as a config error
            raise ConfigError(str(e)) from None


AE_SECTIONS: dict[str, type] = {"model": AutoencoderConfig, "data": DataConfig, "train": AutoencoderTrainConfig}

AE_RUN_PRESETS: dict[str, AutoencoderRunConfig] = {
    # For tests: 8x8 digits -> 4x4x2, a few ms a step; the discriminator from step 10.
    "tiny": AutoencoderRunConfig(
        model=get_ae_preset("tiny", disc_start=10), data=DataConfig(dataset="digits"),
        train=AutoencoderTrainConfig(steps=20, batch_size=16, lr=1e-3, log_every=5, checkpoint_every=10,
                                     eval_n=64)),
    # MNIST 28x28 -> 7x7x4 (f4), the first stage of the MNIST latent-diffusion presets.
    "mnist-f4": AutoencoderRunConfig(
        model=get_ae_preset("mnist-f4"), data=DataConfig(dataset="mnist"),
        train=AutoencoderTrainConfig(steps=5000, batch_size=64, lr=4.5e-4, checkpoint_every=500)),
    # CIFAR-10 32x32x3 -> 8x8x4 (f4).
    "cifar10-f4": AutoencoderRunConfig(
        model=get_ae_preset("f4-32"), data=DataConfig(dataset="cifar10", hflip=True),
        train=AutoencoderTrainConfig(steps=50_000, batch_size=64, lr=4.5e-4, checkpoint_every=2000)),
}


def resolve_autoencoder_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                               overrides=(), base: AutoencoderRunConfig | None = None) -> AutoencoderRunConfig:
    """``base`` (or ``preset``, or the file's ``preset:``, default ``mnist-f4``) <- file <- ``section.key=value``."""
    file_data = read_config_file(config_file) if config_file is not None else {}
    file_preset = file_data.pop("preset", None)
    if base is None:
        name = preset or file_preset or "mnist-f4"
        if name not in AE_RUN_PRESETS:
            raise ConfigError(f"unknown autoencoder preset {name!r}; available: {', '.join(AE_RUN_PRESETS)}")
        base = AE_RUN_PRESETS[name]
    d = apply_overrides(merge(base.to_dict(), file_data), overrides)
    return AutoencoderRunConfig.from_dict(d)


def save_autoencoder_config(cfg: AutoencoderRunConfig, path: str | os.PathLike) -> Path:
    return write_config_yaml(cfg, path)


def load_autoencoder_config(path: str | os.PathLike) -> AutoencoderRunConfig:
    return AutoencoderRunConfig.from_dict(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})


# ----------------------------------------------------------------------------- loading a trained one
def autoencoder_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder of an autoencoder run (its latest) or of a checkpoint path; a clear
    error for anything else."""
    ckpt = resolve_checkpoint(path)
    if not (ckpt / AE_CONFIG_NAME).is_file():
        if (ckpt / "config.yaml").is_file() or (ckpt / "classifier.yaml").is_file():
            raise CheckpointError(f"{path} is not an autoencoder run "
                                  "(train one with: difflab train-autoencoder --preset mnist-f4)")
        raise _corrupt(ckpt, f"{AE_CONFIG_NAME} is missing", "file not found")
    return ckpt


def load_autoencoder(path: str | os.PathLike, *, device: str | torch.device = "cpu"
                     ) -> tuple[AutoencoderKL, AutoencoderRunConfig, Path]:
    """``(autoencoder in eval mode, its run config, the checkpoint folder)`` of a trained run."""
    ckpt = autoencoder_checkpoint(path)
    try:
        cfg = load_autoencoder_config(ckpt / AE_CONFIG_NAME)
    except (ConfigError, yaml.YAMLError) as e:
        raise _corrupt(ckpt, f"{AE_CONFIG_NAME} is not a valid autoencoder config", str(e)) from None
    ae = AutoencoderKL(cfg.model)
    load_state_into(ae, load_weights(ckpt, MODEL_NAME), ckpt, MODEL_NAME)
    return ae.eval().to(device), cfg, ckpt


# ----------------------------------------------------------------------------- evaluation
def psnr(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], on the [0, 1] scale:
    ``10 log10(1 / MSE)`` with ``MSE = mean(((x - x_rec) / 2)^2)`` over C, H, W."""
    mse = ((x - x_rec) / 2).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp(min=1e-12))


def eval_classifier_dirs(dataset: str) -> list[Path]:
    """Where ``train.eval_classifier=auto`` looks for ``dataset``'s evaluation classifier, in order:
    the classifier saved with the benchmarks of a source checkout
    (``benchmarks/artifacts/eval_classifier_<dataset>``, ``-`` spelled ``_``: the one every FD in
    benchmarks/RESULTS.md uses), then the cache that ``difflab evaluate`` fills
    (``~/.cache/difflab/eval_classifier/<dataset>``)."""
    from ..eval import default_classifier_path

    repo = Path(__file__).resolve().parents[2]
    saved = repo / "benchmarks" / "artifacts" / f"eval_classifier_{dataset.replace('-', '_')}"
    return [saved, default_classifier_path(dataset)]


def find_eval_classifier(dataset: str) -> Path | None:
    """The first folder of :func:`eval_classifier_dirs` that holds a saved evaluation classifier
    trained on ``dataset`` (by the ``dataset`` recorded beside its weights); None if there is none.
    Nothing is trained here: a missing classifier means no Frechet distance."""
    from ..eval import load_metadata

    for directory in eval_classifier_dirs(dataset):
        if (directory / "model.safetensors").is_file() and (directory / "config.json").is_file():
            try:
                trained_on = load_metadata(directory).get("dataset", dataset)
            except (OSError, ValueError):
                continue
            if trained_on == dataset:
                return directory
    return None


def _fd_featurizer(config: "AutoencoderRunConfig", device, log):
    """``(ClassifierFeaturizer or None, its folder or None)`` for ``train.eval_classifier``; resolved
    before training so that a bad folder is reported before any time is spent."""
    from ..eval import ClassifierFeaturizer, load_metadata

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
def reconstruction_quality(ae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256,
                           featurizer=None) -> dict[str, Any]:
    """PSNR and mean absolute error of the posterior-mean reconstructions ``D(E(x).mode())``
    (clamped to [-1, 1]) of ``images`` (float, [-1, 1]); with a ``featurizer``
    (:class:`difflab.eval.Featurizer`) also ``fd``: the Frechet distance between the features of
    the reconstructions and those of ``images`` (the reference; both n images, so a perfect
    autoencoder scores 0)."""
    device = next(ae.parameters()).device
    was_training = ae.training
    ae.eval()
    values, abs_err, recs = [], 0.0, []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        x_rec = ae.decode(ae.encode(x).mode()).clamp(-1, 1)
        values.append(psnr(x, x_rec).double().cpu())
        abs_err += float((x - x_rec).abs().flatten(1).mean(dim=1).sum())
        if featurizer is not None:
            recs.append(x_rec.cpu())
    ae.train(was_training)
    p = torch.cat(values)
    out = {"psnr_db": float(p.mean()), "psnr_db_std": float(p.std()) if len(p) > 1 else 0.0,
           "mean_abs_error": abs_err / len(images), "n": len(images)}
    if featurizer is not None:
        from ..eval import compute_stats, frechet_distance

        if len(images) < 2:
            raise ValueError(f"the Frechet distance needs at least 2 held-out images, got {len(images)}")
        ref = compute_stats(featurizer.features(images, batch_size), featurizer.name, "held-out", "originals")
        rec = compute_stats(featurizer.features(torch.cat(recs), batch_size), featurizer.name, "held-out",
                            "reconstructions")
        out.update(fd=frechet_distance(rec, ref), fd_featurizer=featurizer.name)
    return out


# ----------------------------------------------------------------------------- train
@dataclass
class AutoencoderTrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    checkpoint: Path | None
    quality: dict | None = None          # held-out reconstruction quality
    quality_json: Path | None = None
    reconstructions: Path | None = None  # grid: held-out originals (top) and reconstructions (bottom)
    metrics: Path | None = None
    loss_plot: Path | None = None
    last_loss: float | None = None


def _load_split(cfg: AutoencoderRunConfig, split: str):
    from ..data import load_dataset

    d = cfg.data
    ds = load_dataset(d.dataset, root=d.root, split=split, image_size=d.image_size, channels=d.channels,
                      download=d.download, skip_corrupt=d.skip_corrupt, hflip=d.hflip)
    check_images_fit(ds, cfg.model, labels_needed_by=None)
    return ds


def _train_and_held_out(cfg: AutoencoderRunConfig, dataset, eval_dataset, log):
    """(training images uint8, held-out images uint8, description of the held-out set)."""
    ds = dataset if dataset is not None else _load_split(cfg, cfg.data.split)
    check_images_fit(ds, cfg.model, labels_needed_by=None)
    held = eval_dataset
    if held is None and dataset is None and cfg.train.eval_split != cfg.data.split:
        try:
            held = _load_split(cfg, cfg.train.eval_split)
        except (ValueError, OSError) as e:
            log(f"note: {cfg.data.dataset} split {cfg.train.eval_split!r} unavailable ({str(e).splitlines()[0]}); "
                f"holding out the last {cfg.train.eval_n} training images instead")
    if held is not None:
        return ds.images, held.images[:cfg.train.eval_n], f"{held.name} {held.split} split", ds
    n = min(cfg.train.eval_n, len(ds) // 5)     # a held-out slice of at most a fifth of the data
    if n < 1:
        raise ConfigError(f"{ds.name} has only {len(ds)} images: too few to hold any out for evaluation")
    return ds.images[:-n], ds.images[-n:], f"the last {n} images of {ds.name} {ds.split} (not trained on)", ds


def train_autoencoder(config: AutoencoderRunConfig, run_dir: str | os.PathLike, *, resume: bool = False,
                      dataset=None, eval_dataset=None, progress: bool = True,
                      log: Callable[[str], None] = _stderr_log) -> AutoencoderTrainResult:
    """Train the autoencoder of ``config`` into ``run_dir`` (``resume=True``: from its latest
    checkpoint); at the end, report held-out reconstruction quality. ``dataset`` / ``eval_dataset``:
    ImageDatasets to use instead of loading ``config.data`` (without ``eval_dataset``, a given
    ``dataset`` has its last ``train.eval_n`` images held out)."""
    tc = config.train
    device = resolve_device(tc.device)
    threads = torch.get_num_threads()
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    try:
        return _train(config, Path(run_dir), device, resume, dataset, eval_dataset, progress, log)
    finally:
        torch.set_num_threads(threads)


def _train(config: AutoencoderRunConfig, run_dir: Path, device, resume, dataset, eval_dataset, progress, log):
    tc, mc = config.train, config.model
    ckpt = None
    if resume:
        ckpt = autoencoder_checkpoint(run_dir)
        if load_autoencoder_config(ckpt / AE_CONFIG_NAME).model != mc:
            raise ConfigError(f"cannot resume {ckpt}: its model config differs from the one given "
                              "(only data/train settings may change on resume)")
    elif list_checkpoints(run_dir) or read_latest(run_dir) is not None:
        raise ConfigError(f"{run_dir} already holds checkpoints; resume them (--resume) or choose another output "
                          "folder (--out)")

    train_images, held_images, held_name, ds = _train_and_held_out(config, dataset, eval_dataset, log)
    featurizer, featurizer_dir = _fd_featurizer(config, device, log)
    if featurizer is not None and len(held_images) < 2:
        log(f"note: only {len(held_images)} held-out image; the Frechet distance of reconstructions is skipped")
        featurizer = None
    if tc.batch_size > len(train_images):
        raise ConfigError(f"train.batch_size={tc.batch_size} is larger than the {len(train_images)} training images")
    images = train_images.to(device)
    hflip = ds.hflip if config.data.hflip is None else config.data.hflip
    use_disc = mc.disc_weight > 0

    torch.manual_seed(tc.seed)
    ae = AutoencoderKL(mc).to(device)
    disc = PatchDiscriminator.from_config(mc).to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=tc.lr, betas=tc.adam_betas)
    d_opt = torch.optim.Adam(disc.parameters(), lr=tc.disc_lr or tc.lr, betas=tc.adam_betas)
    gen = torch.Generator().manual_seed(tc.seed)
    stream = IndexStream(len(images), gen)
    step = 0
    if ckpt is not None:
        step = _restore(ckpt, ae, disc, opt, d_opt, gen, stream, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_autoencoder_config(config, run_dir / AE_CONFIG_NAME)
    nparams = sum(p.numel() for p in ae.parameters())
    c, h, w = mc.latent_shape
    log(f"training a {nparams / 1e6:.2f}M-parameter KL autoencoder ({mc.in_channels}x{mc.image_size}x{mc.image_size}"
        f" -> {c}x{h}x{w}) on {device}: {ds.name} ({len(images)} images), batch {tc.batch_size}, steps {step} -> "
        f"{tc.steps}" + (f", discriminator from step {mc.disc_start}" if use_disc else "") + f"; run folder {run_dir}")
    metrics = MetricsLogger(run_dir, resume_step=step, tensorboard=False)
    last_ckpt, last_loss = ckpt, None
    window: dict[str, float] = {}
    window_n, window_t0, t_start = 0, time.perf_counter(), time.perf_counter()
    bar = tqdm(total=tc.steps, initial=step, disable=not progress, desc="train autoencoder", unit="step",
               dynamic_ncols=True, file=sys.stderr)

    def checkpoint_now() -> Path:
        from safetensors.torch import save_file

        state = {"format": STATE_FORMAT, "step": step, "optimizer": opt.state_dict(),
                 "disc_optimizer": d_opt.state_dict(), "data_generator": gen.get_state(),
                 "data_stream": stream.state_dict()}
        cpu = lambda m: {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}  # noqa: E731
        return save_checkpoint_files(run_dir, step, {
            MODEL_NAME: lambda p: save_file(cpu(ae), str(p), metadata={"step": str(step)}),
            DISC_NAME: lambda p: save_file(cpu(disc), str(p), metadata={"step": str(step)}),
            STATE_NAME: lambda p: torch.save(state, p),
            AE_CONFIG_NAME: lambda p: save_autoencoder_config(config, p),
        }, keep=tc.keep_checkpoints)

    interrupted = False
    with _StopRequest(log) as stop:
        ae.train()
        disc.train()
        while step < tc.steps:
            if stop.signum is not None:
                interrupted = True
                break
            x = uint8_to_float(images[stream.next(tc.batch_size).to(device)])
            if hflip:
                x = random_hflip(x, gen)
            out = autoencoder_loss(ae, x, step=step, discriminator=disc if use_disc else None, generator=gen)
            loss = out["loss"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
            loss_value = float(loss.item())
            if not math.isfinite(loss_value):
                bar.close()
                raise RuntimeError(f"autoencoder loss is {loss_value} at step {step + 1}; try a lower train.lr"
                                   + (f" (last checkpoint: {last_ckpt})" if last_ckpt else ""))
            opt.step()
            d_loss = 0.0
            if use_disc and step >= mc.disc_start:
                d = discriminator_loss(disc, x, out["x_rec"], step=step, config=mc)
                d_opt.zero_grad(set_to_none=True)
                d["loss"].mean().backward()
                d_opt.step()
                d_loss = float(d["loss"].detach().mean())
            step += 1
            last_loss = loss_value
            row = {"loss": loss_value, **{k: float(out[k].detach().mean()) for k in ("rec", "kl", "g_loss")},
                   "d_loss": d_loss,
                   "psnr_db": float(psnr(x, out["x_rec"].clamp(-1, 1)).mean())}
            window = {k: window.get(k, 0.0) + v for k, v in row.items()}
            window_n += 1
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.steps:
                means = {k: v / window_n for k, v in window.items()}
                bar.set_postfix(rec=f"{means['rec']:.1f}", psnr=f"{means['psnr_db']:.1f}")
                metrics.log({"step": step, **means, "lr": tc.lr,
                             "images_per_s": window_n * tc.batch_size / max(time.perf_counter() - window_t0, 1e-9),
                             "elapsed_s": time.perf_counter() - t_start})
                window, window_n, window_t0 = {}, 0, time.perf_counter()
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                last_ckpt = checkpoint_now()
        if step and (last_ckpt is None or not last_ckpt.name.endswith(f"{step:08d}")):
            last_ckpt = checkpoint_now()
    bar.close()
    metrics.close()
    result = AutoencoderTrainResult(run_dir, step, interrupted, last_ckpt, metrics=metrics.jsonl, last_loss=last_loss)
    result.loss_plot = plot_metrics(run_dir)
    if interrupted:
        return result

    held = uint8_to_float(held_images)
    quality = reconstruction_quality(ae, held, featurizer=featurizer)
    doc = {"held_out": held_name, "step": step, "checkpoint": str(last_ckpt), **quality,
           "reconstruction": "posterior mean, clamped to [-1, 1]; PSNR on the [0, 1] scale"}
    if featurizer is not None:
        doc.update(fd_classifier=str(featurizer_dir),
                   fd_reference=f"features of the same {len(held)} held-out originals (fd_featurizer); "
                                "0 = reconstructions indistinguishable from them")
    else:
        doc.update(fd=None, fd_note=f"no evaluation classifier (train.eval_classifier={tc.eval_classifier})")
    result.quality = doc
    result.quality_json = run_dir / RECONSTRUCTION_JSON
    _write_text_atomic(result.quality_json, json.dumps(doc, indent=2) + "\n")
    result.reconstructions = _reconstruction_grid(ae, held[:8], run_dir / "reconstructions.png")
    return result


@torch.no_grad()
def _reconstruction_grid(ae: AutoencoderKL, x: torch.Tensor, path: Path) -> Path:
    from ..viz import save_grid

    device = next(ae.parameters()).device
    x_rec = ae.decode(ae.encode(x.to(device)).mode()).clamp(-1, 1).cpu()
    return save_grid(torch.cat([x, x_rec]), path, nrow=len(x))


def _restore(ckpt: Path, ae, disc, opt, d_opt, gen, stream, log) -> int:
    state = load_training_state(ckpt)
    load_state_into(ae, load_weights(ckpt, MODEL_NAME), ckpt, MODEL_NAME)
    load_state_into(disc, load_weights(ckpt, DISC_NAME), ckpt, DISC_NAME)
    try:
        opt.load_state_dict(state["optimizer"])
        d_opt.load_state_dict(state["disc_optimizer"])
        gen.set_state(state["data_generator"])
        stream.load_state_dict(state["data_stream"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {ckpt} has an unusable training state ({type(e).__name__}: {e})") from None
    log(f"resuming from {ckpt} (step {state['step']})")
    return int(state["step"])


__all__ = [
    "AE_RUN_PRESETS", "AutoencoderRunConfig", "AutoencoderTrainConfig", "AutoencoderTrainResult",
    "eval_classifier_dirs", "find_eval_classifier", "load_autoencoder", "psnr", "reconstruction_quality",
    "resolve_autoencoder_config", "train_autoencoder",
]
