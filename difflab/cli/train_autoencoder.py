"""`difflab train-autoencoder`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import AutoencoderRunConfig
from ..runs import AE_CONFIG_NAME
from .common import (PROG, add_train_flags, format_duration, report_interrupted, report_tensorboard, say,
                     train_config_from_args)


def add_train_autoencoder_arguments(p: argparse.ArgumentParser) -> None:
    add_train_flags(p, AutoencoderRunConfig.KIND, "runs/ae-<preset>")
    p.add_argument("--dataset", help="sets data.dataset (digits, mnist, fashion-mnist, cifar10, folder)")


def run_train_autoencoder(args) -> int:
    from ..train import train_autoencoder

    extra = {"data": {"dataset": args.dataset}} if args.dataset is not None else {}
    cfg, run_dir, resume = train_config_from_args(args, AutoencoderRunConfig.KIND, "train-autoencoder",
                                                  Path("runs") / f"ae-{args.preset or 'mnist-f4'}", extra)

    t0 = time.perf_counter()
    result = train_autoencoder(cfg, run_dir, resume=resume, progress=not args.no_progress)
    took = format_duration(time.perf_counter() - t0)
    if result.interrupted:
        return report_interrupted(result, cfg.train.steps, took, "train-autoencoder", run_dir)
    say(f"done: {result.step} steps in {took}")
    if result.quality is not None:
        q = result.quality
        say(f"held-out reconstruction ({q['held_out']}, n={q['n']}): PSNR {q['psnr_db']:.2f} dB "
            f"(std {q['psnr_db_std']:.2f}), mean |x - x_rec| {q['mean_abs_error']:.4f}"
            + (f", Frechet distance to the originals {q['fd']:.3f} ({q['fd_featurizer']} features)"
               if q.get("fd") is not None else ", Frechet distance skipped (no evaluation classifier)"))
    for label, path in (("checkpoint", result.checkpoint), ("psnr", result.quality_json),
                        ("grid", result.reconstructions), ("loss curve", result.loss_plot),
                        ("metrics", result.metrics), ("config", run_dir / AE_CONFIG_NAME)):
        if path is not None:
            say(f"  {label + ':':12s}{path}")
    report_tensorboard(result)
    say(f"next: {PROG} train --preset mnist-latent-text --autoencoder {run_dir}")
    return 0
