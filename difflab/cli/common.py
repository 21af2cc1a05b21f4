"""Shared pieces of the command line: errors, output, config flags."""

from __future__ import annotations

import argparse
import os

from ..config import RUN_PRESETS, RunConfig, merge, resolve_config, run_config_from_dict

PROG = "difflab"


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``difflab: error: ... (see difflab train --help)``."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _say(msg: str = "") -> None:
    if _is_main_process():
        print(msg, flush=True)


def _add_config_arguments(p: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    p.add_argument("--preset", choices=sorted(RUN_PRESETS), default=default_preset,
                   help=f"named run preset ({', '.join(RUN_PRESETS)}; default: digits)")
    p.add_argument("--config", metavar="FILE", help="YAML/TOML/JSON file merged over the preset")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override config values, e.g. --set train.lr=1e-3 model.channel_mult=[1,2]")


def _config_from_args(args, extra: dict | None = None, base: RunConfig | None = None) -> RunConfig:
    cfg = resolve_config(preset=getattr(args, "preset", None), config_file=getattr(args, "config", None),
                         overrides=args.overrides, base=base)
    if extra:
        cfg = run_config_from_dict(merge(cfg.to_dict(), extra))
    return cfg


def _format_duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


def _positive(args, *names: str) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags every training command shares; they set data.root and train.steps/device/seed."""
    p.add_argument("--data-root", metavar="DIR", help="folder with the dataset's files (sets data.root)")
    p.add_argument("--steps", type=int, help="total training steps (sets train.steps)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (sets train.device)")
    p.add_argument("--seed", type=int, help="sets train.seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _report_interrupted(result, total_steps: int, took: str, command: str, run_dir) -> int:
    """Say where an interrupted run's checkpoint is and how to resume; exit code 130."""
    _say(f"interrupted at step {result.step} of {total_steps} after {took}; checkpoint saved to {result.checkpoint}")
    _say(f"resume with: {PROG} {command} --out {run_dir} --resume")
    return 130
