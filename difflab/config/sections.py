"""Config sections besides the networks' own (``UNetConfig``, ``ClassifierConfig``, ``AutoencoderConfig``,
``DiffusionConfig`` live beside their modules).

``train`` is one family: :class:`TrainSettings` holds what the training engine does for every
run kind (optimiser, LR schedule, time budget, EMA, mixed precision, non-finite policy,
checkpoints, logging); :class:`TrainConfig` (diffusion), :class:`ClassifierTrainConfig` and
:class:`AutoencoderTrainConfig` add what only that task reads and set their own defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..samplers import SAMPLERS
from ..schedules import SPACINGS
from ..timestep_sampling import TIMESTEP_SAMPLERS
from .schema import ConfigError, require

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_DECAYS = ("constant", "cosine", "linear")
TEXT_ENCODERS = ("none", "trainable", "pretrained")
# torch generators take seeds in [0, 2**64); training seeds torch with seed + 1 + rank, and sample i
# of sample.seed s uses s * 2**20 + i (difflab.sampling.SEED_STRIDE), so both are bounded
MAX_TRAIN_SEED = 2**63 - 1
MAX_SAMPLE_SEED = 2**43 - 1
DEVICES = ("auto", "cpu", "cuda", "mps")


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
    # folder datasets: hold out this share of the images (by a hash of each path, difflab.data.split_files),
    # written to RUN_DIR/split.json and never trained on; 0 = train on every image
    holdout_fraction: float = 0.0
    holdout_seed: int = 0

    def __post_init__(self):
        require(bool(self.dataset), "data.dataset must be a dataset name (digits, mnist, fashion-mnist, "
                                    "cifar10, folder)")
        require(self.image_size is None or self.image_size >= 1, f"data.image_size must be >= 1, got {self.image_size}")
        require(self.channels in (None, 1, 3), f"data.channels must be 1, 3 or null, got {self.channels}")
        require(self.dataset != "folder" or self.root is not None,
                "data.dataset 'folder' needs data.root=<folder of images> (or --data-root)")
        require(0.0 <= self.holdout_fraction < 1.0,
                f"data.holdout_fraction must be in [0, 1) (0 = no held-out split), got {self.holdout_fraction}")
        require(self.holdout_fraction == 0.0 or self.dataset == "folder",
                f"data.holdout_fraction applies to folder datasets; {self.dataset} has its own test split")
        require(self.holdout_seed >= 0, f"data.holdout_seed must be >= 0, got {self.holdout_seed}")


@dataclass(frozen=True)
class TrainSettings:
    """What the training engine (``difflab.train.engine``) does, the same for every run kind."""

    steps: int = 10_000
    batch_size: int = 128              # the global batch; split across processes under DDP
    lr: float = 2e-4
    warmup_steps: int = 0              # linear LR warm-up from lr / warmup_steps to lr
    lr_decay: str = "constant"         # after warm-up: constant | cosine | linear (to 0 at train.steps, or at
    #                                    train.max_minutes of training time when that comes first)
    weight_decay: float = 0.0          # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0             # max global grad norm; 0 disables clipping
    ema_decay: float | None = 0.9999   # weights' moving average (null = none)
    ema_warmup: bool = True            # decay_n = min(ema_decay, (1 + n) / (10 + n))
    mixed_precision: str = "no"        # no | bf16 | fp16 (fp16: CUDA only, with a GradScaler)
    seed: int = 0
    log_every: int = 100
    sample_every: int = 0              # sample grid every N steps (0 = only at the end)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3          # most recent checkpoints kept on disk (>= 1)
    num_threads: int = 0               # torch CPU threads per process (0 = torch's default)
    device: str = "auto"               # auto | cpu | cuda | cuda:N | mps
    max_nonfinite_steps: int = 10      # stop after this many non-finite losses in a row
    # Time budget: stop once the optimiser steps have taken this many minutes of wall-clock (the
    # time of checkpoints and sample grids is not counted); 0 = no budget, train.steps still caps.
    max_minutes: float = 0.0
    checkpoint_every_minutes: float = 0.0   # also checkpoint every N minutes of training time (0 = off)
    # TensorBoard event files in RUN_DIR/tensorboard (the optional extra: pip install 'difflab[tensorboard]'):
    # auto = when the package is installed | true = required (an error names the install command) | false = none
    tensorboard: bool | str = "auto"

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                     "max_nonfinite_steps"):
            require(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_every", "num_threads", "seed"):
            require(getattr(self, name) >= 0, f"train.{name} must be >= 0, got {getattr(self, name)}")
        require(self.seed <= MAX_TRAIN_SEED, f"train.seed must be in [0, 2**63 - 1], got {self.seed}")
        for name in ("max_minutes", "checkpoint_every_minutes"):
            value = getattr(self, name)
            require(value >= 0 and math.isfinite(value), f"train.{name} must be a finite number >= 0 (0 = off), "
                                                         f"got {value}")
        require(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be a positive number, got {self.lr}")
        require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        require(self.ema_decay is None or 0.0 <= self.ema_decay < 1.0,
                f"train.ema_decay must be in [0, 1) or null (no EMA), got {self.ema_decay}")
        require(all(0.0 <= b < 1.0 for b in self.adam_betas), f"train.adam_betas must lie in [0, 1), "
                                                               f"got {list(self.adam_betas)}")
        require(self.lr_decay in LR_DECAYS,
                f"train.lr_decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")
        require(self.mixed_precision in MIXED_PRECISION,
                f"train.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        require(isinstance(self.tensorboard, bool) or self.tensorboard == "auto",
                f"train.tensorboard must be auto, true or false, got {self.tensorboard!r}")
        require(self.device.split(":")[0] in DEVICES,
                f"train.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """Training a diffusion model: the engine's settings plus label dropout and timestep sampling."""

    class_dropout: float = 0.1         # P(label -> null class), for classifier-free guidance
    timestep_sampling: str = "uniform"  # uniform | loss_aware (iDDPM sec. 3.3 importance sampling)
    # Evaluation during training (difflab.train.evaluation): every eval_every_minutes of training time and at
    # the end, FD and precision/recall of eval_n samples against the held-out images (data.holdout_fraction, or
    # the dataset's eval_split), beside the floor; 0 = off. Evaluations wait so that they take at most
    # eval_max_share of the training time; eval_cache_dir: featurizers (default ~/.cache/difflab).
    eval_every_minutes: float = 0.0
    eval_n: int = 500
    eval_split: str = "test"
    eval_max_share: float = 0.2
    eval_cache_dir: str | None = None
    compile: bool = False              # the training forward through torch.compile (inductor; difflab.compile:
    #                                    a compile failure falls back to eager with a message)
    channels_last: bool = False        # the U-Net (and its EMA) stored channels-last (NHWC), the layout oneDNN's
    #                                    convolutions use on CPU: faster there (benchmarks/compile_throughput.py)
    # At the end of a class-conditional run with evaluation: try several classifier-free guidance weights on the
    # final EMA weights and keep the one whose samples are nearest the training images (difflab.train.guidance_choice)
    choose_guidance: bool = False

    def __post_init__(self):
        super().__post_init__()
        _check_eval(self)
        require(self.eval_every_minutes >= 0 and math.isfinite(self.eval_every_minutes),
                f"train.eval_every_minutes must be a finite number >= 0 (0 = off), got {self.eval_every_minutes}")
        require(self.eval_max_share > 0, f"train.eval_max_share must be > 0, got {self.eval_max_share}")
        require(not self.choose_guidance or self.eval_every_minutes > 0,
                "train.choose_guidance measures samples with the run's evaluation: set train.eval_every_minutes > 0 "
                "(or train.choose_guidance=false)")
        require(self.ema_decay is not None, "train.ema_decay=null: a diffusion run samples with its EMA weights; "
                                            "set a decay in [0, 1) (0 = the weights themselves)")
        require(0.0 <= self.class_dropout < 1.0, f"train.class_dropout must be in [0, 1), got {self.class_dropout}")
        require(self.timestep_sampling in TIMESTEP_SAMPLERS,
                f"train.timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLERS)}, got {self.timestep_sampling!r}")


