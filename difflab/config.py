"""Run configuration: frozen dataclasses, named run presets, files and overrides.

A run is described by one :class:`RunConfig` composed of the config each module owns::

    model      difflab.nn.unet.UNetConfig        the network
    diffusion  difflab.diffusion.DiffusionConfig the schedule, prediction target, loss
    data       DataConfig                         which images, how to load them
    train      TrainConfig                        optimiser, EMA, logging, checkpoints
    sample     SampleConfig                       how samples are drawn (grids during training, ``sample``)

Resolution order (:func:`resolve_config`): a named preset from :data:`RUN_PRESETS`, then a
YAML / TOML / JSON file merged over it, then ``section.key=value`` overrides (values parsed
with ``yaml.safe_load``). Every step is validated: an unknown key is a :class:`ConfigError`
that names it and suggests the closest valid one; a wrong type or an out-of-range value is a
:class:`ConfigError` saying what is allowed. The resolved config is written beside every
checkpoint as YAML and reads back to an equal object (:func:`save_config` / :func:`load_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from .diffusion import DiffusionConfig
from .timestep_sampling import TIMESTEP_SAMPLERS
from .nn.presets import get_unet_preset
from .nn.unet import UNetConfig

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_DECAYS = ("constant", "cosine", "linear")
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")
# torch generators take seeds in [0, 2**64); training seeds torch with seed + 1 + rank, and sample i
# of sample.seed s uses s * 2**20 + i (difflab.train.sampling.SEED_STRIDE), so both are bounded
MAX_TRAIN_SEED = 2**63 - 1
MAX_SAMPLE_SEED = 2**43 - 1


class ConfigError(ValueError):
    """A user's configuration is invalid (unknown key, wrong type, out-of-range value)."""


