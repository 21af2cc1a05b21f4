"""Training a diffusion model: ``train(config, run_dir)``, the diffusion task of the training engine.

One step (DDPM Algorithm 1, with the options of iDDPM / ADM):

1. draw the global batch ``x_0`` (indices from a shuffled epoch order), optional flips,
   ``t ~ U{0..T-1}`` (or iDDPM's loss-aware importance sampling), ``eps ~ N(0, I)`` and, for a
   class-conditional model, replace each label by the null class with probability
   ``train.class_dropout`` (classifier-free guidance); all from the engine's data generator;
2. keep this process's slice of the batch (data parallel);
3. ``loss = mean(diffusion.training_losses(model, x_0, t, noise=eps)["loss"])``: the conditioning
   (labels ``y``, prompts, a low-resolution image) rides in ``model_kwargs``, and a latent run
   trains on ``z_0`` from its autoencoder (``difflab.conditioning``).

Everything else (optimiser, EMA, checkpoints, resume, the non-finite policy ...) is the engine's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..compile import compile_model
from ..conditioning import RunConditioning, conditioning_needed
from ..config import ConfigError, RunConfig
from ..data.transforms import random_hflip, uint8_to_float
from ..nn.unet import UNet
from ..rng import randint, randn
from ..runs import (CheckpointError, load_autoencoder, load_checkpoint_config, read_conditioning,
                    resolve_checkpoint)
from ..sampling import sample_images, with_default_guidance
from ..timestep_sampling import make_timestep_sampler
from ..viz import save_grid
from . import distributed as D
from .data import IndexStream, check_batch, check_images_fit, load_images
from .engine import train_task
from .evaluation import Evaluation
from .heldout import HeldoutData, SplitWriter, heldout_data
from .runtime import stderr_log
from .task import Callback, Env, Networks, Task, TrainResult, Update, resumable


@dataclass
class Batch:
    x_0: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    y: torch.Tensor | None
    weights: torch.Tensor | None = None   # importance weights of the timesteps (loss-aware sampling)
    t_global: torch.Tensor | None = None  # the whole batch's timesteps, for the sampler's loss history
    idx: torch.Tensor | None = None       # the whole batch's dataset indices (conditioning looks them up)
    model_kwargs: dict | None = None      # the conditioning besides y (prompts, a low-resolution image)


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
        t, weights = randint(num_timesteps, batch_size, gen).to(device), None       # t ~ U{0..T-1}
    else:
        t, weights = timestep_sampler.sample(batch_size, gen)
        t, weights = t.to(device), weights.to(device)
    noise = randn(x_0.shape, gen).to(device)                                        # eps ~ N(0, I)
    y = None
    if labels is not None:
        y = labels[idx.to(device)]
        drop = (torch.rand(batch_size, generator=gen) < class_dropout).to(device)
        y = torch.where(drop, torch.full_like(y, null_class), y)
    return Batch(x_0[shard], t[shard], noise[shard], None if y is None else y[shard],
                 None if weights is None else weights[shard], t, idx)


def check_dataset(ds, cfg: RunConfig, conditioning=None) -> None:
    """Raise ConfigError unless the images (and labels) fit the model config (for a latent run, the
    autoencoder's) and the batch size."""
    check_images_fit(ds, cfg.model if conditioning is None else conditioning.image_spec,
                     labels_needed_by="data.labels=true" if cfg.data.labels else None)
    check_batch(len(ds), ds, cfg.train.batch_size)


class DiffusionTask(Task):
    """DDPM's training objective on a U-Net (see the module docstring)."""

    config_name = "config.yaml"

    def __init__(self, config: RunConfig, dataset=None):
        self.config, self.dataset = config, dataset
        self.conditioning: RunConditioning | None = None
        self.t_sampler = None

    def check_resume(self, path: Path) -> Path:
        ckpt = resolve_checkpoint(path)
        return resumable(ckpt, load_checkpoint_config(ckpt), self.config, ("model", "diffusion", "cond"),
                         "data/train/sample")

    def setup(self, env: Env) -> None:
        cfg = self.config
        ds = self.dataset if self.dataset is not None else load_images(cfg.data, env.log)
        self.conditioning = self._conditioning(ds, env)
        check_dataset(ds, cfg, self.conditioning)
        self.images = ds.images.to(env.device)
        if self.conditioning is not None:
            self.conditioning.prepare(ds, self.images, cfg.train.seed, env.log)
        self.labels = ds.labels.to(env.device) if cfg.data.labels else None
        self.hflip = ds.hflip if cfg.data.hflip is None else cfg.data.hflip
        self.diffusion = cfg.diffusion.build()
        self.num_examples, self.ds_name = len(ds), ds.name
        tc = cfg.train
        # uniform t keeps the original draw (randint from gen); loss-aware sampling has its own state
        self.t_sampler = (None if tc.timestep_sampling == "uniform"
                          else make_timestep_sampler(tc.timestep_sampling, self.diffusion.num_timesteps))
        self.env = env

    def _conditioning(self, ds, env: Env) -> RunConditioning | None:
        cfg = self.config
        if not conditioning_needed(cfg):
            return None
        if env.checkpoint is not None:
            latent, text_config = read_conditioning(cfg, env.checkpoint, env.device)
            return RunConditioning.for_training(cfg, ds, env.device, env.log, latent=latent, text_config=text_config)
        autoencoder = None
        if cfg.latent.autoencoder is not None:
            try:
                autoencoder, _, ae_ckpt = load_autoencoder(cfg.latent.autoencoder, device=env.device)
            except CheckpointError as e:
                raise ConfigError(f"latent.autoencoder={cfg.latent.autoencoder}: {e} (train one with: "
                                  "difflab train-autoencoder --preset mnist-f4 --out RUN_DIR)") from None
        conditioning = RunConditioning.for_training(cfg, ds, env.device, env.log, autoencoder=autoencoder)
        if autoencoder is not None:
            env.log(f"first stage: autoencoder {ae_ckpt}")
        return conditioning

    def build(self, env: Env) -> Networks:
        tc = self.config.train
        model = UNet(self.config.model)
        model = (model if self.conditioning is None else self.conditioning.network(model)).to(env.device)
        if tc.channels_last:   # convolution weights NHWC; the activations follow from the first convolution on
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)
        self.model = model
        # train.compile: the same parameters behind torch.compile; checkpoints and EMA still read `model`
        self.forward = compile_model(model, log=env.log) if tc.compile else model
        return Networks(model, {"optimizer": opt})

    def describe(self, nparams: int, step: int) -> str:
        tc = self.config.train
        return (f"training {nparams / 1e6:.2f}M parameters on {self.env.device}"
                + (f" x {self.env.info.world_size} processes" if self.env.info.enabled else "")
                + f": {self.ds_name} ({self.num_examples} images), batch {tc.batch_size}, steps {step} -> {tc.steps}")

    def draw(self, stream: IndexStream, gen: torch.Generator, env: Env) -> Batch:
        tc = self.config.train
        c = self.conditioning
        b = draw_batch(self.images, self.labels, stream, gen, batch_size=tc.batch_size,
                       num_timesteps=self.diffusion.num_timesteps, hflip=self.hflip,
                       null_class=self.config.model.num_classes, class_dropout=tc.class_dropout, shard=env.shard,
                       timestep_sampler=self.t_sampler, to_x_0=c.x_0_fn if c is not None else None)
        if c is not None:   # improved-diffusion's super-resolution: the condition rides in model_kwargs
            b.model_kwargs = c.train_kwargs(b, gen, env.shard)
        if tc.channels_last and b.x_0.dim() == 4:   # the same values, laid out as the network's activations
            b.x_0, b.noise = (v.contiguous(memory_format=torch.channels_last) for v in (b.x_0, b.noise))
        return b

    def step(self, b: Batch, step: int) -> Iterator[Update]:
        kwargs = {**({} if b.y is None else {"y": b.y}), **(b.model_kwargs or {})}
        losses = self.diffusion.training_losses(self.forward, b.x_0, b.t, noise=b.noise, model_kwargs=kwargs)["loss"]
        if self.t_sampler is not None:
            # iDDPM sec. 3.3: every process records the whole batch's losses, so samplers stay identical
            self.t_sampler.update(b.t_global, torch.cat(D.gather_tensors(losses.detach().float(), self.env.info)).cpu())
        yield Update("optimizer", (losses if b.weights is None else losses * b.weights).mean())

    def state_dict(self) -> dict:
        return {"timestep_sampler": self.t_sampler.state_dict()} if self.t_sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.t_sampler is not None and "timestep_sampler" in state:
            self.t_sampler.load_state_dict(state["timestep_sampler"])

    def checkpoint_files(self):
        return self.conditioning.checkpoint_files() if self.conditioning is not None else {}

    def sample(self, model: torch.nn.Module, path: Path) -> Path:
        if self.conditioning is not None:
            return self.conditioning.sample_grid(model, self.diffusion, self.env.device, path)
        m, sc = self.config.model, self.config.sample
        out = sample_images(with_default_guidance(model, self.config), self.diffusion, sc,
                            shape=(m.in_channels, m.image_size, m.image_size), num_classes=m.num_classes,
                            device=self.env.device)
        nrow = m.num_classes if m.num_classes and sc.n % m.num_classes == 0 else None
        return save_grid(out.sample.float().cpu(), path, nrow=nrow)

    def finish(self, model: torch.nn.Module, result: TrainResult) -> None:
        result.samples = self.sample(model, result.run_dir / "samples.png")
        self.env.log_figure(self.sample_tag, result.samples)


