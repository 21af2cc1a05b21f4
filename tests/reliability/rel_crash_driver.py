"""Crash harness for tests/reliability/test_rel_faults.py (run as a script, not collected by pytest).

``python rel_crash_driver.py WORK_DIR`` trains the tiny preset in ``WORK_DIR/run`` through a list of
fault points. Each attempt is a forked child (torch is imported once, here) that resumes the run
from whatever checkpoint is loadable, installs ONE fault point by monkeypatching a primitive the
writer uses (``os.replace``, ``os.fsync``, ``safetensors.torch.save_file``, ``torch.save``,
``shutil.rmtree``, ``EMA.update``) and, when that point is reached, kills itself with SIGKILL:
no ``finally`` block, no atexit, no flushing runs, exactly like ``kill -9`` or a power cut
(except for the page cache). Nothing in difflab knows about this harness: no environment
variable, no test hook in the library.

After every kill the parent copies ``run/`` to ``WORK_DIR/snapshots/NN-<fault>/`` and records
how the child ended; then it trains the run to the end (``run``) and trains an uninterrupted run
with the same config (``straight``). The pytest side checks the snapshots and compares weights.

The parent never runs torch kernels (one thread, file operations only), so forking it is safe.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from difflab.config import resolve_config
from difflab.runs import checkpoint as ckpt_mod
from difflab.train import train
from difflab.train.ema import EMA

torch.set_num_threads(1)

CONFIG_OVERRIDES = ["train.num_threads=1", "train.steps=16", "train.checkpoint_every=2", "train.keep_checkpoints=2",
                    "train.log_every=1", "sample.n=2", "sample.steps=2"]

# (name, kind, nth, extra): the child dies at the nth matching call of kind.
FAULTS = [
    ("after-first-update", "after_update", 1, None),
    ("torn-model-weights", "torn_save_file", 1, None),           # half of model.safetensors written
    ("after-rename-before-pointer", "replace_after", 1, r"step_\d+"),
    ("torn-training-state", "torn_torch_save", 1, None),
    ("pointer-written-not-renamed", "replace_before", 1, r"latest"),
    ("third-fsync", "fsync_after", 3, None),
    ("while-pruning", "rmtree_doomed", 1, None),                 # an old checkpoint half deleted
    ("between-steps", "after_update", 3, None),
    ("resave-moved-aside", "replace_after", 1, r"\.old-step_\d+-\d+"),   # resumed from an older checkpoint
    ("metrics-rewrite", "replace_before", 1, r"metrics\.jsonl"),
    ("torn-ema-weights", "torn_save_file", 2, None),
    ("checkpoint-config", "replace_before", 2, r"config\.yaml"),
    ("after-fourth-update", "after_update", 4, None),
]
RESUME_OLDEST = {"resave-moved-aside"}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_fault(kind: str, nth: int, pattern: str | None) -> None:
    count = [0]

    def hit() -> bool:
        count[0] += 1
        return count[0] == nth

    if kind == "after_update":
        real_update = EMA.update

        def update(self, model):
            real_update(self, model)
            if hit():
                _die()
        EMA.update = update
    elif kind == "torn_save_file":
        import safetensors.torch as st
        real_save_file, serialize = st.save_file, st.save

        def save_file(tensors, filename, metadata=None):
            if not hit():
                return real_save_file(tensors, filename, metadata=metadata)
            data = serialize(tensors, metadata=metadata)
            with open(filename, "wb") as f:
                f.write(data[: len(data) // 2])
            _die()
        st.save_file = save_file
    elif kind == "torn_torch_save":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not hit():
                return real_save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            _die()
        torch.save = save
    elif kind in ("replace_before", "replace_after"):
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            matches = re.fullmatch(pattern, Path(dst).name) is not None and hit()
            if matches and kind == "replace_before":
                _die()
            real_replace(src, dst, *args, **kwargs)
            if matches:
                _die()
        os.replace = replace
    elif kind == "fsync_after":
        real_fsync = os.fsync

        def fsync(fd):
            real_fsync(fd)
            if hit():
                _die()
        os.fsync = fsync
    elif kind == "rmtree_doomed":
        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if Path(path).name.startswith(".del-") and hit():
                first = sorted(Path(path).iterdir())[0]
                first.unlink()            # part of the folder is gone when the process dies
                _die()
            return real_rmtree(path, *args, **kwargs)
        shutil.rmtree = rmtree
    else:
        raise ValueError(kind)


def run_child(fn) -> dict:
    """Run ``fn`` in a forked child; report how it ended."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status), "exit": None}
    return {"signal": None, "exit": os.WEXITSTATUS(status)}


def resume_target(run: Path):
    """What a user would pass: --resume when a checkpoint is loadable, otherwise a fresh start."""
    try:
        ckpt_mod.resolve_checkpoint(run)
        return True
    except ckpt_mod.CheckpointError:
        return False


def preload(cfg):
    """Import and load once here, so that each forked child only trains (data: no torch kernels)."""
    import matplotlib.backends.backend_agg  # noqa: F401  (loss plot at the end of a run)
    import safetensors.torch  # noqa: F401

    import difflab.nn.unet  # noqa: F401
    import difflab.viz  # noqa: F401
    from difflab.train.data import load_images

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])   # its first use imports torch._dynamo (~2 s)
    return load_images(cfg.data, lambda msg: None)


def main(work: Path) -> None:
    cfg = resolve_config("tiny", overrides=CONFIG_OVERRIDES)
    run, snaps = work / "run", work / "snapshots"
    quiet = dict(progress=False, log=lambda msg: None, dataset=preload(cfg))
    report = {"faults": [], "config_overrides": CONFIG_OVERRIDES}
    for i, (name, kind, nth, pattern) in enumerate(FAULTS):
        resume = resume_target(run)
        if name in RESUME_OLDEST:
            resume = ckpt_mod.list_checkpoints(run)[0]

        def attempt():
            install_fault(kind, nth, pattern)
            train(cfg, run, resume=resume, **quiet)

        t0 = time.perf_counter()
        ended = run_child(attempt)
        ended["seconds"] = round(time.perf_counter() - t0, 2)
        snap = snaps / f"{i:02d}-{name}"
        shutil.copytree(run, snap, symlinks=True)
        report["faults"].append({"name": name, "snapshot": str(snap), "resumed_from": str(resume), **ended})
    report["final"] = run_child(lambda: train(cfg, run, resume=resume_target(run), **quiet))
    report["straight"] = run_child(lambda: train(cfg, work / "straight", **quiet))
    (work / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
