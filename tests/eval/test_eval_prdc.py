"""Precision/recall/density/coverage on point sets whose answers are known."""

import numpy as np
import pytest
import torch

from difflab.eval.prdc import knn_radii, precision_recall


def clusters(rng, centres, per_cluster, std=1.0):
    return np.concatenate([c + std * rng.standard_normal((per_cluster, centres.shape[1])) for c in centres])


def brute_force(real, fake, k):
    """Straight from the definitions, full distance matrices in float64."""
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_rf = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # [N, M]
    r_real = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(d_ff, axis=1)[:, k]
    return {
        "precision": np.mean((d_rf <= r_real[:, None]).any(axis=0)),
        "recall": np.mean((d_rf <= r_fake[None, :]).any(axis=1)),
        "density": (d_rf <= r_real[:, None]).sum() / (k * len(fake)),
        "coverage": np.mean(d_rf.min(axis=1) <= r_real),
    }


def test_identical_sets_score_one():
    x = np.random.default_rng(0).standard_normal((300, 16))
    out = precision_recall(x, x, k=3, density_coverage=True)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0
    assert out["density"] >= 1.0  # every point sits in its own ball plus its neighbours'


def test_far_apart_sets_score_zero():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((200, 8))
    fake = rng.standard_normal((150, 8)) + 100.0
    out = precision_recall(real, fake, k=3, density_coverage=True)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_half_the_modes():
    # Real data: 10 well-separated clusters. Fake: fresh samples from 5 of them.
    # (2-D so that 200 points per cluster fill their k-NN balls: a fresh sample of the *whole*
    # distribution then scores precision = recall ~ 0.97, the floor at this sample size.)
    rng = np.random.default_rng(2)
    centres = 50.0 * rng.standard_normal((10, 2))
    real = clusters(rng, centres, 200)
    fake = clusters(rng, centres[:5], 400)
    full = precision_recall(real, clusters(rng, centres, 400), k=3)
    assert full["precision"] > 0.95 and full["recall"] > 0.95
    out = precision_recall(real, fake, k=3, density_coverage=True)
    assert out["precision"] > 0.95  # every fake sample is realistic
    assert 0.45 < out["recall"] <= 0.5  # only the covered half of the real data is recalled
    assert 0.45 < out["coverage"] <= 0.5
    assert out["density"] == pytest.approx(1.0, abs=0.1)
    # Swapping roles: the fake set is now the one missing nothing it claims.
    swapped = precision_recall(fake, real, k=3)
    assert swapped["recall"] > 0.95 and 0.42 < swapped["precision"] <= 0.5


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force_definition(k):
    rng = np.random.default_rng(3 + k)
    real = rng.standard_normal((120, 5))
    fake = 0.8 * rng.standard_normal((90, 5)) + 0.5
    ours = precision_recall(real, fake, k=k, density_coverage=True, dtype=torch.float64, batch_size=17)
    ref = brute_force(real, fake, k)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def test_independent_of_batch_size():
    rng = np.random.default_rng(4)
    real, fake = rng.standard_normal((257, 12)), rng.standard_normal((131, 12)) * 1.3
    outs = [precision_recall(real, fake, density_coverage=True, batch_size=b, dtype=torch.float64) for b in (1, 64, 4096)]
    assert outs[0] == outs[1] == outs[2]


def test_knn_radii_excludes_self_and_is_kth():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    # squared distances to the 2nd nearest other point
    assert knn_radii(x, 2, batch_size=3).tolist() == [9.0, 4.0, 9.0, 36.0]


def test_bad_input():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(x, x, k=5)
    with pytest.raises(ValueError, match="dimensions differ"):
        precision_recall(x, np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        precision_recall(np.zeros(5), x)
