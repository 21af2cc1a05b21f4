"""Pieces of sampling shared by ``difflab sample``, its conditioned variant and ``difflab eval``:
guidance flags, the class labels of a grid, writing the outputs (the sampling itself: ``difflab.generate``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..generate import Conditions, class_conditions
from ..sampling import GuidanceOptions, build_guided_model
from ..runs import load_classifier
from ..viz import save_grid, save_images, save_trajectory_gif
from .common import UsageError, format_duration, say


def add_guidance_arguments(p: argparse.ArgumentParser) -> None:
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


def guided_from_args(args, run, sample_cfg, device):
    """A GuidedModel when any guidance flag is given, else None (usage errors as UsageError)."""
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


def sample_conditions(args, guided, model_num_classes: int | None, n: int) -> Conditions:
    """The Conditions of --class-label / --grid-by-class (labels or none, seed indices, grid columns);
    ``n`` is the number of images, or of columns with --grid-by-class."""
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


def write_outputs(args, drawn, out: Path, t0: float, extra=()) -> int:
    """Write the grid of ``drawn`` (a :class:`~difflab.generate.Drawn`), then ``extra`` ((label, path) already
    written), the --save-individual images and the --gif trajectory (latents decoded); report them all."""
    x = drawn.images
    written = [("grid", save_grid(x, out, nrow=drawn.nrow)), *extra]
    if args.save_individual:
        folder = out.with_suffix("")
        save_images(x, folder, prefix="sample")
        written.append(("images", folder))
    if args.gif:
        gif = Path(args.gif) if isinstance(args.gif, str) else out.with_suffix(".gif")
        written.append(("trajectory", save_trajectory_gif(*drawn.gif_frames(), gif, nrow=drawn.nrow)))
    say(f"done: {len(x)} images, {drawn.output.nfe} network evaluations per sample, "
        f"{format_duration(time.perf_counter() - t0)}")
    for label, path in written:
        say(f"  {label + ':':12s}{path}")
    return 0
