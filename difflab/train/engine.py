"""The one training loop; every task (diffusion, noise-aware classifier, autoencoder) plugs into it.

A task (:class:`~difflab.train.task.Task`) builds its networks and optimisers, draws a batch and yields its
:class:`Update` s: ``(optimiser name, scalar loss, values to log)``, one per optimiser, in order
(EDM's loop calls ``loss_fn(net, images, labels)``; here a task may have two optimisers, as the
autoencoder and its discriminator do). The engine gives every task the same guarantees:

- resume from the latest checkpoint repeats an uninterrupted run bit for bit: one explicit data
  generator and the index stream are checkpointed with the optimisers and every process's RNG;
- checkpoints are written atomically (``difflab.runs``); SIGINT / SIGTERM finish the step, write
  one and return ``interrupted=True``; one process owns the run folder (``difflab.runs.RunLock``);
- linear LR warm-up, then constant / cosine / linear decay, ending at ``train.steps`` or at the
  ``train.max_minutes`` time budget, whichever comes first; gradient-norm clipping; EMA;
- a non-finite loss or gradient skips the update (counted; ``train.max_nonfinite_steps`` in a row stop
  the run with :class:`NonFiniteLossError`);
- data parallel under torchrun: every process draws the same global batch and keeps its shard, the
  gradients are averaged over processes before every update (``distributed.average_gradients``);
- autocast (``train.mixed_precision``; fp16 with a GradScaler), metrics.jsonl / .csv, TensorBoard
  (``train.tensorboard``: ``difflab.train.tensorboard``, itself a callback), a progress bar, sample grids
  every ``train.sample_every`` steps, and :class:`Callback` events; without the bar, a log line at least
  once a minute (``difflab.train.heartbeat``).

Callbacks (``train(..., callbacks=[...])``) observe a run without forking the loop: ``on_start``,
``on_log`` (every metrics row), ``on_sample``, ``on_figure`` (every figure reported), ``on_checkpoint``,
``on_step_end`` (after every optimiser step, on every process: where periodic evaluation goes) and
``on_end``. ``RunState`` gives them the step, the training time, the networks and the run's two sinks,
:meth:`RunState.log_metrics` (rows) and :meth:`RunState.log_figure` (PNG files).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..config import ConfigError, save_config
from ..runs import (EMA_NAME, MODEL_NAME, STATE_NAME, RunLock, list_checkpoints, read_latest, save_checkpoint_files,
                    weights_writer)
from . import distributed as D
from .data import IndexStream
from .ema import EMA
from .metrics import MetricsLogger, plot_metrics
from .runtime import (StopRequest, autocast, check_mixed_precision, learning_rate, quiet_log, resolve_device,
                      set_threads, stderr_log)
from .state import restore, training_state
from .task import Callback, Env, NonFiniteLossError, Outcome, RunState, Task, TrainResult
from .heartbeat import Heartbeat
from .tensorboard import tensorboard_callback


def train_task(task: Task, run_dir: str | os.PathLike, *, resume: bool | str | os.PathLike = False,
               progress: bool = True, log: Callable[[str], None] = stderr_log,
               callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train ``task`` into ``run_dir``; ``resume=True`` continues from its latest checkpoint (or from the
    checkpoint folder given). Joins the process group torchrun describes, if any."""
    tc = task.config.train
    tensorboard = tensorboard_callback(tc.tensorboard)   # asked for but not installed: fails here, first
    device = resolve_device(tc.device)
    info, created_group = D.init_distributed(device.type)
    threads = torch.get_num_threads()
    try:
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(device)
        # without a progress bar, a line at least once a minute (unless the caller brought its own Heartbeat)
        heartbeat = [] if progress or any(isinstance(cb, Heartbeat) for cb in callbacks) else [Heartbeat()]
        return _Loop(task, Path(run_dir), device, info, log if info.is_main else quiet_log, progress,
                     [*callbacks, *heartbeat, *([tensorboard] if tensorboard is not None else [])]).run(resume)
    finally:
        if tensorboard is not None:
            tensorboard.close()     # also when the run failed
        torch.set_num_threads(threads)
        D.cleanup(created_group)


