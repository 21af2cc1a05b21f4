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


def _add_guidance_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guidance")
    g.add_argument("--guidance-scale", type=float, metavar="W",
                   help="classifier-free guidance weight w: eps = (1+w) eps_c - w eps_null (w=0: the plain "
                        "conditional model); needs a class-conditional model trained with label dropout")
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
    from .train import GuidanceOptions, build_guided_model, load_classifier

    if args.classifier_scale is not None and args.classifier is None:
        raise UsageError("--classifier-scale needs --classifier RUN_DIR")
    if args.guidance_rescale and args.guidance_scale is None:
        raise UsageError("--guidance-rescale needs --guidance-scale")
    if args.guidance_scale is None and args.classifier is None and args.dynamic_threshold is None:
        return None
    try:
        opts = GuidanceOptions(guidance_scale=args.guidance_scale, convention=args.cfg_convention,
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


def _sample_labels(args, guided, model_num_classes: int | None, n: int):
    """(labels or None, seed indices or None, grid columns or None) for --class-label / --grid-by-class;
    ``n`` is the number of images, or of columns with --grid-by-class."""
    from .train import class_grid_labels, class_labels

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
    if not getattr(args, "grid_by_class", False):
        return class_labels(n, num_classes, args.class_label), None, None
    if args.class_label is not None:
        raise UsageError("--grid-by-class shows every class; drop --class-label")
    if num_classes is None:
        raise UsageError("--grid-by-class needs a class-conditional model or a --classifier")
    labels, seeds = class_grid_labels(num_classes, n)
    return labels, seeds, n


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
    guided = _guided_from_args(args, run, sc, device)
    per_row = 8 if args.grid_by_class and args.n is None else sc.n   # --grid-by-class: -n is the columns
    labels, seed_indices, columns = _sample_labels(args, guided, m.num_classes, per_row)
    n_total = len(labels) if labels is not None else sc.n
    run_dir = run.checkpoint.parent.parent if run.checkpoint.parent.name == "checkpoints" else run.checkpoint
    out = Path(args.out) if args.out else run_dir / "samples" / f"{sc.sampler}-{sc.steps}steps-seed{sc.seed}.png"

    _say(f"sampling {n_total} images with {sc.sampler} ({sc.steps} steps) from {run.checkpoint} "
         f"({run.weights} weights, step {run.step}) on {device}"
         + (f"; guidance: {guided.description}" if guided is not None else ""))
    t0 = time.perf_counter()
    model, diffusion, options = ((guided.model, guided.diffusion, guided.sampler_options) if guided is not None
                                 else (run.model, run.diffusion, {}))
    res = sample_images(model, diffusion, sc, shape=(m.in_channels, m.image_size, m.image_size), n=n_total,
                        labels=labels, seed_indices=seed_indices, device=device,
                        return_trajectory=bool(args.gif), progress=not args.no_progress, sampler_options=options)
    x = res.sample.float().cpu()
    k = guided.num_classes if guided is not None else m.num_classes
    nrow = columns or (k if k and args.class_label is None and sc.n % k == 0 else None)
    written = [("grid", save_grid(x, out, nrow=nrow))]
    if args.save_individual:
        folder = out.with_suffix("")
        save_images(x, folder, prefix="sample")
        written.append(("images", folder))
    if args.gif:
        gif = Path(args.gif) if isinstance(args.gif, str) else out.with_suffix(".gif")
        xs, x0s = _gif_frames(res.trajectory, res.pred_x0s)
        written.append(("trajectory", save_trajectory_gif(xs, x0s, gif, nrow=nrow)))
    _say(f"done: {n_total} images, {res.nfe} network evaluations per batch, {_format_duration(time.perf_counter() - t0)}")
    for label, path in written:
        _say(f"  {label + ':':12s}{path}")
    return 0


# ----------------------------------------------------------------------------- train-classifier
def add_train_classifier_arguments(p: argparse.ArgumentParser) -> None:
    from .train.classifier import CLASSIFIER_RUN_PRESETS

    p.add_argument("--preset", choices=sorted(CLASSIFIER_RUN_PRESETS),
                   help="classifier preset (architecture, data, training; default: digits)")
    p.add_argument("--config", metavar="FILE", help="YAML/TOML/JSON file merged over the preset")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                   help="override config values, e.g. --set model.model_channels=16 train.lr=1e-3")
    p.add_argument("--diffusion-from", metavar="RUN", help="diffusion run to be guided: its schedule and T, image "
                                                            "shape and data are used (recommended)")
    p.add_argument("--out", metavar="RUN_DIR", help="classifier run folder (default: runs/classifier-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--data-root", metavar="DIR", help="folder with the dataset's files (sets data.root)")
    p.add_argument("--steps", type=int, help="total training steps (sets train.steps)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (sets train.device)")
    p.add_argument("--seed", type=int, help="sets train.seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train_classifier(args) -> int:
    import dataclasses

    from .train.classifier import (CLASSIFIER_CONFIG_NAME, _classifier_checkpoint, load_classifier_config,
                                   resolve_classifier_config, train_classifier)

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
        _say(f"interrupted at step {result.step} of {cfg.train.steps} after {took}; checkpoint saved to "
             f"{result.checkpoint}")
        _say(f"resume with: {PROG} train-classifier --out {run_dir} --resume")
        return 130
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


# ----------------------------------------------------------------------------- eval
def _add_eval_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help="dataset of the reference / held-out images (default: the run's data.dataset)")
    p.add_argument("--data-root", metavar="DIR", help="folder with the dataset's files")
    p.add_argument("--split", default="test", help="held-out split (default: test)")
    p.add_argument("--seed", type=int, help="seed of the samples / the image subset (default: the run's sample.seed / 0)")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-progress", action="store_true")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    from .samplers import SAMPLERS

    sub = p.add_subparsers(dest="eval_command", metavar="METRIC", parser_class=_Parser)
    fd = sub.add_parser("fd", help="Frechet distance, precision and recall of samples against a held-out split",
                        description="Frechet distance (and precision/recall, and class accuracy for labelled "
                                    "samples) in the feature space of the clean evaluation classifier")
    _add_eval_common(fd)
    src = fd.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="RUN", help="draw the samples from this run")
    src.add_argument("--images", metavar="FOLDER_OR_NPZ", help="evaluate these images instead (a folder of images or "
                                                               "an .npz with 'images' [N,H,W,C] uint8, optional "
                                                               "'labels')")
    fd.add_argument("-n", type=int, help="number of samples to draw (default 1000) or to take from --images (default: all)")
    fd.add_argument("--sampler", choices=sorted(SAMPLERS), help="default: the run's sample.sampler")
    fd.add_argument("--steps", type=int, help="sampling steps (default: the run's sample.steps)")
    fd.add_argument("--eta", type=float, help="stochasticity for samplers with an eta")
    fd.add_argument("--no-clip", action="store_true", help="do not clamp predicted x_0 to [-1, 1]")
    fd.add_argument("--class-label", type=int, help="draw every sample of this class (default: cycle classes)")
    _add_guidance_arguments(fd)
    fd.add_argument("--featurizer-dir", metavar="DIR", help="a saved evaluation classifier (default: the one cached "
                                                            "for --dataset, trained on its train split if missing)")
    fd.add_argument("--cache-dir", metavar="DIR", help="where eval classifiers and reference statistics are cached "
                                                       "(default: ~/.cache/difflab)")
    fd.add_argument("--eval-classifier-epochs", type=int, help="epochs when the eval classifier must be trained "
                                                               "(default: 30 below 5000 images, else 3)")
    fd.add_argument("-k", type=int, default=3, help="k of the k-NN manifolds for precision/recall (default 3)")
    fd.add_argument("--floor", action="store_true", help="also report n training images against the same reference")
    fd.add_argument("--out", metavar="FILE.json", help="also write the figures to this JSON file")
    fd.set_defaults(eval_run=run_eval_fd)

    nll = sub.add_parser("nll", help="negative log-likelihood in bits/dim (full variational bound) on held-out images",
                         description="bits/dim of held-out images under the full variational bound (T network "
                                     "evaluations per batch); writes nll.json and the per-term plot")
    _add_eval_common(nll)
    nll.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder or checkpoint folder")
    nll.add_argument("-n", type=int, default=100, help="held-out images (a random subset; default 100)")
    nll.add_argument("--null-class", action="store_true", help="class-conditional model: evaluate with the null "
                                                               "class (log p(x)) instead of the true labels")
    nll.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/eval)")
    nll.set_defaults(eval_run=run_eval_nll)


