"""`difflab train`: from a preset / config file, or with settings chosen for your data (--data)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..config import RunConfig
from .common import (PROG, UsageError, add_train_flags, format_duration, report_interrupted, report_tensorboard,
                     say, train_config_from_args)

DEFAULT_MINUTES = 25.0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    add_train_flags(p, RunConfig.KIND, "runs/<preset>, or runs/<data> with --data")
    p.add_argument("--autoencoder", metavar="RUN", help="latent diffusion: the autoencoder run to train in the "
                                                         "latent space of (sets latent.autoencoder)")
    p.add_argument("--data", metavar="PATH", help="train on your own images (a folder, class sub-folders = labels) or "
                                                  "a named dataset (digits, mnist with --data-root ...): the settings "
                                                  "are chosen for the data and the time budget on this machine "
                                                  "(printed, saved in config.yaml, each can be changed with --set); a "
                                                  "folder keeps 10%% of its images out of training for evaluation")
    p.add_argument("--minutes", type=float, metavar="M",
                   help=f"training time budget in minutes (sets train.max_minutes; default with --data: "
                        f"{DEFAULT_MINUTES:g})")


def _flag_overrides(args) -> list[str]:
    out = []
    for key, value in (("train.steps", args.steps), ("train.device", args.device), ("train.seed", args.seed)):
        if value is not None:
            out.append(f"{key}={value}")
    if args.tensorboard is not None:
        out.append(f"train.tensorboard={'true' if args.tensorboard else 'false'}")
    return out


def _warn(lines) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr, flush=True)


def auto_run(args):
    """``(config, run folder)`` of ``--data``: inspect, time, choose, check (see difflab.train.auto)."""
    from ..train.auto import auto_config, data_section

    if args.preset or args.config or args.autoencoder:
        raise UsageError("--data chooses the settings from the data and the time budget; drop --preset/--config/"
                         "--autoencoder (change any chosen setting with --set section.key=value)")
    minutes = DEFAULT_MINUTES if args.minutes is None else args.minutes
    data = data_section(args.data, args.data_root)
    say(f"choosing settings for {args.data} and {minutes:g} minutes: timing a probe network for a few seconds ...")
    plan = auto_config(data, minutes, [*args.overrides, *_flag_overrides(args)])
    say(plan.describe())
    _warn(plan.all_warnings)
    name = Path(args.data).name if data["dataset"] == "folder" else data["dataset"]
    return plan.config, Path(args.out) if args.out else Path("runs") / name


def run_train(args) -> int:
    from ..train import train
    from ..train.auto import BudgetCheck

    if args.minutes is not None and not args.minutes > 0:
        raise UsageError(f"--minutes must be > 0, got {args.minutes}")
    callbacks = []
    if args.data is not None and not args.resume:
        cfg, run_dir = auto_run(args)     # checked against the budget at the measured rate already
        resume = False
    else:
        extra = {"latent": {"autoencoder": args.autoencoder}} if args.autoencoder is not None else {}
        if args.minutes is not None:
            extra["train"] = {"max_minutes": args.minutes}
        name = args.preset or (Path(args.config).stem if args.config else "digits")
        cfg, run_dir, resume = train_config_from_args(args, RunConfig.KIND, "train", Path("runs") / name, extra,
                                                      conflicts=("--data",))
        if not resume:        # your own settings: say before the first step when they cannot work in the budget
            callbacks.append(BudgetCheck())

    t0 = time.perf_counter()
    result = train(cfg, run_dir, resume=resume, progress=not args.no_progress, callbacks=callbacks)
    took = format_duration(time.perf_counter() - t0)
    if result.interrupted:
        return report_interrupted(result, cfg.train.steps, took, "train", run_dir)
    say(f"done: {result.step} steps in {took}" + (f" ({result.skipped_steps} non-finite steps skipped)"
                                                   if result.skipped_steps else ""))
    for label, path in (("checkpoint", result.checkpoint), ("samples", result.samples),
                        ("loss curve", result.loss_plot), ("evaluation", run_dir / "eval.png"),
                        ("held out", run_dir / "split.json"), ("metrics", result.metrics),
                        ("config", run_dir / "config.yaml")):
        if path is not None and (label not in ("evaluation", "held out") or path.is_file()):
            say(f"  {label + ':':12s}{path}")
    report_tensorboard(result)
    hint = (" --cond-from-test 8" if cfg.cond.low_res_factor else "") + \
        (' --prompt "a handwritten three" --guidance-scale 2' if cfg.cond.text != "none" else "")
    say(f"next: {PROG} sample --checkpoint {run_dir} --gif{hint}")
    return 0
