"""`difflab train`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import (
    PROG,
    UsageError,
    _add_config_arguments,
    _add_run_flags,
    _config_from_args,
    _format_duration,
    _report_interrupted,
    _say,
)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_arguments(p)
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<preset>)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out from its latest checkpoint (or from CHECKPOINT) with its saved "
                        "config; --set/--steps may still change train/data/sample settings")
    p.add_argument("--autoencoder", metavar="RUN", help="latent diffusion: the autoencoder run to train in the "
                                                         "latent space of (sets latent.autoencoder)")
    _add_run_flags(p)


def run_train(args) -> int:
    from ..train import train
    from ..train.checkpoint import load_checkpoint_config, resolve_checkpoint

    extra: dict = {}
    if args.data_root is not None:
        extra.setdefault("data", {})["root"] = args.data_root
    if args.autoencoder is not None:
        extra["latent"] = {"autoencoder": args.autoencoder}
    for key, section, value in (("steps", "train", args.steps), ("device", "train", args.device),
                                ("seed", "train", args.seed)):
        if value is not None:
            extra.setdefault(section, {})[key] = value

    if args.resume:
        if args.preset or args.config:
            raise UsageError("--resume continues with the run's saved config; drop --preset/--config "
                             "(use --set to change train/data/sample settings)")
        if args.resume is True and args.out is None:
            raise UsageError("--resume needs the run folder: difflab train --out RUN_DIR --resume")
        ckpt = resolve_checkpoint(args.out if args.resume is True else args.resume)
        run_dir = Path(args.out) if args.out else ckpt.parent.parent
        cfg = _config_from_args(args, extra, base=load_checkpoint_config(ckpt))
        resume = True if args.resume is True else ckpt
    else:
        cfg = _config_from_args(args, extra)
        name = args.preset or (Path(args.config).stem if args.config else "digits")
        run_dir = Path(args.out) if args.out else Path("runs") / name
        resume = False

    t0 = time.perf_counter()
    result = train(cfg, run_dir, resume=resume, progress=not args.no_progress)
    took = _format_duration(time.perf_counter() - t0)
    if result.interrupted:
        return _report_interrupted(result, cfg.train.steps, took, "train", run_dir)
    _say(f"done: {result.step} steps in {took}" + (f" ({result.skipped_steps} non-finite steps skipped)"
                                                    if result.skipped_steps else ""))
    for label, path in (("checkpoint", result.checkpoint), ("samples", result.samples),
                        ("loss curve", result.loss_plot), ("metrics", result.metrics),
                        ("config", run_dir / "config.yaml")):
        if path is not None:
            _say(f"  {label + ':':12s}{path}")
    hint = (" --cond-from-test 8" if cfg.cond.low_res_factor else "") + \
        (' --prompt "a handwritten three" --guidance-scale 2' if cfg.cond.text != "none" else "")
    _say(f"next: {PROG} sample --checkpoint {run_dir} --gif{hint}")
    return 0


