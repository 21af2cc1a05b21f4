"""`difflab sample`: grids, GIFs, guidance flags."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import ConfigError
from .common import UsageError, _format_duration, _say
from .sample_conditioned import add_conditioning_arguments, check_conditioning_arguments, run_conditioned_sample


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    from ..samplers import SAMPLERS

    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run folder (its latest checkpoint) or a "
                                                                        "checkpoint folder")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the run's sample.sampler")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's sample.steps)")
    p.add_argument("--eta", type=float, help="stochasticity for samplers with an eta (DDIM: 0 = deterministic)")
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
    _add_guidance_arguments(p)
    add_conditioning_arguments(p)


def _add_guidance_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guidance")
    g.add_argument("--guidance-scale", type=float, metavar="W",
                   help="classifier-free guidance weight w: eps = (1+w) eps_c - w eps_null (w=0: the plain "
                        "conditional model; default: the run's sample.guidance_scale); needs a class-conditional "
                        "model trained with label dropout")
    g.add_argument("--no-guidance", action="store_true",
                   help="ignore the run's default classifier-free guidance (sample.guidance_scale): the plain model")
    g.add_argument("--cfg-convention", choices=("w", "scale"), default="w",
                   help="read --guidance-scale as w (default) or as s = 1 + w (GLIDE / Stable Diffusion)")
    g.add_argument("--guidance-rescale", type=float, metavar="PHI", default=0.0,
                   help="guidance rescale phi in [0, 1] (Lin et al. 2024); needs --guidance-scale")
    g.add_argument("--dynamic-threshold", type=float, metavar="P",
                   help="Imagen dynamic thresholding of predicted x_0 at percentile P in (0, 1], e.g. 0.995")
    g.add_argument("--classifier", metavar="RUN_DIR", help="noise-aware classifier run (difflab train-classifier) "
                                                          "for classifier guidance")
    g.add_argument("--classifier-scale", type=float, metavar="S",
                   help="classifier guidance scale s (default 1; needs --classifier); DDPM: mean shift, "
                        "other samplers: eps rule")


def _guided_from_args(args, run, sample_cfg, device):
    """A GuidedModel when any guidance flag is given, else None (usage errors as UsageError)."""
    from ..train import GuidanceOptions, build_guided_model, load_classifier

    if args.classifier_scale is not None and args.classifier is None:
        raise UsageError("--classifier-scale needs --classifier RUN_DIR")
    if args.guidance_rescale and args.guidance_scale is None:
        raise UsageError("--guidance-rescale needs --guidance-scale")
    if args.no_guidance and args.guidance_scale is not None:
        raise UsageError("--no-guidance and --guidance-scale contradict each other: give one")
    # without --guidance-scale, the run's own default (sample.guidance_scale, always the w convention)
    scale, convention = args.guidance_scale, args.cfg_convention
    if scale is None and sample_cfg.guidance_scale is not None and not args.no_guidance:
        scale, convention = sample_cfg.guidance_scale, "w"
    if scale is None and args.classifier is None and args.dynamic_threshold is None:
        return None
    try:
        opts = GuidanceOptions(guidance_scale=scale, convention=convention,
                               rescale=args.guidance_rescale, dynamic_threshold=args.dynamic_threshold,
                               classifier_scale=1.0 if args.classifier_scale is None else args.classifier_scale)
    except ValueError as e:
        raise UsageError(str(e)) from None
    classifier = load_classifier(args.classifier, device=device) if args.classifier is not None else None
    try:
        return build_guided_model(run, sample_cfg, opts, classifier)
    except ValueError as e:
        flag = "--classifier" if classifier is not None and "classifier " in str(e) and \
            "classifier-free" not in str(e) else "--guidance-scale"
        raise UsageError(f"{flag}: {e}") from None


def _sample_conditions(args, guided, model_num_classes: int | None, n: int):
    """The Conditions of --class-label / --grid-by-class (labels or none, seed indices, grid columns);
    ``n`` is the number of images, or of columns with --grid-by-class."""
    from ..generate import class_conditions

    num_classes = guided.num_classes if guided is not None else model_num_classes
    if args.class_label is not None:
        if guided is not None:
            try:
                guided.check_class_label(args.class_label)
            except ValueError as e:
                raise UsageError(f"--class-label: {e}") from None
        elif num_classes is None:
            raise UsageError("--class-label: this model is unconditional (it was trained without labels)")
        elif not 0 <= args.class_label <= num_classes:
            raise UsageError(f"--class-label must be in 0..{num_classes - 1} ({num_classes} = the null class), "
                             f"got {args.class_label}")
    grid_by_class = getattr(args, "grid_by_class", False)
    if grid_by_class and args.class_label is not None:
        raise UsageError("--grid-by-class shows every class; drop --class-label")
    if grid_by_class and num_classes is None:
        raise UsageError("--grid-by-class needs a class-conditional model or a --classifier")
    return class_conditions(num_classes, n, class_label=args.class_label, grid_by_class=grid_by_class)


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
                                 ("seed", args.seed), ("n", args.n), ("batch_size", args.batch_size)) if v is not None}
    if args.no_clip:
        changes["clip_denoised"] = False
    try:
        sc = dataclasses.replace(cfg.sample, **changes)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    m = cfg.model
    check_conditioning_arguments(args, run)
    guided = _guided_from_args(args, run, sc, device)
    run_dir = run.checkpoint.parent.parent if run.checkpoint.parent.name == "checkpoints" else run.checkpoint
    out = Path(args.out) if args.out else run_dir / "samples" / f"{sc.sampler}-{sc.steps}steps-seed{sc.seed}.png"
    if run.conditioning is not None:   # latent, text or super-resolution run
        return run_conditioned_sample(args, run, sc, guided, device, out)
    per_row = 8 if args.grid_by_class and args.n is None else sc.n   # --grid-by-class: -n is the columns
    conditions = _sample_conditions(args, guided, m.num_classes, per_row)

    _say(f"sampling {conditions.count(sc.n)} images with {sc.sampler} ({sc.steps} steps) from {run.checkpoint} "
         f"({run.weights} weights, step {run.step}) on {device}"
         + (f"; guidance: {guided.description}" if guided is not None else ""))
    t0 = time.perf_counter()
    drawn = draw(run, sc, conditions, guided=guided, device=device, return_trajectory=bool(args.gif),
                 progress=not args.no_progress)
    return _write_outputs(args, drawn, out, t0)


def _write_outputs(args, drawn, out: Path, t0: float, extra=()) -> int:
    """Write the grid, then ``extra`` ((label, path) already written), the --save-individual images and
    the --gif trajectory (latents decoded); report them all."""
    from ..viz import save_grid, save_images, save_trajectory_gif

    x = drawn.images
    written = [("grid", save_grid(x, out, nrow=drawn.nrow)), *extra]
    if args.save_individual:
        folder = out.with_suffix("")
        save_images(x, folder, prefix="sample")
        written.append(("images", folder))
    if args.gif:
        gif = Path(args.gif) if isinstance(args.gif, str) else out.with_suffix(".gif")
        written.append(("trajectory", save_trajectory_gif(*drawn.gif_frames(), gif, nrow=drawn.nrow)))
    _say(f"done: {len(x)} images, {drawn.output.nfe} network evaluations per sample, "
         f"{_format_duration(time.perf_counter() - t0)}")
    for label, path in written:
        _say(f"  {label + ':':12s}{path}")
    return 0
