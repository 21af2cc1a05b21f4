"""Precision, recall (Kynkaanniemi et al. 2019) and density, coverage (Naeem et al. 2020).

Notation: real features ``X = {x_i}`` (N of them), generated ``Y = {y_j}`` (M of them),
``NND_k(x)`` the distance from ``x`` to its k-th nearest neighbour in its own set (itself
excluded). The k-NN manifold of a set is the union of balls ``B(x, NND_k(x))``.

    precision = (1/M) sum_j 1[y_j in manifold(X)]                       (K&al. eq. 1-2)
    recall    = (1/N) sum_i 1[x_i in manifold(Y)]
    density   = (1/(kM)) sum_j sum_i 1[y_j in B(x_i, NND_k(x_i))]       (N&al. eq. 3)
    coverage  = (1/N) sum_i 1[exists j: y_j in B(x_i, NND_k(x_i))]      (N&al. eq. 4)

A point on a ball's boundary counts as inside (``<=``), as in the reference code.
Pairwise squared distances are computed block by block (``batch_size`` rows at a time, as
``|a|^2 + |b|^2 - 2 a.b`` in ``dtype``), so 10k x 10k sets never hold the full matrix; three
passes in all (real-real, fake-fake, real-fake) give all four numbers.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x, dtype: torch.dtype, device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=dtype)


def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) + b_sq[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0)


def knn_radii(x: torch.Tensor, k: int, batch_size: int = 1024) -> torch.Tensor:
    """Squared distance of each row of ``x`` to its k-th nearest other row: ``NND_k(x)^2``."""
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for a set of {n} points, got {k}")
    x_sq = (x * x).sum(1)
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    for i in range(0, n, batch_size):
        d = _sq_dists(x[i : i + batch_size], x, x_sq)
        rows = torch.arange(d.shape[0], device=x.device)
        d[rows, rows + i] = float("inf")  # exclude the point itself
        out[i : i + batch_size] = d.topk(k, dim=1, largest=False).values[:, k - 1]
    return out


def _cross_counts(
    x: torch.Tensor, radii_x: torch.Tensor, y: torch.Tensor, radii_y: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One blocked pass over ``d(x_i, y_j)``. Returns, for each y_j, how many real balls hold it;
    for each x_i, whether some fake ball holds it; for each x_i, whether its nearest y lies in its ball."""
    y_sq = (y * y).sum(1)
    real_balls_per_fake = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
    recalled = torch.empty(x.shape[0], dtype=torch.bool, device=x.device)
    covered = torch.empty(x.shape[0], dtype=torch.bool, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        d = _sq_dists(x[i : i + batch_size], y, y_sq)  # [b, M]
        r = radii_x[i : i + batch_size, None]
        real_balls_per_fake += (d <= r).sum(0)
        recalled[i : i + batch_size] = (d <= radii_y[None, :]).any(1)
        covered[i : i + batch_size] = d.min(1).values <= r[:, 0]
    return real_balls_per_fake, recalled, covered


def precision_recall(
    real_features,
    fake_features,
    k: int = 3,
    *,
    density_coverage: bool = False,
    batch_size: int = 1024,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Improved precision and recall of ``fake_features`` against ``real_features`` ([N, D], [M, D]).

    Returns ``{"precision", "recall"}`` and, with ``density_coverage=True``, also
    ``{"density", "coverage"}``. Use ``dtype=torch.float64`` for exact ties on small sets.
    """
    x = _as_tensor(real_features, dtype, device)
    y = _as_tensor(fake_features, dtype, device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: real {x.shape[1]} vs fake {y.shape[1]}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("features contain NaN or inf")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    radii_x = knn_radii(x, k, batch_size)
    radii_y = knn_radii(y, k, batch_size)
    in_real, recalled, covered = _cross_counts(x, radii_x, y, radii_y, batch_size)
    out = {
        "precision": float((in_real > 0).double().mean()),
        "recall": float(recalled.double().mean()),
    }
    if density_coverage:
        out["density"] = float(in_real.double().sum() / (k * y.shape[0]))
        out["coverage"] = float(covered.double().mean())
    return out