def _check_eval(cfg) -> None:
    require(cfg.eval_n >= 1, f"train.eval_n must be >= 1, got {cfg.eval_n}")
    require(bool(cfg.eval_split), "train.eval_split must name a split (e.g. test)")


@dataclass(frozen=True)
class ClassifierTrainConfig(TrainSettings):
    """Training the noise-aware classifier (guided diffusion: AdamW 3e-4, weight decay 0.05; no EMA by default;
    ``sample_every`` measures the held-out accuracy per noise level every N steps: metrics rows and a figure)."""

    steps: int = 2000
    lr: float = 3e-4
    weight_decay: float = 0.05
    ema_decay: float | None = None
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_split: str = "test"          # held-out split for the per-noise-level accuracy
    eval_n: int = 1000                # held-out images per noise level (at most the split's size)

    def __post_init__(self):
        super().__post_init__()
        _check_eval(self)


@dataclass(frozen=True)
class AutoencoderTrainConfig(TrainSettings):
    """Training the autoencoder and its discriminator (Adam betas (0.5, 0.9), as in latent-diffusion;
    ``disc_lr`` = None uses ``lr``; ``sample_every`` writes a held-out reconstruction grid)."""

    steps: int = 5000
    batch_size: int = 64
    lr: float = 4.5e-4
    disc_lr: float | None = None
    adam_betas: tuple[float, float] = (0.5, 0.9)
    ema_decay: float | None = None
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_split: str = "test"          # held-out split for PSNR (a held-out training slice if the dataset has none)
    eval_n: int = 1000                # held-out images evaluated
    eval_classifier: str = "auto"     # FD featurizer: auto (the cached one for the dataset, if any) | none | a folder

    def __post_init__(self):
        super().__post_init__()
        _check_eval(self)
        require(self.disc_lr is None or (self.disc_lr > 0 and math.isfinite(self.disc_lr)),
                f"train.disc_lr must be a positive number or null, got {self.disc_lr}")
        require(isinstance(self.eval_classifier, str) and bool(self.eval_classifier.strip()),
                "train.eval_classifier must be 'auto', 'none' or the folder of an evaluation classifier "
                f"(difflab.eval.save_eval_classifier), got {self.eval_classifier!r}")


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
        require(self.sampler in SAMPLERS,
                f"sample.sampler must be one of {', '.join(sorted(SAMPLERS))}, got {self.sampler!r}")
        require(self.steps >= 1, f"sample.steps must be >= 1, got {self.steps}")
        require(self.eta >= 0 and math.isfinite(self.eta),
                f"sample.eta must be a finite number >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {self.eta}")
        require(self.spacing is None or self.spacing in SPACINGS,
                f"sample.spacing must be null or one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        require(self.n >= 1, f"sample.n must be >= 1, got {self.n}")
        require(self.batch_size >= 1, f"sample.batch_size must be >= 1, got {self.batch_size}")
        require(self.guidance_scale is None or (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0),
                f"sample.guidance_scale must be null or a finite number >= 0, got {self.guidance_scale}")
        require(0 <= self.seed <= MAX_SAMPLE_SEED, f"sample.seed must be in [0, 2**43 - 1], got {self.seed}")


@dataclass(frozen=True)
class LatentConfig:
    """Latent diffusion (Rombach et al. 2022): diffuse the latents of a trained KL autoencoder.

    ``autoencoder`` names a ``difflab train-autoencoder`` run folder (or checkpoint); its weights
    and the scale factor computed from the training data are copied into every checkpoint, so
    a latent run samples and resumes without it. Then ``model.image_size`` / ``in_channels`` are
    the latent's size and channels, and ``data`` still describes the images."""

    autoencoder: str | None = None     # None = diffusion on pixels

    def __post_init__(self):
        require(self.autoencoder is None or bool(self.autoencoder),
                "latent.autoencoder must be a run folder of 'difflab train-autoencoder' or null")


@dataclass(frozen=True)
class CondConfig:
    """Conditioning besides class labels: text through cross-attention, a low-resolution image
    through concatenation (``difflab.conditioning``)."""

    text: str = "none"          # none | trainable (TextEncoder trained jointly) | pretrained (frozen all-MiniLM-L6-v2)
    text_dim: int = 64          # width of the trainable encoder (= model.context_dim)
    text_depth: int = 2
    text_heads: int = 4
    max_length: int = 16        # tokens per prompt (pretrained: word pieces including [CLS] and [SEP])
    low_res_factor: int = 0     # > 0: condition on the image downsampled by this factor (super-resolution)

    def __post_init__(self):
        require(self.text in TEXT_ENCODERS, f"cond.text must be one of {', '.join(TEXT_ENCODERS)}, got {self.text!r}")
        for name in ("text_dim", "text_depth", "text_heads", "max_length"):
            require(getattr(self, name) >= 1, f"cond.{name} must be >= 1, got {getattr(self, name)}")
        require(self.text_dim % self.text_heads == 0,
                f"cond.text_dim={self.text_dim} must be divisible by cond.text_heads={self.text_heads}")
        require(self.low_res_factor >= 0, f"cond.low_res_factor must be >= 0 (0 = off), got {self.low_res_factor}")


__all__ = ["ConfigError", "DataConfig", "TrainSettings", "TrainConfig", "ClassifierTrainConfig",
           "AutoencoderTrainConfig", "SampleConfig", "LatentConfig", "CondConfig", "MIXED_PRECISION", "LR_DECAYS"]
