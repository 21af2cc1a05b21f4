"""Frechet distance between Gaussians fitted to features (FID when the features are Inception's).

Notation (Heusel et al. 2017, eq. 6; Dowson & Landau 1982)::

    mu_1, Sigma_1   mean and covariance of the first feature set
    mu_2, Sigma_2   mean and covariance of the second
    d^2 = ||mu_1 - mu_2||^2 + tr(Sigma_1 + Sigma_2 - 2 (Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2})^{1/2})

The usual implementation takes ``scipy.linalg.sqrtm(Sigma_1 Sigma_2)``: a non-symmetric
matrix whose square root can come back complex or inaccurate when the covariances are
(near) singular. ``(Sigma_1 Sigma_2)^{1/2}`` is similar to the symmetric PSD matrix
``Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2}`` (same eigenvalues), so its trace is the sum of the
square roots of that matrix's eigenvalues; everything here uses ``numpy.linalg.eigh`` of
symmetric PSD matrices, setting round-off eigenvalues (negative, or below
``max|w| * D * eps``) to 0, in float64.

Reference statistics are cached as ``.npz`` files named after featurizer, dataset and split
(``stats_filename``), loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difflab.files import atomic_write

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or not set(value) <= _NAME_CHARS:
        raise ValueError(f"{what} must be a non-empty string of letters, digits, '.', '_' or '-', got {value!r}")
    return value


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mean ``mu`` [D] and covariance ``Sigma`` [D, D] (float64) of ``n`` feature vectors.

    ``featurizer_name``, ``dataset`` and ``split`` say where they came from; two stats are
    only compared when their featurizers agree.
    """

    mean: np.ndarray
    cov: np.ndarray
    n: int
    featurizer_name: str = "unknown"
    dataset: str = "unknown"
    split: str = "unknown"
    features: np.ndarray | None = None  # optional [n, D] float32 copy, for precision/recall

    def __post_init__(self):
        mean = np.asarray(self.mean, dtype=np.float64)
        cov = np.asarray(self.cov, dtype=np.float64)
        if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"need mean [D] and cov [D, D], got {mean.shape} and {cov.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
            raise ValueError("mean and cov must be finite")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)
        object.__setattr__(self, "n", int(self.n))
        if self.features is not None:
            feats = np.asarray(self.features, dtype=np.float32)
            if feats.ndim != 2 or feats.shape[1] != mean.shape[0]:
                raise ValueError(f"features must be [n, {mean.shape[0]}], got {feats.shape}")
            object.__setattr__(self, "features", feats)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (.npz, atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {} if self.features is None else {"features": self.features}
        atomic_write(path, lambda tmp: np.savez(
            tmp,
            **extra,
            mean=self.mean,
            cov=self.cov,
            n=np.int64(self.n),
            featurizer_name=np.str_(self.featurizer_name),
            dataset=np.str_(self.dataset),
            split=np.str_(self.split),
        ), suffix=".tmp.npz")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        """Read a file written by ``save`` (no pickle)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no feature statistics at {path}")
        with np.load(path, allow_pickle=False) as f:
            missing = {"mean", "cov", "n"} - set(f.files)
            if missing:
                raise ValueError(f"{path} is not a FeatureStats file: missing {sorted(missing)}")
            return cls(
                mean=f["mean"],
                cov=f["cov"],
                n=int(f["n"]),
                featurizer_name=str(f["featurizer_name"]) if "featurizer_name" in f.files else "unknown",
                dataset=str(f["dataset"]) if "dataset" in f.files else "unknown",
                split=str(f["split"]) if "split" in f.files else "unknown",
                features=f["features"] if "features" in f.files else None,
            )


def stats_filename(featurizer_name: str, dataset: str, split: str) -> str:
    """Canonical cache file name, e.g. ``eval-classifier-mnist__mnist__test.npz``."""
    parts = [_check_name("featurizer_name", featurizer_name), _check_name("dataset", dataset), _check_name("split", split)]
    return "__".join(parts) + ".npz"


def compute_stats(
    features: np.ndarray,
    featurizer_name: str = "unknown",
    dataset: str = "unknown",
    split: str = "unknown",
    keep_features: bool = False,
) -> FeatureStats:
    """Sample mean and unbiased covariance (ddof=1) of ``features`` [N, D], in float64.

    ``keep_features`` stores a float32 copy of the features (needed for precision/recall).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf")
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / (x.shape[0] - 1)
    return FeatureStats(mean, cov, x.shape[0], featurizer_name, dataset, split, x if keep_features else None)


def _psd_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix, with round-off eigenvalues set to 0.

    Eigenvalues below ``max|w| * D * eps`` (numpy's ``matrix_rank`` tolerance) are numerical
    noise: keeping them would add ``sqrt(noise) ~ 1e-8`` per null direction to every square
    root below, which is what makes the textbook FD of identical singular covariances
    come out at -1e-6 instead of 0.
    """
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    tol = np.abs(w).max(initial=0.0) * a.shape[0] * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0), v


def psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via ``eigh``."""
    w, v = _psd_eigh(a)
    return (v * np.sqrt(w)) @ v.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``tr((Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2})^{1/2})`` = ``tr((Sigma_1 Sigma_2)^{1/2})``."""
    s1 = psd_sqrt(cov1)
    w, _ = _psd_eigh(s1 @ cov2 @ s1)
    return float(np.sqrt(w).sum())


def frechet_distance_gaussians(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, cov {cov1.shape} vs {cov2.shape}")
    diff = mu1 - mu2
    # Heusel et al. 2017, eq. 6, with the symmetric form of the cross term.
    d2 = float(diff @ diff) + float(np.trace(cov1)) + float(np.trace(cov2)) - 2.0 * trace_sqrt_product(cov1, cov2)
    # d2 >= 0 exactly; round-off can make it a hair negative. Anything beyond round-off is a bug.
    scale = float(np.trace(cov1) + np.trace(cov2) + diff @ diff)
    assert d2 > -1e-8 * max(scale, 1.0), f"Frechet distance numerically negative: {d2} (scale {scale})"
    return max(d2, 0.0)


def frechet_distance(stats1: FeatureStats, stats2: FeatureStats) -> float:
    """Frechet distance between two ``FeatureStats`` (FID if both are Inception pool3 stats)."""
    if stats1.dim != stats2.dim:
        raise ValueError(f"feature dimensions differ: {stats1.dim} vs {stats2.dim}")
    known = {"unknown", ""}
    if stats1.featurizer_name not in known and stats2.featurizer_name not in known:
        if stats1.featurizer_name != stats2.featurizer_name:
            raise ValueError(
                f"statistics come from different featurizers: {stats1.featurizer_name!r} vs {stats2.featurizer_name!r}"
            )
    return frechet_distance_gaussians(stats1.mean, stats1.cov, stats2.mean, stats2.cov)
