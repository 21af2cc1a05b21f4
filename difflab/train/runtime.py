"""Small pieces every training run uses: the device, CPU threads, autocast, the LR schedule, signals."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from contextlib import nullcontext
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; otherwise check the device exists."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return dev


def set_threads(num_threads: int, device: torch.device) -> None:
    """``train.num_threads`` CPU threads; under torchrun on a CPU, the cores shared among the local processes."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    elif device.type == "cpu" and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        local = int(os.environ["LOCAL_WORLD_SIZE"])
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def autocast(device: torch.device, mode: str):
    """The forward passes' autocast context for ``train.mixed_precision`` (``no``: none)."""
    if mode == "no":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def check_mixed_precision(device: torch.device, mode: str, log: Callable[[str], None]) -> None:
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA device (it trains with a GradScaler); "
                          "use 'bf16' or 'no'")
    if mode == "bf16" and device.type == "cpu":
        log("warning: bf16 autocast on this CPU is usually much slower than fp32 (no native bf16 matrix units); "
            "set train.mixed_precision=no unless you have measured otherwise")


def learning_rate(step: int, lr: float, warmup_steps: int, decay: str = "constant", total_steps: int = 0,
                  time_frac: float | None = None) -> float:
    """The learning rate of the update taking ``step`` -> ``step + 1``.

    Linear warm-up ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` updates, then
    ``constant``, or decayed to 0 at ``total_steps``: ``cosine`` (SGDR, Loshchilov & Hutter 2017,
    eq. 5 with one cycle) or ``linear``. With a decay, the schedule depends on ``total_steps``:
    resuming with another ``train.steps`` bends the rest of the curve. ``time_frac`` (the used
    fraction of a time budget) makes the decay reach 0 at the budget when that comes first:
    the decay follows whichever of the two fractions is further along.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant":
        return lr
    span = max(1, total_steps - warmup_steps)
    frac = min(1.0, (step - warmup_steps) / span)
    if time_frac is not None:
        frac = min(1.0, max(frac, time_frac))
    if decay == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * frac))   # SGDR eq. 5, one cycle
    if decay == "linear":
        return lr * (1.0 - frac)
    raise ValueError(f"unknown lr decay {decay!r}; allowed: constant, cosine, linear")


class StopRequest:
    """Set by SIGINT / SIGTERM; the loop stops after the current step. A second Ctrl-C aborts at once."""

    def __init__(self, log: Callable[[str], None]):
        self.signum: int | None = None
        self.log = log
        self.previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt   # second Ctrl-C: stop now
        self.signum = signum
        self.log(f"\nreceived {signal.Signals(signum).name}: finishing this step and writing a checkpoint "
                 "(Ctrl-C again to abort without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


def stderr_log(msg: str) -> None:
    """The default log of training: a line on stderr that keeps the progress bar intact."""
    tqdm.write(msg, file=sys.stderr)


def quiet_log(msg: str) -> None:
    """The log of every process but rank 0."""
