"""`difflab train-classifier`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import (
    PROG,
    UsageError,
    _add_run_flags,
    _format_duration,
    _report_interrupted,
    _say,
)


def add_train_classifier_arguments(p: argparse.ArgumentParser) -> None:
    from ..train.classifier import CLASSIFIER_RUN_PRESETS

    p.add_argument("--preset", choices=sorted(CLASSIFIER_RUN_PRESETS),
                   help="classifier preset (architecture, data, training; default: digits)")
    p.add_argument("--config", metavar="FILE", help="YAML/TOML/JSON file merged over the preset")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override config values, e.g. --set model.model_channels=16 train.lr=1e-3")
    p.add_argument("--diffusion-from", metavar="RUN", help="diffusion run to be guided: its schedule and T, image "
                                                            "shape and data are used (recommended)")
    p.add_argument("--out", metavar="RUN_DIR", help="classifier run folder (default: runs/classifier-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    _add_run_flags(p)


def run_train_classifier(args) -> int:
    import dataclasses

    from ..train.classifier import (
        CLASSIFIER_CONFIG_NAME,
        _classifier_checkpoint,
        load_classifier_config,
        resolve_classifier_config,
        train_classifier,
    )

    if args.resume:
        if args.preset or args.config or args.diffusion_from:
            raise UsageError("--resume continues with the run's saved config; drop --preset/--config/--diffusion-from")
        if args.out is None:
            raise UsageError("--resume needs the run folder: difflab train-classifier --out RUN_DIR --resume")
        base = load_classifier_config(_classifier_checkpoint(args.out) / CLASSIFIER_CONFIG_NAME)
        cfg = resolve_classifier_config(overrides=args.overrides, base=base)
    else:
        cfg = resolve_classifier_config(args.preset, args.config, args.overrides, diffusion_from=args.diffusion_from)
    changes = {k: v for k, v in (("steps", args.steps), ("device", args.device), ("seed", args.seed)) if v is not None}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))
    if args.data_root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=args.data_root))
    run_dir = Path(args.out) if args.out else Path("runs") / f"classifier-{args.preset or 'digits'}"

    t0 = time.perf_counter()
    result = train_classifier(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    took = _format_duration(time.perf_counter() - t0)
    if result.interrupted:
        return _report_interrupted(result, cfg.train.steps, took, "train-classifier", run_dir)
    _say(f"done: {result.step} steps in {took}")
    if result.accuracy_md is not None:
        _say(result.accuracy_md.read_text(encoding="utf-8").rstrip())
    for label, path in (("checkpoint", result.checkpoint), ("accuracy", result.accuracy_json),
                        ("table", result.accuracy_md), ("loss curve", result.loss_plot), ("metrics", result.metrics),
                        ("config", run_dir / CLASSIFIER_CONFIG_NAME)):
        if path is not None:
            _say(f"  {label + ':':12s}{path}")
    _say(f"next: {PROG} sample --checkpoint <diffusion run> --classifier {run_dir} --classifier-scale 1")
    return 0