def train(config: RunConfig, run_dir: str | os.PathLike, *, resume: bool | str | os.PathLike = False,
          dataset=None, progress: bool = True, log: Callable[[str], None] = stderr_log,
          callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train ``config`` into ``run_dir``; ``resume=True`` continues from its latest checkpoint
    (or from the checkpoint folder given). ``dataset``: an ImageDataset to use instead of
    loading ``config.data``. Returns where the outputs are.

    A folder with ``data.holdout_fraction > 0`` trains on the training side of its held-out split
    (written to RUN_DIR/split.json, kept on resume: ``difflab.train.heldout``); ``train.eval_every_minutes
    > 0`` evaluates against the held-out images during training (``difflab.train.evaluation``)."""
    callbacks = list(callbacks)
    held = None
    if dataset is None or config.train.eval_every_minutes:
        held = heldout_data(config.data, run_dir, bool(resume), log) if dataset is None else HeldoutData(config.data)
        if held.split is not None:
            dataset = held.train
            callbacks.append(SplitWriter(held.split))
        elif dataset is not None:
            held.train = dataset
    if config.train.eval_every_minutes:
        callbacks.append(Evaluation(config, held))
    return train_task(DiffusionTask(config, dataset), run_dir, resume=resume, progress=progress, log=log,
                      callbacks=callbacks)
