"""Run configuration: frozen dataclasses, one preset registry, files and overrides.

``schema``    the machinery: coercion, merging, overrides, the one unknown-key / "did you mean" path
``sections``  data, train (the engine's settings and each task's), sample, latent, cond
``kinds``     the run kinds: RunConfig (diffusion), ClassifierRunConfig, AutoencoderRunConfig
``presets``   PRESETS[kind][name] for every run kind
``resolve``   preset <- file <- overrides; save_config / load_config

A diffusion run is described by one :class:`RunConfig` composed of the config each module owns::

    model      difflab.nn.unet.UNetConfig        the network
    diffusion  difflab.diffusion.DiffusionConfig the schedule, prediction target, loss
    data       DataConfig                         which images, how to load them
    train      TrainConfig                        optimiser, EMA, logging, checkpoints
    sample     SampleConfig                       how samples are drawn (grids during training, ``sample``)
    latent     LatentConfig                       latent diffusion's first stage
    cond       CondConfig                         text / low-resolution conditioning
"""

from ..diffusion import DiffusionConfig
from .kinds import RUN_KINDS, AutoencoderRunConfig, ClassifierRunConfig, RunConfig
from .presets import (AE_RUN_PRESETS, CLASSIFIER_RUN_PRESETS, DEFAULT_PRESETS, PRESETS, RUN_PRESETS, get_preset,
                      get_run_preset)
from .resolve import (apply_overrides, classifier_layer_from_run, load_config, parse_override,
                      resolve_autoencoder_config, resolve_classifier_config, resolve_config, resolve_run,
                      run_config_from_dict, save_config, section_from_dict)
from .schema import ConfigError, RunSpec, coerce, merge, read_config_file, require, section_to_dict, suggest
from .sections import (LR_DECAYS, MIXED_PRECISION, AutoencoderTrainConfig, ClassifierTrainConfig, CondConfig,
                       DataConfig, LatentConfig, SampleConfig, TrainConfig, TrainSettings)

SECTIONS = RunConfig.SECTIONS

__all__ = [
    "AE_RUN_PRESETS", "CLASSIFIER_RUN_PRESETS", "DEFAULT_PRESETS", "LR_DECAYS", "MIXED_PRECISION", "PRESETS",
    "RUN_KINDS", "RUN_PRESETS", "SECTIONS", "AutoencoderRunConfig", "AutoencoderTrainConfig", "ClassifierRunConfig",
    "ClassifierTrainConfig", "CondConfig", "ConfigError", "DataConfig", "DiffusionConfig", "LatentConfig",
    "RunConfig", "RunSpec", "SampleConfig", "TrainConfig", "TrainSettings", "apply_overrides",
    "classifier_layer_from_run", "coerce", "get_preset", "get_run_preset", "load_config", "merge", "parse_override",
    "read_config_file", "require", "resolve_autoencoder_config", "resolve_classifier_config", "resolve_config",
    "resolve_run", "run_config_from_dict", "save_config", "section_from_dict", "section_to_dict", "suggest",
]
