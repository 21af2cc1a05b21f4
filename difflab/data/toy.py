"""2-D toy distributions for fast experiments, each roughly unit scale.

``sample_toy(name, n, generator)`` returns ``float32 [n, 2]``. ``generator`` is a
``torch.Generator``, a list of them (one per sample: sample ``i`` then depends only on
generator ``i``, not on ``n``), or ``None``.

======================  ===================================================================
``swiss_roll``          t ~ U(1.5 pi, 4.5 pi), (t cos t, t sin t) + N(0, 0.25^2) noise, / 7
``two_moons``           sklearn-style moons, noise 0.1, centred at (0.5, 0.25), x 1.2
``eight_gaussians``     8 equal-weight N(mu_k, 0.1^2 I), mu_k on a circle of radius sqrt 2
``checkerboard``        uniform on the 8 black squares of a 4 x 4 board over [-2, 2]^2
``gaussian_mixture``    3 equal-weight anisotropic Gaussians (see ``GAUSSIAN_MIXTURE``)
======================  ===================================================================

The two mixtures expose their exact parameters through :func:`mixture_params`, so tests
can build the closed-form optimal denoiser.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from difflab import rng

SWISS_ROLL_NOISE = 0.25
SWISS_ROLL_SCALE = 7.0
MOONS_NOISE = 0.1
MOONS_CENTER = (0.5, 0.25)
MOONS_SCALE = 1.2
EIGHT_GAUSSIANS_RADIUS = math.sqrt(2.0)
EIGHT_GAUSSIANS_STD = 0.1
CHECKERBOARD_HALF_WIDTH = 2.0
GAUSSIAN_MIXTURE = {
    "means": ((-1.2, -0.6), (1.2, -0.6), (0.0, 1.2)),
    "covs": (((0.20, 0.10), (0.10, 0.15)),
             ((0.20, -0.10), (-0.10, 0.15)),
             ((0.30, 0.00), (0.00, 0.05))),
}


def _uniform(n: int, k: int, generator: rng.Generator) -> torch.Tensor:
    """``[n, k]`` uniform on [0, 1); row i from generator i when given a list."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand((n, k), generator=generator)
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} generators for {n} samples")
    return torch.stack([torch.rand((k,), generator=g) for g in gens])


class _Draws:
    """Per-sample random numbers, always drawn in one fixed order per sample.

    All variates of a sample come from one block of ``k`` uniforms (normals via
    Box-Muller), so with per-sample generators each sample is independent of ``n``.
    """

    def __init__(self, n: int, k: int, generator: rng.Generator):
        self.u = _uniform(n, k, generator).to(torch.float64)
        self.i = 0

    def uniform(self) -> torch.Tensor:
        out = self.u[:, self.i]
        self.i += 1
        return out

    def normal2(self) -> torch.Tensor:
        """``[n, 2]`` standard normals (Box-Muller)."""
        u1, u2 = 1.0 - self.uniform(), self.uniform()  # u1 in (0, 1]
        r = torch.sqrt(-2.0 * torch.log(u1))
        return torch.stack([r * torch.cos(2 * math.pi * u2), r * torch.sin(2 * math.pi * u2)], dim=1)

    def index(self, k: int) -> torch.Tensor:
        return (self.uniform() * k).long().clamp_(max=k - 1)


def _swiss_roll(d: _Draws) -> torch.Tensor:
    t = 1.5 * math.pi * (1 + 2 * d.uniform())
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return (x + SWISS_ROLL_NOISE * d.normal2()) / SWISS_ROLL_SCALE


def _two_moons(d: _Draws) -> torch.Tensor:
    upper = d.uniform() < 0.5
    theta = math.pi * d.uniform()
    outer = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    inner = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    x = torch.where(upper[:, None], outer, inner) + MOONS_NOISE * d.normal2()
    return (x - torch.tensor(MOONS_CENTER, dtype=x.dtype)) * MOONS_SCALE


def _checkerboard(d: _Draws) -> torch.Tensor:
    a = CHECKERBOARD_HALF_WIDTH
    x1 = d.uniform() * 2 * a - a  # U(-2, 2)
    cell = torch.floor(x1).long() % 2  # column parity
    row = d.index(int(a))  # 0 or 1: which of the two black squares in the column
    x2 = d.uniform() + 2 * row.to(x1.dtype) - a + cell.to(x1.dtype)
    return torch.stack([x1, x2], dim=1)


def mixture_params(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact ``(weights [K], means [K, 2], covs [K, 2, 2])`` (float64) of a mixture toy set."""
    if name == "eight_gaussians":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        means = EIGHT_GAUSSIANS_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        covs = (EIGHT_GAUSSIANS_STD ** 2) * torch.eye(2, dtype=torch.float64).expand(8, 2, 2).clone()
    elif name == "gaussian_mixture":
        means = torch.tensor(GAUSSIAN_MIXTURE["means"], dtype=torch.float64)
        covs = torch.tensor(GAUSSIAN_MIXTURE["covs"], dtype=torch.float64)
    else:
        raise ValueError(f"{name!r} is not a Gaussian-mixture toy set; allowed: eight_gaussians, gaussian_mixture")
    k = means.shape[0]
    return torch.full((k,), 1.0 / k, dtype=torch.float64), means, covs


def _mixture(name: str) -> Callable[[_Draws], torch.Tensor]:
    def sample(d: _Draws) -> torch.Tensor:
        _, means, covs = mixture_params(name)
        k = d.index(means.shape[0])
        chol = torch.linalg.cholesky(covs)
        z = d.normal2()
        return means[k] + torch.einsum("nij,nj->ni", chol[k], z)
    return sample


# name -> (sampler, number of uniforms each sample consumes)
_TOYS: dict[str, tuple[Callable[[_Draws], torch.Tensor], int]] = {
    "swiss_roll": (_swiss_roll, 3),
    "two_moons": (_two_moons, 4),
    "eight_gaussians": (_mixture("eight_gaussians"), 3),
    "checkerboard": (_checkerboard, 3),
    "gaussian_mixture": (_mixture("gaussian_mixture"), 3),
}
TOY_DATASETS = tuple(_TOYS)


def sample_toy(name: str, n: int, generator: rng.Generator = None) -> torch.Tensor:
    """``n`` samples ``float32 [n, 2]`` from the toy distribution ``name``."""
    if name not in _TOYS:
        raise ValueError(f"unknown toy dataset {name!r}; allowed: {', '.join(TOY_DATASETS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    sampler, k = _TOYS[name]
    d = _Draws(n, k, generator)
    x = sampler(d)
    assert d.i == k and x.shape == (n, 2), (name, d.i, x.shape)
    return x.to(torch.float32)
