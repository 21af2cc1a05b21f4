"""Multi-process data-parallel set-up (``torchrun --nproc_per_node=N -m difflab train ...``).

Every process draws the same *global* batch (same data generator and seed) and keeps the
slice ``[rank * b, (rank + 1) * b)`` with ``b = batch_size / world_size``; DDP averages the
gradients, so N processes compute the same update as one process on the whole batch (up to
floating-point summation order). Rank 0 alone writes checkpoints, logs and images.
Backend: gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> tuple[DistInfo, bool]:
    """Join the process group torchrun describes (or the one already initialised).

    Returns ``(info, created)``; ``created`` tells the caller to destroy the group at the end.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                        dist.get_world_size()), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    # torch.distributed.nn.functional binds ``group=group.WORLD`` as default arguments when it is first
    # imported, and the first optimiser imports it (through torch._dynamo). Imported after the group
    # exists, it holds the group for good: destroy_process_group then cannot free it, its worker threads
    # outlive the interpreter, and a process can abort at exit ("terminate called without an active
    # exception") while a worker drops its last collective. Imported first, it binds nothing.
    import torch.distributed.nn  # noqa: F401
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size()), True


def cleanup(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def any_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Logical OR of ``flag`` over all processes."""
    return max_over_ranks([flag], info, device)[0] > 0


def max_over_ranks(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise maximum of ``values`` over all processes, in one collective."""
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]


def mean_over_ranks(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def mean_over_ranks_many(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise mean of ``values`` over all processes, in one collective."""
    if not info.enabled or not values:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) / info.world_size for v in t.tolist()]


def gather_tensors(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """``t`` from every rank (same shape everywhere), in rank order; ``[t]`` without DDP."""
    if not info.enabled:
        return [t]
    out = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return out


def check_replicas_in_sync(model: torch.nn.Module, info: DistInfo, device: torch.device) -> None:
    """Raise if the replicas' parameters differ (DDP must keep them bit-identical)."""
    if not info.enabled:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).to(torch.float64) for p in model.parameters()])
        sig = torch.stack([flat.sum(), flat.abs().sum(), (flat * torch.arange(flat.numel(), device=flat.device,
                                                                                dtype=torch.float64) % 7).sum()])
    sigs = gather_tensors(sig.to(device), info)
    if any(not torch.equal(sigs[0], s) for s in sigs[1:]):
        raise RuntimeError("data-parallel replicas have diverged (their parameters differ); "
                           "this is a bug: please report it with the run's config.yaml")


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of ``params`` over all processes, in one collective (what DDP's reducer
    does, for any module and any number of optimisers). Parameters without a gradient (unused by this
    step's loss, on every rank alike) keep none, so the optimiser skips them as it would in one process."""
    params = [p for p in params if p.grad is not None]
    if not info.enabled or not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n
