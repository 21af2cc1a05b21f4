"""Frechet distance: closed forms, the scipy sqrtm reference, invariants, and stats files."""

import numpy as np
import pytest
from scipy import linalg

from difflab.eval.frechet import (
    FeatureStats,
    compute_stats,
    frechet_distance,
    frechet_distance_gaussians,
    psd_sqrt,
    stats_filename,
)


def random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1) * np.eye(d)


def scipy_fd(mu1, s1, mu2, s2):
    """The classic pytorch-fid / TF formula, with scipy's general (non-symmetric) sqrtm."""
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [1, 5, 64])
def test_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    for _ in range(3):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_cov(rng, d), random_cov(rng, d)
        ours = frechet_distance_gaussians(mu1, s1, mu2, s2)
        ref = scipy_fd(mu1, s1, mu2, s2)
        assert ours == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_matches_scipy_on_sample_stats():
    # Sample covariances of real-looking features (more samples than dimensions).
    rng = np.random.default_rng(0)
    a = compute_stats(rng.standard_normal((500, 32)) @ rng.standard_normal((32, 32)))
    b = compute_stats(rng.standard_normal((400, 32)) * 2 + 0.3)
    assert frechet_distance(a, b) == pytest.approx(scipy_fd(a.mean, a.cov, b.mean, b.cov), rel=1e-8)


def test_diagonal_gaussians_closed_form():
    # For commuting (diagonal) covariances: ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(1)
    d = 20
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.01, 5, d), rng.uniform(0.01, 5, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance_gaussians(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_one_dimensional_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    fd = frechet_distance_gaussians(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[0.25]]))
    assert fd == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-14)


@pytest.mark.parametrize("rank", [None, 5])
def test_identical_is_zero_even_when_singular(rank):
    rng = np.random.default_rng(2)
    s = random_cov(rng, 40, rank=rank)  # rank 5 of 40: very singular
    mu = rng.standard_normal(40)
    assert frechet_distance_gaussians(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9 * np.trace(s))
    feats = rng.standard_normal((10, 64))  # fewer samples than dimensions
    st = compute_stats(feats)
    assert frechet_distance(st, st) == pytest.approx(0.0, abs=1e-9)


def test_symmetric_and_nonnegative():
    rng = np.random.default_rng(3)
    for trial in range(20):
        d = int(rng.integers(1, 30))
        rank = None if trial % 2 else int(rng.integers(1, d + 1))
        mu1 = rng.standard_normal(d)
        mu2 = mu1 + 1e-6 * rng.standard_normal(d) if trial % 3 == 0 else rng.standard_normal(d)
        s1 = random_cov(rng, d, rank)
        s2 = s1 + 1e-8 * np.eye(d) if trial % 3 == 0 else random_cov(rng, d, rank)
        ab = frechet_distance_gaussians(mu1, s1, mu2, s2)
        ba = frechet_distance_gaussians(mu2, s2, mu1, s1)
        assert ab >= 0.0
        assert ab == pytest.approx(ba, rel=1e-7, abs=1e-9)


def test_scales_quadratically():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((300, 8)), rng.standard_normal((300, 8)) * 1.5 + 1
    fd = frechet_distance(compute_stats(x), compute_stats(y))
    assert frechet_distance(compute_stats(3 * x), compute_stats(3 * y)) == pytest.approx(9 * fd, rel=1e-9)


def test_psd_sqrt_squares_back():
    rng = np.random.default_rng(5)
    s = random_cov(rng, 12)
    r = psd_sqrt(s)
    np.testing.assert_allclose(r @ r, s, atol=1e-12)
    np.testing.assert_allclose(r, r.T, atol=0)


def test_compute_stats_matches_numpy():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((50, 7)).astype(np.float32)
    st = compute_stats(x, "f", "d", "s")
    np.testing.assert_allclose(st.mean, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    assert st.mean.dtype == np.float64 and st.n == 50 and st.features is None
    with pytest.raises(ValueError, match="N >= 2"):
        compute_stats(x[:1])
    with pytest.raises(ValueError, match="NaN"):
        compute_stats(np.full((3, 2), np.nan))


def test_save_load_roundtrip_without_pickle(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((30, 4))
    st = compute_stats(x, "eval-classifier-mnist", "mnist", "test", keep_features=True)
    path = st.save(tmp_path / stats_filename(st.featurizer_name, st.dataset, st.split))
    assert path.name == "eval-classifier-mnist__mnist__test.npz"
    with np.load(path, allow_pickle=False) as f:  # every field is a plain array
        assert set(f.files) == {"mean", "cov", "n", "featurizer_name", "dataset", "split", "features"}
    back = FeatureStats.load(path)
    np.testing.assert_array_equal(back.mean, st.mean)
    np.testing.assert_array_equal(back.cov, st.cov)
    np.testing.assert_array_equal(back.features, x.astype(np.float32))
    assert (back.n, back.featurizer_name, back.dataset, back.split) == (30, "eval-classifier-mnist", "mnist", "test")
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write left nothing behind


def test_rejects_mismatched_stats(tmp_path):
    a = compute_stats(np.random.default_rng(0).standard_normal((10, 3)), featurizer_name="a")
    b = compute_stats(np.random.default_rng(1).standard_normal((10, 3)), featurizer_name="b")
    c = compute_stats(np.random.default_rng(1).standard_normal((10, 4)), featurizer_name="a")
    with pytest.raises(ValueError, match="different featurizers"):
        frechet_distance(a, b)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(a, c)
    with pytest.raises(ValueError, match="letters, digits"):
        stats_filename("inception/v3", "mnist", "test")
    with pytest.raises(ValueError, match="no feature statistics"):
        FeatureStats.load(tmp_path / "missing.npz")
