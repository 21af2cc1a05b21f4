"""What a checkpoint holds besides the weights, and putting it back: the optimisers, the data
position, the random generators of every process, the counters. Resuming from it repeats an
uninterrupted run bit for bit (same number of processes).

``training_state.pt`` (tensors and plain data only; read with ``weights_only=True``)::

    format, step, skipped_steps, train_seconds   counters (train_seconds: time of the optimiser steps)
    ema_updates                                  when the run keeps an EMA
    optimizer, disc_optimizer, ...               one state dict per optimiser, by the task's names
    data_generator, data_stream                  the data position
    world_size, rng_cpu [, rng_cuda]             torch's global generators (dropout), one row per process
    grad_scaler                                  fp16 runs
    ...                                          the task's own state (e.g. timestep_sampler)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..runs import EMA_NAME, MODEL_NAME, CheckpointError, load_state_into, load_training_state, load_weights
from . import distributed as D
from .data import IndexStream
from .ema import EMA

STATE_FORMAT = 1


def _gathered_rng(state: torch.Tensor, info: D.DistInfo, device: torch.device) -> torch.Tensor:
    return torch.stack([t.cpu() for t in D.gather_tensors(state.to(device), info)])


def training_state(*, step: int, skipped: int, train_seconds: float, ema: EMA | None,
                   optimizers: dict[str, torch.optim.Optimizer], scaler, gen: torch.Generator, stream: IndexStream,
                   info: D.DistInfo, device: torch.device, task_state: dict[str, Any]) -> dict[str, Any]:
    """Everything besides the weights needed to continue bit for bit. Collective: every rank calls it."""
    state: dict[str, Any] = {"format": STATE_FORMAT, "step": step, "skipped_steps": skipped,
                             "train_seconds": float(train_seconds)}
    if ema is not None:
        state["ema_updates"] = ema.num_updates
    state.update({key: opt.state_dict() for key, opt in optimizers.items()})
    state.update({"data_generator": gen.get_state(), "data_stream": stream.state_dict(),
                  "world_size": info.world_size, "rng_cpu": _gathered_rng(torch.get_rng_state(), info, device)})
    if device.type == "cuda":
        state["rng_cuda"] = _gathered_rng(torch.cuda.get_rng_state(), info, device)
    if scaler is not None:
        state["grad_scaler"] = scaler.state_dict()
    state.update(task_state)
    return state


def restore(ckpt: Path, *, model: torch.nn.Module, extra: dict[str, torch.nn.Module], ema: EMA | None,
            optimizers: dict[str, torch.optim.Optimizer], scaler, gen: torch.Generator, stream: IndexStream,
            info: D.DistInfo, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    """Load checkpoint ``ckpt`` into the run's objects; returns the training state (for the counters
    and the task's own entries). Also reads the states of runs written before the training engine:
    a classifier's single ``rng_cpu`` row, an autoencoder's missing generator states."""
    state = load_training_state(ckpt)
    load_state_into(model, load_weights(ckpt, MODEL_NAME), ckpt, MODEL_NAME)
    for name, module in extra.items():
        load_state_into(module, load_weights(ckpt, name), ckpt, name)
    try:
        if ema is not None:
            if (ckpt / EMA_NAME).is_file() and "ema_updates" in state:
                ema.load_state_dict(load_weights(ckpt, EMA_NAME), state["ema_updates"])
            else:
                ema.load_state_dict(model.state_dict(), 0)
                log(f"note: {ckpt} has no EMA weights; the moving average starts from its weights")
        for key, opt in optimizers.items():
            opt.load_state_dict(state[key])
        gen.set_state(state["data_generator"])
        stream.load_state_dict(state["data_stream"])
        rng = state.get("rng_cpu")
        if rng is not None and rng.dim() == 1:          # one process, before the per-rank format
            rng = rng.unsqueeze(0)
        world = state.get("world_size", 1 if rng is not None else None)
        if rng is not None and world == info.world_size:
            torch.set_rng_state(rng[info.rank].clone())
            if device.type == "cuda" and "rng_cuda" in state:
                torch.cuda.set_rng_state(state["rng_cuda"][info.rank].clone())
        elif rng is not None:
            log(f"note: resuming with {info.world_size} processes instead of {world}; "
                "dropout masks will differ from an uninterrupted run")
        if scaler is not None and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
    except (KeyError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"checkpoint {ckpt} has an unusable training state ({type(e).__name__}: {e})") from None
    log(f"resuming from {ckpt} (step {state['step']})")
    return state
