"""`difflab eval train-featurizer`: the evaluation classifier of a labelled folder, cached per dataset."""

from __future__ import annotations

import argparse

from .common import UsageError, check_positive, say

FLOOR_N = 1000


def add_train_featurizer_parser(sub) -> None:
    p = sub.add_parser("train-featurizer",
                       help="train (or load from the cache) the evaluation classifier of a labelled folder of images",
                       description="train the clean evaluation classifier whose features measure samples (Frechet "
                                   "distance, precision/recall) on the training side of the folder's held-out split; "
                                   "report its held-out accuracy and the floor; cached per dataset (a fingerprint "
                                   "of the files)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", required=True, metavar="FOLDER",
                   help="images in class sub-folders (FOLDER/train is used when it exists)")
    p.add_argument("--image-size", type=int, help="resize and centre-crop to this side (default: the images' median "
                                                  "shorter side)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="default: 1 when every image is greyscale, else 3")
    p.add_argument("--holdout-fraction", type=float, help="share of the images held out (default 0.1)")
    p.add_argument("--holdout-seed", type=int, help="seed of the held-out split (default 0)")
    p.add_argument("--epochs", type=int, help="default: 30 below 5,000 training images, else 3")
    p.add_argument("--cache-dir", metavar="DIR", help="where classifiers are cached (default: ~/.cache/difflab)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(eval_run=run_train_featurizer)


def run_train_featurizer(args) -> int:
    from ..data import (DEFAULT_HOLDOUT_FRACTION, DEFAULT_HOLDOUT_SEED, folder_split_root, inspect_folder,
                        list_image_files, load_dataset, split_files)
    from ..eval import folder_featurizer, plan_featurizer, prepare_reference
    from ..train import resolve_device

    check_positive(args, "image_size", "epochs")
    fraction = DEFAULT_HOLDOUT_FRACTION if args.holdout_fraction is None else args.holdout_fraction
    seed = DEFAULT_HOLDOUT_SEED if args.holdout_seed is None else args.holdout_seed
    if not 0 < fraction < 1:
        raise UsageError(f"--holdout-fraction must be in (0, 1), got {fraction}")
    root = folder_split_root(args.data, "train")
    facts = inspect_folder(root)
    say(facts.describe())
    if facts.class_names is None:
        plan = plan_featurizer(labelled=False, cache_dir=args.cache_dir)
        raise UsageError(f"{root} has no class sub-folders, so there is no classifier to train ({plan.message})")
    image_size = args.image_size or facts.image_size
    channels = args.channels or facts.channels
    split = split_files(list_image_files(root), fraction, seed)

    def load(files):
        return load_dataset("folder", root=root, files=files, image_size=image_size, channels=channels,
                            labels_from_folders=True)

    train_ds, heldout_ds = load(split.train), load(split.heldout)     # the floor needs both even when cached
    feat = folder_featurizer(root, split, image_size=image_size, channels=channels, cache_dir=args.cache_dir,
                             epochs=args.epochs, train_ds=train_ds, heldout_ds=heldout_ds,
                             device=resolve_device(args.device), progress=not args.no_progress)
    say(feat.describe())
    ref = prepare_reference(feat.featurizer, heldout_ds.to_float(), train_ds.to_float(), FLOOR_N, dataset=feat.key)
    f = ref.floor
    say(f"floor: {ref.n} training images against the {ref.stats.n} held-out ones: FD {f['fd']:.4g} | precision "
         f"{f['precision']:.3f} | recall {f['recall']:.3f} | featurizer {feat.featurizer.name} (samples are "
         f"measured the same way, at n={ref.n})")
    return 0
