"""`difflab train-classifier`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import ClassifierRunConfig, classifier_layer_from_run
from ..runs import CLASSIFIER_CONFIG_NAME, load_checkpoint_config, resolve_checkpoint
from .common import (PROG, add_train_flags, format_duration, report_interrupted, report_tensorboard, say,
                     train_config_from_args)


def add_train_classifier_arguments(p: argparse.ArgumentParser) -> None:
    add_train_flags(p, ClassifierRunConfig.KIND, "runs/classifier-<preset>")
    p.add_argument("--diffusion-from", metavar="RUN", help="diffusion run to be guided: its schedule and T, image "
                                                            "shape and data are used (recommended)")


def run_train_classifier(args) -> int:
    from ..train import train_classifier

    layers = ([classifier_layer_from_run(load_checkpoint_config(resolve_checkpoint(args.diffusion_from)))]
              if args.diffusion_from and not args.resume else [])
    cfg, run_dir, resume = train_config_from_args(
        args, ClassifierRunConfig.KIND, "train-classifier", Path("runs") / f"classifier-{args.preset or 'digits'}",
        layers=layers, conflicts=("--diffusion-from",))

    t0 = time.perf_counter()
    result = train_classifier(cfg, run_dir, resume=resume, progress=not args.no_progress)
    took = format_duration(time.perf_counter() - t0)
    if result.interrupted:
        return report_interrupted(result, cfg.train.steps, took, "train-classifier", run_dir)
    say(f"done: {result.step} steps in {took}")
    if result.accuracy_md is not None:
        say(result.accuracy_md.read_text(encoding="utf-8").rstrip())
    for label, path in (("checkpoint", result.checkpoint), ("accuracy", result.accuracy_json),
                        ("table", result.accuracy_md),
                        ("chart", result.accuracy_png), ("loss curve", result.loss_plot), ("metrics", result.metrics),
                        ("config", run_dir / CLASSIFIER_CONFIG_NAME)):
        if path is not None:
            say(f"  {label + ':':12s}{path}")
    report_tensorboard(result)
    say(f"next: {PROG} sample --checkpoint <diffusion run> --classifier {run_dir} --classifier-scale 1")
    return 0
