"""The automatic recipe: training settings chosen from the data, the time budget and the measured speed.

Pure functions, no I/O. The caller gathers the facts (:func:`difflab.data.inspect_folder`), times
the probe network for a few seconds (:func:`probe_network`, then
:func:`difflab.nn.cost.measure_steps_per_second`), and asks :func:`auto_recipe` for config
overrides; :func:`check_budget` explains before training when a config cannot work in its budget.

Where the rules come from (the starting point, not constants: each scales with the run):

* issue 9's ``mnist-fast`` (1,697 steps in 25 minutes on one CPU core, FD 2.4x the floor on MNIST):
  class labels with a little classifier-free guidance, v-prediction with min-SNR-5 weighting on
  the cosine schedule, a narrow network without attention, a high constant learning rate, EMA;
* the step count the budget allows, ``S = minutes * 60 * steps/s``, sets the rest: the widest
  network that still makes :data:`TARGET_STEPS` steps, more as the budget grows
  (:func:`target_steps`; rates of other networks are predicted from the measured one by their
  cost, :func:`difflab.nn.cost.training_cost`), a warm-up of
  :data:`WARMUP_FRACTION` of S, and an EMA that averages over about :data:`EMA_FRACTION` of S
  (EDM2's finding that the best EMA length is a fixed fraction of training, ~0.05-0.15; the
  EMA warm-up of ``difflab.train.EMA`` gives 0.11);
* the learning rate falls as the network widens (``lr ~ 1 / width`` for Adam, as in muP) and
  rises with the square root of the batch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable

from .config import RunConfig, RunSpec, merge, resolve_config, run_config_from_dict
from .data.facts import DatasetFacts
from .nn.cost import training_cost, unet_macs
from .nn.levels import level_fractions
from .nn.unet import UNetConfig

DEVICE_KINDS = ("cpu", "cuda", "mps")
TARGET_STEPS = 1500          # mnist-fast's 1,697 steps reached 2.4x the floor; fewer made blobs (issue 16)
MIN_STEPS = 400              # below this no network learns much: warn
WARMUP_FRACTION = 0.05       # mnist-fast: 100 warm-up steps of 1,697
EMA_FRACTION = 0.1           # EMA horizon 1 / (1 - decay) as a fraction of the run
MAX_EMA_DECAY = 0.9999
BASE_LR, BASE_WIDTH, BASE_BATCH = 2e-3, 32, 64       # mnist-fast
MIN_LR, MAX_LR = 1e-4, 2e-3
HFLIP_MIN_EPOCHS = 20        # passes over the data from which mirrored copies could help (data-limited runs)
# network ladder, cheapest first: (model_channels, num_res_blocks, attention at the lowest level + middle)
LADDER = ((16, 1, False), (24, 1, False), (32, 1, False), (48, 1, False), (64, 1, True), (64, 2, True),
          (96, 2, True), (128, 2, True), (192, 2, True))
MAX_SIDE = {"cpu": 64, "mps": 64, "cuda": 128}       # train larger images at a lower resolution
BATCH = {"cpu": 64, "mps": 64, "cuda": 128}
SAMPLE_STEPS = {"cpu": 25, "mps": 25, "cuda": 50}    # DDIM eta=1 (the sampler table: best at few steps)
PRETRAINED_TEXT_DIM = 384                            # all-MiniLM-L6-v2


@dataclass(frozen=True)
class StepRate:
    """A measured training speed: ``steps_per_second`` of ``model`` at ``batch_size``."""

    model: UNetConfig
    batch_size: int
    steps_per_second: float

    def __post_init__(self):
        if not (self.steps_per_second > 0 and math.isfinite(self.steps_per_second)) or self.batch_size < 1:
            raise ValueError(f"a step rate needs steps_per_second > 0 and batch_size >= 1, got {self}")

    def predict(self, model: UNetConfig, batch_size: int) -> float:
        """Steps per second of another network and batch: time in proportion to
        :func:`difflab.nn.cost.training_cost` x batch."""
        return (self.steps_per_second * (training_cost(self.model) * self.batch_size)
                / (training_cost(model) * batch_size))


@dataclass(frozen=True)
class Recipe:
    """Config overrides (``section.key`` -> value) and why each was chosen."""

    overrides: dict[str, Any]
    expected_steps: int
    steps_per_second: float
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    def set_args(self) -> list[str]:
        """The overrides as ``--set`` arguments (YAML values), e.g. ``train.lr=0.002``."""
        def fmt(v):
            if isinstance(v, bool) or v is None:
                return {True: "true", False: "false", None: "null"}[v]
            if isinstance(v, (list, tuple)):
                return "[" + ",".join(fmt(x) for x in v) + "]"
            return f"{v:.6g}" if isinstance(v, float) else str(v)
        return [f"{k}={fmt(v)}" for k, v in self.overrides.items()]

    def nested(self) -> dict[str, dict[str, Any]]:
        """The overrides as nested sections, to merge over a config dict."""
        out: dict[str, dict[str, Any]] = {}
        for key, value in self.overrides.items():
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
        return out

    def describe(self) -> str:
        return "\n".join([f"recipe: ~{self.expected_steps} steps at {self.steps_per_second:.3g} steps/s"]
                         + [f"  {r}" for r in self.reasons] + [f"  warning: {w}" for w in self.warnings])


def _check_device(device: str) -> str:
    kind = device.split(":")[0]
    if kind not in DEVICE_KINDS:
        raise ValueError(f"device kind must be one of {', '.join(DEVICE_KINDS)}, got {device!r}")
    return kind


def training_side(facts: DatasetFacts, device: str = "cpu") -> int:
    """The side images are trained at: the data's own, halved while above the device's MAX_SIDE."""
    side = facts.image_size
    while side > MAX_SIDE[_check_device(device)]:
        side //= 2
    return side


def num_levels(side: int) -> int:
    """U-Net levels for ``side``: halve while the side stays even and the lowest level keeps at least
    6 pixels (4 below 16 pixels), at most 5 levels (28 -> 14 -> 7, 32 -> 16 -> 8, 8 -> 4)."""
    lowest = 4 if side < 16 else 6
    levels, s = 1, side
    while s % 2 == 0 and s // 2 >= lowest and levels < 5:
        s //= 2
        levels += 1
    return levels


def network(side: int, channels: int, rung: tuple[int, int, bool]) -> UNetConfig:
    """The U-Net of one ladder rung at ``side`` pixels (unconditional; conditioning is added after)."""
    width, blocks, attention = rung
    levels = num_levels(side)
    lowest = level_fractions(levels)[-1]
    return UNetConfig(image_size=side, in_channels=channels, model_channels=width,
                      channel_mult=(1,) + (2,) * (levels - 1), num_res_blocks=blocks,
                      attention_resolutions=(lowest,) if attention else (), mid_attention=attention,
                      num_head_channels=32 if attention else -1, dropout=0.0,
                      norm_groups=8 if width < 64 else (16 if width < 128 else 32))


def batch_size(facts: DatasetFacts, device: str = "cpu") -> int:
    """The device's batch, at most an eighth of the images (a power of two, at least 8)."""
    cap = 2 ** max(3, int(math.log2(max(1, facts.count // 8))))
    return min(BATCH[_check_device(device)], cap)


def probe_network(facts: DatasetFacts, device: str = "cpu") -> tuple[UNetConfig, int]:
    """The network and batch size to time before calling :func:`auto_recipe` (mnist-fast's width)."""
    return network(training_side(facts, device), facts.channels, LADDER[2]), batch_size(facts, device)


def _max_width(count: int) -> int:
    # small datasets do not need (and overfit) wide networks; CIFAR-10's 50k images take 128 (DDPM)
    return 64 if count < 5_000 else (128 if count < 50_000 else 192)


def ema_decay_for(steps: int) -> float:
    """EMA decay whose horizon ``1 / (1 - decay)`` is EMA_FRACTION of ``steps`` (at least 10 steps)."""
    return min(MAX_EMA_DECAY, 1.0 - 1.0 / max(10.0, EMA_FRACTION * steps))


def guidance_for(steps: int) -> float:
    """Classifier-free guidance weight: more for shorter runs (mnist-fast: w = 0.5 best after ~1,000
    steps, 0.25 after ~1,700), ``0.25 * sqrt(1700 / steps)`` within [0.1, 0.5]."""
    return round(min(0.5, max(0.1, 0.25 * math.sqrt(1700 / max(1, steps)))), 2)


def target_steps(reference_steps: float) -> float:
    """Steps to aim for when mnist-fast's network would make ``reference_steps``: TARGET_STEPS, and as
    the budget grows, its square root goes to more steps and the rest to a wider network (model size
    and data seen growing together with compute, as in the scaling laws of Kaplan et al. 2020 and
    Hoffmann et al. 2022: a network's MACs scale with the square of its width)."""
    return TARGET_STEPS * math.sqrt(max(1.0, reference_steps / TARGET_STEPS))


def choose_network(facts: DatasetFacts, batch: int, seconds: float, rate: StepRate,
                   device: str = "cpu") -> tuple[int, tuple[int, int, bool], float]:
    """``(side, ladder rung, predicted steps/s)``: the widest rung (within the dataset's cap) that still
    makes :func:`target_steps` steps in ``seconds``. If even mnist-fast's width cannot at the training
    side, half the side is tried (not below 32 pixels); with nothing in reach, the cheapest rung at the
    smallest side tried."""
    kind = _check_device(device)
    sides = [training_side(facts, kind)]
    while sides[-1] % 2 == 0 and sides[-1] // 2 >= 32:
        sides.append(sides[-1] // 2)
    rungs = [r for r in LADDER if r[0] <= _max_width(facts.count)]
    choice = None
    for side in sides:
        reference = seconds * rate.predict(network(side, facts.channels, LADDER[2]), batch)
        target = target_steps(reference)
        fits = [(rung, rate.predict(network(side, facts.channels, rung), batch)) for rung in rungs]
        fits = [(rung, sps) for rung, sps in fits if sps * seconds >= target]
        if fits:
            choice = (side,) + fits[-1]
            if fits[-1][0][0] >= BASE_WIDTH:
                break
    if choice is None:
        side = sides[-1]
        choice = (side, rungs[0], rate.predict(network(side, facts.channels, rungs[0]), batch))
    return choice


def auto_recipe(facts: DatasetFacts, budget_minutes: float, rate: StepRate, device: str = "cpu",
                text_encoder: bool = False) -> Recipe:
    """Config overrides for ``budget_minutes`` of training on ``facts`` at the measured ``rate``.

    ``device``: cpu, cuda or mps. ``text_encoder``: the pretrained text encoder is installed (captioned
    data without labels is then trained text-conditional). Every override can still be changed
    with ``--set``.
    """
    kind = _check_device(device)
    if not (budget_minutes > 0 and math.isfinite(budget_minutes)):
        raise ValueError(f"the budget must be a positive number of minutes, got {budget_minutes}")
    seconds = 60.0 * budget_minutes
    batch = batch_size(facts, kind)
    reasons, warnings = [], []
    side, rung, sps = choose_network(facts, batch, seconds, rate, kind)
    steps = int(sps * seconds)
    net = network(side, facts.channels, rung)
    width, blocks, attention = rung
    if side != facts.image_size:
        reasons.append(f"resolution {side}x{side} (the images' {facts.image_size} is too slow for this budget "
                       f"or device)")
    reasons.append(f"network: {width} channels x {net.channel_mult}, {blocks} res block(s) per level, "
                   + (f"attention at {net.attention_resolutions[0]} of the image size and in the middle"
                      if attention else "no attention") + f" ({unet_macs(net) / 1e6:.0f} MMACs per image); "
                   f"~{steps} steps in {budget_minutes:g} min at a predicted {sps:.3g} steps/s")
    if steps < MIN_STEPS:
        need = math.ceil(TARGET_STEPS / sps / 60)
        warnings.append(f"only ~{steps} steps fit in {budget_minutes:g} minutes even with the smallest network: "
                        f"expect noisy samples; about {need} minutes would allow {TARGET_STEPS} steps")
    lr = min(MAX_LR, max(MIN_LR, BASE_LR * (BASE_WIDTH / width) * math.sqrt(batch / BASE_BATCH)))
    warmup = int(min(1000, max(10, round(WARMUP_FRACTION * steps))))
    ema = ema_decay_for(steps)
    o: dict[str, Any] = {f"model.{f.name}": getattr(net, f.name) for f in dataclasses.fields(net)}
    o.update({"data.image_size": side, "data.channels": facts.channels,
              "diffusion.schedule": "cosine", "diffusion.num_timesteps": 1000, "diffusion.prediction": "v",
              "diffusion.loss_weighting": "min_snr", "diffusion.min_snr_gamma": 5.0,
              "train.batch_size": batch, "train.lr": float(f"{lr:.3g}"), "train.lr_decay": "constant",
              "train.warmup_steps": warmup, "train.ema_decay": round(ema, 6), "train.ema_warmup": True,
              "train.grad_clip": 1.0, "train.max_minutes": float(budget_minutes),
              "train.steps": max(1000, 10 * steps), "train.log_every": max(1, round(30 * sps)),
              "train.sample_every": 0, "train.checkpoint_every": max(1000, 10 * steps),
              "train.checkpoint_every_minutes": float(min(10.0, max(1.0, round(budget_minutes / 5, 1)))),
              "sample.sampler": "ddim", "sample.steps": SAMPLE_STEPS[kind], "sample.eta": 1.0})
    reasons.append(f"batch {batch}, lr {o['train.lr']:g} constant after {warmup} warm-up steps ({WARMUP_FRACTION:.0%} of the run), "
                   f"EMA decay {o['train.ema_decay']} (an average over ~{1 / (1 - ema):.0f} steps, "
                   f"{EMA_FRACTION:.0%} of the run)")
    reasons.append("v-prediction, min-SNR-5 loss weighting, cosine schedule; DDIM "
                   f"{SAMPLE_STEPS[kind]} steps with eta=1")
    # flips are off: the recipe cannot tell whether a mirror image is as likely as the image (photos)
    # or not (digits, text), and a wrong flip puts a mode into the samples that held-out data lacks
    epochs = steps * batch / facts.count
    o["data.hflip"] = False
    reasons.append(f"~{epochs:.1f} passes over the {facts.count} images, no random flips"
                   + (" (the run is data-limited: for images whose mirror image is as likely, e.g. photos, "
                      "--set data.hflip=true)" if epochs >= HFLIP_MIN_EPOCHS else ""))
    w = guidance_for(steps)
    k = facts.num_classes
    if k is not None and k >= 2 and min(facts.class_counts) >= 2:
        o.update({"data.labels": True, "model.num_classes": k, "train.class_dropout": 0.1,
                  "sample.guidance_scale": w})
        reasons.append(f"class-conditional on the {k} class folders (labels dropped 10% of the time), "
                       f"classifier-free guidance w={w}")
    elif facts.captions and text_encoder:
        o.update({"cond.text": "pretrained", "model.context_dim": PRETRAINED_TEXT_DIM,
                  "model.cross_attention_resolutions": (level_fractions(len(net.channel_mult))[-1],),
                  "train.class_dropout": 0.1, "sample.guidance_scale": w, "data.labels": False,
                  "model.num_classes": None})
        reasons.append(f"text-conditional on the captions ({facts.captions} of {facts.count} images) through the "
                       f"pretrained encoder, cross-attention at the lowest level, guidance w={w}")
    else:
        o.update({"data.labels": False, "model.num_classes": None})
        why = ("captions need the pretrained text encoder (the 'text' extra)" if facts.captions else
               "no class sub-folders" if k is None else "a class sub-folder holds a single image")
        reasons.append(f"unconditional ({why})")
    return Recipe(overrides=o, expected_steps=steps, steps_per_second=sps, reasons=tuple(reasons),
                  warnings=tuple(warnings))


def recipe_config(recipe: Recipe, data: dict[str, Any], overrides: Iterable[str] = ()) -> RunConfig:
    """The run config of ``recipe``: the defaults, the recipe's choices, ``data`` (e.g. ``{"dataset":
    "folder", "root": path}``) and the user's ``section.key=value`` overrides, in that order (so every
    choice can be overridden)."""
    base = run_config_from_dict(merge(merge(RunConfig().to_dict(), recipe.nested()), {"data": dict(data)}))
    return resolve_config(base=base, overrides=overrides)


def ema_profile(decay: float, warmup: bool, steps: int) -> tuple[float, float]:
    """After ``steps`` updates of ``difflab.train.EMA`` (``d_n = min(decay, (1 + n) / (10 + n))`` with
    warm-up, else ``decay``): the weight the average still puts on the initial (random) weights,
    ``prod_n d_n``, and the horizon ``1 / (1 - d_{steps-1})`` of the last update, in steps."""
    if steps < 1:
        return 1.0, 0.0
    if not warmup:
        return decay ** steps, 1.0 / (1.0 - decay)
    # d_n follows the ramp while (1 + n) / (10 + n) < decay, i.e. for n < (10 decay - 1) / (1 - decay)
    m = min(steps, max(0, math.ceil((10 * decay - 1) / (1 - decay))))
    log_ramp = math.lgamma(m + 1) + math.lgamma(10) - math.lgamma(m + 10)    # log prod_{n<m} (1+n)/(10+n)
    last = min(decay, steps / (steps + 9))
    return math.exp(log_ramp) * decay ** (steps - m), 1.0 / (1.0 - last)


def check_budget(cfg: RunSpec, steps_per_second: float, budget_minutes: float | None = None) -> list[str]:
    """Human-readable warnings when ``cfg`` (a run config of any kind: its ``train`` section) cannot work
    in its budget at ``steps_per_second`` (measured on its own network): a learning-rate warm-up or an
    EMA horizon longer than the run, or too few steps. ``budget_minutes`` defaults to
    ``cfg.train.max_minutes`` (0: train.steps alone bounds the run)."""
    if not (steps_per_second > 0 and math.isfinite(steps_per_second)):
        raise ValueError(f"steps_per_second must be a positive number, got {steps_per_second}")
    tc = cfg.train
    minutes = tc.max_minutes if budget_minutes is None else budget_minutes
    steps = tc.steps if not minutes else max(1, min(tc.steps, int(minutes * 60 * steps_per_second)))
    where = (f"the ~{steps} steps that {minutes:g} minutes allow at {steps_per_second:.3g} steps/s"
             if minutes and steps < tc.steps else f"the {steps} steps of train.steps")
    out = []
    if steps < MIN_STEPS:
        out.append(f"{where[0].upper()}{where[1:]} are too few for any network to learn much: expect noisy "
                   f"samples; a narrower network (model.model_channels) or a longer budget would help")
    if tc.warmup_steps >= steps:
        out.append(f"train.warmup_steps={tc.warmup_steps} is longer than {where}: the learning rate ends at "
                   f"{steps / tc.warmup_steps:.0%} of train.lr; e.g. --set train.warmup_steps="
                   f"{max(1, round(WARMUP_FRACTION * steps))}")
    elif tc.warmup_steps > steps // 4:
        out.append(f"train.warmup_steps={tc.warmup_steps} is {tc.warmup_steps / steps:.0%} of {where}: most of the "
                   f"run trains below train.lr; e.g. --set train.warmup_steps={max(1, round(WARMUP_FRACTION * steps))}")
    # (an exponential average keeps e^(-S/H) of the initial weights after S steps of horizon H, so "more than
    # 5% initial weights" is "a horizon longer than a third of the run"; the EMA warm-up keeps H near S / 9)
    init = 0.0 if tc.ema_decay is None else ema_profile(tc.ema_decay, tc.ema_warmup, steps)[0]   # None: no EMA
    if init > 0.05:
        out.append(f"train.ema_decay={tc.ema_decay} averages over ~{1 / (1 - tc.ema_decay):.0f} steps, longer than "
                   f"{where}: the EMA weights that sampling uses are still {init:.0%} the initial random weights "
                   f"at the end; e.g. --set train.ema_decay={ema_decay_for(steps):.4g}")
    return out
