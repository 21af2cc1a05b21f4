"""`difflab export-diffusers` and `difflab import-diffusers`: diffusers pipeline folders out and in."""

from __future__ import annotations

import argparse
import time

from .common import PROG, check_positive, format_duration, say


def add_export_diffusers_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("out", metavar="OUT", help="pipeline folder to write (model_index.json, unet/, scheduler/)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of their EMA")
    p.add_argument("--drop-learned-variance", action="store_true",
                   help="for a learned-variance run: export the mean channels only (diffusers' DDIM cannot read the "
                        "variance channels; DDPM then uses sigma^2 = beta-tilde)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")


def add_import_diffusers_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="DIR", help="diffusers folder: unet/ and scheduler/ (a saved pipeline), or "
                                              "config.json and scheduler_config.json side by side")
    p.add_argument("out", metavar="OUT", help="difflab run folder to create")
    p.add_argument("--dataset", help="the dataset `difflab eval` compares against (default: digits, mnist or cifar10 "
                                     "when the image size is theirs)")
    p.add_argument("--data-root", metavar="DIR", help="folder with the dataset's files")
    p.add_argument("--image-size", type=int, help="the image size, when the UNet2DModel config has no sample_size")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with diffusers' own network")


def _diffusers_error(e: ImportError) -> RuntimeError:
    return RuntimeError(str(e))    # one line on stderr with exit code 1, not a traceback


def run_export_diffusers(args) -> int:
    from ..interop import export_diffusers

    t0 = time.perf_counter()
    try:
        res = export_diffusers(args.run_dir, args.out, use_ema=not args.no_ema,
                               drop_learned_variance=args.drop_learned_variance, overwrite=args.force)
    except ImportError as e:
        raise _diffusers_error(e) from None
    u, s = res.unet_config, res.scheduler_config
    schedule = s.get("beta_schedule", "trained_betas")
    say(f"exported {args.run_dir} to {res.out} in {format_duration(time.perf_counter() - t0)}")
    say(f"  unet:       UNet2DModel, {res.parameters:,} parameters, blocks {list(u['block_out_channels'])}"
         + (f", {u['num_class_embeds'] - 1} classes + the null class" if u["num_class_embeds"] else ""))
    say(f"  scheduler:  DDPMScheduler, {schedule}, {s['num_train_timesteps']} steps, {s['prediction_type']}, "
         f"spacing {s['timestep_spacing']}")
    say(f"  check:      max |difflab - diffusers| = {res.max_difference:.2g} on a probe batch")
    for note in res.notes:
        say(f"  note:       {note}")
    say(f'load it with: DDIMPipeline.from_pretrained("{res.out}") (or DDPMPipeline); usage in {res.out}/README.md')
    return 0


def run_import_diffusers(args) -> int:
    from ..interop import import_diffusers

    check_positive(args, "image_size")
    t0 = time.perf_counter()
    try:
        res = import_diffusers(args.src, args.out, dataset=args.dataset, data_root=args.data_root,
                               image_size=args.image_size, check=not args.no_check)
    except ImportError as e:
        raise _diffusers_error(e) from None
    m, d = res.config.model, res.config.diffusion
    kind = f"class-conditional ({m.num_classes} classes)" if m.num_classes is not None else "unconditional"
    say(f"imported {args.src} to {res.run_dir} in {format_duration(time.perf_counter() - t0)}")
    say(f"  model:      {kind} U-Net, {m.in_channels} x {m.image_size} x {m.image_size}, widths "
         f"{[m.model_channels * k for k in m.channel_mult]}")
    say(f"  diffusion:  {d.schedule} schedule, {d.num_timesteps} steps, {d.prediction} prediction, {d.variance}")
    if res.max_difference is not None:
        say(f"  check:      max |difflab - diffusers| = {res.max_difference:.2g} on a probe batch")
    for note in res.notes:
        say(f"  note:       {note}")
    say(f"sample with: {PROG} sample --checkpoint {res.run_dir}")
    return 0

