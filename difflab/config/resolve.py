"""From a preset, a file and overrides to a run config; writing and reading the resolved config.

Resolution order (the same for every run kind): a named preset (:mod:`difflab.config.presets`),
then a YAML / TOML / JSON file merged over it, then ``section.key=value`` overrides (values
parsed with ``yaml.safe_load``). The resolved config is written beside every checkpoint and
reads back to an equal object (:func:`save_config` / :func:`load_config`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ..files import write_text_atomic
from .kinds import RUN_KINDS, AutoencoderRunConfig, ClassifierRunConfig, RunConfig
from .presets import DEFAULT_PRESETS, PRESETS, get_preset
from . import schema
from .schema import ConfigError, RunSpec, merge, read_config_file, section_to_dict


def resolve_run(kind: str, preset: str | None = None, config_file: str | os.PathLike | None = None,
                overrides: Iterable[str] = (), base: RunSpec | None = None,
                layers: Iterable[Mapping[str, Any]] = ()) -> RunSpec:
    """``base`` (or ``preset``, or the file's ``preset:`` key, or the kind's default) <- file <- ``layers``
    (plain data merged in order, e.g. what a classifier takes from the run it guides) <- overrides."""
    spec = RUN_KINDS[kind]
    file_data = read_config_file(config_file) if config_file is not None else {}
    file_preset = file_data.pop("preset", None)
    if base is None:
        name = preset or file_preset or DEFAULT_PRESETS[kind]
        if not isinstance(name, str):
            raise ConfigError(f"preset must be a name ({', '.join(PRESETS[kind])}), got {name!r}")
        base = get_preset(kind, name)
    d = merge(base.to_dict(), file_data)
    for layer in layers:
        d = merge(d, layer)
    return spec.from_dict(schema.apply_overrides(d, overrides, spec))


def resolve_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                   overrides: Iterable[str] = (), base: RunConfig | None = None) -> RunConfig:
    """A diffusion run's config (see :func:`resolve_run`; default preset ``digits``)."""
    return resolve_run(RunConfig.KIND, preset, config_file, overrides, base)


def resolve_autoencoder_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                               overrides: Iterable[str] = (),
                               base: AutoencoderRunConfig | None = None) -> AutoencoderRunConfig:
    """An autoencoder run's config (see :func:`resolve_run`; default preset ``mnist-f4``)."""
    return resolve_run(AutoencoderRunConfig.KIND, preset, config_file, overrides, base)


def classifier_layer_from_run(run: RunConfig) -> dict[str, Any]:
    """What a classifier takes from the diffusion run it will guide: the chain (without a learned
    variance: irrelevant to the classifier), the image shape, the classes and the data."""
    m, data = run.model, run.data
    layer = {"diffusion": {**section_to_dict(run.diffusion), "variance": "fixed_small", "loss": "simple"},
             "model": {"image_size": m.image_size, "in_channels": m.in_channels},
             "data": {"dataset": data.dataset, "root": data.root, "image_size": data.image_size,
                      "channels": data.channels}}
    if data.dataset == "folder":     # the same held-out images (the split is a rule per image path)
        layer["data"].update(holdout_fraction=data.holdout_fraction, holdout_seed=data.holdout_seed)
    if m.num_classes is not None:
        layer["model"]["num_classes"] = m.num_classes
    return layer


def resolve_classifier_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                              overrides: Iterable[str] = (), guided: RunConfig | None = None,
                              base: ClassifierRunConfig | None = None) -> ClassifierRunConfig:
    """A classifier run's config (see :func:`resolve_run`; default preset ``digits``); ``guided``, the
    config of the diffusion run to be guided, supplies its chain, image shape and data so that the
    classifier sees the same x_t."""
    layers = [classifier_layer_from_run(guided)] if guided is not None else []
    return resolve_run(ClassifierRunConfig.KIND, preset, config_file, overrides, base, layers)


def parse_override(item: str, spec: type[RunSpec] = RunConfig) -> tuple[list[str], Any]:
    """``'train.lr=1e-3'`` -> ``(['train', 'lr'], 0.001)`` (keys of run kind ``spec``, a diffusion run by default)."""
    return schema.parse_override(item, spec)


def apply_overrides(d: Mapping[str, Any], overrides: Iterable[str], spec: type[RunSpec] = RunConfig) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to nested plain data of run kind ``spec`` (a diffusion run by default)."""
    return schema.apply_overrides(d, overrides, spec)


def run_config_from_dict(d: Mapping[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from nested plain data; missing sections and keys take the defaults."""
    return RunConfig.from_dict(d)


def section_from_dict(name: str, d: Any):
    """Section ``name`` of a diffusion run config from a mapping, checking keys and types."""
    return RunConfig.section_from_dict(name, d)


def save_config(cfg: RunSpec, path: str | os.PathLike) -> Path:
    """Write any run config as YAML (or JSON for a ``.json`` path), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = cfg.to_dict()
    text = json.dumps(d, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(d, sort_keys=False)
    return write_text_atomic(path, text)


def load_config(path: str | os.PathLike, kind: str = RunConfig.KIND) -> RunSpec:
    """Read a config written by :func:`save_config` (or any full/partial config file of run kind ``kind``;
    a file's ``preset:`` key is resolved)."""
    data = read_config_file(path)
    if "preset" in data:
        return resolve_run(kind, config_file=path)
    return RUN_KINDS[kind].from_dict(data)
