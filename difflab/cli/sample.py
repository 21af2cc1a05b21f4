"""`difflab sample`: grids, GIFs, guidance flags."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import ConfigError
from .common import UsageError, say
from .sample_conditioned import add_conditioning_arguments, check_conditioning_arguments, run_conditioned_sample
from .sampling import add_guidance_arguments, guided_from_args, sample_conditions, write_outputs


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    from ..samplers import SAMPLERS, SIGMA_SCHEDULES
    from ..schedules import SPACINGS

    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run folder (its latest checkpoint) or a "
                                                                        "checkpoint folder")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the run's sample.sampler")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's sample.steps)")
    p.add_argument("--eta", type=float, help="stochasticity for samplers with an eta (DDIM: 0 = deterministic)")
    p.add_argument("--spacing", choices=SPACINGS, help="which timesteps the steps visit (default: the run's "
                                                       "sample.spacing, else the sampler's own)")
    p.add_argument("--sigma-schedule", choices=SIGMA_SCHEDULES,
                   help="noise levels of dpm++2m, dpm++2m-sde and heun: the chain's timesteps (default) or karras "
                        "(EDM's rho=7 grid up to sigma 80)")
    p.add_argument("--seed", type=int, help="sample i uses seed * 2**20 + i (default: the run's sample.seed)")
    p.add_argument("-n", type=int, help="number of images (default: the run's sample.n)")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--class-label", type=int, help="class for a class-conditional model (default: cycle classes)")
    p.add_argument("--grid-by-class", action="store_true",
                   help="one grid row per class, -n columns (default 8; column j: the same starting noise in every row)")
    p.add_argument("--out", metavar="PATH.png", help="grid to write (default: RUN_DIR/samples/<sampler>-<steps>"
                                                     "steps-seed<seed>.png)")
    p.add_argument("--save-individual", action="store_true", help="also write each image to <out without .png>/")
    p.add_argument("--gif", nargs="?", const=True, default=None, metavar="PATH.gif",
                   help="also write the denoising trajectory (x_t beside predicted x_0) as a GIF")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--no-clip", action="store_true", help="do not clamp predicted x_0 to [-1, 1]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (inductor, with the weights frozen into the "
                        "compiled code): the first batch pays the compile time (reported; inductor caches it on disk "
                        "for later runs); eager with a message if compiling fails, changes the output or is not faster")
    add_guidance_arguments(p)
    add_conditioning_arguments(p)


def solver_options(args, sc) -> dict:
    """Sampler options from flags that only some samplers take (--sigma-schedule)."""
    import inspect

    from ..samplers import get_sampler

    if args.sigma_schedule is None:
        return {}
    if "sigma_schedule" not in inspect.signature(get_sampler(sc.sampler)).parameters:
        raise UsageError(f"--sigma-schedule: the {sc.sampler} sampler has no noise-level grid to choose "
                         "(use dpm++2m, dpm++2m-sde or heun)")
    return {"sigma_schedule": args.sigma_schedule}


def compiled_run(args, run):
    """``run`` with its network behind torch.compile when --compile is given (messages go to the user).

    The weights are frozen into the compiled code (``freeze=True``): sampling never changes them."""
    import dataclasses

    if not args.compile:
        return run
    from ..compile import compile_model

    model = compile_model(run.model, freeze=True, log=lambda msg: say(f"--compile: {msg}"))
    return dataclasses.replace(run, model=model)


def run_sample(args) -> int:
    import dataclasses

    from ..generate import draw
    from ..train import load_run, resolve_device

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
                                 ("seed", args.seed), ("n", args.n), ("batch_size", args.batch_size),
                                 ("spacing", args.spacing)) if v is not None}
    if args.no_clip:
        changes["clip_denoised"] = False
    try:
        sc = dataclasses.replace(cfg.sample, **changes)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    m = cfg.model
    check_conditioning_arguments(args, run)
    options = solver_options(args, sc)
    run = compiled_run(args, run)
    guided = guided_from_args(args, run, sc, device)
    run_dir = run.checkpoint.parent.parent if run.checkpoint.parent.name == "checkpoints" else run.checkpoint
    grid = f"-{args.sigma_schedule}" if args.sigma_schedule else ""
    out = Path(args.out) if args.out else run_dir / "samples" / f"{sc.sampler}{grid}-{sc.steps}steps-seed{sc.seed}.png"
    if run.conditioning is not None:   # latent, text or super-resolution run
        return run_conditioned_sample(args, run, sc, guided, device, out, options)
    per_row = 8 if args.grid_by_class and args.n is None else sc.n   # --grid-by-class: -n is the columns
    conditions = sample_conditions(args, guided, m.num_classes, per_row)

    say(f"sampling {conditions.count(sc.n)} images with {sc.sampler} ({sc.steps} steps) from {run.checkpoint} "
        f"({run.weights} weights, step {run.step}) on {device}"
        + (f"; guidance: {guided.description}" if guided is not None else ""))
    t0 = time.perf_counter()
    drawn = draw(run, sc, conditions, guided=guided, device=device, return_trajectory=bool(args.gif),
                 progress=not args.no_progress, sampler_options=options)
    return write_outputs(args, drawn, out, t0)
