"""`difflab train-autoencoder`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import PROG, UsageError, _add_run_flags, _format_duration, _report_interrupted, _say


def add_train_autoencoder_arguments(p: argparse.ArgumentParser) -> None:
    from ..train.autoencoder import AE_RUN_PRESETS

    p.add_argument("--preset", choices=sorted(AE_RUN_PRESETS),
                   help="autoencoder preset (architecture, loss weights, data, training; default: mnist-f4)")
    p.add_argument("--dataset", help="sets data.dataset (digits, mnist, fashion-mnist, cifar10, folder)")
    p.add_argument("--config", metavar="FILE", help="YAML/TOML/JSON file merged over the preset")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override config values, e.g. --set model.kl_weight=1e-5 train.lr=1e-4")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/ae-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    _add_run_flags(p)


def run_train_autoencoder(args) -> int:
    import dataclasses

    from ..train.autoencoder import (
        AE_CONFIG_NAME,
        autoencoder_checkpoint,
        load_autoencoder_config,
        resolve_autoencoder_config,
        train_autoencoder,
    )

    if args.resume:
        if args.preset or args.config:
            raise UsageError("--resume continues with the run's saved config; drop --preset/--config")
        if args.out is None:
            raise UsageError("--resume needs the run folder: difflab train-autoencoder --out RUN_DIR --resume")
        base = load_autoencoder_config(autoencoder_checkpoint(args.out) / AE_CONFIG_NAME)
        cfg = resolve_autoencoder_config(overrides=args.overrides, base=base)
    else:
        cfg = resolve_autoencoder_config(args.preset, args.config, args.overrides)
    changes = {k: v for k, v in (("steps", args.steps), ("device", args.device), ("seed", args.seed)) if v is not None}
    data = {k: v for k, v in (("dataset", args.dataset), ("root", args.data_root)) if v is not None}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes),
                              data=dataclasses.replace(cfg.data, **data))
    run_dir = Path(args.out) if args.out else Path("runs") / f"ae-{args.preset or 'mnist-f4'}"

    t0 = time.perf_counter()
    result = train_autoencoder(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    took = _format_duration(time.perf_counter() - t0)
    if result.interrupted:
        return _report_interrupted(result, cfg.train.steps, took, "train-autoencoder", run_dir)
    _say(f"done: {result.step} steps in {took}")
    if result.quality is not None:
        q = result.quality
        _say(f"held-out reconstruction ({q['held_out']}, n={q['n']}): PSNR {q['psnr_db']:.2f} dB "
             f"(std {q['psnr_db_std']:.2f}), mean |x - x_rec| {q['mean_abs_error']:.4f}"
             + (f", Frechet distance to the originals {q['fd']:.3f} ({q['fd_featurizer']} features)"
                if q.get("fd") is not None else ", Frechet distance skipped (no evaluation classifier)"))
    for label, path in (("checkpoint", result.checkpoint), ("psnr", result.quality_json),
                        ("grid", result.reconstructions), ("loss curve", result.loss_plot),
                        ("metrics", result.metrics), ("config", run_dir / AE_CONFIG_NAME)):
        if path is not None:
            _say(f"  {label + ':':12s}{path}")
    _say(f"next: {PROG} train --preset mnist-latent-text --autoencoder {run_dir}")
    return 0
