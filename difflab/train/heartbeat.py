"""A log line at least once a minute when there is no progress bar (``--no-progress``).

The metrics rows come every ``train.log_every`` steps, which can be a long time on a slow machine; a
run started with ``progress=False`` also writes one line of text whenever ``period_s`` seconds (wall
clock) have passed since the last one: the step, the mean loss of the steps since that line, the
speed and the training time used. The engine adds a :class:`Heartbeat` itself when the progress bar
is off; pass one in ``callbacks`` to choose its period or clock (the clock is injectable for tests).
"""

from __future__ import annotations

import time
from typing import Callable

from .task import Callback, RunState

HEARTBEAT_SECONDS = 60.0


class Heartbeat(Callback):
    """Logs a line through the run's log (rank 0) every ``period_s`` seconds of ``clock``."""

    def __init__(self, period_s: float = HEARTBEAT_SECONDS, clock: Callable[[], float] = time.monotonic):
        if not period_s > 0:
            raise ValueError(f"the heartbeat period must be > 0 seconds, got {period_s}")
        self.period_s, self.clock = float(period_s), clock
        self.lines: list[str] = []        # what was logged (for the caller; the log gets each line too)

    def on_start(self, run: RunState) -> None:
        self.last_t, self.last_step, self.loss_sum, self.loss_n = self.clock(), run.step, 0.0, 0
        self.last_train_s = run.train_seconds

    def on_step_end(self, run: RunState) -> None:
        if run.last_loss is not None:
            self.loss_sum += run.last_loss
            self.loss_n += 1
        now = self.clock()
        if now - self.last_t < self.period_s:
            return
        tc = run.task.config.train
        steps = run.step - self.last_step
        loss = f"loss {self.loss_sum / self.loss_n:.4g} (mean of {self.loss_n} steps)" if self.loss_n else "no loss yet"
        budget = f" of {tc.max_minutes:g}" if tc.max_minutes else ""
        speed = steps * tc.batch_size / max(run.train_seconds - self.last_train_s, 1e-9)   # of training time
        line = (f"step {run.step}/{tc.steps} | {loss} | {speed:.3g} images/s | "
                f"{run.train_seconds / 60:.1f}{budget} min of training")
        self.lines.append(line)
        run.env.log(line)
        self.last_t, self.last_step, self.loss_sum, self.loss_n = now, run.step, 0.0, 0
        self.last_train_s = run.train_seconds
