"""One registry of named presets for every run kind (``PRESETS[kind][name]``).

``diffusion`` presets feed ``difflab train``, ``classifier`` presets ``difflab train-classifier``,
``autoencoder`` presets ``difflab train-autoencoder``; :func:`get_preset` is the one lookup, with
one "did you mean" error for all of them. The networks' architecture presets, which these
build on, stay beside the networks (``difflab.nn.presets``, ``difflab.nn.autoencoder``).
"""

from __future__ import annotations

import dataclasses

from ..diffusion import DiffusionConfig
from ..nn.autoencoder import get_ae_preset
from ..nn.presets import get_classifier_preset, get_unet_preset
from ..nn.unet import UNetConfig
from .kinds import AutoencoderRunConfig, ClassifierRunConfig, RunConfig
from .schema import ConfigError, RunSpec, suggest
from .sections import (AutoencoderTrainConfig, ClassifierTrainConfig, CondConfig, DataConfig, LatentConfig,
                       SampleConfig, TrainConfig)


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

#: the one registry: run kind -> preset name -> run config
PRESETS: dict[str, dict[str, RunSpec]] = {
    RunConfig.KIND: RUN_PRESETS, ClassifierRunConfig.KIND: CLASSIFIER_RUN_PRESETS,
    AutoencoderRunConfig.KIND: AE_RUN_PRESETS,
}
#: the preset a command uses when none is named
DEFAULT_PRESETS = {RunConfig.KIND: "digits", ClassifierRunConfig.KIND: "digits", AutoencoderRunConfig.KIND: "mnist-f4"}
_PRESET_LABELS = {RunConfig.KIND: "run", ClassifierRunConfig.KIND: "classifier", AutoencoderRunConfig.KIND: "autoencoder"}


def get_preset(kind: str, name) -> RunSpec:
    """The preset ``name`` of run kind ``kind``; a ConfigError naming the closest one otherwise."""
    presets = PRESETS[kind]
    if not isinstance(name, str) or name not in presets:
        close = suggest(name, presets) if isinstance(name, str) else ""
        raise ConfigError(f"unknown {_PRESET_LABELS[kind]} preset {name!r}{close}; available: {', '.join(presets)}")
    return presets[name]


def get_run_preset(name: str) -> RunConfig:
    return get_preset(RunConfig.KIND, name)
