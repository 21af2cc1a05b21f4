"""`difflab eval fd | nll`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ConfigError
from .common import PROG, UsageError, Parser, check_positive, say
from .eval_featurizer import add_train_featurizer_parser
from .sampling import add_guidance_arguments, guided_from_args, sample_conditions


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
    from ..losses import CDFS
    from ..samplers import SAMPLERS

    sub = p.add_subparsers(dest="eval_command", metavar="METRIC", parser_class=Parser)
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
    fd.add_argument("--class-label", type=int, help="draw every sample of this class (default: --labels)")
    fd.add_argument("--labels", choices=("proportional", "cycle"), default="proportional",
                    help="the classes of a class-conditional run's samples: in the training data's proportions "
                         "(default, as the evaluation during training asks for them) or 0..K-1 in turn")
    add_guidance_arguments(fd)
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
    nll.add_argument("--clip", action="store_true",
                     help="clamp predicted x_0 to [-1, 1] in every term: the bound of the model as it samples "
                          "with clipping (default: the unclipped model)")
    nll.add_argument("--cdf", choices=CDFS, default="exact",
                     help="normal CDF of the decoder L_0: exact (erf; default) or approx (the tanh approximation "
                          "of the DDPM / improved-diffusion code, for figures comparable with theirs)")
    nll.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/eval)")
    nll.set_defaults(eval_run=run_eval_nll)
    add_train_featurizer_parser(sub)


def run_eval(args) -> int:
    if getattr(args, "eval_run", None) is None:
        raise UsageError(f"choose a metric: fd, nll, or train-featurizer (see '{PROG} eval --help')")
    return args.eval_run(args)


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

    from ..eval import (
        ClassifierFeaturizer,
        EvalClassifierConfig,
        classifier_side,
        default_classifier_epochs,
        default_classifier_path,
        load_eval_classifier,
        load_or_train_eval_classifier,
    )

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
        side = classifier_side(max(ds.image_size))
        epochs = args.eval_classifier_epochs or default_classifier_epochs(len(ds))
        if not (directory / "model.safetensors").is_file():
            say(f"training the evaluation classifier on {ds.name} {ds.split} ({len(ds)} images, {epochs} epochs); "
                 f"cached in {directory}")
        model = load_or_train_eval_classifier(
            key, ds.to_float(), ds.labels, cache_dir=args.cache_dir, device=device, epochs=epochs, seed=0,
            config=EvalClassifierConfig(in_channels=ds.channels, image_size=side,
                                        num_classes=max(2, ds.num_classes)),
            progress=not args.no_progress)
    digest = hashlib.sha1((directory / "model.safetensors").read_bytes()).hexdigest()[:8]
    return ClassifierFeaturizer(model, name=f"eval-classifier-{key}-{digest}"), directory


def _run_heldout(args, run, shape, device):
    """For a run trained on a folder with a held-out split (RUN_DIR/split.json) and no --dataset /
    --data-root / --split / --featurizer-dir given: ``(held-out images, training images, featurizer,
    its folder, cache key, "heldout")``, the featurizer being the folder's evaluation classifier trained
    on the training side only (cached); None otherwise."""
    from ..data import SPLIT_FILE, folder_split_root, load_dataset, read_split
    from ..eval import folder_featurizer

    if run is None or args.dataset or args.data_root or args.split != "test" or args.featurizer_dir:
        return None
    split_file = _run_dir_of(run.checkpoint) / SPLIT_FILE
    d = run.config.data
    if d.dataset != "folder" or not split_file.is_file():
        return None
    split = read_split(split_file)
    labelled = all("/" in p for p in split.train + split.heldout)

    def load(files):
        return load_dataset("folder", root=d.root, split=d.split, files=files, labels_from_folders=labelled, **shape)

    heldout, train = load(split.heldout), load(split.train)
    say(f"reference: the run's {len(split.heldout)} held-out images ({split_file}); floor and featurizer from its "
        f"{len(split.train)} training images")
    if not labelled:
        raise UsageError(f"{d.root} has no class sub-folders to train an evaluation classifier on: pass "
                         "--featurizer-dir (or the FID Inception weights: see difflab.eval.plan_featurizer)")
    ff = folder_featurizer(folder_split_root(d.root, d.split), split, image_size=shape["image_size"],
                           channels=shape["channels"], cache_dir=args.cache_dir,
                           epochs=args.eval_classifier_epochs, train_ds=train, heldout_ds=heldout, device=device,
                           progress=not args.no_progress)
    say(ff.describe())
    return heldout, train, ff.featurizer, ff.directory, ff.key, "heldout"


def _load_images_file(path: str):
    """Images in [-1, 1] [N, C, H, W] and labels (or None) from a folder of images or an .npz file."""
    import numpy as np
    import torch

    from ..data import load_dataset

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


def _proportional(labels, train, n: int, num_classes: int):
    """``n`` labels in the training images' class proportions (``labels``, the classes in turn, when the
    training images have no labels or carry classes the model lacks)."""
    from ..train.evaluation import proportional_labels

    if train is None or train.labels is None or len(train.labels) == 0 or int(train.labels.max()) >= num_classes:
        return labels
    say("classes: in the training images' proportions (--labels cycle: 0..K-1 in turn)")
    return proportional_labels(train.labels, n).to(labels.dtype)


def run_eval_fd(args) -> int:
    import dataclasses
    import json

    import torch

    from ..data import load_dataset
    from ..eval import evaluate_samples, load_or_compute_reference_stats, predict
    from ..train import load_run, resolve_device, sample_images

    check_positive(args, "n", "steps", "batch_size", "k")
    if args.eval_classifier_epochs is not None and args.eval_classifier_epochs < 1:
        raise UsageError("--eval-classifier-epochs must be >= 1")
    if args.out is not None and Path(args.out).suffix.lower() != ".json":
        raise UsageError(f"--out must be a .json path, got {args.out}")
    device = resolve_device(args.device)
    run = load_run(args.checkpoint, use_ema=not args.no_ema, device=device) if args.checkpoint else None
    _refuse_conditioned(run)
    dataset = args.dataset or (run.config.data.dataset if run is not None else None)
    if dataset is None:
        raise UsageError("--images needs --dataset (the reference images)")
    root = args.data_root or (run.config.data.root if run is not None and dataset == run.config.data.dataset else None)
    key = _dataset_key(dataset, root)
    shape = {}
    if run is not None:
        shape = dict(image_size=run.config.model.image_size, channels=run.config.model.in_channels)
    heldout = _run_heldout(args, run, shape, device)
    if heldout is not None:       # a folder run: its own held-out images, the featurizer of its training side
        ref_ds, train_side, feat, feat_dir, key, split_name = heldout
        train_ds = lambda: train_side   # noqa: E731
    else:
        split_name = args.split
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
    ref = load_or_compute_reference_stats(feat, ref_ds.to_float(), key, split_name, args.cache_dir,
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
        guided = guided_from_args(args, run, sc, device)
        labels = sample_conditions(args, guided, cfg.model.num_classes, n).labels
        if labels is not None and args.class_label is None and args.labels == "proportional":
            labels = _proportional(labels, train_ds(), n, guided.num_classes if guided is not None
                                   else cfg.model.num_classes)
        m = cfg.model
        guidance = guided.description if guided is not None else "none"
        say(f"sampling {n} images with {sc.sampler} ({sc.steps} steps) from {run.checkpoint} ({run.weights} "
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
    if labels is not None:
        report["classes"] = torch.bincount(labels.long().cpu()).tolist()     # samples per requested class
    say(_fd_line("samples", result))
    if labels is not None and int(labels.max()) < feat.model.config.num_classes:
        acc = float((predict(feat.model, samples, bs) == labels.long().cpu()).double().mean())
        report["class_accuracy"] = acc
        say(f"class accuracy: {acc:.3f} (the eval classifier's predictions vs the requested classes) | "
             f"n={len(samples)} | featurizer {feat.name}")
    if args.floor:
        ds = train_ds()
        if ds is None:
            raise UsageError(f"--floor: {dataset} has no train split")
        n = min(len(samples), len(ds))
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed or 0))[:n]
        floor = evaluate_samples(ds.get_batch(idx)[0], ref, feat, k=args.k, batch_size=bs)
        report["floor"] = floor
        say(_fd_line(f"floor ({n} {dataset} train images)", floor))
    if args.out is not None:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        say(f"  {'results:':12s}{out}")
    return 0


def run_eval_nll(args) -> int:
    import json

    import torch

    from ..data import load_dataset
    from ..eval.nll import evaluate_nll, plot_nll_terms
    from ..train import load_run, resolve_device

    check_positive(args, "n", "batch_size")
    device = resolve_device(args.device)
    run = load_run(args.checkpoint, use_ema=not args.no_ema, device=device)
    _refuse_conditioned(run)
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
    clip = "predicted x_0 clipped to [-1, 1]" if args.clip else "predicted x_0 not clipped"
    say(f"NLL of {args.n} {dataset} {args.split} images under {run.checkpoint} ({run.weights} weights, step "
        f"{run.step}): full bound, {T} network evaluations per batch; conditioning: {conditioning}; {clip}; "
        f"{args.cdf} normal CDF in L_0")
    res = evaluate_nll(run.model, run.diffusion, x.to(device), batch_size=args.batch_size or 64,
                       model_kwargs_fn=kwargs_fn, seed=seed, clip_denoised=args.clip, progress=not args.no_progress,
                       cdf=args.cdf)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {**res.to_dict(), "dataset": dataset, "split": args.split, "checkpoint": str(run.checkpoint),
           "step": run.step, "weights": run.weights, "num_timesteps": T, "conditioning": conditioning, "seed": seed,
           "clip_denoised": bool(args.clip), "terms_bpd": [float(v) for v in res.terms]}
    json_path = out_dir / "nll.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    plot = plot_nll_terms(res, out_dir / "nll_terms.png")
    se = f" +- {res.bpd_se:.3f}" if res.n > 1 else ""
    say(f"NLL: {res.bpd:.4f}{se} bits/dim (n={res.n} {dataset}/{args.split} images; prior L_T "
         f"{res.prior_bpd:.2e}, decoder L_0 {res.decoder_bpd:.4f})")
    for label, path in (("results", json_path), ("plot", plot)):
        say(f"  {label + ':':12s}{path}")
    note = None if args.clip else last_term_note(res, run.diffusion)
    if note:
        say(note)
    return 0


def last_term_note(res, diffusion) -> str | None:
    """A note when the unclipped bound's last term L_{T-1} is a large share of it (> 5%): on a schedule
    whose last alphas_cumprod is tiny (cosine: 2.4e-9) the x_0 estimate there amplifies the network's error."""
    T, last = len(res.terms), float(res.terms[-1])
    if T < 2 or not last > 0.05 * res.bpd:
        return None
    abar = float(diffusion.terms.alphas_cumprod[-1])
    return (f"note: the last term L_{T - 1} alone is {last:.3f} bits/dim ({100 * last / res.bpd:.0f}% of the bound). "
            f"At alphas_cumprod[{T - 1}] = {abar:.2g} the unclipped x_0 estimate multiplies the network's error by "
            f"{1 / abar ** 0.5:.2g}; --clip gives the bound of the model as it samples (with clipping)")


def _refuse_conditioned(run) -> None:
    if run is not None and run.conditioning is not None:
        raise UsageError("difflab eval does not handle latent, text-conditioned or super-resolution runs yet "
                         "(for text runs see benchmarks/latent_text_accuracy.py)")
