import math

import pytest
import torch

from difflab.data import load_dataset, mixture_params, sample_toy, TOY_DATASETS
from difflab.data.digits import DIGITS_TEST_SIZE


def test_digits_shapes_range_labels():
    train = load_dataset("digits")
    test = load_dataset("digits", split="test")
    full = load_dataset("digits", split="all")
    assert len(full) == 1797 and len(test) == DIGITS_TEST_SIZE and len(train) == 1797 - DIGITS_TEST_SIZE
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(full.images.max()) == 255 and int(full.images.min()) == 0  # 16 -> 255, 0 -> 0
    assert train.num_classes == 10 and set(train.labels.tolist()) == set(range(10))
    assert train.hflip is False
    x, y = train.get_batch(torch.arange(10))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1 and y.shape == (10,)


def test_digits_split_is_fixed_and_disjoint():
    full = load_dataset("digits", split="all").images.flatten(1)
    a, b = load_dataset("digits", split="train"), load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    assert torch.equal(a.images, b.images)
    # each split is a subset of the full set, and together they are all of it
    assert len(a) + len(test) == full.shape[0]
    rows = {tuple(r) for r in full.tolist()}
    assert all(tuple(r) in rows for r in test.images.flatten(1).tolist()[:20])


def test_digits_resize_and_channels():
    d = load_dataset("digits", split="test", image_size=16, channels=3)
    assert d.images.shape == (DIGITS_TEST_SIZE, 3, 16, 16)
    assert torch.equal(d.images[:, 0], d.images[:, 1])  # gray -> RGB repeats the channel


def test_unknown_split_and_dataset():
    with pytest.raises(ValueError, match="allowed"):
        load_dataset("digits", split="validation")
    with pytest.raises(ValueError, match="digits"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="channels"):
        load_dataset("digits", channels=2)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shape_scale_determinism(name):
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    x = sample_toy(name, 4000, g())
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, sample_toy(name, 4000, g()))
    assert not torch.equal(x, sample_toy(name, 4000, torch.Generator().manual_seed(4)))
    std = x.std(0)
    assert (std > 0.4).all() and (std < 2.0).all(), std
    assert x.mean(0).abs().max() < 0.5


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_per_sample_generators_independent_of_batch(name):
    gens = lambda n: [torch.Generator().manual_seed(100 + i) for i in range(n)]  # noqa: E731
    big, small = sample_toy(name, 6, gens(6)), sample_toy(name, 3, gens(3))
    assert torch.equal(big[:3], small)


def test_toy_unknown_name_lists_names():
    with pytest.raises(ValueError) as e:
        sample_toy("spiral", 10)
    for n in TOY_DATASETS:
        assert n in str(e.value)


def test_checkerboard_only_black_squares():
    x = sample_toy("checkerboard", 5000, torch.Generator().manual_seed(0))
    assert (x.abs() <= 2).all()
    assert ((torch.floor(x[:, 0]) + torch.floor(x[:, 1])) % 2 == 0).all()


@pytest.mark.parametrize("name", ["eight_gaussians", "gaussian_mixture"])
def test_mixture_samples_match_exact_params(name):
    weights, means, covs = mixture_params(name)
    assert math.isclose(float(weights.sum()), 1.0)
    x = sample_toy(name, 40000, torch.Generator().manual_seed(1)).double()
    mean = (weights[:, None] * means).sum(0)
    second = (weights[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    assert torch.allclose(x.mean(0), mean, atol=0.03)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.04)
