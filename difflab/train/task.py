"""The contract between the training engine and its tasks (and the callbacks that observe a run).

A task (:class:`Task`) builds its networks and optimisers (:class:`Networks`), draws a batch and
yields its :class:`Update` s, one per optimiser, in order; everything else (resume, checkpoints,
LR schedule, EMA, data parallelism, mixed precision, logging) is the engine's
(``difflab.train.engine``). :class:`Callback` s see a run through :class:`RunState`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..config import ConfigError, RunSpec
from . import distributed as D
from .data import IndexStream
from .ema import EMA
from .metrics import MetricsLogger


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss kept being NaN or infinite."""


@dataclass
class Update:
    """One optimiser update of a step: minimise ``loss`` (a scalar) with optimiser ``optimizer``.
    ``logs``: per-step values averaged over the log window; ``clip``: clip the gradient norm."""

    optimizer: str
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    clip: bool = True


@dataclass
class Networks:
    """What a task trains: ``model`` (its EMA is kept; written as model.safetensors), the optimisers by
    the key of their state in ``training_state.pt`` (the first one's update is the step's loss), and
    more modules written into every checkpoint (file name -> module)."""

    model: torch.nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    extra: dict[str, torch.nn.Module] = field(default_factory=dict)


def ignore(*args: Any) -> None:
    """A sink that drops what it is given (an :class:`Env` made outside the engine)."""


@dataclass
class Env:
    """Where a task runs: the device, this process's place and batch shard, the resumed checkpoint,
    and where it reports: ``log`` (a line of text), ``log_metrics`` (a metrics row, as
    :meth:`RunState.log_metrics`) and ``log_figure`` (a PNG it wrote, as :meth:`RunState.log_figure`)."""

    device: torch.device
    info: D.DistInfo
    shard: slice
    checkpoint: Path | None
    log: Callable[[str], None]
    log_metrics: Callable[[dict[str, Any]], None] = ignore
    log_figure: Callable[[str, Path], None] = ignore


@dataclass
class TrainResult:
    run_dir: Path
    step: int                      # optimiser steps completed
    interrupted: bool              # stopped early by SIGINT / SIGTERM
    checkpoint: Path | None        # the last checkpoint written
    samples: Path | None = None    # final sample grid (rank 0)
    loss_plot: Path | None = None
    metrics: Path | None = None
    last_loss: float | None = None
    skipped_steps: int = 0
    tensorboard: Path | None = None  # the TensorBoard event files' folder, when they were written


def resumable(ckpt: Path, saved: RunSpec, given: RunSpec, fixed: tuple[str, ...], may_change: str) -> Path:
    """``ckpt`` when the ``fixed`` sections of its saved config equal those of the ``given`` one (a
    run resumes with its network and chain); a ConfigError naming the sections that differ otherwise."""
    differ = [name for name in fixed if getattr(saved, name) != getattr(given, name)]
    if differ:
        raise ConfigError(f"cannot resume {ckpt}: its {'/'.join(differ)} config differs from the one given "
                          f"(only {may_change} settings may change on resume)")
    return ckpt


