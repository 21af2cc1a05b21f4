"""The run kinds: what defines a diffusion run, a noise-aware classifier run and an autoencoder run.

Each is a :class:`~difflab.config.schema.RunSpec`: a frozen dataclass of sections with one
``to_dict`` / ``from_dict`` and one unknown-key path; the presets of all three are in
:mod:`difflab.config.presets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..diffusion import DiffusionConfig
from ..nn.autoencoder import AutoencoderConfig, get_ae_preset
from ..nn.classifier import ClassifierConfig
from ..nn.unet import UNetConfig
from .schema import RunSpec, require
from .sections import (AutoencoderTrainConfig, ClassifierTrainConfig, CondConfig, DataConfig, LatentConfig,
                       SampleConfig, TrainConfig)


def check_image_shape(model, data: DataConfig) -> None:
    """``data.image_size`` / ``data.channels``, when set, must be the network's."""
    require(data.image_size is None or data.image_size == model.image_size,
            f"data.image_size={data.image_size} differs from model.image_size={model.image_size}")
    require(data.channels is None or data.channels == model.in_channels,
            f"data.channels={data.channels} differs from model.in_channels={model.in_channels}")


@dataclass(frozen=True)
class RunConfig(RunSpec):
    """Everything that defines a diffusion training run; ``to_dict`` / ``from_dict`` round-trip exactly."""

    KIND: ClassVar[str] = "diffusion"
    LABEL: ClassVar[str] = ""
    SECTIONS: ClassVar[dict[str, type]] = {
        "model": UNetConfig, "diffusion": DiffusionConfig, "data": DataConfig, "train": TrainConfig,
        "sample": SampleConfig, "latent": LatentConfig, "cond": CondConfig,
    }

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
        require(m.learn_sigma == learned,
                f"model.learn_sigma={m.learn_sigma} does not match diffusion.variance={d.variance!r}: "
                "a learned variance needs model.learn_sigma=true, a fixed one model.learn_sigma=false")
        require(not self.data.labels or m.num_classes is not None,
                "data.labels=true needs a class-conditional model: set model.num_classes (e.g. 10)")
        require(self.data.labels or m.num_classes is None,
                f"model.num_classes={m.num_classes} makes the model class-conditional: set data.labels=true "
                "or model.num_classes=null")
        c = self.cond
        require((m.context_dim is None) == (c.text == "none"),
                f"model.context_dim={m.context_dim} needs cond.text=trainable or pretrained" if c.text == "none"
                else f"cond.text={c.text} needs cross-attention: set model.context_dim (the text encoder's width: "
                     "cond.text_dim for trainable, 384 for pretrained) and model.cross_attention_resolutions")
        require(c.text != "trainable" or m.context_dim == c.text_dim,
                f"model.context_dim={m.context_dim} must equal cond.text_dim={c.text_dim} for cond.text=trainable")
        require(c.text == "none" or m.num_classes is None,
                "a model is conditioned on class labels (model.num_classes) or on text (cond.text), not both")
        require((m.cond_channels == 0) == (c.low_res_factor == 0),
                f"model.cond_channels={m.cond_channels} needs cond.low_res_factor > 0 (the image it concatenates)"
                if c.low_res_factor == 0 else
                f"cond.low_res_factor={c.low_res_factor} needs model.cond_channels = the image channels (e.g. 1)")
        if self.sample.guidance_scale is not None:
            require(m.num_classes is not None or c.text != "none",
                    "sample.guidance_scale is classifier-free guidance: it needs a class- or text-conditional model")
            require(self.train.class_dropout > 0,
                    "sample.guidance_scale needs train.class_dropout > 0 (the null condition must be trained)")
        if self.train.choose_guidance:
            require(m.num_classes is not None and self.train.class_dropout > 0,
                    "train.choose_guidance chooses the classifier-free guidance weight: it needs a class-conditional "
                    "model (model.num_classes) trained with train.class_dropout > 0")
        if self.latent.autoencoder is not None:   # model.image_size / in_channels describe the latent
            require(not self.sample.clip_denoised, "latent diffusion needs sample.clip_denoised=false: latents are "
                                                   "unbounded (the decoded images are clamped instead)")
            return
        check_image_shape(m, self.data)


@dataclass(frozen=True)
class ClassifierRunConfig(RunSpec):
    """A noise-aware classifier run: network, diffusion (must match the guided model), data, train."""

    KIND: ClassVar[str] = "classifier"
    LABEL: ClassVar[str] = "classifier "
    SECTIONS: ClassVar[dict[str, type]] = {"model": ClassifierConfig, "diffusion": DiffusionConfig,
                                           "data": DataConfig, "train": ClassifierTrainConfig}

    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(labels=True))
    train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)

    def __post_init__(self):
        check_image_shape(self.model, self.data)


@dataclass(frozen=True)
class AutoencoderRunConfig(RunSpec):
    """A KL autoencoder run: network + loss weights, data, training."""

    KIND: ClassVar[str] = "autoencoder"
    LABEL: ClassVar[str] = "autoencoder "
    SECTIONS: ClassVar[dict[str, type]] = {"model": AutoencoderConfig, "data": DataConfig,
                                           "train": AutoencoderTrainConfig}

    model: AutoencoderConfig = field(default_factory=lambda: get_ae_preset("mnist-f4"))
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="mnist"))
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)

    def __post_init__(self):
        check_image_shape(self.model, self.data)


#: every run kind, by its ``KIND``
RUN_KINDS: dict[str, type[RunSpec]] = {k.KIND: k for k in (RunConfig, ClassifierRunConfig, AutoencoderRunConfig)}
