"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download).

Pixel values 0..16 are mapped to uint8 by ``round(v * 255 / 16)``. The split is fixed:
a permutation of all indices drawn from ``torch.Generator().manual_seed(DIGITS_SPLIT_SEED)``;
its first ``DIGITS_TEST_SIZE`` indices form ``test`` and the rest ``train`` (each kept in
the original order). ``"all"`` returns every image.
"""

from __future__ import annotations

import numpy as np
import torch

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360  # ~20% of 1,797
DIGITS_MAX_VALUE = 16
DIGITS_SPLITS = ("train", "test", "all")


def digits_split_indices(n: int, split: str) -> torch.Tensor:
    """Sorted indices of ``split`` among ``n`` digits (see module docstring)."""
    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits: unknown split {split!r}; allowed: {list(DIGITS_SPLITS)}")
    if split == "all":
        return torch.arange(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    part = perm[:DIGITS_TEST_SIZE] if split == "test" else perm[DIGITS_TEST_SIZE:]
    return part.sort().values


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 1, 8, 8], labels LongTensor[N])``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)  # [1797, 8, 8], 0..16
    images = np.clip(np.round(values * 255.0 / DIGITS_MAX_VALUE), 0, 255).astype(np.uint8)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    idx = digits_split_indices(x.shape[0], split)
    return x[idx].contiguous(), y[idx].contiguous()
