"""A request run in a worker thread: live frames of x_t and predicted x_0, cancellation, and the files it writes.

The worker calls :func:`difflab.generate.draw` (the code of ``difflab sample``) with a callback that records
the newest step and raises :class:`Cancelled` once :meth:`Job.cancel` was called; the page polls
:meth:`Job.wait` and shows the newest frame. A finished job has written, like ``difflab sample --gif``,
``<sampler>-<steps>steps-seed<seed>.png`` (the grid), the same name ``.gif`` (the trajectory) and, for
super-resolution, ``-input.png`` / ``-target.png``.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.transforms import low_res_condition
from ..eval import psnr
from ..generate import draw
from ..runs import load_run
from ..sampling import build_guided_model
from ..viz import make_grid, save_grid, save_trajectory_gif
from .request import InputError, Request
from .runs import RunEntry

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"
MAX_TRAJECTORY_BYTES = 1 << 30     # above this the trajectory is not kept and no GIF is written


class Cancelled(Exception):
    """Raised inside the sampler (from its callback) when the job was cancelled."""


class RunCache:
    """Loaded runs (network on the device), the ``keep`` most recently used."""

    def __init__(self, device, keep: int = 2):
        self.device, self.keep = device, keep
        self._runs: dict[Path, object] = {}
        self._lock = threading.Lock()

    def get(self, entry: RunEntry):
        with self._lock:
            run = self._runs.pop(entry.checkpoint, None) or load_run(entry.checkpoint, device=self.device)
            self._runs[entry.checkpoint] = run          # most recent last
            while len(self._runs) > self.keep:
                self._runs.pop(next(iter(self._runs)))
            return run


@dataclass
class Frame:
    """The newest step: ``step`` of ``steps`` in batch ``batch`` of ``batches`` (1-based)."""

    step: int
    steps: int
    batch: int
    batches: int
    x_t: torch.Tensor
    pred_x0: torch.Tensor

    @property
    def fraction(self) -> float:
        return min(1.0, ((self.batch - 1) * self.steps + self.step) / (self.batches * self.steps))


@dataclass
class Outcome:
    """What a finished job wrote and measured."""

    grid: Path
    gif: Path | None
    inputs: Path | None = None
    targets: Path | None = None
    images: int = 0
    nfe: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Job:
    """One request on a loaded run, writing into ``folder``. Building it checks the request against the run
    (raises InputError); :meth:`start` runs it in a daemon thread."""

    def __init__(self, run, request: Request, folder: Path, device):
        self.run, self.request, self.device = run, request, device
        self.conditions = request.conditions(run)
        self.guided = None
        if request.guidance is not None:
            try:
                self.guided = build_guided_model(run, request.sample, request.guidance)
            except ValueError as e:
                raise InputError(f"Guidance weight: {e}") from None
        sc, m = request.sample, run.config.model
        self.n = self.conditions.count(sc.n)
        self.batches = -(-self.n // sc.batch_size)
        frame_bytes = 2 * min(self.n, sc.batch_size) * self.batches * m.in_channels * m.image_size ** 2 * 4
        self.keep_trajectory = frame_bytes * (sc.steps + 1) <= MAX_TRAJECTORY_BYTES
        self.folder = folder
        self.state, self.frame, self.outcome, self.error = RUNNING, None, None, None
        self.version = 0                      # bumped at every new frame and at the end
        self._cancel = threading.Event()
        self._changed = threading.Condition()
        self._calls = 0
        self._thread = threading.Thread(target=self._work, name="difflab-serve-job", daemon=True)

    def start(self) -> "Job":
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    def wait(self, seen: int, timeout: float) -> int:
        """Block until :attr:`version` differs from ``seen`` or ``timeout`` seconds passed; the version."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen, timeout=timeout)
            return self.version

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # ------------------------------------------------------------------ display
    def frame_images(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """The frame's x_t and predicted x_0 as uint8 grids [H, W] or [H, W, 3] (latents decoded)."""
        cond = self.run.conditioning
        with torch.no_grad():
            x_t, x_0 = (frame.x_t, frame.pred_x0) if cond is None else cond.decode_frames([frame.x_t, frame.pred_x0])
        grids = [make_grid(x, self.conditions.nrow, upscale=None) for x in (x_t, x_0)]
        return tuple(g[:, :, 0] if g.shape[2] == 1 else g for g in grids)

    # ------------------------------------------------------------------ worker
    def _notify(self) -> None:
        with self._changed:
            self.version += 1
            self._changed.notify_all()

    def _step(self, i: int, t: int, x_t: torch.Tensor, pred_x0: torch.Tensor) -> None:
        if self._cancel.is_set():
            raise Cancelled
        steps = self.request.sample.steps
        batch = min(self._calls // steps + 1, self.batches)
        self._calls += 1
        self.frame = Frame(min(i + 1, steps), steps, batch, self.batches,
                           x_t.detach().float().cpu().clone(), pred_x0.detach().float().cpu().clone())
        self._notify()

    def _work(self) -> None:
        try:
            drawn = draw(self.run, self.request.sample, self.conditions, guided=self.guided, device=self.device,
                         return_trajectory=self.keep_trajectory, callback=self._step)
            if self._cancel.is_set():
                raise Cancelled
            self.outcome = self._write(drawn)
            self.state = DONE
        except Cancelled:
            self.state = CANCELLED
        except (ValueError, RuntimeError, OSError) as e:
            self.error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.state = FAILED
        except Exception as e:    # anything else: one line on the page, the traceback on the server's console
            traceback.print_exc(file=sys.stderr)
            self.error = f"unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (see the console)"
            self.state = FAILED
        finally:
            self._notify()

    def _write(self, drawn) -> Outcome:
        sc = self.request.sample
        grid = self.folder / f"{sc.sampler}-{sc.steps}steps-seed{sc.seed}.png"
        save_grid(drawn.images, grid, nrow=drawn.nrow)
        outcome = Outcome(grid, None, images=len(drawn.images), nfe=drawn.output.nfe)
        cond_images = self.conditions.cond_images
        if cond_images is not None:
            low = low_res_condition(cond_images, self.run.config.cond.low_res_factor, cond_images.shape[-1])
            outcome.inputs = save_grid(low, grid.with_name(grid.stem + "-input.png"), nrow=drawn.nrow)
            if self.request.from_test is not None:
                outcome.targets = save_grid(cond_images, grid.with_name(grid.stem + "-target.png"), nrow=drawn.nrow)
                outcome.notes.append(f"PSNR to the targets: samples {float(psnr(cond_images, drawn.images).mean()):.2f}"
                                     f" dB, bilinear upsampling of the inputs "
                                     f"{float(psnr(cond_images, low).mean()):.2f} dB")
        if self.keep_trajectory:
            outcome.gif = save_trajectory_gif(*drawn.gif_frames(), grid.with_suffix(".gif"), nrow=drawn.nrow)
        else:
            outcome.notes.append("no GIF: the trajectory of this many images and steps would not fit in memory")
        prompts = self.run.conditioning.prompts if self.run.conditioning is not None else None
        if prompts is not None and self.request.prompts:
            unknown = prompts.unknown_words(list(self.request.prompts))
            if unknown:
                outcome.notes.append(f"words never seen in training are read as <unk>: {', '.join(unknown)}")
        outcome.seconds = time.perf_counter() - self.started
        return outcome


def job_folder(out_dir: Path, number: int, entry: RunEntry) -> Path:
    """``out_dir/<number>-<run name>``: one folder per request, so no request overwrites another's files."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(entry.name).name).strip("-.") or "run"
    return Path(out_dir) / f"{number:04d}-{name}"