def run_eval(args) -> int:
    if getattr(args, "eval_run", None) is None:
        raise UsageError(f"choose a metric: fd, nll (see '{PROG} eval --help')")
    return args.eval_run(args)


def _positive(args, *names: str) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def _run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint


def _dataset_key(name: str, root) -> str:
    """A file-name-safe key for cached classifiers and statistics (folders: hashed by their path)."""
    import hashlib

    if name != "folder":
        return name
    return "folder-" + hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:8]


def _eval_featurizer(args, dataset: str, key: str, train_ds, device):
    """The clean evaluation classifier's featurizer: --featurizer-dir, or cached / trained for the dataset."""
    import hashlib

    from .eval import (ClassifierFeaturizer, EvalClassifierConfig, default_classifier_path, load_eval_classifier,
                       load_or_train_eval_classifier)

    if args.featurizer_dir is not None:
        directory = Path(args.featurizer_dir)
        model = load_eval_classifier(directory, device=device)
    else:
        directory = default_classifier_path(key, args.cache_dir)
        if train_ds() is None:
            raise UsageError(f"--dataset {dataset}: no training split to train the evaluation classifier on; "
                             "pass --featurizer-dir")
        ds = train_ds()
        if ds.labels is None:
            raise UsageError(f"{ds.name} has no labels to train the evaluation classifier; pass --featurizer-dir")
        side = max(16, 4 * -(-max(ds.image_size) // 4))
        epochs = args.eval_classifier_epochs or (30 if len(ds) < 5000 else 3)
        if not (directory / "model.safetensors").is_file():
            _say(f"training the evaluation classifier on {ds.name} {ds.split} ({len(ds)} images, {epochs} epochs); "
                 f"cached in {directory}")
        model = load_or_train_eval_classifier(
            key, ds.to_float(), ds.labels, cache_dir=args.cache_dir, device=device, epochs=epochs, seed=0,
            config=EvalClassifierConfig(in_channels=ds.channels, image_size=side,
                                        num_classes=max(2, ds.num_classes)),
            progress=not args.no_progress)
    digest = hashlib.sha1((directory / "model.safetensors").read_bytes()).hexdigest()[:8]
    return ClassifierFeaturizer(model, name=f"eval-classifier-{key}-{digest}"), directory


def _load_images_file(path: str):
    """Images in [-1, 1] [N, C, H, W] and labels (or None) from a folder of images or an .npz file."""
    import numpy as np
    import torch

    from .data import load_dataset

    p = Path(path)
    if p.is_dir():
        ds = load_dataset("folder", root=p)
        return ds.to_float(), None
    if p.suffix.lower() != ".npz" or not p.is_file():
        raise UsageError(f"--images must be a folder of images or an existing .npz file, got {path}")
    with np.load(p, allow_pickle=False) as f:
        keys = list(f.keys())
        key = "images" if "images" in keys else ("arr_0" if "arr_0" in keys else None)
        if key is None:
            raise ValueError(f"{p} has no 'images' (or 'arr_0') array; it holds {keys}")
        arr = f[key]
        lab_key = "labels" if "labels" in keys else ("arr_1" if "arr_1" in keys else None)
        labels = torch.as_tensor(f[lab_key]).long() if lab_key is not None else None
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"{p}: images must be [N, H, W, C] or [N, C, H, W], got shape {arr.shape}")
    if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    elif not x.is_floating_point():
        raise ValueError(f"{p}: images must be uint8 (0..255) or float in [-1, 1], got {arr.dtype}")
    return x.float(), labels


def _fmt(v, spec=".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def _fd_line(what: str, r: dict) -> str:
    return (f"{what}: FD {_fmt(r['fd'])} | precision {_fmt(r['precision'], '.3f')} | recall "
            f"{_fmt(r['recall'], '.3f')} | n={r['n']} | featurizer {r['featurizer']} | reference {r['reference']}")


def run_eval_fd(args) -> int:
    import dataclasses
    import json

    import torch

    from .data import load_dataset
    from .eval import evaluate_samples, load_or_compute_reference_stats, predict
    from .train import load_run, resolve_device, sample_images

    _positive(args, "n", "steps", "batch_size", "k")
    if args.eval_classifier_epochs is not None and args.eval_classifier_epochs < 1:
        raise UsageError("--eval-classifier-epochs must be >= 1")
    if args.out is not None and Path(args.out).suffix.lower() != ".json":
        raise UsageError(f"--out must be a .json path, got {args.out}")
    device = resolve_device(args.device)
    run = load_run(args.checkpoint, use_ema=not args.no_ema, device=device) if args.checkpoint else None
    dataset = args.dataset or (run.config.data.dataset if run is not None else None)
    if dataset is None:
        raise UsageError("--images needs --dataset (the reference images)")
    root = args.data_root or (run.config.data.root if run is not None and dataset == run.config.data.dataset else None)
    key = _dataset_key(dataset, root)
    shape = {}
    if run is not None:
        shape = dict(image_size=run.config.model.image_size, channels=run.config.model.in_channels)
    ref_ds = load_dataset(dataset, root=root, split=args.split, **shape)
    train_cache = {}

    def train_ds():
        if "ds" not in train_cache:
            try:
                train_cache["ds"] = load_dataset(dataset, root=root, split="train", **shape)
            except ValueError:
                train_cache["ds"] = None
        return train_cache["ds"]

    feat, feat_dir = _eval_featurizer(args, dataset, key, train_ds, device)
    ref = load_or_compute_reference_stats(feat, ref_ds.to_float(), key, args.split, args.cache_dir,
                                          progress=not args.no_progress)
    labels = None
    guidance = "none"
    if run is not None:
        cfg = run.config
        n = args.n or 1000
        changes = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("eta", args.eta),
                                     ("seed", args.seed), ("batch_size", args.batch_size)) if v is not None}
        if args.no_clip:
            changes["clip_denoised"] = False
        try:
            sc = dataclasses.replace(cfg.sample, n=n, **changes)
        except ConfigError as e:
            raise UsageError(str(e)) from None
        guided = _guided_from_args(args, run, sc, device)
        labels, _, _ = _sample_labels(args, guided, cfg.model.num_classes, n)
        m = cfg.model
        guidance = guided.description if guided is not None else "none"
        _say(f"sampling {n} images with {sc.sampler} ({sc.steps} steps) from {run.checkpoint} ({run.weights} "
             f"weights, step {run.step}); guidance: {guidance}")
        model, diffusion, options = ((guided.model, guided.diffusion, guided.sampler_options) if guided is not None
                                     else (run.model, run.diffusion, {}))
        res = sample_images(model, diffusion, sc, shape=(m.in_channels, m.image_size, m.image_size), n=n,
                            labels=labels, device=device, progress=not args.no_progress, sampler_options=options)
        samples = res.sample.float().cpu().clamp(-1, 1)
        source = f"{n} samples of {run.checkpoint} ({sc.sampler}, {sc.steps} steps)"
    else:
        samples, labels = _load_images_file(args.images)
        if args.n is not None and args.n < len(samples):
            samples, labels = samples[:args.n], None if labels is None else labels[:args.n]
        source = f"{len(samples)} images from {args.images}"
    if len(samples) <= args.k:
        raise UsageError(f"need more than k={args.k} images for precision/recall, got {len(samples)}")
    bs = args.batch_size or 256
    result = evaluate_samples(samples, ref, feat, k=args.k, batch_size=bs)
    report = {"source": source, "guidance": guidance, **result, "featurizer_dir": str(feat_dir)}
    _say(_fd_line("samples", result))
    if labels is not None and int(labels.max()) < feat.model.config.num_classes:
        acc = float((predict(feat.model, samples, bs) == labels.long().cpu()).double().mean())
        report["class_accuracy"] = acc
        _say(f"class accuracy: {acc:.3f} (the eval classifier's predictions vs the requested classes) | "
             f"n={len(samples)} | featurizer {feat.name}")
    if args.floor:
        ds = train_ds()
        if ds is None:
            raise UsageError(f"--floor: {dataset} has no train split")
        n = min(len(samples), len(ds))
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed or 0))[:n]
        floor = evaluate_samples(ds.get_batch(idx)[0], ref, feat, k=args.k, batch_size=bs)
        report["floor"] = floor
        _say(_fd_line(f"floor ({n} {dataset} train images)", floor))
    if args.out is not None:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        _say(f"  {'results:':12s}{out}")
    return 0


