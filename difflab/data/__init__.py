"""Datasets and transforms.

Every image dataset loads into an in-memory :class:`ImageDataset` (``uint8`` images,
optional labels and captions) through :func:`load_dataset`; 2-D toy distributions come
from :func:`sample_toy`. Images leave this package as float tensors in ``[-1, 1]``.
"""

from difflab.data.dataset import ImageDataset, check_batch_size, iterate_batches
from difflab.data.download import download_file, md5sum
from difflab.data.registry import DATASETS, DEFAULT_ROOT, load_dataset, list_datasets
from difflab.data.toy import TOY_DATASETS, mixture_params, sample_toy
from difflab.data.transforms import float_to_uint8, random_hflip, uint8_to_float

__all__ = [
    "DATASETS", "DEFAULT_ROOT", "ImageDataset", "TOY_DATASETS", "check_batch_size", "download_file",
    "float_to_uint8", "iterate_batches", "list_datasets", "load_dataset", "md5sum", "mixture_params",
    "random_hflip", "sample_toy", "uint8_to_float",
]
