"""Shared pieces of the command line: errors, output, config flags."""

from __future__ import annotations

import argparse
import os

from pathlib import Path

from ..config import DEFAULT_PRESETS, PRESETS, RUN_KINDS, RunConfig, RunSpec, merge, resolve_run
from ..runs import saved_run_config

PROG = "difflab"


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``difflab: error: ... (see difflab train --help)``."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def say(msg: str = "") -> None:
    if is_main_process():
        print(msg, flush=True)


def add_config_flags(p: argparse.ArgumentParser, kind: str = RunConfig.KIND, example: str = "train.lr=1e-3 "
                     "model.channel_mult=[1,2]") -> None:
    """--preset (of run kind ``kind``), --config and --set."""
    presets, default = PRESETS[kind], DEFAULT_PRESETS[kind]
    p.add_argument("--preset", choices=sorted(presets),
                   help=f"named {'run' if kind == RunConfig.KIND else kind} preset ({', '.join(presets)}; "
                        f"default: {default})")
    p.add_argument("--config", metavar="FILE", help="YAML/TOML/JSON file merged over the preset")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help=f"override config values, e.g. --set {example}")


def config_from_args(args, extra: dict | None = None, base: RunSpec | None = None, kind: str = RunConfig.KIND,
                     layers=()) -> RunSpec:
    """The config of ``--preset`` / ``--config`` / ``--set`` (over ``base`` when given), with the values
    of dedicated flags (``extra``, e.g. --steps) merged last."""
    cfg = resolve_run(kind, getattr(args, "preset", None), getattr(args, "config", None), args.overrides, base,
                      layers)
    if extra:
        cfg = RUN_KINDS[kind].from_dict(merge(cfg.to_dict(), extra))
    return cfg


def add_train_flags(p: argparse.ArgumentParser, kind: str, default_out: str) -> None:
    """The flags every training command shares: config, --out, --resume, data root, steps, device, seed."""
    add_config_flags(p, kind, {"diffusion": "train.lr=1e-3 model.channel_mult=[1,2]",
                               "classifier": "model.model_channels=16 train.lr=1e-3",
                               "autoencoder": "model.kl_weight=1e-5 train.lr=1e-4"}[kind])
    p.add_argument("--out", metavar="RUN_DIR", help=f"run folder (default: {default_out})")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out from its latest checkpoint (or from CHECKPOINT) with its saved "
                        "config; --set/--steps may still change train/data settings")
    p.add_argument("--data-root", metavar="DIR", help="folder with the dataset's files (sets data.root)")
    p.add_argument("--steps", type=int, help="total training steps (sets train.steps)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (sets train.device)")
    p.add_argument("--seed", type=int, help="sets train.seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="TensorBoard event files in RUN_DIR/tensorboard (sets train.tensorboard; default auto: on "
                        "when the tensorboard package is installed, pip install 'difflab[tensorboard]')")


def train_config_from_args(args, kind: str, command: str, default_out: Path, extra: dict | None = None,
                           layers=(), conflicts: tuple[str, ...] = ()):
    """``(config, run folder, resume)`` of a training command: a fresh run from --preset / --config /
    --set, or with --resume the run's saved config (``conflicts``: more flags --resume refuses)."""
    extra = merge({}, extra or {})
    for section, key, value in (("data", "root", args.data_root), ("train", "steps", args.steps),
                                ("train", "device", args.device), ("train", "seed", args.seed),
                                ("train", "tensorboard", args.tensorboard)):
        if value is not None:
            extra.setdefault(section, {})[key] = value
    if not args.resume:
        cfg = config_from_args(args, extra, kind=kind, layers=layers)
        return cfg, Path(args.out) if args.out else default_out, False
    refused = ["--preset", "--config", *conflicts]
    if args.preset or args.config or any(getattr(args, f[2:].replace("-", "_"), None) for f in conflicts):
        raise UsageError(f"--resume continues with the run's saved config; drop {'/'.join(refused)}"
                         + (" (use --set to change train/data/sample settings)" if kind == RunConfig.KIND else ""))
    if args.resume is True and args.out is None:
        raise UsageError(f"--resume needs the run folder: {PROG} {command} --out RUN_DIR --resume")
    ckpt, saved = saved_run_config(kind, args.out if args.resume is True else args.resume)
    run_dir = Path(args.out) if args.out else ckpt.parent.parent
    cfg = config_from_args(args, extra, base=saved, kind=kind)
    return cfg, run_dir, True if args.resume is True else ckpt


def report_tensorboard(result) -> None:
    """The command that opens a run's TensorBoard event files, when it wrote some."""
    if getattr(result, "tensorboard", None) is not None:
        say(f"  {'dashboard:':12s}tensorboard --logdir {result.tensorboard.parent}")


def format_duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def check_positive(args, *names: str) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def report_interrupted(result, total_steps: int, took: str, command: str, run_dir) -> int:
    """Say where an interrupted run's checkpoint is and how to resume; exit code 130."""
    say(f"interrupted at step {result.step} of {total_steps} after {took}; checkpoint saved to {result.checkpoint}")
    say(f"resume with: {PROG} {command} --out {run_dir} --resume")
    return 130
