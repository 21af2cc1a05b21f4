"""`difflab train`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import RunConfig
from .common import (PROG, add_train_flags, format_duration, report_interrupted, report_tensorboard, say,
                     train_config_from_args)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    add_train_flags(p, RunConfig.KIND, "runs/<preset>")
    p.add_argument("--autoencoder", metavar="RUN", help="latent diffusion: the autoencoder run to train in the "
                                                         "latent space of (sets latent.autoencoder)")


def run_train(args) -> int:
    from ..train import train

    extra = {"latent": {"autoencoder": args.autoencoder}} if args.autoencoder is not None else {}
    name = args.preset or (Path(args.config).stem if args.config else "digits")
    cfg, run_dir, resume = train_config_from_args(args, RunConfig.KIND, "train", Path("runs") / name, extra)

    t0 = time.perf_counter()
    result = train(cfg, run_dir, resume=resume, progress=not args.no_progress)
    took = format_duration(time.perf_counter() - t0)
    if result.interrupted:
        return report_interrupted(result, cfg.train.steps, took, "train", run_dir)
    say(f"done: {result.step} steps in {took}" + (f" ({result.skipped_steps} non-finite steps skipped)"
                                                   if result.skipped_steps else ""))
    for label, path in (("checkpoint", result.checkpoint), ("samples", result.samples),
                        ("loss curve", result.loss_plot), ("metrics", result.metrics),
                        ("config", run_dir / "config.yaml")):
        if path is not None:
            say(f"  {label + ':':12s}{path}")
    report_tensorboard(result)
    hint = (" --cond-from-test 8" if cfg.cond.low_res_factor else "") + \
        (' --prompt "a handwritten three" --guidance-scale 2' if cfg.cond.text != "none" else "")
    say(f"next: {PROG} sample --checkpoint {run_dir} --gif{hint}")
    return 0
