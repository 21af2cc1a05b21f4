"""`difflab show-forward`, `difflab config`, `difflab toy`."""

from __future__ import annotations

import argparse

from .common import UsageError, add_config_flags, config_from_args, say


def add_show_forward_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flags(p)
    p.add_argument("--dataset", help="sets data.dataset (digits, mnist, fashion-mnist, cifar10, folder)")
    p.add_argument("--data-root", metavar="DIR", help="sets data.root")
    p.add_argument("-n", type=int, default=6, help="images (rows)")
    p.add_argument("--columns", type=int, default=8, help="timesteps shown, evenly spaced over 0..T-1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="forward_process.png", metavar="PATH.png")


def run_show_forward(args) -> int:
    import numpy as np
    import torch

    from ..data import load_dataset
    from ..rng import randn
    from ..viz import forward_process_grid

    if args.n < 1 or args.columns < 2:
        raise UsageError("-n must be >= 1 and --columns >= 2")
    extra: dict = {}
    if args.dataset is not None:
        extra["data"] = {"dataset": args.dataset}
    if args.data_root is not None:
        extra.setdefault("data", {})["root"] = args.data_root
    cfg = config_from_args(args, extra)
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
    say(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- config
def add_config_arguments(p: argparse.ArgumentParser) -> None:
    add_config_flags(p)
    p.add_argument("--out", metavar="FILE.yaml", help="write the resolved config here instead of printing it")


def run_config(args) -> int:
    import yaml

    from ..config import save_config

    cfg = config_from_args(args)
    if args.out:
        say(f"wrote {save_config(cfg, args.out)}")
    else:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


# ----------------------------------------------------------------------------- table and entry point
def add_toy_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.toy import TOY_DATASETS
    from ..samplers import SAMPLERS

    p.add_argument("--dataset", default="swiss_roll", choices=TOY_DATASETS, help="2-D toy distribution")
    p.add_argument("--steps", type=int, default=3000, help="training steps (batch 512)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ddim")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("-n", type=int, default=2000, help="samples to draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/toy", metavar="DIR")
    p.add_argument("--no-progress", action="store_true")


def run_toy(args) -> int:
    from ..toy import run_toy as toy_pipeline

    if args.steps < 1 or args.n < 2 or args.sample_steps < 1:
        raise UsageError("--steps and --sample-steps must be >= 1 and -n >= 2")
    paths = toy_pipeline(args.out, args.dataset, steps=args.steps, n=args.n, sampler=args.sampler,
                         sample_steps=args.sample_steps, seed=args.seed, progress=not args.no_progress)
    for what, path in paths.items():
        say(f"{what:>12}: {path}")
    return 0


