"""Your own data, just working: ``difflab train --data ... --minutes M`` on digits, MNIST and coloured MNIST.

For each dataset the settings are chosen by the automatic recipe (no preset named), trained for
``--minutes`` of training time in a one-thread process (two processes at a time at most, so each has a
core of the 2-core machine), then measured the same way for all three:

- ``--n`` samples (default 1,000) with the run's own sampler and guidance, Frechet distance and
  precision/recall against the held-out images (digits and MNIST: their test split; coloured MNIST:
  the run's held-out split, 10% of its training folder, never trained on), through
  ``difflab eval fd --floor``: the floor is ``--n`` training images against the same reference;
- featurizers: the clean evaluation classifiers of benchmarks/artifacts/eval_classifier_{digits,mnist}
  (the ones of the other MNIST figures in this file) and, for coloured MNIST, the folder's evaluation
  classifier trained on the run's training side only (cached under ``--out``/cache);
- a class-by-column sample grid per dataset in benchmarks/artifacts/own_data_<name>.png.

Coloured MNIST is made first when missing (``difflab make-dataset colored-mnist``). Needs a quiet
machine: the recipe measures the step rate in the first seconds of each run, and a loaded machine
makes it choose a smaller network. Writes the "## Own data: difflab train --data" section of
benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/own_data.py --minutes 25 --n 1000 --out runs/own-data

``--eval-only`` measures the runs of an earlier invocation (same ``--out``) without training again.

A quick end-to-end check (minutes of wall clock; writes elsewhere):

    .venv/bin/python benchmarks/own_data.py --minutes 1 --n 100 --colored-n 3000 --out /tmp/own-data-check \\
        --results /tmp/own-data-check/RESULTS.md --artifacts /tmp/own-data-check/artifacts
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from _common import ARTIFACTS, MNIST_DIR, RESULTS, ROOT, child, write_section  # noqa: E402
from difflab.runs import STATE_NAME  # noqa: E402

HEADING = "## Own data: difflab train --data (digits, MNIST, coloured MNIST)"
DATASETS = ("digits", "mnist", "colored-mnist")
DIFFLAB = [sys.executable, "-m", "difflab"]


def run_all(jobs: list[tuple], parallel: int) -> dict[str, float]:
    """Run ``(name, command, log)`` or ``(name, command, log, after)`` jobs in order, ``parallel`` at a time;
    a job with ``after`` (another job's name) waits until that one has finished. Stops at the first failure."""
    pending, running, took = [tuple(j) + (None,) * (4 - len(j)) for j in jobs], {}, {}
    while pending or running:
        ready = [j for j in pending if j[3] is None or j[3] in took]
        while ready and len(running) < parallel:
            job = ready.pop(0)
            pending.remove(job)
            name, cmd, log, _ = job
            running[name] = (child(cmd, log), time.perf_counter(), log)
        time.sleep(1.0)
        for name, (proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            took[name] = time.perf_counter() - t0
            if proc.returncode != 0:
                for p, _, _ in running.values():
                    p.terminate()
                sys.exit(f"{name} failed (exit {proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    return took


def data_arg(name: str, colored: Path) -> list[str]:
    return {"digits": ["--data", "digits"], "mnist": ["--data", "mnist", "--data-root", str(MNIST_DIR)],
            "colored-mnist": ["--data", str(colored)]}[name]


def seed_featurizers(cache: Path) -> None:
    """The evaluation classifiers of digits and MNIST that the repository's other figures use, put where
    training and ``difflab eval fd`` look for them (``<cache>/eval_classifier/<dataset>``)."""
    for name in ("digits", "mnist"):
        src, dst = ARTIFACTS / f"eval_classifier_{name}", cache / "eval_classifier" / name
        if src.is_dir() and not dst.exists():
            shutil.copytree(src, dst)


def summary(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    evals = [r for r in rows if "heldout_loss" in r]
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    state = torch.load(latest / STATE_NAME, map_location="cpu", weights_only=False)
    step = int(state["step"])
    final = json.loads((run / "eval_final.json").read_text())
    m, t = cfg["model"], cfg["train"]
    return {"steps": step, "train_minutes": float(state["train_seconds"]) / 60,
            "network": f"{m['model_channels']} ch x {m['channel_mult']}, {m['num_res_blocks']} block(s)",
            "image_size": m["image_size"], "batch": t["batch_size"], "lr": t["lr"], "ema_decay": t["ema_decay"],
            "guidance": cfg["sample"]["guidance_scale"], "sampler": f"{cfg['sample']['sampler']} {cfg['sample']['steps']}",
            "fd": final["fd"], "floor_fd": final["floor"]["fd"], "precision": final["precision"],
            "recall": final["recall"], "floor_precision": final["floor"]["precision"],
            "floor_recall": final["floor"]["recall"], "n": final["n"], "featurizer": final["featurizer"],
            "reference": final["reference"], "during_training": [
                {"step": r["step"], "fd": r.get("fd"), "fd_floor": r.get("fd_floor"), "n": r.get("eval_n")}
                for r in evals]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=25.0, help="training budget of each run (default 25)")
    ap.add_argument("--n", type=int, default=1000, help="samples (and floor images) of the final figures")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "own-data")
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ap.add_argument("--colored", type=Path, help="the coloured MNIST folder (default: OUT/data/colored-mnist, made "
                                                 "when missing)")
    ap.add_argument("--colored-n", type=int, help="training images of a coloured MNIST made here (default: all)")
    ap.add_argument("--parallel", type=int, default=2, choices=(1, 2), help="one-thread processes at a time")
    ap.add_argument("--eval-only", action="store_true", help="measure the runs an earlier invocation trained "
                                                              "(same --out), without training again")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    args = ap.parse_args()
    for name in ("out", "results", "artifacts", "colored"):      # the jobs run in the repository root
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    out, cache = args.out, args.out / "cache"
    out.mkdir(parents=True, exist_ok=True)
    seed_featurizers(cache)
    colored = args.colored or out / "data" / "colored-mnist"
    colored.parent.mkdir(parents=True, exist_ok=True)
    if "colored-mnist" in args.datasets and not colored.exists() and not args.eval_only:
        extra = ["--n", str(args.colored_n), "--n-test", str(max(100, args.colored_n // 6))] if args.colored_n else []
        run_all([("make colored-mnist", [*DIFFLAB, "make-dataset", "colored-mnist", "--data-root", str(MNIST_DIR),
                                         "--out", str(colored), "--no-progress", *extra], out / "make-colored.log")], 1)

    trainings, evals = [], []
    for name in args.datasets:
        run = out / "runs" / name
        if args.eval_only:
            if not (run / "checkpoints").is_dir():
                sys.exit(f"--eval-only: {run} is missing; train it first (without --eval-only)")
        elif run.exists():        # a new run of the benchmark replaces the last one's run folder
            shutil.rmtree(run)
        trainings.append((f"train {name}", [*DIFFLAB, "train", *data_arg(name, colored), "--minutes", str(args.minutes),
                                            "--out", str(run), "--no-progress", "--set", "train.num_threads=1",
                                            f"train.eval_cache_dir={cache}"], out / f"train-{name}.log"))
        after = None if args.eval_only else f"train {name}"      # a run is measured once its training ends
        evals.append((f"eval {name}", [*DIFFLAB, "eval", "fd", "--checkpoint", str(run), "-n", str(args.n), "--floor",
                                       "--cache-dir", str(cache), "--no-progress", "--out",
                                       str(run / "eval_final.json")], out / f"eval-{name}.log", after))
        evals.append((f"grid {name}", [*DIFFLAB, "sample", "--checkpoint", str(run), "--grid-by-class", "-n", "10",
                                       "--no-progress", "--out", str(args.artifacts / f"own_data_{name}.png")],
                      out / f"grid-{name}.log", after))
    args.artifacts.mkdir(parents=True, exist_ok=True)
    # trainings first, then the measurements, at most `parallel` processes at a time: a run's measurements
    # may start beside a later training (one thread each, so each still has a core of its own)
    took = run_all(([] if args.eval_only else trainings) + evals, args.parallel)
    results = {name: summary(out / "runs" / name) for name in args.datasets}
    (args.artifacts / "own_data.json").write_text(json.dumps(results, indent=2) + "\n")

    command = (f"python benchmarks/own_data.py --minutes {args.minutes:g} --n {args.n}"
               + (f" --colored-n {args.colored_n}" if args.colored_n else "")
               + f" --out {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    if args.eval_only:      # trained by the first, measured by the second
        command = f"{command}` then `{command} --eval-only"
    lines = [HEADING, "", f"`{command}` (each run: `difflab train --data <dataset> --minutes {args.minutes:g} "
             "--set train.num_threads=1`, one thread, at most two runs at a time; no preset named). Final figures: "
             f"`difflab eval fd --floor -n {args.n}` with the run's own sampler and guidance against held-out images "
             "never trained on (digits, MNIST: the test split; coloured MNIST: the run's 10% held-out split).", "",
             "| data | steps | train min | network (chosen) | batch | lr | EMA | sampler, w | FD | floor | FD/floor "
             "| precision (floor) | recall (floor) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        mins = f"{r['train_minutes']:.1f}"
        lines.append(f"| {name} | {r['steps']} | {mins} | {r['image_size']}px, {r['network']} | {r['batch']} | "
                     f"{r['lr']:g} | {r['ema_decay']} | {r['sampler']}, {r['guidance']} | {r['fd']:.4g} | "
                     f"{r['floor_fd']:.4g} | {r['fd'] / r['floor_fd']:.2f}x | {r['precision']:.3f} "
                     f"({r['floor_precision']:.3f}) | {r['recall']:.3f} ({r['floor_recall']:.3f}) |")
    lines += ["", "Featurizers and references (n samples / n floor images against them):", ""]
    lines += [f"- {name}: {r['featurizer']}, reference {r['reference']}, n={r['n']}" for name, r in results.items()]
    lines += ["", "FD during training (the runs' own evaluations, `train.eval_n` samples, floor at the same n):", ""]
    for name, r in results.items():
        pts = ", ".join(f"step {e['step']}: {e['fd']:.4g} (floor {e['fd_floor']:.4g}, n={e['n']})"
                        for e in r["during_training"] if e["fd"] is not None)
        lines.append(f"- {name}: {pts or 'none'}")
    lines += ["", "Samples (one row per class, columns share their starting noise):", ""]
    # image links are relative to the results file (benchmarks/RESULTS.md links artifacts/...)
    rel = (Path(os.path.relpath(args.artifacts, args.results.resolve().parent)).as_posix()
           if args.artifacts.is_relative_to(ROOT) else args.artifacts)
    lines += [f"![{name}]({rel}/own_data_{name}.png)" for name in results]
    lines += ["", "Wall clock per job (s): " + ", ".join(f"{k} {v:.0f}" for k, v in took.items())
              + ("; the trainings' wall clock is in OUT/train-<dataset>.log" if args.eval_only else ""), ""]
    write_section(args.results, HEADING, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
