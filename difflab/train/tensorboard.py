"""TensorBoard for every run kind, as a :class:`~difflab.train.task.Callback` of the training engine.

The optional extra ``pip install 'difflab[tensorboard]'`` installs the ``tensorboard`` package; then
every run writes event files to ``RUN_DIR/tensorboard`` (``train.tensorboard=auto``, the default;
``true`` makes a missing package an error, ``false`` writes none). Open them with
``tensorboard --logdir RUN_DIR`` (or the parent folder of several runs, to compare them).

What TensorBoard shows is what the run folder holds, nothing else:

- scalars: every metrics row (``metrics.jsonl``), whoever logs it (the engine's training rows, a
  task's or a callback's evaluation rows, all through :meth:`RunState.log_metrics`). A key
  ``group/name`` is its own tag; a bare key is shown as ``train/<key>`` in a training row and as
  ``eval/<key>`` in an evaluation row (:func:`~difflab.train.metrics.is_training_row`);
- images: every figure a run reports through :meth:`RunState.log_figure` (or a task through
  ``env.log_figure``): the sample grids of ``train.sample_every`` and the final ones (diffusion:
  ``samples``; autoencoder: ``reconstructions``; classifier: ``heldout_accuracy``, the held-out accuracy
  per noise level) and the loss curve (``loss``), read back from the PNG files the run wrote.

On resume the event files keep their events up to the resumed step: the first event of the new
writer tells TensorBoard to drop the older files' events after that step, as ``metrics.jsonl`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import ConfigError
from .metrics import is_training_row
from .task import Callback, RunState, TrainResult

TENSORBOARD_DIR = "tensorboard"
INSTALL = "pip install 'difflab[tensorboard]'"


def summary_writer_class():
    """torch's ``SummaryWriter``, or None when the ``tensorboard`` package is not installed."""
    try:
        import tensorboard  # noqa: F401  (the optional extra; torch's writer needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def tensorboard_callback(setting: bool | str) -> "TensorBoardLogger | None":
    """The callback for ``train.tensorboard``: ``auto`` = one when the package is installed, ``true`` =
    one (a ConfigError with the install command when the package is missing), ``false`` = none."""
    if setting is False:
        return None
    writer_class = summary_writer_class()
    if writer_class is None:
        if setting is True:
            raise ConfigError(f"TensorBoard logging was asked for (--tensorboard / train.tensorboard=true) but the "
                              f"tensorboard package is not installed: {INSTALL}")
        return None
    return TensorBoardLogger(writer_class)


def scalar_tag(key: str, row: dict[str, Any]) -> str:
    """The TensorBoard tag of a key of a metrics row: ``group/name`` as it is; a bare key under ``train/`` in
    a training row (``loss`` -> ``train/loss``), under ``eval/`` in an evaluation row (``fd`` -> ``eval/fd``)."""
    if "/" in key:
        return key
    return f"{'train' if is_training_row(row) else 'eval'}/{key}"


def read_png(path: Path) -> np.ndarray:
    """An image file as an H x W x 3 uint8 array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class TensorBoardLogger(Callback):
    """Writes a run's metrics rows as scalars and its figures as images (rank 0; see the module docstring)."""

    def __init__(self, writer_class):
        self.writer_class = writer_class
        self.writer = None

    def on_start(self, run: RunState) -> None:
        if not run.env.info.is_main:
            return
        # purge_step: a reader drops the events of older files from this step on (those after the checkpoint)
        self.writer = self.writer_class(str(run.run_dir / TENSORBOARD_DIR), purge_step=run.step + 1 if run.step
                                        else None)

    def on_log(self, run: RunState, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(scalar_tag(key, row), value, step)
        self.writer.flush()       # a crash loses nothing that metrics.jsonl holds

    def on_figure(self, run: RunState, tag: str, path: Path) -> None:
        if self.writer is None:
            return
        try:
            image = read_png(path)
        except OSError as e:      # a figure that cannot be read back is reported, not fatal
            run.env.log(f"note: TensorBoard skipped figure {path} ({e})")
            return
        self.writer.add_image(tag, image, run.step, dataformats="HWC")
        self.writer.flush()

    def on_end(self, run: RunState, result: TrainResult) -> None:
        if self.writer is not None:
            result.tensorboard = run.run_dir / TENSORBOARD_DIR
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = ["INSTALL", "TENSORBOARD_DIR", "TensorBoardLogger", "read_png", "scalar_tag", "summary_writer_class",
           "tensorboard_callback"]
