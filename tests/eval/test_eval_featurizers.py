"""The Featurizer contract, channel conversion, and evaluate_samples end to end."""

import numpy as np
import pytest
import torch

from difflab.eval import (
    FeatureStats,
    Featurizer,
    compute_stats,
    evaluate_samples,
    load_or_compute_reference_stats,
)
from difflab.eval.featurizers import convert_channels


class PoolFeaturizer(Featurizer):
    """A tiny real network: 4x4 average pooling of a 1-channel 8x8 image -> 4 features.

    Counts its calls and checks it is driven in eval mode without gradients."""

    def __init__(self, name="pool4"):
        self.name = name
        self.feature_dim = 4
        self.image_size = 8
        self.channels = 1
        self.device = torch.device("cpu")
        self.net = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten())
        self.calls = 0

    def module(self):
        return self.net

    def _forward(self, x):
        assert not self.net.training and not torch.is_grad_enabled()
        assert x.shape[1:] == (1, 8, 8)
        self.calls += 1
        return self.net(x)


def blobs(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(n, 1, 8, 8, generator=g) + shift).clamp(-1, 1)


def test_features_contract():
    feat = PoolFeaturizer()
    feat.net.train()
    x = blobs(37, 0)
    f = feat.features(x, batch_size=10)
    assert f.dtype == np.float64 and f.shape == (37, 4)
    assert feat.calls == 4  # batches of 10, 10, 10, 7
    assert feat.net.training  # mode restored
    np.testing.assert_allclose(f, feat.features(x, batch_size=37), rtol=0, atol=0)
    np.testing.assert_allclose(f[:, 0], x[:, 0, :4, :4].double().mean((1, 2)).numpy(), rtol=1e-6)
    # Resized on the way in (_forward asserts 8x8): a constant 16x16 or 5x5 image keeps its value.
    for size in (16, 5):
        const = torch.full((3, 1, size, size), -0.25)
        np.testing.assert_allclose(feat.features(const), -0.25, atol=1e-6)


def test_features_reject_bad_images():
    feat = PoolFeaturizer()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        feat.features(torch.full((2, 1, 8, 8), 255.0))
    with pytest.raises(ValueError, match="float"):
        feat.features(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        feat.features(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="cannot convert 2-channel"):
        feat.features(torch.zeros(2, 2, 8, 8))


def test_convert_channels():
    grey = torch.rand(2, 1, 4, 4) * 2 - 1
    rgb = convert_channels(grey, 3)
    assert rgb.shape == (2, 3, 4, 4) and torch.equal(rgb[:, 2], grey[:, 0])
    # A grey image stored as RGB converts back to itself (luma weights sum to 1).
    torch.testing.assert_close(convert_channels(rgb, 1), grey)
    red = torch.zeros(1, 3, 1, 1)
    red[:, 0] = 1.0
    assert convert_channels(red, 1).item() == pytest.approx(0.299)


def test_evaluate_samples_real_vs_shifted():
    feat = PoolFeaturizer()
    ref_images = blobs(400, 0)
    ref = compute_stats(feat.features(ref_images), feat.name, "blobs", "test", keep_features=True)
    same = evaluate_samples(blobs(400, 1), ref, feat, density_coverage=True)
    shifted = evaluate_samples(blobs(400, 2, shift=0.5), ref, feat)
    assert same["n"] == 400 and same["featurizer"] == "pool4" and same["reference"].startswith("blobs/test")
    assert same["fd"] < 0.01 < shifted["fd"]
    # 4 pooled means shift by 0.5 each (less clamping) -> ||mu_1 - mu_2||^2 close to 4 * 0.5^2.
    assert shifted["fd"] == pytest.approx(1.0, rel=0.2)
    assert same["precision"] > 0.8 and same["recall"] > 0.8
    assert shifted["precision"] < 0.2 and shifted["recall"] < 0.2
    assert set(same) >= {"density", "coverage"}


def test_evaluate_samples_without_reference_features_and_mismatch():
    feat = PoolFeaturizer()
    ref = compute_stats(feat.features(blobs(50, 0)), feat.name, "blobs", "test")  # no features kept
    out = evaluate_samples(blobs(50, 1), ref, feat)
    assert out["precision"] is None and out["recall"] is None and out["fd"] >= 0
    with pytest.raises(ValueError, match="computed with 'pool4'"):
        evaluate_samples(blobs(50, 1), ref, PoolFeaturizer(name="other"))
    with pytest.raises(ValueError, match="at least 2 samples"):
        evaluate_samples(blobs(1, 1), ref, feat)


def test_reference_stats_are_cached(tmp_path):
    feat = PoolFeaturizer()
    images = blobs(64, 0)
    a = load_or_compute_reference_stats(feat, images, "blobs", "test", tmp_path, batch_size=32)
    assert feat.calls == 2
    path = tmp_path / "stats" / "pool4__blobs__test.npz"
    assert path.is_file()
    b = load_or_compute_reference_stats(feat, None, "blobs", "test", tmp_path)
    assert feat.calls == 2  # served from the cache
    np.testing.assert_array_equal(a.cov, b.cov)
    np.testing.assert_array_equal(a.features, b.features)
    assert isinstance(b, FeatureStats) and (b.dataset, b.split, b.n) == ("blobs", "test", 64)
    with pytest.raises(ValueError, match="no cached statistics"):
        load_or_compute_reference_stats(feat, None, "blobs", "train", tmp_path)
    with pytest.raises(ValueError, match="not of 'other'"):
        # Someone else's file under this featurizer's name is refused.
        other = PoolFeaturizer(name="other")
        path.rename(tmp_path / "stats" / "other__blobs__test.npz")
        load_or_compute_reference_stats(other, None, "blobs", "test", tmp_path)
