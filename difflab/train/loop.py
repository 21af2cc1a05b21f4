"""The training loop: ``train(config, run_dir)``.

One step (DDPM Algorithm 1, with the options of iDDPM / ADM):

1. draw the global batch ``x_0`` (indices from a shuffled epoch order), optional flips,
   ``t ~ U{0..T-1}``, ``eps ~ N(0, I)`` and, for a class-conditional model, replace each
   label by the null class with probability ``class_dropout`` (classifier-free guidance);
   all from one explicit ``torch.Generator`` whose state is checkpointed, so a resumed
   run repeats an uninterrupted one bit for bit;
2. keep this process's slice of the batch (data parallel, see ``distributed``);
3. ``loss = mean(diffusion.training_losses(model, x_0, t, noise=eps)["loss"])`` under
   autocast when ``mixed_precision`` asks for it;
4. backward, clip the global gradient norm, skip the update if the loss or the gradient
   is not finite (stop after ``max_nonfinite_steps`` such steps in a row);
5. AdamW with linear warm-up of the learning rate, then the EMA update.

SIGINT / SIGTERM finish the current step, write a checkpoint and return with
``interrupted=True``; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..compile import compile_model
from ..config import ConfigError, RunConfig, save_config
from ..data import check_batch_size
from ..data.transforms import random_hflip, uint8_to_float
from ..rng import randint, randn
from ..timestep_sampling import make_timestep_sampler
from . import distributed as D
from .conditioning import RunConditioning
from .checkpoint import (
    EMA_NAME,
    MODEL_NAME,
    CheckpointError,
    list_checkpoints,
    load_checkpoint_config,
    load_state_into,
    load_training_state,
    load_weights,
    read_latest,
    resolve_checkpoint,
    save_checkpoint,
)
from .ema import EMA
from .metrics import MetricsLogger, read_metrics
from .sampling import sample_images, with_default_guidance

STATE_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss kept being NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int                      # optimiser steps completed
    interrupted: bool              # stopped early by SIGINT / SIGTERM
    checkpoint: Path | None        # the last checkpoint written
    samples: Path | None = None    # final sample grid (rank 0)
    loss_plot: Path | None = None
    metrics: Path | None = None
    last_loss: float | None = None
    skipped_steps: int = 0


# ----------------------------------------------------------------------------- small pieces
def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; otherwise check the device exists."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return dev


def learning_rate(step: int, lr: float, warmup_steps: int, decay: str = "constant", total_steps: int = 0,
                  time_frac: float | None = None) -> float:
    """The learning rate of the update taking ``step`` -> ``step + 1``.

    Linear warm-up ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` updates, then
    ``constant``, or decayed to 0 at ``total_steps``: ``cosine`` (SGDR, Loshchilov & Hutter 2017,
    eq. 5 with one cycle) or ``linear``. With a decay, the schedule depends on ``total_steps``:
    resuming with another ``train.steps`` bends the rest of the curve. ``time_frac`` (the used
    fraction of a time budget) makes the decay reach 0 at the budget when that comes first:
    the decay follows whichever of the two fractions is further along.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant":
        return lr
    span = max(1, total_steps - warmup_steps)
    frac = min(1.0, (step - warmup_steps) / span)
    if time_frac is not None:
        frac = min(1.0, max(frac, time_frac))
    if decay == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    if decay == "linear":
        return lr * (1.0 - frac)
    raise ValueError(f"unknown lr decay {decay!r}; allowed: constant, cosine, linear")


class IndexStream:
    """Batches of dataset indices: a fresh permutation each epoch, the remainder dropped.

    Its state (permutation, position, epoch) plus the generator's state is the data position.
    """

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.perm: torch.Tensor | None = None
        self.pos, self.epoch = 0, 0

    def next(self, batch_size: int) -> torch.Tensor:
        if self.perm is None or self.pos + batch_size > self.n:
            if self.perm is not None:
                self.epoch += 1
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + batch_size]
        self.pos += batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        perm = self.perm if self.perm is not None else torch.empty(0, dtype=torch.long)
        return {"perm": perm, "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.perm = s["perm"] if s["perm"].numel() else None
        self.pos, self.epoch = int(s["pos"]), int(s["epoch"])


@dataclass
class Batch:
    x_0: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    y: torch.Tensor | None
    weights: torch.Tensor | None = None   # importance weights of the timesteps (loss-aware sampling)
    t_global: torch.Tensor | None = None  # the whole batch's timesteps, for the sampler's loss history
    idx: torch.Tensor | None = None       # the whole batch's dataset indices (conditioning looks them up)


def draw_batch(images: torch.Tensor, labels: torch.Tensor | None, stream: IndexStream, gen: torch.Generator, *,
               batch_size: int, num_timesteps: int, hflip: bool, null_class: int | None, class_dropout: float,
               shard: slice, timestep_sampler=None, to_x_0=None) -> Batch:
    """The global batch, drawn in a fixed order from ``gen``, then this process's ``shard`` of it.
    ``to_x_0(indices, gen)`` replaces the images as x_0 (a latent run's z_0)."""
    device = images.device
    idx = stream.next(batch_size)
    x_0 = uint8_to_float(images[idx.to(device)]) if to_x_0 is None else to_x_0(idx, gen)
    if hflip:
        x_0 = random_hflip(x_0, gen)
    if timestep_sampler is None:
        t, weights = randint(num_timesteps, batch_size, gen).to(device), None
    else:
        t, weights = timestep_sampler.sample(batch_size, gen)
        t, weights = t.to(device), weights.to(device)
    noise = randn(x_0.shape, gen).to(device)
    y = None
    if labels is not None:
        y = labels[idx.to(device)]
        drop = (torch.rand(batch_size, generator=gen) < class_dropout).to(device)
        y = torch.where(drop, torch.full_like(y, null_class), y)
    return Batch(x_0[shard], t[shard], noise[shard], None if y is None else y[shard],
                 None if weights is None else weights[shard], t, idx)


def _autocast(device: torch.device, mode: str):
    if mode == "no":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def _check_mixed_precision(device: torch.device, mode: str, log: Callable[[str], None]) -> None:
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA device (it trains with a GradScaler); "
                          "use 'bf16' or 'no'")
    if mode == "bf16" and device.type == "cpu":
        log("warning: bf16 autocast on this CPU is usually much slower than fp32 (no native bf16 matrix units); "
            "set train.mixed_precision=no unless you have measured otherwise")


def _set_threads(cfg: RunConfig, device: torch.device) -> None:
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    elif device.type == "cpu" and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        local = int(os.environ["LOCAL_WORLD_SIZE"])
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def load_training_data(cfg: RunConfig, log: Callable[[str], None]):
    """The dataset named by ``cfg.data``, checked against the model config."""
    from ..data import load_dataset

    d = cfg.data
    ds = load_dataset(d.dataset, root=d.root, split=d.split, image_size=d.image_size, channels=d.channels,
                      download=d.download, labels_from_folders=d.labels and d.dataset == "folder",
                      skip_corrupt=d.skip_corrupt, hflip=d.hflip)
    if ds.skipped:
        log(f"skipped {len(ds.skipped)} unreadable file(s): {', '.join(map(str, ds.skipped[:5]))}"
            + (" ..." if len(ds.skipped) > 5 else ""))
    return ds


def check_images_fit(ds, m, *, labels_needed_by: str | None) -> None:
    """Raise ConfigError unless the images fit model config ``m`` (image_size, in_channels) and,
    when ``labels_needed_by`` names who needs them, the dataset has labels that fit m.num_classes."""
    h, w = ds.image_size
    if (h, w) != (m.image_size, m.image_size):
        raise ConfigError(f"the {ds.name} images are {h}x{w} but model.image_size={m.image_size}; "
                          f"set data.image_size={m.image_size} (resize) or model.image_size={h}")
    if ds.channels != m.in_channels:
        raise ConfigError(f"the {ds.name} images have {ds.channels} channel(s) but model.in_channels={m.in_channels}; "
                          f"set data.channels={m.in_channels} or model.in_channels={ds.channels}")
    if labels_needed_by is not None:
        if ds.labels is None:
            raise ConfigError(f"{labels_needed_by} but {ds.name} has no labels "
                              "(for a folder, put each class's images in its own sub-folder)")
        if ds.num_classes > m.num_classes:
            raise ConfigError(f"{ds.name} has {ds.num_classes} classes but model.num_classes={m.num_classes}; "
                              f"set model.num_classes={ds.num_classes}")


def check_dataset(ds, cfg: RunConfig, conditioning=None) -> None:
    """Raise ConfigError unless the images (and labels) fit the model config (for a latent run, the
    autoencoder's) and the batch size."""
    check_images_fit(ds, cfg.model if conditioning is None else conditioning.image_spec,
                     labels_needed_by="data.labels=true" if cfg.data.labels else None)
    try:
        check_batch_size(ds, cfg.train.batch_size)
    except ValueError as e:
        raise ConfigError(f"train.batch_size: {e}") from None


# ----------------------------------------------------------------------------- signals
class _StopRequest:
    """Set by SIGINT / SIGTERM; the loop stops after the current step."""

    def __init__(self, log: Callable[[str], None]):
        self.signum: int | None = None
        self.log = log
        self.previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt   # second Ctrl-C: stop now
        self.signum = signum
        self.log(f"\nreceived {signal.Signals(signum).name}: finishing this step and writing a checkpoint "
                 "(Ctrl-C again to abort without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


def _stderr_log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


# ----------------------------------------------------------------------------- train
def train(config: RunConfig, run_dir: str | os.PathLike, *, resume: bool | str | os.PathLike = False,
          dataset=None, progress: bool = True, log: Callable[[str], None] = _stderr_log) -> TrainResult:
    """Train ``config`` into ``run_dir``; ``resume=True`` continues from its latest checkpoint
    (or from the checkpoint folder given). ``dataset``: an ImageDataset to use instead of
    loading ``config.data``. Returns where the outputs are."""
    tc = config.train
    run_dir = Path(run_dir)
    device = resolve_device(tc.device)
    info, created_group = D.init_distributed(device.type)
    threads = torch.get_num_threads()
    try:
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(device)
        return _train(config, run_dir, device, info, resume, dataset, progress, log if info.is_main else _quiet)
    finally:
        torch.set_num_threads(threads)
        D.cleanup(created_group)


def _quiet(msg: str) -> None:
    pass


def _train(config: RunConfig, run_dir: Path, device: torch.device, info: D.DistInfo, resume, dataset,
           progress: bool, log: Callable[[str], None]) -> TrainResult:
    from torch.nn.parallel import DistributedDataParallel

    from ..nn.unet import UNet

    tc = config.train
    _check_mixed_precision(device, tc.mixed_precision, log)
    _set_threads(config, device)
    if tc.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by the number of processes "
                          f"({info.world_size})")

    # --- where to start
    ckpt = None
    if resume:
        ckpt = resolve_checkpoint(run_dir if resume is True else resume)
        saved = load_checkpoint_config(ckpt)
        if saved.model != config.model or saved.diffusion != config.diffusion or saved.cond != config.cond:
            raise ConfigError(f"cannot resume {ckpt}: its model/diffusion config differs from the one given (or its "
                              "cond section does; only data/train/sample settings may change on resume)")
    elif list_checkpoints(run_dir) or read_latest(run_dir) is not None:
        raise ConfigError(f"{run_dir} already holds checkpoints; resume them (--resume) or choose another output "
                          "folder (--out)")

    ds = dataset if dataset is not None else load_training_data(config, log)
    conditioning = RunConditioning.for_training(config, ds, device, ckpt, log)   # None: a plain pixel run
    check_dataset(ds, config, conditioning)
    images = ds.images.to(device)
    if conditioning is not None:
        conditioning.prepare(ds, images, tc.seed, log)
    labels = ds.labels.to(device) if config.data.labels else None
    hflip = ds.hflip if config.data.hflip is None else config.data.hflip
    diffusion = config.diffusion.build()

    # --- model, EMA, optimiser (the seed fixes the initialisation; dropout draws from torch's
    # global generator, seeded per rank)
    torch.manual_seed(tc.seed)
    model = UNet(config.model)
    model = (model if conditioning is None else conditioning.network(model)).to(device)
    ema = EMA(model, tc.ema_decay, tc.ema_warmup)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if tc.mixed_precision == "fp16" else None
    gen = torch.Generator().manual_seed(tc.seed)
    stream = IndexStream(len(ds), gen)
    # uniform t keeps the original draw (randint from gen); loss-aware sampling has its own state
    t_sampler = (None if tc.timestep_sampling == "uniform"
                 else make_timestep_sampler(tc.timestep_sampling, diffusion.num_timesteps))
    torch.manual_seed(tc.seed + 1 + info.rank)
    step, skipped, train_seconds = 0, 0, 0.0
    if ckpt is not None:
        step, skipped, train_seconds = _restore(ckpt, model, ema, opt, scaler, gen, stream, info, device, log,
                                                t_sampler)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    train_model = model
    if info.enabled:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:   # the same parameters behind torch.compile; checkpoints and EMA still read `model`
        train_model = compile_model(train_model, log=log)

    nparams = sum(p.numel() for p in model.parameters())
    log(f"training {nparams / 1e6:.2f}M parameters on {device}"
        + (f" x {info.world_size} processes" if info.enabled else "")
        + f": {ds.name} ({len(ds)} images), batch {tc.batch_size}, steps {step} -> {tc.steps}; run folder {run_dir}")
    metrics = MetricsLogger(run_dir, resume_step=step) if info.is_main else None
    shard_size = tc.batch_size // info.world_size
    shard = slice(info.rank * shard_size, (info.rank + 1) * shard_size)
    null_class = config.model.num_classes
    last_ckpt = ckpt
    ckpt_step = step      # the step of the last checkpoint, known on every rank (only rank 0 gets paths)
    last_loss = None
    bad_in_a_row = 0
    window_loss, window_n, window_t0, grad_norm = 0.0, 0, time.perf_counter(), float("nan")
    t_start = time.perf_counter()
    bar = tqdm(total=tc.steps, initial=step, disable=not (progress and info.is_main), desc="train", unit="step",
               dynamic_ncols=True, file=sys.stderr)

    def checkpoint_now() -> Path | None:
        state = _training_state(step, skipped, ema, opt, scaler, gen, stream, info, device, t_sampler,
                                train_seconds)
        path = None
        if info.is_main:
            path = save_checkpoint(run_dir, step, model_state=model.state_dict(), ema_state=ema.state_dict(),
                                   training_state=state, config=config, keep=tc.keep_checkpoints,
                                   extra_files=conditioning.checkpoint_files() if conditioning is not None else None)
        D.check_replicas_in_sync(model, info, device)
        return path

    interrupted = False
    with _StopRequest(log) as stop:
        model.train()
        budget_s = tc.max_minutes * 60.0
        ckpt_every_s = tc.checkpoint_every_minutes * 60.0
        next_time_ckpt = (math.floor(train_seconds / ckpt_every_s) + 1) * ckpt_every_s if ckpt_every_s else math.inf
        while step < tc.steps:
            # one collective per step: a stop request on any rank, and the slowest rank's training time
            stop_flag, slowest_s = D.max_over_ranks([stop.signum is not None, train_seconds], info, device)
            if stop_flag:
                interrupted = True
                break
            if budget_s and slowest_s >= budget_s:
                log(f"time budget reached: {slowest_s / 60:.2f} min of training (train.max_minutes="
                    f"{tc.max_minutes:g}) at step {step}")
                break
            step_t0 = time.perf_counter()
            b = draw_batch(images, labels, stream, gen, batch_size=tc.batch_size,
                           num_timesteps=diffusion.num_timesteps, hflip=hflip, null_class=null_class,
                           class_dropout=tc.class_dropout, shard=shard, timestep_sampler=t_sampler,
                           to_x_0=conditioning.x_0_fn if conditioning is not None else None)
            # with a time budget the decay ends at the budget; the same fraction on every rank (one LR for all)
            time_frac = slowest_s / budget_s if budget_s and tc.lr_decay != "constant" else None
            lr = learning_rate(step, tc.lr, tc.warmup_steps, tc.lr_decay, tc.steps, time_frac=time_frac)
            for group in opt.param_groups:
                group["lr"] = lr
            with _autocast(device, tc.mixed_precision):
                kwargs = {} if b.y is None else {"y": b.y}
                if conditioning is not None:
                    kwargs.update(conditioning.train_kwargs(b, gen, shard))
                losses = diffusion.training_losses(train_model, b.x_0, b.t, noise=b.noise, model_kwargs=kwargs)["loss"]
                loss = (losses if b.weights is None else losses * b.weights).mean()
            if t_sampler is not None:
                # iDDPM sec. 3.3: every process records the whole batch's losses, so samplers stay identical
                t_sampler.update(b.t_global, torch.cat(D.gather_tensors(losses.detach().float(), info)).cpu())
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
            loss_value, norm_value = float(loss.item()), float(norm.item())
            bad = not math.isfinite(loss_value) or (scaler is None and not math.isfinite(norm_value))
            if D.any_true(bad, info, device):
                opt.zero_grad(set_to_none=True)
                bad_in_a_row += 1
                skipped += 1
                log(f"step {step + 1}: non-finite loss ({loss_value}) or gradient norm ({norm_value}); "
                    f"update skipped ({bad_in_a_row} in a row)")
                if bad_in_a_row >= tc.max_nonfinite_steps:
                    bar.close()
                    where = f"; the last checkpoint is {last_ckpt}" if last_ckpt is not None else ""
                    raise NonFiniteLossError(
                        f"the loss was NaN or infinite for {bad_in_a_row} steps in a row (at step {step + 1}); "
                        f"training stopped{where}. Try a lower train.lr, train.grad_clip=1 or "
                        f"train.mixed_precision=no")
                train_seconds += time.perf_counter() - step_t0
                continue
            bad_in_a_row = 0
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            ema.update(model)
            step += 1
            train_seconds += time.perf_counter() - step_t0
            last_loss, grad_norm = loss_value, norm_value
            window_loss += loss_value
            window_n += 1
            bar.update(1)

            if step % tc.log_every == 0 or step == tc.steps:
                elapsed = time.perf_counter() - window_t0
                mean_loss = D.mean_over_ranks(window_loss / window_n, info, device)
                ips = window_n * tc.batch_size / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.0f}")
                if metrics is not None:
                    metrics.log({"step": step, "loss": mean_loss, "lr": lr, "grad_norm": grad_norm,
                                 "images_per_s": ips, "skipped_steps": skipped,
                                 "elapsed_s": time.perf_counter() - t_start, "train_s": train_seconds})
                window_loss, window_n, window_t0 = 0.0, 0, time.perf_counter()
            if tc.sample_every and step % tc.sample_every == 0 and step != tc.steps and info.is_main:
                _sample_grid(ema.model, diffusion, config, device, run_dir / "samples" / f"step_{step:08d}.png",
                             conditioning)
            time_ckpt = bool(ckpt_every_s) and D.any_true(train_seconds >= next_time_ckpt, info, device)
            if time_ckpt:
                next_time_ckpt = (math.floor(train_seconds / ckpt_every_s) + 1) * ckpt_every_s
            if step % tc.checkpoint_every == 0 or step == tc.steps or time_ckpt:
                last_ckpt, ckpt_step = checkpoint_now(), step
        if step != ckpt_step:
            last_ckpt = checkpoint_now()   # interrupted, or stopped by the time budget
    bar.close()

    result = TrainResult(run_dir, step, interrupted, last_ckpt, last_loss=last_loss, skipped_steps=skipped)
    if metrics is not None:
        metrics.close()
        result.metrics = metrics.jsonl
        if not interrupted:
            result.samples = _sample_grid(ema.model, diffusion, config, device, run_dir / "samples.png", conditioning)
        result.loss_plot = plot_metrics(run_dir)
    return result


def _sample_grid(model, diffusion, config: RunConfig, device, path: Path, conditioning=None) -> Path:
    from ..viz import save_grid

    if conditioning is not None:
        return conditioning.sample_grid(model, diffusion, device, path)

    m = config.model
    out = sample_images(with_default_guidance(model, config), diffusion, config.sample,
                        shape=(m.in_channels, m.image_size, m.image_size), num_classes=m.num_classes, device=device)
    nrow = m.num_classes if m.num_classes and config.sample.n % m.num_classes == 0 else None
    return save_grid(out.sample.float().cpu(), path, nrow=nrow)


def plot_metrics(run_dir: Path) -> Path | None:
    from ..viz import plot_losses

    rows = read_metrics(run_dir)
    rows = [r for r in rows if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    if len(rows) < 2:
        return None
    smooth = min(0.9, max(0.0, 1.0 - 20.0 / len(rows)))   # lighter smoothing for short runs
    return plot_losses([r["step"] for r in rows], [r["loss"] for r in rows], run_dir / "loss.png",
                       smooth=smooth, title="training loss")


# ----------------------------------------------------------------------------- state (de)serialisation
def _training_state(step, skipped, ema: EMA, opt, scaler, gen: torch.Generator, stream: IndexStream,
                    info: D.DistInfo, device: torch.device, t_sampler=None,
                    train_seconds: float = 0.0) -> dict[str, Any]:
    """Everything besides the weights needed to continue bit for bit (tensors and plain data only)."""
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "skipped_steps": skipped,
        "train_seconds": float(train_seconds),   # wall-clock of the optimiser steps (train.max_minutes)
        "ema_updates": ema.num_updates,
        "optimizer": opt.state_dict(),
        "data_generator": gen.get_state(),
        "data_stream": stream.state_dict(),
        "world_size": info.world_size,
        # torch's global generators (dropout), one row per process
        "rng_cpu": torch.stack([t.cpu() for t in D.gather_tensors(torch.get_rng_state().to(device), info)]),
    }
    if device.type == "cuda":
        state["rng_cuda"] = torch.stack([t.cpu() for t in D.gather_tensors(torch.cuda.get_rng_state().to(device),
                                                                             info)])
    if scaler is not None:
        state["grad_scaler"] = scaler.state_dict()
    if t_sampler is not None:
        state["timestep_sampler"] = t_sampler.state_dict()
    return state


def _restore(ckpt: Path, model, ema: EMA, opt, scaler, gen, stream, info: D.DistInfo, device, log,
             t_sampler=None) -> tuple[int, int]:
    state = load_training_state(ckpt)
    load_state_into(model, load_weights(ckpt, MODEL_NAME), ckpt, MODEL_NAME)
    try:
        ema.load_state_dict(load_weights(ckpt, EMA_NAME), state["ema_updates"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["data_generator"])
        stream.load_state_dict(state["data_stream"])
        if state.get("world_size") == info.world_size:
            torch.set_rng_state(state["rng_cpu"][info.rank].clone())
            if device.type == "cuda" and "rng_cuda" in state:
                torch.cuda.set_rng_state(state["rng_cuda"][info.rank].clone())
        else:
            log(f"note: resuming with {info.world_size} processes instead of {state.get('world_size')}; "
                "dropout masks will differ from an uninterrupted run")
        if scaler is not None and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
        if t_sampler is not None and "timestep_sampler" in state:
            t_sampler.load_state_dict(state["timestep_sampler"])
    except (KeyError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"checkpoint {ckpt} has an unusable training state ({type(e).__name__}: {e})") from None
    log(f"resuming from {ckpt} (step {state['step']})")
    return int(state["step"]), int(state.get("skipped_steps", 0)), float(state.get("train_seconds", 0.0))