# ----------------------------------------------------------------------------- sections
def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on (see :func:`difflab.data.load_dataset`)."""

    dataset: str = "digits"
    root: str | None = None          # folder with the files (required for 'folder')
    split: str = "train"
    image_size: int | None = None    # resize + center-crop; None keeps the source size
    channels: int | None = None      # 1 or 3; None keeps the source channels
    hflip: bool | None = None        # random horizontal flips; None = the dataset's default
    labels: bool = False             # train class-conditionally on the dataset's labels
    skip_corrupt: bool = False       # folder datasets: skip unreadable files (and list them)
    download: bool = False           # fetch missing files from the official mirrors

    def __post_init__(self):
        _require(bool(self.dataset), "data.dataset must be a dataset name (digits, mnist, fashion-mnist, "
                                     "cifar10, folder)")
        _require(self.image_size is None or self.image_size >= 1, f"data.image_size must be >= 1, got {self.image_size}")
        _require(self.channels in (None, 1, 3), f"data.channels must be 1, 3 or null, got {self.channels}")
        _require(self.dataset != "folder" or self.root is not None,
                 "data.dataset 'folder' needs data.root=<folder of images> (or --data-root)")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, EMA, logging and checkpointing."""

    steps: int = 10_000
    batch_size: int = 128              # the global batch; split across processes under DDP
    lr: float = 2e-4
    warmup_steps: int = 0              # linear LR warm-up from lr / warmup_steps to lr
    lr_decay: str = "constant"         # after warm-up: constant | cosine | linear (to 0 at train.steps, or at
    #                                    train.max_minutes of training time when that comes first)
    weight_decay: float = 0.0          # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0             # max global grad norm; 0 disables clipping
    ema_decay: float = 0.9999
    ema_warmup: bool = True            # decay_n = min(ema_decay, (1 + n) / (10 + n))
    mixed_precision: str = "no"        # no | bf16 | fp16 (fp16: CUDA only, with a GradScaler)
    seed: int = 0
    log_every: int = 100
    sample_every: int = 0              # sample grid every N steps (0 = only at the end)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3          # most recent checkpoints kept on disk (>= 1)
    num_threads: int = 0               # torch CPU threads per process (0 = torch's default)
    device: str = "auto"               # auto | cpu | cuda | cuda:N | mps
    class_dropout: float = 0.1         # P(label -> null class), for classifier-free guidance
    max_nonfinite_steps: int = 10      # stop after this many non-finite losses in a row
    timestep_sampling: str = "uniform"  # uniform | loss_aware (iDDPM sec. 3.3 importance sampling)
    # Time budget: stop once the optimiser steps have taken this many minutes of wall-clock (the
    # time of checkpoints and sample grids is not counted); 0 = no budget, train.steps still caps.
    max_minutes: float = 0.0
    checkpoint_every_minutes: float = 0.0   # also checkpoint every N minutes of training time (0 = off)
    compile: bool = False              # run the network's training forward through torch.compile (inductor;
    #                                    difflab.compile: a compile failure falls back to eager with a message)

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                     "max_nonfinite_steps"):
            _require(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_every", "num_threads", "seed"):
            _require(getattr(self, name) >= 0, f"train.{name} must be >= 0, got {getattr(self, name)}")
        _require(self.seed <= MAX_TRAIN_SEED, f"train.seed must be in [0, 2**63 - 1], got {self.seed}")
        for name in ("max_minutes", "checkpoint_every_minutes"):
            value = getattr(self, name)
            _require(value >= 0 and math.isfinite(value), f"train.{name} must be a finite number >= 0 (0 = off), "
                                                           f"got {value}")
        _require(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be a positive number, got {self.lr}")
        _require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        _require(0.0 <= self.ema_decay < 1.0, f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        _require(all(0.0 <= b < 1.0 for b in self.adam_betas), f"train.adam_betas must lie in [0, 1), "
                                                                f"got {list(self.adam_betas)}")
        _require(0.0 <= self.class_dropout < 1.0, f"train.class_dropout must be in [0, 1), got {self.class_dropout}")
        _require(self.timestep_sampling in TIMESTEP_SAMPLERS,
                 f"train.timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLERS)}, "
                 f"got {self.timestep_sampling!r}")
        _require(self.lr_decay in LR_DECAYS,
                 f"train.lr_decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")
        _require(self.mixed_precision in MIXED_PRECISION,
                 f"train.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        dev = self.device.split(":")[0]
        _require(dev in ("auto", "cpu", "cuda", "mps"),
                 f"train.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass(frozen=True)
class SampleConfig:
    """How samples are drawn: the grids written during training and ``difflab sample``'s defaults."""

    sampler: str = "ddim"          # any name in difflab.samplers.SAMPLERS
    steps: int = 50                # sampling steps (respaced chain); the full chain for ddpm with steps=T
    eta: float = 0.0               # DDIM / DPM-Solver++ stochasticity (ignored by samplers without eta)
    spacing: str | None = None     # timestep spacing; None = the sampler's default
    n: int = 64                    # images per grid
    seed: int = 0
    clip_denoised: bool = True     # clamp pred_x0 to [-1, 1] at every step
    use_ema: bool = True           # sample with the EMA weights
    batch_size: int = 256          # images per forward pass
    guidance_scale: float | None = None   # default classifier-free guidance weight w (eps~ = (1 + w) eps_c
    #                                       - w eps_null) of a class- or text-conditional model; None = none

    def __post_init__(self):
        from .samplers import SAMPLERS
        from .schedules import SPACINGS

        _require(self.sampler in SAMPLERS,
                 f"sample.sampler must be one of {', '.join(sorted(SAMPLERS))}, got {self.sampler!r}")
        _require(self.steps >= 1, f"sample.steps must be >= 1, got {self.steps}")
        _require(self.eta >= 0 and math.isfinite(self.eta),
                 f"sample.eta must be a finite number >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {self.eta}")
        _require(self.spacing is None or self.spacing in SPACINGS,
                 f"sample.spacing must be null or one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        _require(self.n >= 1, f"sample.n must be >= 1, got {self.n}")
        _require(self.batch_size >= 1, f"sample.batch_size must be >= 1, got {self.batch_size}")
        _require(self.guidance_scale is None or (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0),
                 f"sample.guidance_scale must be null or a finite number >= 0, got {self.guidance_scale}")
        _require(0 <= self.seed <= MAX_SAMPLE_SEED, f"sample.seed must be in [0, 2**43 - 1], got {self.seed}")


@dataclass(frozen=True)
class LatentConfig:
    """Latent diffusion (Rombach et al. 2022): diffuse the latents of a trained KL autoencoder.

    ``autoencoder`` names a ``difflab train-autoencoder`` run folder (or checkpoint); its weights
    and the scale factor computed from the training data are copied into every checkpoint, so
    a latent run samples and resumes without it. Then ``model.image_size`` / ``in_channels`` are
    the latent's size and channels, and ``data`` still describes the images."""

    autoencoder: str | None = None     # None = diffusion on pixels

    def __post_init__(self):
        _require(self.autoencoder is None or bool(self.autoencoder),
                 "latent.autoencoder must be a run folder of 'difflab train-autoencoder' or null")


TEXT_ENCODERS = ("none", "trainable", "pretrained")


@dataclass(frozen=True)
class CondConfig:
    """Conditioning besides class labels: text through cross-attention, a low-resolution image
    through concatenation (``difflab.train.conditioning``)."""

    text: str = "none"          # none | trainable (TextEncoder trained jointly) | pretrained (frozen all-MiniLM-L6-v2)
    text_dim: int = 64          # width of the trainable encoder (= model.context_dim)
    text_depth: int = 2
    text_heads: int = 4
    max_length: int = 16        # tokens per prompt (pretrained: word pieces including [CLS] and [SEP])
    low_res_factor: int = 0     # > 0: condition on the image downsampled by this factor (super-resolution)

    def __post_init__(self):
        _require(self.text in TEXT_ENCODERS, f"cond.text must be one of {', '.join(TEXT_ENCODERS)}, got {self.text!r}")
        for name in ("text_dim", "text_depth", "text_heads", "max_length"):
            _require(getattr(self, name) >= 1, f"cond.{name} must be >= 1, got {getattr(self, name)}")
        _require(self.text_dim % self.text_heads == 0,
                 f"cond.text_dim={self.text_dim} must be divisible by cond.text_heads={self.text_heads}")
        _require(self.low_res_factor >= 0, f"cond.low_res_factor must be >= 0 (0 = off), got {self.low_res_factor}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run; ``to_dict`` / ``from_dict`` round-trip exactly."""

    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    cond: CondConfig = field(default_factory=CondConfig)

    def __post_init__(self):
        m, d = self.model, self.diffusion
        learned = d.variance in ("learned", "learned_range")
        _require(m.learn_sigma == learned,
                 f"model.learn_sigma={m.learn_sigma} does not match diffusion.variance={d.variance!r}: "
                 "a learned variance needs model.learn_sigma=true, a fixed one model.learn_sigma=false")
        _require(not self.data.labels or m.num_classes is not None,
                 "data.labels=true needs a class-conditional model: set model.num_classes (e.g. 10)")
        _require(self.data.labels or m.num_classes is None,
                 f"model.num_classes={m.num_classes} makes the model class-conditional: set data.labels=true "
                 "or model.num_classes=null")
        c = self.cond
        _require((m.context_dim is None) == (c.text == "none"),
                 f"model.context_dim={m.context_dim} needs cond.text=trainable or pretrained" if c.text == "none"
                 else f"cond.text={c.text} needs cross-attention: set model.context_dim (the text encoder's width: "
                      "cond.text_dim for trainable, 384 for pretrained) and model.cross_attention_resolutions")
        _require(c.text != "trainable" or m.context_dim == c.text_dim,
                 f"model.context_dim={m.context_dim} must equal cond.text_dim={c.text_dim} for cond.text=trainable")
        _require(c.text == "none" or m.num_classes is None,
                 "a model is conditioned on class labels (model.num_classes) or on text (cond.text), not both")
        _require((m.cond_channels == 0) == (c.low_res_factor == 0),
                 f"model.cond_channels={m.cond_channels} needs cond.low_res_factor > 0 (the image it concatenates)"
                 if c.low_res_factor == 0 else
                 f"cond.low_res_factor={c.low_res_factor} needs model.cond_channels = the image channels (e.g. 1)")
        if self.sample.guidance_scale is not None:
            _require(m.num_classes is not None or c.text != "none",
                     "sample.guidance_scale is classifier-free guidance: it needs a class- or text-conditional model")
            _require(self.train.class_dropout > 0,
                     "sample.guidance_scale needs train.class_dropout > 0 (the null condition must be trained)")
        if self.latent.autoencoder is not None:   # model.image_size / in_channels describe the latent
            _require(not self.sample.clip_denoised, "latent diffusion needs sample.clip_denoised=false: latents are "
                                                    "unbounded (the decoded images are clamped instead)")
            return
        _require(self.data.image_size is None or self.data.image_size == m.image_size,
                 f"data.image_size={self.data.image_size} differs from model.image_size={m.image_size}")
        _require(self.data.channels is None or self.data.channels == m.in_channels,
                 f"data.channels={self.data.channels} differs from model.in_channels={m.in_channels}")

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {name: section_to_dict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        return run_config_from_dict(d)


SECTIONS: dict[str, type] = {
    "model": UNetConfig, "diffusion": DiffusionConfig, "data": DataConfig, "train": TrainConfig,
    "sample": SampleConfig, "latent": LatentConfig, "cond": CondConfig,
}


# ----------------------------------------------------------------------------- presets
def _preset(model: UNetConfig, diffusion: DiffusionConfig, data: DataConfig, train: TrainConfig,
            sample: SampleConfig) -> RunConfig:
    return RunConfig(model=model, diffusion=diffusion, data=data, train=train, sample=sample)


RUN_PRESETS: dict[str, RunConfig] = {
    # For tests: a few-millisecond step on 8x8 digits, a 100-step chain.
    "tiny": _preset(
        get_unet_preset("tiny"),
        DiffusionConfig(schedule="linear", num_timesteps=100),
        DataConfig(dataset="digits"),
        TrainConfig(steps=20, batch_size=16, lr=1e-3, warmup_steps=5, ema_decay=0.99, log_every=5,
                    sample_every=0, checkpoint_every=10, keep_checkpoints=2, grad_clip=1.0),
        SampleConfig(sampler="ddim", steps=10, n=16),
    ),
    # The README demo (scripts/demo.sh): recognisable 8x8 digits in ~4 minutes on 2 CPU cores.
    # 0.63M-parameter U-Net (32/64 channels, one res block per level, no attention: at 8x8 and
    # 4x4 it costs more than it helps), cosine noise schedule, eps target, lr 2e-3 with cosine
    # decay, EMA 0.999, sampled with DDIM eta=1 (sharper than eta=0 at this training length).
    # Tuning measurements (2-core machine shared with other jobs): configs/digits.yaml.
    # Since issue 9: mnist-fast's recipe (class labels with dropout 0.1, v-prediction, min-SNR-5),
    # which took the demo's FD from 19.3 to 12.7 (1,000 samples, DDIM 50 eta 1; configs/digits.yaml).
    "digits": _preset(
        get_unet_preset("digits", model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(), mid_attention=False, dropout=0.0, norm_groups=8, num_classes=10),
        DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction="v", loss_weighting="min_snr",
                        min_snr_gamma=5.0),
        DataConfig(dataset="digits", labels=True),
        TrainConfig(steps=2000, batch_size=128, lr=2e-3, warmup_steps=100, lr_decay="cosine", ema_decay=0.999,
                    log_every=50, sample_every=500, checkpoint_every=500, keep_checkpoints=2, grad_clip=1.0,
                    class_dropout=0.1),
        SampleConfig(sampler="ddim", steps=50, eta=1.0, n=100),
    ),
    # MNIST 28x28 (hours on a CPU, minutes on a GPU).
    "mnist": _preset(
        get_unet_preset("mnist"),
        DiffusionConfig(schedule="cosine", num_timesteps=1000),
        DataConfig(dataset="mnist"),
        TrainConfig(steps=20_000, batch_size=128, lr=2e-4, warmup_steps=500, ema_decay=0.9995, log_every=100,
                    sample_every=2000, checkpoint_every=2000),
        SampleConfig(sampler="ddim", steps=50, n=64),
    ),
    # MNIST on a laptop-class CPU in 25 minutes of training (issue 9's recipe; measurements in
    # benchmarks/RESULTS.md "Quality vs training time" and configs/mnist-fast.yaml): the digits
    # recipe's U-Net widened to 28x28 (32/64/64 channels, one res block per level, no attention),
    # v-prediction with min-SNR-5 loss weighting, lr 2e-3 held constant after warm-up so any time
    # budget can stop it, EMA 0.999 with warm-up. Class-conditional with label dropout 0.1 and
    # sampled with classifier-free guidance w=0.25 (DDIM 25 steps eta=1: 50 network evaluations):
    # the labels were the largest single gain measured (FD 52 at w=0 and 32 at w=0.5 after 1,004
    # steps, against 184 for the unconditional recipe after 1,172); after 25 minutes less guidance
    # is better (FD 26.3 / 26.5 / 43.3 at w = 0 / 0.25 / 0.5, 500 samples; w=0.25 keeps 97.6% of
    # the samples on the requested class against 93.0% at w=0). `train.max_minutes=25` is the
    # budget; train.steps only caps it.
    "mnist-fast": _preset(
        get_unet_preset("mnist", model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                        attention_resolutions=(), mid_attention=False, dropout=0.0, norm_groups=8, num_classes=10),
        DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction="v", loss_weighting="min_snr",
                        min_snr_gamma=5.0),
        DataConfig(dataset="mnist", labels=True),
        TrainConfig(steps=100_000, max_minutes=25.0, batch_size=64, lr=2e-3, warmup_steps=100, lr_decay="constant",
                    ema_decay=0.999, log_every=50, sample_every=1000, checkpoint_every=500, keep_checkpoints=2,
                    grad_clip=1.0, class_dropout=0.1),
        SampleConfig(sampler="ddim", steps=25, eta=1.0, n=100, guidance_scale=0.25),
    ),
    # DDPM paper's CIFAR-10 run (Ho et al. 2020, Appendix B): GPU territory.
    "cifar10": _preset(
        get_unet_preset("cifar10"),
        DiffusionConfig(schedule="linear", num_timesteps=1000),
        DataConfig(dataset="cifar10", hflip=True),
        TrainConfig(steps=800_000, batch_size=128, lr=2e-4, warmup_steps=5000, ema_decay=0.9999, grad_clip=1.0,
                    log_every=100, sample_every=10_000, checkpoint_every=10_000),
        SampleConfig(sampler="ddim", steps=100, n=64),
    ),
}

# The same recipe without labels (an unconditional model: the base of classifier guidance and the
# first quality-vs-time measurement), sampled with DDIM 50 steps eta=1.
RUN_PRESETS["mnist-fast-uncond"] = RUN_PRESETS["mnist-fast"].replace(
    model=dataclasses.replace(RUN_PRESETS["mnist-fast"].model, num_classes=None),
    data=dataclasses.replace(RUN_PRESETS["mnist-fast"].data, labels=False),
    sample=SampleConfig(sampler="ddim", steps=50, eta=1.0, n=64),
)

# Latent diffusion on MNIST (issue 6): the first stage is `difflab train-autoencoder --preset mnist-f4`
# (28x28 -> 7x7x4, written to runs/ae-mnist-f4 by default); the U-Net works at 7x7 (one level: 7 is odd).
# v-prediction: latents are not clipped while sampling, and with eps prediction on the cosine schedule
# (alphas_cumprod[T-1] = 2.4e-9) the first step's x_0 = (z_T - sqrt(1 - abar) eps) / sqrt(abar) multiplies
# the eps error by ~2e4 and the chain diverges (measured: sampled latents with std ~1700 instead of 1);
# x_0 = sqrt(abar) z_t - sqrt(1 - abar) v stays bounded at every t. min-SNR-5 as in mnist-fast.
_MNIST_LATENT_UNET = get_unet_preset("latent-7")
RUN_PRESETS["mnist-latent-text"] = RunConfig(
    model=_MNIST_LATENT_UNET,
    diffusion=DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction="v", loss_weighting="min_snr",
                              min_snr_gamma=5.0),
    data=DataConfig(dataset="mnist"),
    train=TrainConfig(steps=20_000, batch_size=128, lr=1e-3, warmup_steps=200, lr_decay="cosine", ema_decay=0.999,
                      log_every=50, sample_every=0, checkpoint_every=500, class_dropout=0.1),
    sample=SampleConfig(sampler="ddim", steps=50, n=80, clip_denoised=False),
    latent=LatentConfig(autoencoder="runs/ae-mnist-f4"),
    cond=CondConfig(text="trainable", text_dim=_MNIST_LATENT_UNET.context_dim, max_length=16),
)
# 4x super-resolution 7x7 -> 28x28: the low-resolution image is exactly the latent's 7x7 size, so it
# is concatenated to z_t as is (LDM's SR models condition the same way).
RUN_PRESETS["mnist-latent-sr"] = RUN_PRESETS["mnist-latent-text"].replace(
    model=_MNIST_LATENT_UNET.replace(context_dim=None, cross_attention_resolutions=(), cond_channels=1),
    sample=SampleConfig(sampler="ddim", steps=50, n=16, clip_denoised=False),
    cond=CondConfig(low_res_factor=4),
)


def get_run_preset(name: str) -> RunConfig:
    if name not in RUN_PRESETS:
        raise ConfigError(f"unknown run preset {name!r}{_suggest(name, RUN_PRESETS)}; "
                          f"available: {', '.join(RUN_PRESETS)}")
    return RUN_PRESETS[name]


# ----------------------------------------------------------------------------- (de)serialisation
def section_to_dict(cfg) -> dict[str, Any]:
    """Plain data (tuples become lists) for one section dataclass."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v)
    return out


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _unknown_key(key: str) -> ConfigError:
    keys = _all_keys()
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:   # a bare or misplaced field name: match the last component
        last = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == last] or \
            [k for k in keys if k.rsplit(".", 1)[-1] in difflib.get_close_matches(
                last, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.75)]
    hint = f"; did you mean {close[0]!r}?" if close else f"; sections are {', '.join(SECTIONS)}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; lists become tuples, ints floats, '1e-3' 1e-3."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        allowed = " or ".join("null" if a is type(None) else _type_name(a) for a in args)
        raise ConfigError(f"{key} must be {allowed}, got {value!r} ({type(value).__name__})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r} ({type(value).__name__})")
    if tp is int:
        original = value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):   # YAML 1.1 reads '1e4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)   # 1e4 means 10000
        raise ConfigError(f"{key} must be an integer, got {original!r} ({type(original).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):   # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r} ({type(value).__name__})")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key} must be a mapping, got {value!r} ({type(value).__name__})")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r} ({type(value).__name__})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    raise TypeError(f"{key}: unsupported annotation {tp!r}")   # a bug in a config dataclass


def section_from_dict(name: str, d: Any):
    """Build section ``name`` of a run config from a mapping, checking keys and types."""
    return build_section(SECTIONS[name], name, d, _unknown_key)


def build_section(cls: type, name: str, d: Any, unknown_key: Callable[[str], ConfigError]):
    """A config section dataclass ``cls`` from a mapping: every key must be a field
    (``unknown_key("section.key")`` builds the error otherwise) and every value is coerced
    to the field's annotation; the dataclass's own checks become ConfigErrors."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config section {name!r} must be a mapping of keys to values, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in d.items():
        if k not in names:
            raise unknown_key(f"{name}.{k}")
        kwargs[k] = _coerce(v, hints[k], f"{name}.{k}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name}: {e}") from None


def run_config_from_dict(d: Mapping[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from nested plain data; missing sections and keys take the defaults."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a run config must be a mapping with sections {', '.join(SECTIONS)}, got {type(d).__name__}")
    for k in d:
        if k not in SECTIONS:
            raise _unknown_key(str(k))
    sections = {name: section_from_dict(name, d.get(name, {}) or {}) for name in SECTIONS}
    return RunConfig(**sections)


# ----------------------------------------------------------------------------- files and overrides
def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Nested plain data from a YAML, TOML or JSON file. A top-level ``preset: NAME`` is kept."""
    path = Path(path)
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigError(f"{path}: config files must end in {', '.join(CONFIG_SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:   # Python < 3.11
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as e:   # the parsers raise their own error types
        raise ConfigError(f"{path} could not be parsed: {type(e).__name__}: {e}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    return data


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of nested dicts; values in ``update`` win (lists are replaced, not merged)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-3'`` -> ``(['train', 'lr'], 0.001)``; the value is parsed with yaml.safe_load."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.lr=1e-3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    path = key.split(".")
    if len(path) == 1 and key in SECTIONS:
        raise ConfigError(f"override {item!r} sets a whole section; name a key inside it, "
                          f"e.g. {key}.{dataclasses.fields(SECTIONS[key])[0].name}=...")
    if len(path) < 2 or not all(path):
        raise _unknown_key(key)
    return path, value


def apply_overrides(d: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to nested plain data (keys are checked later)."""
    out = merge({}, d)
    for item in overrides:
        path, value = parse_override(item)
        if path[0] not in SECTIONS:
            raise _unknown_key(".".join(path))
        node = out
        for i, p in enumerate(path[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = {}
            elif not isinstance(nxt, Mapping):   # e.g. a file's `train: 3`: report it, never drop it
                raise ConfigError(f"cannot apply {item!r}: {'.'.join(path[:i + 1])} is {nxt!r} "
                                  f"({type(nxt).__name__}), not a mapping of keys to values")
            node[p] = nxt = dict(nxt)
            node = nxt
        node[path[-1]] = value
    return out


def resolve_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                   overrides: Iterable[str] = (), base: RunConfig | None = None) -> RunConfig:
    """``base`` (or ``preset``, or the file's ``preset:`` key, or ``digits``) <- file <- overrides."""
    file_data = read_config_file(config_file) if config_file is not None else {}
    file_preset = file_data.pop("preset", None)
    if base is None:
        name = preset or file_preset or "digits"
        if not isinstance(name, str):
            raise ConfigError(f"preset must be a name ({', '.join(RUN_PRESETS)}), got {name!r}")
        base = get_run_preset(name)
    d = merge(base.to_dict(), file_data)
    d = apply_overrides(d, overrides)
    return run_config_from_dict(d)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML (or JSON for a ``.json`` path), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = cfg.to_dict()
    text = json.dumps(d, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(d, sort_keys=False)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_config(path: str | os.PathLike) -> RunConfig:
    """Read a config written by :func:`save_config` (or any full/partial config file, no preset)."""
    data = read_config_file(path)
    if "preset" in data:
        return resolve_config(config_file=path)
    return run_config_from_dict(data)


__all__ = [
    "ConfigError", "DataConfig", "TrainConfig", "SampleConfig", "LatentConfig", "CondConfig", "RunConfig",
    "RUN_PRESETS", "SECTIONS",
    "MIXED_PRECISION", "get_run_preset", "resolve_config", "read_config_file", "apply_overrides", "parse_override",
    "merge", "save_config", "load_config", "run_config_from_dict", "section_from_dict", "section_to_dict",
]
