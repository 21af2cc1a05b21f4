"""Datasets and transforms.

Every image dataset loads into an in-memory :class:`ImageDataset` (``uint8`` images,
optional labels and captions) through :func:`load_dataset`; 2-D toy distributions come
from :func:`sample_toy`. Images leave this package as float tensors in ``[-1, 1]``.
"""

from difflab.data.dataset import ImageDataset, check_batch_size, iterate_batches
from difflab.data.download import download_file, md5sum
from difflab.data.facts import DatasetFacts, facts_of_dataset, inspect_folder
from difflab.data.folder import list_image_files
from difflab.data.registry import DATASETS, DEFAULT_ROOT, folder_split_root, load_dataset, list_datasets
from difflab.data.split import (DEFAULT_HOLDOUT_FRACTION, DEFAULT_HOLDOUT_SEED, SPLIT_FILE, HoldoutSplit, extend_split,
                                fingerprint_files, holdout_score, read_split, split_files, write_split)
from difflab.data.toy import TOY_DATASETS, mixture_params, sample_toy
from difflab.data.transforms import float_to_uint8, random_hflip, uint8_to_float

__all__ = [
    "DATASETS", "DEFAULT_HOLDOUT_FRACTION", "DEFAULT_HOLDOUT_SEED", "DEFAULT_ROOT", "DatasetFacts", "HoldoutSplit",
    "ImageDataset", "SPLIT_FILE", "TOY_DATASETS", "check_batch_size", "download_file", "extend_split",
    "facts_of_dataset", "fingerprint_files", "float_to_uint8", "folder_split_root", "holdout_score",
    "inspect_folder", "iterate_batches", "list_datasets", "list_image_files", "load_dataset", "md5sum",
    "mixture_params", "random_hflip", "read_split", "sample_toy", "split_files", "uint8_to_float", "write_split",
]