def run_eval_nll(args) -> int:
    import json

    import torch

    from .data import load_dataset
    from .eval.nll import evaluate_nll, plot_nll_terms
    from .train import load_run, resolve_device

    _positive(args, "n", "batch_size")
    device = resolve_device(args.device)
    run = load_run(args.checkpoint, use_ema=not args.no_ema, device=device)
    cfg, m = run.config, run.config.model
    dataset = args.dataset or cfg.data.dataset
    root = args.data_root or (cfg.data.root if dataset == cfg.data.dataset else None)
    ds = load_dataset(dataset, root=root, split=args.split, image_size=m.image_size, channels=m.in_channels)
    if args.n > len(ds):
        raise UsageError(f"-n {args.n} is more than the {len(ds)} images of {ds.name} ({args.split})")
    seed = args.seed or 0
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:args.n]
    x, y = ds.get_batch(idx)
    kwargs_fn, conditioning = None, "unconditional model"
    if m.num_classes is not None:
        if args.null_class or y is None:
            null = torch.full((args.n,), m.num_classes, dtype=torch.long)
            kwargs_fn, conditioning = (lambda i: {"y": null[i].to(device)}), "null class (log p(x))"
        else:
            kwargs_fn, conditioning = (lambda i: {"y": y[i].to(device)}), "true labels (log p(x | y))"
    out_dir = Path(args.out) if args.out else _run_dir_of(run.checkpoint) / "eval"
    T = run.diffusion.num_timesteps
    _say(f"NLL of {args.n} {dataset} {args.split} images under {run.checkpoint} ({run.weights} weights, step "
         f"{run.step}): full bound, {T} network evaluations per batch; conditioning: {conditioning}")
    res = evaluate_nll(run.model, run.diffusion, x.to(device), batch_size=args.batch_size or 64,
                       model_kwargs_fn=kwargs_fn, seed=seed, progress=not args.no_progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {**res.to_dict(), "dataset": dataset, "split": args.split, "checkpoint": str(run.checkpoint),
           "step": run.step, "weights": run.weights, "num_timesteps": T, "conditioning": conditioning, "seed": seed,
           "terms_bpd": [float(v) for v in res.terms]}
    json_path = out_dir / "nll.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    plot = plot_nll_terms(res, out_dir / "nll_terms.png")
    se = f" +- {res.bpd_se:.3f}" if res.n > 1 else ""
    _say(f"NLL: {res.bpd:.4f}{se} bits/dim (n={res.n} {dataset}/{args.split} images; prior L_T "
         f"{res.prior_bpd:.2e}, decoder L_0 {res.decoder_bpd:.4f})")
    for label, path in (("results", json_path), ("plot", plot)):
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
def add_toy_arguments(p: argparse.ArgumentParser) -> None:
    from .data.toy import TOY_DATASETS
    from .samplers import SAMPLERS

    p.add_argument("--dataset", default="swiss_roll", choices=TOY_DATASETS, help="2-D toy distribution")
    p.add_argument("--steps", type=int, default=3000, help="training steps (batch 512)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ddim")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("-n", type=int, default=2000, help="samples to draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/toy", metavar="DIR")
    p.add_argument("--no-progress", action="store_true")


def run_toy(args) -> int:
    from .toy import run_toy as toy_pipeline

    if args.steps < 1 or args.n < 2 or args.sample_steps < 1:
        raise UsageError("--steps and --sample-steps must be >= 1 and -n >= 2")
    paths = toy_pipeline(args.out, args.dataset, steps=args.steps, n=args.n, sampler=args.sampler,
                         sample_steps=args.sample_steps, seed=args.seed, progress=not args.no_progress)
    for what, path in paths.items():
        _say(f"{what:>12}: {path}")
    return 0


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[Command] = [
    Command("train", "train a diffusion model (preset + config file + --set overrides)", add_train_arguments,
            run_train),
    Command("sample", "draw images from a trained run (optionally guided)", add_sample_arguments, run_sample),
    Command("train-classifier", "train a noise-aware classifier for classifier guidance",
            add_train_classifier_arguments, run_train_classifier),
    Command("eval", "evaluate a run: fd (Frechet distance, precision/recall, class accuracy), nll (bits/dim)",
            add_eval_arguments, run_eval),
    Command("show-forward", "show the forward (noising) process on real images", add_show_forward_arguments,
            run_show_forward),
    Command("config", "print the resolved run config (preset + file + overrides)", add_config_arguments, run_config),
    Command("toy", "train and sample a 2-D toy model in seconds (scatter, trajectory and loss plots)",
            add_toy_arguments, run_toy),
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
