"""`difflab make-dataset`: write a test dataset as a folder of PNG files in class sub-folders."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from .common import UsageError, check_positive, say

MAKERS = ("colored-mnist",)
MANIFEST = "colored-mnist.json"


def add_make_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=MAKERS,
                   help="colored-mnist: MNIST digits in a random foreground colour on a random background colour, "
                        "RGB, OUT/train/<digit>/*.png from MNIST's training images and OUT/test/<digit>/*.png "
                        "from its test images")
    p.add_argument("--data-root", required=True, metavar="DIR", help="folder with the four official MNIST .gz files")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to create (must not exist or be empty)")
    p.add_argument("--n", type=int, help="training images: the first N of MNIST's training split (default: all "
                                         "60,000)")
    p.add_argument("--n-test", type=int, help="test images: the first N of MNIST's test split (default: all 10,000)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32: the 28x28 digit "
                                                        "centred with a 2-pixel border)")
    p.add_argument("--seed", type=int, default=0, help="seed of the colours (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_make_dataset(args) -> int:
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from ..data import load_dataset
    from ..data.colored import MIN_COLOUR_DISTANCE, colored_mnist

    check_positive(args, "n", "n_test")
    if args.size < 4:
        raise UsageError(f"--size must be >= 4, got {args.size}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} already exists and is not an empty folder; choose a new one")
    counts = {"train": args.n, "test": args.n_test}
    work = out.parent / f".{out.name}.partial-{os.getpid()}"   # renamed to OUT once complete
    sources = {split: load_dataset("mnist", root=args.data_root, split=split) for split in counts}
    for split, n in counts.items():
        if n is not None and n > len(sources[split]):
            raise UsageError(f"--{'n' if split == 'train' else 'n-test'} {n} is more than the {len(sources[split])} "
                             f"images of MNIST's {split} split")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = {}
        for split, n in counts.items():
            ds = sources[split]
            keep = torch.arange(len(ds) if n is None else n)
            images = colored_mnist(ds.images, args.seed, split, args.size, keep)
            labels = ds.labels[keep].tolist()
            for name in ds.class_names:
                (work / split / name).mkdir(parents=True)
            for i in tqdm(range(len(keep)), desc=f"colored-mnist {split}", unit="img", disable=args.no_progress):
                path = work / split / ds.class_names[labels[i]] / f"{int(keep[i]):05d}.png"
                Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(path)
            written[split] = len(keep)
        manifest = {"dataset": "colored-mnist", "source": "MNIST (train -> train/, test -> test/)",
                    "size": args.size, "seed": args.seed, "min_colour_distance": MIN_COLOUR_DISTANCE,
                    "images": written, "files": "<split>/<digit>/<index in the MNIST split>.png"}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()            # empty (checked above)
        os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {written['train']} training and {written['test']} test images ({args.size}x{args.size} RGB) to {out}")
    say(f"  train on it: difflab train --data {out} --minutes 25 --out runs/colored-mnist")
    return 0