class _Loop:
    def __init__(self, task: Task, run_dir: Path, device, info: D.DistInfo, log, progress: bool, callbacks):
        self.task, self.run_dir, self.device, self.info, self.log = task, run_dir, device, info, log
        self.progress, self.callbacks = progress, list(callbacks)
        self.tc = task.config.train

    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self.state, *args)

    def run(self, resume) -> TrainResult:
        tc, info = self.tc, self.info
        check_mixed_precision(self.device, tc.mixed_precision, self.log)
        set_threads(tc.num_threads, self.device)
        if tc.batch_size % info.world_size:
            raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by the number of processes "
                              f"({info.world_size})")
        # resuming reads the checkpoint first (readers need no lock), then the folder is locked before
        # anything is written: a second writer fails here, at once, naming the first one's PID
        ckpt = self.task.check_resume(self.run_dir if resume is True else Path(resume)) if resume else None
        lock, failure = None, None
        if info.is_main:
            try:
                lock = RunLock(self.run_dir).acquire()
            except Exception as e:   # reported below, on every rank, so that no process waits for another
                failure = e
        if D.any_true(failure is not None, info, self.device):
            raise failure if failure is not None else RuntimeError("rank 0 could not lock the run folder")
        ok = False
        try:
            result = self._run(ckpt)
            ok = True
            return result
        finally:
            if lock is not None:
                lock.release(remove_if_unused=not ok)

    def _run(self, ckpt: Path | None) -> TrainResult:
        tc, info, task, run_dir = self.tc, self.info, self.task, self.run_dir
        if ckpt is None and (list_checkpoints(run_dir) or read_latest(run_dir) is not None):
            raise ConfigError(f"{run_dir} already holds checkpoints; resume them (--resume) or choose another output "
                              "folder (--out)")
        shard_size = tc.batch_size // info.world_size
        env = Env(self.device, info, slice(info.rank * shard_size, (info.rank + 1) * shard_size), ckpt, self.log,
                  log_metrics=lambda row: self.state.log_metrics(row),
                  log_figure=lambda tag, path: self.state.log_figure(tag, path))
        task.setup(env)
        torch.manual_seed(tc.seed)          # the seed fixes the initialisation
        nets = task.build(env)
        ema = EMA(nets.model, tc.ema_decay, tc.ema_warmup) if tc.ema_decay is not None else None
        base_lrs = {k: [g["lr"] for g in opt.param_groups] for k, opt in nets.optimizers.items()}
        scaler = torch.amp.GradScaler("cuda") if tc.mixed_precision == "fp16" else None
        gen = torch.Generator().manual_seed(tc.seed)
        stream = IndexStream(task.num_examples, gen)
        torch.manual_seed(tc.seed + 1 + info.rank)   # dropout: torch's global generator, seeded per rank
        self.state = run = RunState(task, run_dir, env, nets, ema, None, callbacks=self.callbacks)
        if ckpt is not None:
            saved = restore(ckpt, model=nets.model, extra=nets.extra, ema=ema, optimizers=nets.optimizers,
                            scaler=scaler, gen=gen, stream=stream, info=info, device=self.device, log=self.log)
            try:
                task.load_state_dict(saved)
            except (KeyError, ValueError, RuntimeError) as e:
                raise ConfigError(f"checkpoint {ckpt} has an unusable task state ({type(e).__name__}: {e})") from None
            run.step, run.skipped_steps = int(saved["step"]), int(saved.get("skipped_steps", 0))
            run.train_seconds = float(saved.get("train_seconds", 0.0))
        if info.is_main:
            save_config(task.config, run_dir / task.config_name)
        nparams = sum(p.numel() for p in nets.model.parameters())
        self.log(task.describe(nparams, run.step) + (f" x {info.world_size} processes" if info.enabled else "")
                 + f"; run folder {run_dir}")
        run.metrics = MetricsLogger(run_dir, resume_step=run.step) if info.is_main else None
        self._emit("on_start")
        self.base_lrs, self.scaler, self.gen, self.stream = base_lrs, scaler, gen, stream
        last_ckpt, interrupted, last_loss = ckpt, False, None
        ckpt_step = run.step      # the step of the last checkpoint, known on every rank (only rank 0 gets paths)
        bad_in_a_row = 0
        window: dict[str, float] = {}
        window_n, window_t0, t_start, grad_norm, lr = 0, time.perf_counter(), time.perf_counter(), math.nan, tc.lr
        bar = tqdm(total=tc.steps, initial=run.step, disable=not (self.progress and info.is_main), desc=task.desc,
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        budget_s, ckpt_every_s = tc.max_minutes * 60.0, tc.checkpoint_every_minutes * 60.0
        next_time_ckpt = (math.floor(run.train_seconds / ckpt_every_s) + 1) * ckpt_every_s if ckpt_every_s \
            else math.inf
        with StopRequest(self.log) as stop:
            nets.model.train()
            for m in nets.extra.values():
                m.train()
            while run.step < tc.steps:
                # one collective per step: a stop request on any rank, and the slowest rank's training time
                stop_flag, slowest_s = D.max_over_ranks([stop.signum is not None, run.train_seconds], info,
                                                        self.device)
                if stop_flag:
                    interrupted = True
                    break
                if budget_s and slowest_s >= budget_s:
                    self.log(f"time budget reached: {slowest_s / 60:.2f} min of training (train.max_minutes="
                             f"{tc.max_minutes:g}) at step {run.step}")
                    break
                step_t0 = time.perf_counter()
                batch = task.draw(stream, gen, env)
                # with a time budget the decay ends at the budget; the same fraction on every rank (one LR for all)
                time_frac = slowest_s / budget_s if budget_s and tc.lr_decay != "constant" else None
                lr = self._set_lr(run.step, time_frac)
                out = self._updates(batch, run.step)
                if not out.applied or out.partial:
                    bad_in_a_row += 1
                    run.skipped_steps += not out.applied
                    self.log(f"step {run.step + 1}: non-finite loss ({out.bad_loss}) or gradient norm ({out.bad_norm}); "
                             f"update skipped ({bad_in_a_row} in a row)")
                    if bad_in_a_row >= tc.max_nonfinite_steps:
                        bar.close()
                        where = f"; the last checkpoint is {last_ckpt}" if last_ckpt is not None else ""
                        raise NonFiniteLossError(
                            f"the loss was NaN or infinite for {bad_in_a_row} steps in a row (at step {run.step + 1}); "
                            f"training stopped{where}. Try a lower train.lr, train.grad_clip=1 or "
                            f"train.mixed_precision=no")
                    if not out.applied:
                        run.train_seconds += time.perf_counter() - step_t0
                        continue
                else:
                    bad_in_a_row = 0
                loss_value, grad_norm = out.loss, out.norm
                if ema is not None:
                    ema.update(nets.model)
                run.step += 1
                run.train_seconds += time.perf_counter() - step_t0
                last_loss = run.last_loss = loss_value
                for k, v in {"loss": loss_value, **out.logs}.items():
                    window[k] = window.get(k, 0.0) + v
                window_n += 1
                bar.update(1)
                step = run.step
                if step % tc.log_every == 0 or step == tc.steps:
                    keys = list(window)
                    means = dict(zip(keys, D.mean_over_ranks_many([window[k] / window_n for k in keys], info,
                                                                  self.device)))
                    ips = window_n * tc.batch_size / max(time.perf_counter() - window_t0, 1e-9)
                    bar.set_postfix(**task.postfix(means), img_s=f"{ips:.0f}")
                    row = {"step": step, **means, "lr": lr, "grad_norm": grad_norm, "images_per_s": ips,
                           "skipped_steps": run.skipped_steps, "elapsed_s": time.perf_counter() - t_start,
                           "train_s": run.train_seconds}
                    run.log_metrics(row)          # metrics.jsonl / .csv (rank 0), then every callback's on_log
                    window, window_n, window_t0 = {}, 0, time.perf_counter()
                if tc.sample_every and step % tc.sample_every == 0 and step != tc.steps and info.is_main:
                    path = task.sample(run.eval_model, run_dir / "samples" / f"step_{step:08d}.png")
                    if path is not None:
                        self._emit("on_sample", path)
                        run.log_figure(task.sample_tag, path)
                time_ckpt = bool(ckpt_every_s) and D.any_true(run.train_seconds >= next_time_ckpt, info, self.device)
                if time_ckpt:
                    next_time_ckpt = (math.floor(run.train_seconds / ckpt_every_s) + 1) * ckpt_every_s
                if step % tc.checkpoint_every == 0 or step == tc.steps or time_ckpt:
                    last_ckpt, ckpt_step = self._checkpoint(), step
                self._emit("on_step_end")
            if run.step != ckpt_step:
                last_ckpt = self._checkpoint()   # interrupted, or stopped by the time budget
        bar.close()

        result = task.result_class(run_dir, run.step, interrupted, last_ckpt, last_loss=last_loss,
                                   skipped_steps=run.skipped_steps)
        if run.metrics is not None:
            result.metrics = run.metrics.jsonl
            if not interrupted:
                task.finish(run.eval_model, result)
            result.loss_plot = plot_metrics(run_dir)
            if result.loss_plot is not None:
                run.log_figure("loss", result.loss_plot)
        self._emit("on_end", result)
        return result

    def _set_lr(self, step: int, time_frac: float | None) -> float:
        tc = self.tc
        for key, opt in self.state.nets.optimizers.items():
            for group, base in zip(opt.param_groups, self.base_lrs[key]):
                group["lr"] = learning_rate(step, base, tc.warmup_steps, tc.lr_decay, tc.steps, time_frac=time_frac)
        return next(iter(self.state.nets.optimizers.values())).param_groups[0]["lr"]

    def _updates(self, batch, step: int) -> "Outcome":
        """Run the task's updates of one step; a non-finite one is skipped (the first: the whole step)."""
        tc, info, scaler = self.tc, self.info, self.scaler
        updates = self.task.step(batch, step)
        out = Outcome()
        while True:
            with autocast(self.device, tc.mixed_precision):
                u = next(updates, None)
            if u is None:
                break
            opt = self.state.nets.optimizers[u.optimizer]
            params = [p for group in opt.param_groups for p in group["params"]]
            opt.zero_grad(set_to_none=True)
            (scaler.scale(u.loss) if scaler is not None else u.loss).backward()
            D.average_gradients(params, info)
            if scaler is not None:
                scaler.unscale_(opt)
            clip = tc.grad_clip if u.clip and tc.grad_clip > 0 else math.inf
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip).item())
            value = float(u.loss.item())
            bad = not math.isfinite(value) or (scaler is None and not math.isfinite(norm))
            if D.any_true(bad, info, self.device):
                opt.zero_grad(set_to_none=True)
                out.bad_loss, out.bad_norm = value, norm
                if not out.applied:      # the step's first update: nothing has changed, skip the step
                    updates.close()
                    break
                out.partial = True
                continue
            if scaler is not None:
                scaler.step(opt)
            else:
                opt.step()
            if not out.applied:
                out.loss, out.norm, out.applied = value, norm, True
            out.logs.update(u.logs)
        if scaler is not None:
            scaler.update()
        return out

    def _checkpoint(self) -> Path | None:
        run, task, info = self.state, self.task, self.info
        state = training_state(step=run.step, skipped=run.skipped_steps, train_seconds=run.train_seconds,
                               ema=run.ema, optimizers=run.nets.optimizers, scaler=self.scaler, gen=self.gen,
                               stream=self.stream, info=info, device=self.device, task_state=task.state_dict())
        path = None
        if info.is_main:
            writers = {MODEL_NAME: weights_writer(run.nets.model.state_dict(), run.step)}
            if run.ema is not None:
                writers[EMA_NAME] = weights_writer(run.ema.state_dict(), run.step)
            writers.update({name: weights_writer(m.state_dict(), run.step) for name, m in run.nets.extra.items()})
            writers[STATE_NAME] = lambda p: torch.save(state, p)
            writers[task.config_name] = lambda p: save_config(task.config, p)
            writers.update(task.checkpoint_files())
            path = save_checkpoint_files(self.run_dir, run.step, writers, keep=self.tc.keep_checkpoints)
        D.check_replicas_in_sync(run.nets.model, info, self.device)
        self._emit("on_checkpoint", path)
        return path


__all__ = ["train_task"]
