"""The ``difflab`` command line: argv, devices, files. The only module with side effects.

Each subcommand is a pair of functions, ``add_<name>_arguments(parser)`` and
``run_<name>(args) -> exit code``, registered in :data:`COMMANDS`; add a row to add a command.

Exit codes: 0 success, 1 runtime failure (bad data or checkpoint, non-finite loss ...),
2 usage or configuration error, 130 interrupted (a checkpoint was written first).
Errors are one line on stderr (``difflab: error: ...``); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import RUN_PRESETS, ConfigError, RunConfig, merge, resolve_config, run_config_from_dict

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


# ----------------------------------------------------------------------------- train
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_arguments(p)
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<preset>)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out from its latest checkpoint (or from CHECKPOINT) with its saved "
                        "config; --set/--steps may still change train/data/sample settings")
    p.add_argument("--data-root", metavar="DIR", help="folder with the dataset's files (sets data.root)")
    p.add_argument("--steps", type=int, help="total training steps (sets train.steps)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (sets train.device)")
    p.add_argument("--seed", type=int, help="sets train.seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train(args) -> int:
    from .train import train
    from .train.checkpoint import load_checkpoint_config, resolve_checkpoint

    extra: dict = {}
    if args.data_root is not None:
        extra.setdefault("data", {})["root"] = args.data_root
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
        _say(f"interrupted at step {result.step} of {cfg.train.steps} after {took}; checkpoint saved to "
             f"{result.checkpoint}")
        _say(f"resume with: {PROG} train --out {run_dir} --resume")
        return 130
    _say(f"done: {result.step} steps in {took}" + (f" ({result.skipped_steps} non-finite steps skipped)"
                                                    if result.skipped_steps else ""))
    for label, path in (("checkpoint", result.checkpoint), ("samples", result.samples),
                        ("loss curve", result.loss_plot), ("metrics", result.metrics),
                        ("config", run_dir / "config.yaml")):
        if path is not None:
            _say(f"  {label + ':':12s}{path}")
    _say(f"next: {PROG} sample --checkpoint {run_dir} --gif")
    return 0


# ----------------------------------------------------------------------------- sample
def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    from .samplers import SAMPLERS

    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run folder (its latest checkpoint) or a "
                                                                        "checkpoint folder")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the run's sample.sampler")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's sample.steps)")
    p.add_argument("--eta", type=float, help="stochasticity for samplers with an eta (DDIM: 0 = deterministic)")
    p.add_argument("--seed", type=int, help="sample i uses seed * 2**20 + i (default: the run's sample.seed)")
    p.add_argument("-n", type=int, help="number of images (default: the run's sample.n)")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--class-label", type=int, help="class for a class-conditional model (default: cycle classes)")
    p.add_argument("--out", metavar="PATH.png", help="grid to write (default: RUN_DIR/samples/<sampler>-<steps>"
                                                     "steps-seed<seed>.png)")
    p.add_argument("--save-individual", action="store_true", help="also write each image to <out without .png>/")
    p.add_argument("--gif", nargs="?", const=True, default=None, metavar="PATH.gif",
                   help="also write the denoising trajectory (x_t beside predicted x_0) as a GIF")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--no-clip", action="store_true", help="do not clamp predicted x_0 to [-1, 1]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-progress", action="store_true")


MAX_GIF_FRAMES = 100


def _gif_frames(xs: list, pred_x0s: list) -> tuple[list, list]:
    """At most MAX_GIF_FRAMES evenly spaced frames, always keeping the first and the final sample."""
    n = len(xs)
    if n <= MAX_GIF_FRAMES:
        return xs, pred_x0s
    keep = sorted({round(i * (n - 1) / (MAX_GIF_FRAMES - 1)) for i in range(MAX_GIF_FRAMES)})
    # pred_x0s has one entry fewer than xs (none for the final sample): pad it the same way viz does
    padded = list(pred_x0s) + [xs[-1]] if len(pred_x0s) == n - 1 else list(pred_x0s)
    return [xs[i] for i in keep], [padded[i] for i in keep]


def run_sample(args) -> int:
    import dataclasses

    from .train import load_run, resolve_device, sample_images
    from .viz import save_grid, save_images, save_trajectory_gif

    for name in ("steps", "n", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.eta is not None and args.eta < 0:
        raise UsageError(f"--eta must be >= 0, got {args.eta}")
    if args.out is not None and Path(args.out).suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png path, got {args.out}")
    if isinstance(args.gif, str) and Path(args.gif).suffix.lower() != ".gif":
        raise UsageError(f"--gif must be a .gif path, got {args.gif}")
    device = resolve_device(args.device)
    run = load_run(args.checkpoint, use_ema=not args.no_ema, device=device)
    cfg = run.config
    changes = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("eta", args.eta),
                                 ("seed", args.seed), ("n", args.n), ("batch_size", args.batch_size)) if v is not None}
    if args.no_clip:
        changes["clip_denoised"] = False
    try:
        sc = dataclasses.replace(cfg.sample, **changes)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    m = cfg.model
    if args.class_label is not None:
        if m.num_classes is None:
            raise UsageError("--class-label: this model is unconditional (it was trained without labels)")
        if not 0 <= args.class_label <= m.num_classes:
            raise UsageError(f"--class-label must be in 0..{m.num_classes - 1} ({m.num_classes} = the null class), "
                             f"got {args.class_label}")
    run_dir = run.checkpoint.parent.parent if run.checkpoint.parent.name == "checkpoints" else run.checkpoint
    out = Path(args.out) if args.out else run_dir / "samples" / f"{sc.sampler}-{sc.steps}steps-seed{sc.seed}.png"

    _say(f"sampling {sc.n} images with {sc.sampler} ({sc.steps} steps) from {run.checkpoint} "
         f"({run.weights} weights, step {run.step}) on {device}")
    t0 = time.perf_counter()
    res = sample_images(run.model, run.diffusion, sc, shape=(m.in_channels, m.image_size, m.image_size),
                        num_classes=m.num_classes, class_label=args.class_label, device=device,
                        return_trajectory=bool(args.gif), progress=not args.no_progress)
    x = res.sample.float().cpu()
    nrow = m.num_classes if m.num_classes and args.class_label is None and sc.n % m.num_classes == 0 else None
    written = [("grid", save_grid(x, out, nrow=nrow))]
    if args.save_individual:
        folder = out.with_suffix("")
        save_images(x, folder, prefix="sample")
        written.append(("images", folder))
    if args.gif:
        gif = Path(args.gif) if isinstance(args.gif, str) else out.with_suffix(".gif")
        xs, x0s = _gif_frames(res.trajectory, res.pred_x0s)
        written.append(("trajectory", save_trajectory_gif(xs, x0s, gif, nrow=nrow)))
    _say(f"done: {sc.n} images, {res.nfe} network evaluations per batch, {_format_duration(time.perf_counter() - t0)}")
    for label, path in written:
        _say(f"  {label + ':':12s}{path}")
    return 0


# ----------------------------------------------------------------------------- show-forward
def add_show_forward_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_arguments(p)
    p.add_argument("--dataset", help="sets data.dataset (digits, mnist, fashion-mnist, cifar10, folder)")
    p.add_argument("--data-root", metavar="DIR", help="sets data.root")
    p.add_argument("-n", type=int, default=6, help="images (rows)")
    p.add_argument("--columns", type=int, default=8, help="timesteps shown, evenly spaced over 0..T-1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="forward_process.png", metavar="PATH.png")


def run_show_forward(args) -> int:
    import numpy as np
    import torch

    from .data import load_dataset
    from .rng import randn
    from .viz import forward_process_grid

    if args.n < 1 or args.columns < 2:
        raise UsageError("-n must be >= 1 and --columns >= 2")
    extra: dict = {}
    if args.dataset is not None:
        extra["data"] = {"dataset": args.dataset}
    if args.data_root is not None:
        extra.setdefault("data", {})["root"] = args.data_root
    cfg = _config_from_args(args, extra)
    d = cfg.data
    ds = load_dataset(d.dataset, root=d.root, split=d.split, image_size=d.image_size, channels=d.channels,
                      download=d.download, skip_corrupt=d.skip_corrupt)
    if args.n > len(ds):
        raise UsageError(f"-n {args.n} is more than the {len(ds)} images of {ds.name}")
    gen = torch.Generator().manual_seed(args.seed)
    x_0, _ = ds.get_batch(torch.randperm(len(ds), generator=gen)[:args.n])
    diffusion = cfg.diffusion.build()
    T = diffusion.num_timesteps
    ts = sorted({int(round(v)) for v in np.linspace(0, T - 1, args.columns)})
    eps = randn(x_0.shape, gen)   # one noise draw per image, shared by every t: the columns show one path
    cols = [diffusion.q_sample(x_0, torch.full((args.n,), t, dtype=torch.long), eps) for t in ts]
    path = forward_process_grid(cols, ts, args.out,
                                title=f"q(x_t | x_0): {cfg.diffusion.schedule} schedule, T={T}")
    _say(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- config
def add_config_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_arguments(p)
    p.add_argument("--out", metavar="FILE.yaml", help="write the resolved config here instead of printing it")


def run_config(args) -> int:
    import yaml

    from .config import save_config

    cfg = _config_from_args(args)
    if args.out:
        _say(f"wrote {save_config(cfg, args.out)}")
    else:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


# ----------------------------------------------------------------------------- table and entry point
@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[Command] = [
    Command("train", "train a diffusion model (preset + config file + --set overrides)", add_train_arguments,
            run_train),
    Command("sample", "draw images from a trained run", add_sample_arguments, run_sample),
    Command("show-forward", "show the forward (noising) process on real images", add_show_forward_arguments,
            run_show_forward),
    Command("config", "print the resolved run config (preset + file + overrides)", add_config_arguments, run_config),
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser = _Parser(prog=PROG, description="Diffusion models: train, sample, inspect.", parents=[common])
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, parents=[common])
        cmd.add_arguments(p)
        p.set_defaults(run=cmd.run)
    return parser


def _error(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "run", None) is None:
            raise UsageError(f"choose a command: {', '.join(c.name for c in COMMANDS)} (see '{PROG} --help')")
        return args.run(args)
    except (UsageError, ConfigError) as e:
        if debug:
            raise
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        _error("interrupted")
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        if debug:
            raise
        _error(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return 1


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
