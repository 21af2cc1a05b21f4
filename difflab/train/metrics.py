"""Training metrics: ``metrics.jsonl`` (one JSON object per row: the training rows of every log step and
any evaluation rows) and ``metrics.csv`` (the training rows). TensorBoard gets the same rows through the
engine's callbacks (``difflab.train.tensorboard``)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from ..files import atomic_write
from ..viz import new_figure, plot_losses, save_figure

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s", "skipped_steps", "elapsed_s")


def is_training_row(row: dict[str, Any]) -> bool:
    """Whether ``row`` is one of the engine's training rows (those go to metrics.csv too); an evaluation
    row (logged by a task or a callback) has none of the CSV's columns."""
    return any(k in row for k in CSV_FIELDS[1:])


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue   # a line cut short by a crash
    return rows


class MetricsLogger:
    """Appends metric rows; on resume, first drops rows logged after the resumed step."""

    def __init__(self, run_dir: str | os.PathLike, resume_step: int = 0):
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / METRICS_JSONL
        self.csv = self.run_dir / METRICS_CSV
        rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step] if resume_step else []

        def write_jsonl(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

        def write_csv(tmp):
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
                w.writeheader()
                w.writerows(r for r in rows if is_training_row(r))

        # rewritten atomically: a crash here never loses the rows logged so far
        atomic_write(self.jsonl, write_jsonl, sync=False)
        atomic_write(self.csv, write_csv, sync=False)

    def log(self, row: dict[str, Any]) -> None:
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if is_training_row(row):
            with open(self.csv, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore").writerow(row)


def plot_metrics(run_dir: str | os.PathLike) -> Path | None:
    """``loss.png``: the training loss of ``metrics.jsonl`` (None with fewer than two finite rows)."""
    rows = read_metrics(run_dir)
    rows = [r for r in rows if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    if len(rows) < 2:
        return None
    smooth = min(0.9, max(0.0, 1.0 - 20.0 / len(rows)))   # lighter smoothing for short runs
    return plot_losses([r["step"] for r in rows], [r["loss"] for r in rows], Path(run_dir) / "loss.png",
                       smooth=smooth, title="training loss")


def plot_eval(run_dir: str | os.PathLike) -> Path | None:
    """``eval.png``: the training loss (left) and, beside it, the Frechet distance of the evaluations
    during training with its floor (right; the held-out denoising loss when no FD was measured)."""
    rows = read_metrics(run_dir)
    evals = [r for r in rows if not is_training_row(r) and isinstance(r.get("heldout_loss"), (int, float))]
    if not evals:
        return None
    train = [r for r in rows if is_training_row(r) and isinstance(r.get("loss"), (int, float))
             and math.isfinite(r["loss"])]
    fig = new_figure(figsize=(10.0, 4.0))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="training loss")
    ax.plot([r["step"] for r in evals], [r["heldout_loss"] for r in evals], "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax = fig.add_subplot(1, 2, 2)
    fd = [r for r in evals if isinstance(r.get("fd"), (int, float))]
    if fd:
        ax.plot([r["step"] for r in fd], [r["fd"] for r in fd], "o-", label=f"FD of {fd[-1].get('eval_n')} samples")
        ax.plot([r["step"] for r in fd], [r["fd_floor"] for r in fd], "--", color="gray",
                label="floor (training vs held-out images)")
        ax.set_yscale("log")
        ax.set_title(f"last: FD {fd[-1]['fd']:.4g}, floor {fd[-1]['fd_floor']:.4g}")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no featurizer: Frechet distance not measured", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, Path(run_dir) / "eval.png")
