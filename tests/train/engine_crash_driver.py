"""Crash harness for tests/train/test_engine.py (run as a script, not collected by pytest).

``python engine_crash_driver.py KIND WORK_DIR`` trains a tiny run of task KIND (diffusion, classifier,
autoencoder) in ``WORK_DIR/run`` through a few SIGKILL points, each in a forked child that resumes from
whatever checkpoint is loadable and kills itself at its point (no ``finally``, no flushing: like
``kill -9``). The points: between two checkpoints (an engine callback after step 3), half-way through
writing the first weights file of a checkpoint, and after a checkpoint folder is renamed into place but
before ``latest`` names it. Then it trains the run to the end, and an uninterrupted run with the same
config in ``WORK_DIR/straight``; the pytest side compares them. Nothing in difflab knows about this.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import safetensors.torch as st
import torch

from difflab.config import resolve_autoencoder_config, resolve_classifier_config, resolve_config
from difflab.runs import CheckpointError, resolve_checkpoint
from difflab.train import Callback, train, train_autoencoder, train_classifier
from difflab.train.data import load_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from rel_crash_driver import run_child  # noqa: E402  (forks a child, reports how it ended)

torch.set_num_threads(1)

COMMON = ["train.num_threads=1", "train.steps=8", "train.checkpoint_every=2", "train.keep_checkpoints=2",
          "train.log_every=1", "train.warmup_steps=2", "train.lr_decay=cosine"]
CONFIGS = {   # every task with EMA, warm-up and a cosine decay; the autoencoder's discriminator from step 2
    "diffusion": lambda: resolve_config("tiny", overrides=COMMON + ["sample.n=2", "sample.steps=2"]),
    "classifier": lambda: resolve_classifier_config("tiny", overrides=COMMON + ["train.eval_n=8",
                                                                                "train.ema_decay=0.9"]),
    "autoencoder": lambda: resolve_autoencoder_config("tiny", overrides=COMMON + [
        "train.eval_n=8", "train.ema_decay=0.9", "model.disc_start=2", "train.eval_classifier=none"]),
}
TRAIN = {"diffusion": train, "classifier": train_classifier, "autoencoder": train_autoencoder}
FAULTS = ["between-checkpoints", "torn-weights", "renamed-before-pointer"]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterStep(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, run) -> None:
        if run.step == self.step:
            die()


def install(fault: str) -> list:
    """Patch the writer for ``fault``; returns the callbacks to pass to training."""
    if fault == "between-checkpoints":
        return [KillAfterStep(3)]
    if fault == "torn-weights":
        serialize = st.save

        def save_file(tensors, filename, metadata=None):
            data = serialize(tensors, metadata=metadata)
            with open(filename, "wb") as f:
                f.write(data[: len(data) // 2])
            die()
        st.save_file = save_file
        return []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if re.fullmatch(r"step_\d+", Path(dst).name):
            die()
    os.replace = replace
    return []


def loadable(run: Path):
    try:
        return resolve_checkpoint(run)
    except CheckpointError:
        return None


def main(kind: str, work: Path) -> None:
    import matplotlib.backends.backend_agg  # noqa: F401  (the loss plot: imported once, before forking)

    cfg = CONFIGS[kind]()
    train_fn = TRAIN[kind]
    quiet = dict(progress=False, log=lambda msg: None,
                 dataset=load_images(cfg.data, lambda msg: None, labels_from_folders=False))
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])   # its first use imports torch._dynamo (~2 s)
    run, report = work / "run", {"kind": kind, "faults": []}
    for fault in FAULTS:
        def attempt():
            callbacks = install(fault)
            train_fn(cfg, run, resume=loadable(run) is not None, callbacks=callbacks, **quiet)

        ended = run_child(attempt)
        latest = loadable(run)
        snap = work / "snapshots" / fault
        shutil.copytree(run, snap, symlinks=True)
        report["faults"].append({"name": fault, **ended, "snapshot": str(snap),
                                 "latest": latest.name if latest is not None else None})
    report["final"] = run_child(lambda: train_fn(cfg, run, resume=True, **quiet))
    report["straight"] = run_child(lambda: train_fn(cfg, work / "straight", **quiet))
    (work / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
