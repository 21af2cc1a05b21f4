"""What every sampler shares: its output, input checks, the step loop's bookkeeping.

Every sampler has the signature::

    sampler(model, diffusion, x_T, *, steps=None, spacing="linspace", generator=None,
            model_kwargs=None, clip_denoised=False, callback=None, progress=False,
            return_trajectory=False, **options) -> SampleOutput

``x_T`` is the starting noise (never modified); ``steps`` is the number of sampling
steps (None = the full chain); ``generator`` is a torch.Generator, a list of them (one
per sample: results then do not depend on the batch size) or None; ``callback(i, t,
x_t, pred_x0)`` is called after every step.

NFE (``SampleOutput.nfe``) counts network evaluations per sample the usual way: a model
function that evaluates the network k times per call says so with an attribute
``nfe_per_call = k`` (classifier-free guidance sets 2: the conditional and the unconditional
branch, even though both go through the network in one batch); a plain model counts 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm


@dataclass
class SampleOutput:
    """The final sample, the number of network evaluations, and optionally the trajectory.

    ``trajectory`` holds x_t before every step followed by the final sample, and
    ``pred_x0s`` the model's x_0 estimate at every step (both on the CPU).
    """

    sample: torch.Tensor
    nfe: int
    timesteps: list[int] = field(default_factory=list)
    trajectory: list[torch.Tensor] | None = None
    pred_x0s: list[torch.Tensor] | None = None


def evaluations_per_call(model) -> int:
    """Network evaluations per sample in one call of ``model`` (its ``nfe_per_call``, default 1)."""
    k = getattr(model, "nfe_per_call", 1)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"a model function's nfe_per_call must be a positive int, got {k!r}")
    return k


class CountingModel:
    """Wraps a model function and counts its network function evaluations (NFE) per sample:
    ``calls`` times the model's :func:`evaluations_per_call`."""

    def __init__(self, model):
        self.model = model
        self.per_call = evaluations_per_call(model)
        self.calls = 0

    @property
    def nfe(self) -> int:
        return self.calls * self.per_call

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def check_x_T(x_T) -> None:
    if not isinstance(x_T, torch.Tensor) or not torch.is_floating_point(x_T):
        raise ValueError("x_T must be a floating-point tensor of starting noise")


def check_eta(eta: float) -> None:
    if not (0.0 <= float(eta)):
        raise ValueError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")


class Recorder:
    """Collects the trajectory and drives the callback and progress bar."""

    def __init__(self, n_steps: int, *, return_trajectory: bool, callback, progress: bool, desc: str):
        self.keep = return_trajectory
        self.callback = callback
        self.trajectory: list[torch.Tensor] = []
        self.pred_x0s: list[torch.Tensor] = []
        self.bar = tqdm(total=n_steps, disable=not progress, desc=desc, leave=False)

    def step(self, i: int, t: int, x_t: torch.Tensor, pred_x0: torch.Tensor) -> None:
        if self.keep:
            self.trajectory.append(x_t.detach().cpu())
            self.pred_x0s.append(pred_x0.detach().cpu())
        if self.callback is not None:
            self.callback(i, t, x_t, pred_x0)
        self.bar.update(1)

    def finish(self, sample: torch.Tensor, nfe: int, timesteps: list[int]) -> SampleOutput:
        self.bar.close()
        if self.keep:
            self.trajectory.append(sample.detach().cpu())
            return SampleOutput(sample, nfe, timesteps, self.trajectory, self.pred_x0s)
        return SampleOutput(sample, nfe, timesteps)


def batch_t(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
