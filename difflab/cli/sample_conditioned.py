"""`difflab sample` for latent, text-conditioned and super-resolution runs (``--prompt``, ``--cond-from-test``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import UsageError, say
from .sampling import sample_conditions, write_outputs


def add_conditioning_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text and image conditioning")
    g.add_argument("--prompt", nargs="+", action="extend", metavar="TEXT",
                   help="prompt(s) for a text-conditioned run, one grid row each (-n images per prompt, default 8); "
                        "with --guidance-scale W the empty prompt is the null condition")
    g.add_argument("--cond-from-test", type=int, metavar="N",
                   help="super-resolution runs: condition on the low-resolution versions of the first N test images; "
                        "writes the inputs, outputs and targets as grids")


def check_conditioning_arguments(args, run) -> None:
    """UsageErrors for --prompt / --cond-from-test given to a run that takes no such input (and vice versa)."""
    cond = run.conditioning
    text = cond is not None and cond.prompts is not None
    low_res = cond is not None and bool(run.config.cond.low_res_factor)
    if args.prompt is not None and not text:
        raise UsageError("--prompt: this model is not text-conditioned (it was trained with cond.text=none)")
    if args.prompt is not None and any(not p.strip() for p in args.prompt):
        raise UsageError("--prompt: a prompt must not be empty (the empty prompt is the null condition of guidance)")
    if args.cond_from_test is not None and not low_res:
        raise UsageError("--cond-from-test: this model is not a super-resolution model (cond.low_res_factor=0)")
    if args.cond_from_test is not None and args.cond_from_test < 1:
        raise UsageError(f"--cond-from-test must be >= 1, got {args.cond_from_test}")
    if low_res and args.cond_from_test is None:
        raise UsageError("this super-resolution model needs low-resolution inputs: add --cond-from-test N")
    if cond is not None and (args.grid_by_class or args.class_label is not None) and run.config.model.num_classes is None:
        raise UsageError("--class-label / --grid-by-class: this model takes no class labels")


def run_conditioned_sample(args, run, sc, guided, device, out: Path, sampler_options: dict | None = None) -> int:
    """Sample a run with a RunConditioning: decode latents, feed prompts or low-resolution inputs;
    ``sampler_options`` go to the sampler (e.g. the --sigma-schedule)."""
    from ..data.transforms import low_res_condition
    from ..eval import psnr
    from ..generate import draw, load_test_images, low_res_conditions, prompt_conditions
    from ..viz import save_grid

    cond = run.conditioning
    if cond.prompts is not None:
        try:
            base = args.prompt or cond.default_prompts()
        except ValueError as e:
            raise UsageError(str(e)) from None
        conditions = prompt_conditions(base, args.n or 8)   # column j: the same noise in every row
        unknown = cond.prompts.unknown_words(base)
        if unknown:
            say(f"note: words never seen in training are read as <unk>: {', '.join(unknown)}")
    elif args.cond_from_test is not None:
        try:
            conditions = low_res_conditions(load_test_images(run, args.cond_from_test))
        except ValueError as e:
            raise UsageError(f"--cond-from-test: {e}") from None
    else:
        conditions = sample_conditions(args, guided, run.config.model.num_classes, sc.n)
    say(f"sampling {conditions.count(sc.n)} images with {sc.sampler} ({sc.steps} steps) from {run.checkpoint} "
        f"({run.weights} weights, step {run.step}) on {device}"
        + (" in latent space" if cond.latent is not None else "")
        + (f"; guidance: {guided.description}" if guided is not None else ""))
    t0 = time.perf_counter()
    try:
        drawn = draw(run, sc, conditions, guided=guided, device=device, return_trajectory=bool(args.gif),
                     progress=not args.no_progress, sampler_options=sampler_options)
    except ValueError as e:
        raise UsageError(str(e)) from None
    extra = []
    cond_images, x, nrow = conditions.cond_images, drawn.images, drawn.nrow
    if cond_images is not None:
        low = low_res_condition(cond_images, run.config.cond.low_res_factor, cond_images.shape[-1])
        extra.append(("inputs", save_grid(low, out.with_name(out.stem + "-input.png"), nrow=nrow)))
        extra.append(("targets", save_grid(cond_images, out.with_name(out.stem + "-target.png"), nrow=nrow)))
        say(f"PSNR to the targets: samples {float(psnr(cond_images, x).mean()):.2f} dB, bilinear upsampling of "
            f"the inputs {float(psnr(cond_images, low).mean()):.2f} dB (n={len(x)})")
    return write_outputs(args, drawn, out, t0, extra=extra)
