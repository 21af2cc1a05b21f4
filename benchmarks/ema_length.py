"""How long should the EMA average be? One training run, several averages of the same weights.

The EMA never feeds back into training, so one run can keep several averages side by side and each
is exactly what a run with that EMA would have produced. Each dataset is trained once by the automatic
recipe (``difflab train --data D --minutes M``, one thread, two runs at a time at most), and besides
the run's own EMA (``train.ema_decay`` with the warm-up ``d_n = min(decay, (1 + n) / (10 + n))``, a
horizon of about 11% of the steps so far) it keeps one average per ``--fractions`` f, whose horizon
``1 / (1 - d_n)`` is f times the steps so far (``d_n = 1 - 1 / max(1, f n)``: EDM2's finding that the
best average is a fixed fraction of training, measured here on short, high-learning-rate runs).

Every average (and the raw weights) is then measured the same way, on the same sample seeds:
``difflab eval fd -n N`` with the run's sampler and guidance, against the held-out images (digits and
MNIST: their test split; a folder: the run's held-out split), floor at the same N.

    .venv/bin/python benchmarks/ema_length.py --minutes 25 --n 500 --datasets mnist colored-mnist \\
        --colored runs/own-data/data/colored-mnist --out runs/ema-length

Writes the "## EMA length" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from _common import RESULTS, ROOT, write_section  # noqa: E402
from own_data import DATASETS, DIFFLAB, data_arg, run_all, seed_featurizers  # noqa: E402
from difflab.train.ema import EMA  # noqa: E402
from difflab.train.task import Callback  # noqa: E402

HEADING = "## EMA length: one run, several averages"
FRACTIONS = (0.05, 0.2, 0.3, 0.5)


class Track(EMA):
    """:class:`difflab.train.EMA` with a horizon of ``fraction`` x the updates so far:
    ``d_n = 1 - 1 / max(1, fraction (n + 1))``."""

    def __init__(self, model, fraction: float):
        super().__init__(model, 0.0, warmup=False)
        self.fraction = fraction

    def current_decay(self) -> float:
        return 1.0 - 1.0 / max(1.0, self.fraction * (self.num_updates + 1))


class EMATracks(Callback):
    """One :class:`Track` per fraction, updated after every step and saved at the end (a training callback)."""

    def __init__(self, fractions, out: Path):
        self.fractions, self.out, self.tracks = tuple(fractions), out, []

    def on_start(self, run) -> None:
        self.tracks = [Track(run.nets.model, f) for f in self.fractions]

    def on_step_end(self, run) -> None:
        for t in self.tracks:
            t.update(run.nets.model)

    def on_end(self, run, result) -> None:
        from safetensors.torch import save_file
        self.out.mkdir(parents=True, exist_ok=True)
        for f, t in zip(self.fractions, self.tracks):
            save_file({k: v.contiguous() for k, v in t.state_dict().items()}, str(self.out / f"f{f:g}.safetensors"))
        (self.out / "steps.json").write_text(json.dumps({"step": run.step, "fractions": list(self.fractions)}))


def train_child(args) -> int:
    """One training run with the tracks (runs in its own one-thread process)."""
    from difflab.train import train
    from difflab.train.auto import auto_config, data_section

    data = data_section(args.data, args.data_root)
    plan = auto_config(data, args.minutes, ["train.num_threads=1", f"train.eval_cache_dir={args.cache}"])
    print(plan.describe(), flush=True)
    run = Path(args.run)
    if run.exists():
        shutil.rmtree(run)
    train(plan.config, run, progress=False, callbacks=[EMATracks(args.fractions, run / "ema_tracks")])
    return 0


def variant_run(run: Path, weights: Path | None, dest: Path) -> Path:
    """A run folder whose latest checkpoint's EMA weights are ``weights`` (None: the run's own), for
    ``difflab eval fd --checkpoint``; files are linked, not copied."""
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    if dest.exists():
        shutil.rmtree(dest)
    ck = dest / "checkpoints" / latest.name
    ck.mkdir(parents=True)
    for p in run.iterdir():
        if p.is_file():
            (dest / p.name).symlink_to(p.resolve())
    for p in latest.iterdir():
        (ck / p.name).symlink_to((weights if p.name == "ema.safetensors" and weights else p).resolve())
    (dest / "checkpoints" / "latest").write_text(latest.name + "\n")
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--n", type=int, default=500, help="samples (and floor images) per measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ema-length")
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=["mnist", "colored-mnist"])
    ap.add_argument("--colored", type=Path, default=ROOT / "runs" / "own-data" / "data" / "colored-mnist",
                    help="the coloured MNIST folder (difflab make-dataset colored-mnist)")
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    ap.add_argument("--eval-only", action="store_true", help="measure the runs of an earlier invocation (same "
                                                              "--out); measurements already made are kept")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--child", nargs=4, metavar=("DATA", "DATA_ROOT", "RUN", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        data, root, run, cache = args.child
        return train_child(argparse.Namespace(data=data, data_root=root or None, run=run, cache=cache,
                                              minutes=args.minutes, fractions=args.fractions))
    out = args.out.resolve()
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    seed_featurizers(cache)
    here = [sys.executable, str(Path(__file__).resolve())]
    trainings, evals, variants = [], [], {}
    for name in args.datasets:
        d = data_arg(name, args.colored.resolve())
        data, root = d[1], (d[3] if len(d) > 3 else "")
        run = out / "runs" / name
        trainings.append((f"train {name}", [*here, "--minutes", str(args.minutes), "--fractions",
                                            *map(str, args.fractions), "--child", data, root, str(run), str(cache)],
                          out / f"train-{name}.log"))
    if not args.eval_only:
        run_all(trainings, 2)
    for name in args.datasets:
        run = out / "runs" / name
        tracks = run / "ema_tracks"
        kinds = [("raw", None, ["--no-ema"]), ("run's EMA", None, [])]
        kinds += [(f"f={f:g}", tracks / f"f{f:g}.safetensors", []) for f in args.fractions]
        for label, weights, flags in kinds:
            slug = label.replace("'", "").replace(" ", "-").replace("=", "")
            target = run if weights is None else variant_run(run, weights, out / "variants" / name / slug)
            js = out / "eval" / f"{name}-{slug}.json"
            js.parent.mkdir(parents=True, exist_ok=True)
            variants.setdefault(name, []).append((label, js))
            if args.eval_only and js.is_file():       # measured by an earlier --eval-only
                continue
            evals.append((f"eval {name} {label}", [*DIFFLAB, "eval", "fd", "--checkpoint", str(target), "-n",
                                                   str(args.n), "--cache-dir", str(cache), "--no-progress",
                                                   *flags, *(["--floor"] if label == "raw" else []), "--out",
                                                   str(js)], out / f"eval-{name}-{slug}.log"))
    run_all(evals, 2)
    lines = [HEADING, "", f"Command: `python benchmarks/ema_length.py --minutes {args.minutes:g} --n {args.n} "
             f"--datasets {' '.join(args.datasets)} --fractions {' '.join(map(str, args.fractions))}`", "",
             "One automatic-recipe run per dataset (`difflab train --data D --minutes M`, one thread); every "
             "average of its weights measured on the same sample seeds with the run's sampler and guidance. "
             "f: an average whose horizon is f x the steps so far; the run's EMA: the recipe's decay with the "
             "(1+n)/(10+n) warm-up.", "",
             "| data | steps | weights | FD | FD / floor | precision | recall |", "|---|---|---|---|---|---|---|"]
    for name in args.datasets:
        rows = [(label, json.loads(js.read_text())) for label, js in variants[name]]
        floor = rows[0][1]["floor"]
        step = json.loads((out / "runs" / name / "ema_tracks" / "steps.json").read_text())["step"]
        for label, r in rows:
            lines.append(f"| {name} | {step} | {label} | {r['fd']:.4g} | {r['fd'] / floor['fd']:.2f}x | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} |")
        lines.append(f"| {name} | {step} | floor (n={args.n} training images) | {floor['fd']:.4g} | 1.00x | "
                     f"{floor['precision']:.3f} | {floor['recall']:.3f} |")
    write_section(args.results, HEADING, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