class Task:
    """A training task: the engine calls these in order (see the module docstring). Subclasses set
    ``config`` (a RunSpec whose ``train`` section is a :class:`~difflab.config.TrainSettings`),
    ``config_name`` (the file written beside every checkpoint) and ``num_examples`` (in ``setup``)."""

    config: RunSpec
    config_name: str
    desc = "train"
    sample_tag = "samples"       # the name of what ``sample`` draws (TensorBoard's image tag)
    result_class: type[TrainResult] = TrainResult
    num_examples: int = 0

    def check_resume(self, path: Path) -> Path:
        """The checkpoint folder to resume from ``path`` (a run or checkpoint folder); raise unless it is
        one of this task's whose fixed sections (network, chain) match the config."""
        raise NotImplementedError

    def setup(self, env: Env) -> None:
        """Load the data (and anything the networks depend on); set ``num_examples``."""
        raise NotImplementedError

    def build(self, env: Env) -> Networks:
        raise NotImplementedError

    def describe(self, nparams: int, step: int) -> str:
        return f"training {nparams / 1e6:.2f}M parameters: steps {step} -> {self.config.train.steps}"

    def draw(self, stream: IndexStream, gen: torch.Generator, env: Env) -> Any:
        """The global batch, drawn from ``gen`` in a fixed order, then this process's ``env.shard`` of it."""
        raise NotImplementedError

    def step(self, batch: Any, step: int) -> Iterator[Update]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The task's own training state (top-level entries of training_state.pt); collective."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def checkpoint_files(self) -> dict[str, Callable[[Path], Any]]:
        """More files of every checkpoint (name -> writer)."""
        return {}

    def postfix(self, means: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{means['loss']:.4f}"}

    def sample(self, model: torch.nn.Module, path: Path) -> Path | None:
        """A figure of what ``model`` (the EMA when there is one) does, written to ``path`` every
        ``train.sample_every`` steps (rank 0): a sample grid, reconstructions, held-out accuracy (values
        may go to ``env.log_metrics``); None when the task draws none. The engine reports it as a
        figure named ``sample_tag``."""
        return None

    def finish(self, model: torch.nn.Module, result: TrainResult) -> None:
        """The final outputs of a finished run (rank 0): samples, held-out evaluation ... (figures
        reported through ``env.log_figure``)."""


class Callback:
    """Observes a run (see the module docstring); every method is optional."""

    def on_start(self, run: "RunState") -> None: ...
    def on_log(self, run: "RunState", row: dict[str, Any]) -> None: ...
    def on_sample(self, run: "RunState", path: Path) -> None: ...
    def on_figure(self, run: "RunState", tag: str, path: Path) -> None: ...
    def on_checkpoint(self, run: "RunState", path: Path | None) -> None: ...
    def on_step_end(self, run: "RunState") -> None: ...
    def on_end(self, run: "RunState", result: TrainResult) -> None: ...


@dataclass
class RunState:
    """A run as callbacks see it."""

    task: Task
    run_dir: Path
    env: Env
    nets: Networks
    ema: EMA | None
    metrics: MetricsLogger | None
    step: int = 0
    train_seconds: float = 0.0
    skipped_steps: int = 0
    callbacks: list[Callback] = field(default_factory=list)
    last_loss: float | None = None    # the loss of the last step taken (this process's, before averaging)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The network to sample or evaluate: the EMA when there is one."""
        return self.ema.model if self.ema is not None else self.nets.model

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Add a row (with ``step``) to the run's metrics (written on rank 0), then hand it to every
        callback's ``on_log`` (so TensorBoard gets it as scalars). Keys ``group/name`` choose the
        TensorBoard section; bare keys of an evaluation row are shown under ``eval/``."""
        row = {"step": self.step, **row}
        if self.metrics is not None:
            self.metrics.log(row)
        for cb in self.callbacks:
            cb.on_log(self, row)

    def log_figure(self, tag: str, path: Path) -> None:
        """Report a PNG written for this run (a sample grid, a plot) at the current step: every
        callback's ``on_figure`` gets it (TensorBoard shows it as image ``tag``)."""
        for cb in self.callbacks:
            cb.on_figure(self, tag, Path(path))


@dataclass
class Outcome:
    """One step's updates as the engine applied them: ``applied`` once the first update was taken;
    ``partial`` when a later one was skipped; the first update's loss and gradient norm; the
    non-finite values met; the values the task logged."""

    applied: bool = False
    partial: bool = False
    loss: float = math.nan
    norm: float = math.nan
    bad_loss: float = math.nan
    bad_norm: float = math.nan
    logs: dict[str, float] = field(default_factory=dict)


__all__ = ["Callback", "Env", "Networks", "NonFiniteLossError", "Outcome", "RunState", "Task", "TrainResult",
           "Update"]
