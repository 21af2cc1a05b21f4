"""Sample quality against training wall-clock: difflab's ``mnist-fast`` recipe beside diffusers' recipe.

Both recipes train on the same MNIST training split for the same wall-clock budget, each in its
own process, and save their weights every ``--every`` minutes of training time (the time spent
saving is not counted). Afterwards every saved point is evaluated the same way: ``--n`` samples
drawn from the same starting noise with at most 50 network evaluations, Frechet distance to the
10k test split in the feature space of difflab's clean evaluation classifier
(benchmarks/artifacts/eval_classifier_mnist, trained on the training split only), and the floor:
``--n`` real training images against the test split.

The recipes:

- ``difflab``: ``difflab train --preset mnist-fast`` with ``train.max_minutes`` and
  ``train.checkpoint_every_minutes`` set to the budget; sampled with the preset's sampler and
  guidance (class-conditional, classes 0..9 in turn, classifier-free guidance; ``--preset
  mnist-fast-uncond`` measures the unconditional variant).
- ``diffusers``: the documented training loop of diffusers' "Train a diffusion model" tutorial
  on the network the issue names: ``UNet2DModel`` with channels 32/64/64, two ResNet blocks per
  level, self-attention at 14x14; ``DDPMScheduler`` (1000 linear steps), AdamW lr 1e-4, 500 warm-up
  steps then a half-cosine decay that reaches 0 at the end of the time budget,
  gradient-norm clipping at 1, batch 64, MSE on the noise, no EMA; sampled with 50 DDIM steps
  (``DDIMScheduler`` built from the training scheduler's config, eta 0).
- ``diffusers-best``: the peer at its best, i.e. mnist-fast's recipe assembled from diffusers' own
  parts: ``UNet2DModel`` with mnist-fast's shape (32/64/64 channels, one ResNet block per level,
  no attention, 8 norm groups) and ``num_class_embeds=11`` (10 classes and a null class, labels
  dropped to it 10% of the time); ``DDPMScheduler`` on the cosine schedule (``squaredcos_cap_v2``)
  with ``prediction_type="v_prediction"``; MSE on ``get_velocity`` weighted by min-SNR-5 in the
  loop (``compute_snr``, ``min(snr, 5) / (snr + 1)`` as diffusers' training scripts do for
  v-prediction); AdamW lr 2e-3 with 100 warm-up steps then constant, clipping at 1, batch 64;
  ``EMAModel`` (decay 0.999 with its warm-up, inv_gamma 1, power 3/4: its example's settings).
  Sampled from the EMA weights with ``DDIMScheduler`` 25 steps, eta 1, "trailing" spacing (the one
  its docs recommend for few steps) and classifier-free guidance w = 0.25 on the v output
  ((1 + w) cond - w uncond): 50 NFE, as mnist-fast.

    .venv/bin/python benchmarks/quality_vs_time.py --minutes 25 --every 5 --out runs/quality-vs-time

``--recipes`` chooses which recipes to train (default: all three); ``--parallel`` trains the chosen
recipes at the same time with one thread each (on 2 cores, choose two); the default trains them one
after the other with every thread. ``--earlier FILE`` adds the rows of recipes not measured in this run
from an earlier run's ``quality_vs_time.json`` (marked as such in the table). Writes the
"## Quality vs training time (MNIST)" section of benchmarks/RESULTS.md, a plot and the final
sample grids in benchmarks/artifacts/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import ARTIFACTS, MNIST_DIR, RESULTS, child, write_section  # noqa: E402
from diffusers_recipes import (BEST_STEPS, BEST_W, sample_diffusers, sample_diffusers_best,  # noqa: E402
                               train_diffusers, train_diffusers_best)
from sampler_quality import evaluator, fd_of  # noqa: E402

HEADING = "## Quality vs training time (MNIST)"


def tag(args) -> str:
    """The suffix of this run's artifacts (``--tag``): another run keeps its own table, plot and grids."""
    return f"_{args.tag}" if args.tag else ""


def heading(args) -> str:
    return HEADING + (f": {args.tag}" if args.tag else "")


# ----------------------------------------------------------------------------- training the recipes
def launch(recipe: str, args, threads: int) -> subprocess.Popen:
    out = Path(args.out) / recipe
    if recipe == "difflab":
        cmd = [sys.executable, "-m", "difflab", "train", "--preset", args.preset, "--out", str(out), "--no-progress",
               "--set", f"data.root={args.data_root}", f"train.max_minutes={args.minutes}",
               f"train.checkpoint_every_minutes={args.every}", f"train.num_threads={threads}",
               # only the time-based checkpoints (step-based ones would push the early marks out of keep_checkpoints)
               f"train.keep_checkpoints={int(math.ceil(args.minutes / args.every)) + 2}", "train.checkpoint_every=100000000",
               f"train.seed={args.seed}"]
    else:
        cmd = [sys.executable, __file__, "--_train-" + recipe, str(out), "--data-root", args.data_root,
               "--minutes", str(args.minutes), "--every", str(args.every), "--seed", str(args.seed),
               "--threads", str(threads)]
    return child(cmd, Path(args.out) / f"{recipe}.log", threads)


def train_all(args) -> None:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "mode.json").write_text(json.dumps({"parallel": args.parallel,
                                                          "threads": 1 if args.parallel else args.threads
                                                          or os.cpu_count(), "recipes": args.recipes}))
    recipes = args.recipes
    if args.parallel:
        procs = [launch(r, args, 1) for r in recipes]
    else:
        procs = []
        for r in recipes:
            p = launch(r, args, args.threads or os.cpu_count())
            p.wait()
            procs.append(p)
    for r, p in zip(recipes, procs):
        if p.wait() != 0:
            raise SystemExit(f"the {r} recipe failed (exit {p.returncode}); see {Path(args.out) / (r + '.log')}")


# ----------------------------------------------------------------------------- evaluation
def points(out: Path, recipe: str, every: float, marks_wanted: list[float] | None = None
           ) -> list[tuple[float, Path, dict]]:
    """(training minutes, checkpoint, info) of every saved point of a recipe (of those at ``marks_wanted``)."""
    found = []
    if recipe == "difflab":
        from difflab.runs import list_checkpoints, load_training_state

        # the time-based checkpoints are the first ones at or past each mark (step-based ones fall between)
        ckpts = [(load_training_state(c)["train_seconds"] / 60, c) for c in list_checkpoints(out / recipe)]
        marks = sorted({math.floor(m / every + 1e-9) * every for m, _ in ckpts})
        for mark in marks:
            minutes, ckpt = min(((m, c) for m, c in ckpts if m >= mark - 1e-9), key=lambda mc: mc[0])
            if minutes - mark > 0.5:
                continue   # that mark's checkpoint was pruned (train.keep_checkpoints)
            found.append((mark, ckpt, {"step": int(ckpt.name.split("_")[-1]), "minutes": minutes}))
    else:
        for meta in sorted((out / recipe).glob("min_*.json")):
            info = json.loads(meta.read_text())
            found.append((info["minutes"], meta.with_suffix(".pt"), {"step": info["step"],
                                                                     "minutes": info["train_seconds"] / 60}))
    found = [p for p in found if p[0] > 0 and (not marks_wanted or any(abs(p[0] - m) < 1e-9 for m in marks_wanted))]
    return sorted({p[0]: p for p in found}.values(), key=lambda p: p[0])   # one point per mark


def sample_difflab(run, n: int, seed: int, batch: int, steps: int | None = None,
                   guidance: str | None = None) -> tuple[torch.Tensor, int, str]:
    """``n`` samples with the run's own sampler and default guidance (classes cycling 0..9 for a
    class-conditional run), or with ``steps`` / ``guidance`` (a weight w, or "none") instead;
    sample i seeded ``seed * 2^20 + i``. The NFE is the sampler's count, which counts both halves of
    a classifier-free guided batch (two network evaluations per step)."""
    from difflab.sampling import build_guided_model, sample_images

    s = dataclasses.replace(run.config.sample, seed=seed, batch_size=batch)
    if steps is not None:
        s = dataclasses.replace(s, steps=steps)
    if guidance is not None:
        s = dataclasses.replace(s, guidance_scale=None if guidance == "none" else float(guidance))
    guided = build_guided_model(run, s)
    m = run.config.model
    out = sample_images(guided.model, guided.diffusion, s, shape=(m.in_channels, m.image_size, m.image_size), n=n,
                        num_classes=m.num_classes, sampler_options=guided.sampler_options)
    cfg = s.guidance_scale is not None
    how = (f"{s.sampler} {s.steps} steps" + (f", eta {s.eta:g}" if s.sampler in ("ddim", "dpm++2m") else "")
           + (f", classes cycling 0..9, {guided.description}" if cfg else ""))
    return out.sample.clamp(-1, 1), out.nfe, how


def evaluate_recipe(args, recipe: str) -> list[dict]:
    """FD of every saved point of one recipe; writes <out>/<recipe>.eval.json."""
    from difflab.runs import load_run
    from difflab.viz import save_grid

    out = Path(args.out)
    feat, ref, train, test = evaluator("mnist", args.data_root)
    g = torch.Generator().manual_seed(args.seed)
    floor = fd_of(feat, ref, train.to_float()[torch.randperm(len(train), generator=g)[:args.n]])
    print(f"floor: {args.n} training images vs test: FD {floor:.3f}", flush=True)
    rows, saved = [], points(out, recipe, args.every, args.eval_marks)
    for minutes, path, info in saved:
        t0 = time.perf_counter()
        if recipe == "difflab":
            images, nfe, how = sample_difflab(load_run(path), args.n, args.seed, args.batch, args.difflab_steps,
                                              args.difflab_guidance)
        elif recipe == "diffusers":
            images, nfe, how = sample_diffusers(path, args.n, args.seed, args.batch), 50, "DDIMScheduler 50 steps"
        else:
            w = BEST_W if args.best_guidance is None else args.best_guidance
            images, nfe = sample_diffusers_best(path, args.n, args.seed, args.batch, w), BEST_STEPS * (2 if w else 1)
            how = (f"DDIMScheduler {BEST_STEPS} steps, eta 1, trailing, classes cycling 0..9, "
                   + (f"classifier-free guidance w={w:g}" if w else "no guidance"))
        fd = fd_of(feat, ref, images)
        rows.append(dict(recipe=recipe, minutes=minutes, train_minutes=info["minutes"], step=info["step"],
                         fd=fd, floor=floor, nfe=nfe, sampler=how, eval_seconds=time.perf_counter() - t0))
        print(json.dumps(rows[-1]), flush=True)
        if minutes == saved[-1][0]:
            save_grid(images[:64], ARTIFACTS / f"quality_vs_time{tag(args)}_{recipe}_samples.png", nrow=8)
    if recipe == "difflab" and saved and args.final_n and args.final_n != args.n:
        # the 3x-floor target is stated for 1,000 samples: the last point again at that count
        t0 = time.perf_counter()
        floor_n = fd_of(feat, ref, train.to_float()[torch.randperm(len(train), generator=g)[:args.final_n]])
        images, nfe, how = sample_difflab(load_run(saved[-1][1]), args.final_n, args.seed, args.batch,
                                          args.difflab_steps, args.difflab_guidance)
        rows.append(dict(recipe="difflab-final", minutes=saved[-1][0], train_minutes=saved[-1][2]["minutes"],
                         step=saved[-1][2]["step"], fd=fd_of(feat, ref, images), floor=floor_n, n=args.final_n,
                         nfe=nfe, sampler=how, eval_seconds=time.perf_counter() - t0))
        print(json.dumps(rows[-1]), flush=True)
    (out / f"{recipe}.eval.json").write_text(json.dumps(rows, indent=1))
    return rows


def evaluate_all(args) -> list[dict]:
    """The recipes' points, evaluated in one process each at once (one thread each) with --parallel;
    with ``--earlier``, the rows of recipes not measured here come from an earlier run's file."""
    recipes = args.recipes
    if args.parallel:
        common = ["--out", args.out, "--data-root", args.data_root, "--every", str(args.every), "--n", str(args.n),
                  *(["--difflab-steps", str(args.difflab_steps)] if args.difflab_steps else []),
                  *(["--difflab-guidance", args.difflab_guidance] if args.difflab_guidance else []),
                  *(["--best-guidance", str(args.best_guidance)] if args.best_guidance is not None else []),
                  "--final-n", str(args.final_n),
                  *(["--eval-marks", *map(str, args.eval_marks)] if args.eval_marks else []),
                  *(["--tag", args.tag] if args.tag else []),
                  "--batch", str(args.batch), "--seed", str(args.seed), "--threads", "1"]
        procs = [child([sys.executable, __file__, "--_eval-recipe", r, *common], Path(args.out) / f"{r}.eval.log")
                 for r in recipes]
        for r, p in zip(recipes, procs):
            if p.wait() != 0:
                raise SystemExit(f"evaluating {r} failed; see {Path(args.out) / (r + '.eval.log')}")
        rows = [row for r in recipes for row in json.loads((Path(args.out) / f"{r}.eval.json").read_text())]
    else:
        rows = [row for r in recipes for row in evaluate_recipe(args, r)]
    if args.earlier:
        rows += [dict(row, earlier=str(args.earlier)) for row in json.loads(Path(args.earlier).read_text())
                 if row["recipe"].removesuffix("-final") not in recipes]
    (ARTIFACTS / f"quality_vs_time{tag(args)}.json").write_text(json.dumps(rows, indent=1))
    return rows


LABELS = {"difflab": "difflab {preset}", "diffusers": "diffusers tutorial recipe",
          "diffusers-best": "diffusers at its best (mnist-fast's recipe)"}


def report(rows: list[dict], args, argv: list[str]) -> str:
    from difflab.viz import new_figure, save_figure

    final = next((r for r in rows if r["recipe"] == "difflab-final"), None)
    rows = [r for r in rows if r["recipe"] != "difflab-final"]
    floor = next(r["floor"] for r in rows if not r.get("earlier"))
    by = {(r["recipe"], r["minutes"]): r for r in rows}
    recipes = [r for r in LABELS if any(row["recipe"] == r for row in rows)]
    peers = [r for r in recipes if r != "difflab"]
    label = {r: LABELS[r].format(preset=args.preset) for r in recipes}
    marks = sorted({r["minutes"] for r in rows})
    how = json.loads((Path(args.out) / "mode.json").read_text())
    trained = how.get("recipes", ["difflab", "diffusers"])
    mode = (f"the recipes at the same time, one thread each ({', '.join(trained)})"
            if how["parallel"] and len(trained) > 1 else "one thread" if how["parallel"]
            else f"one recipe after the other, {how['threads']} thread(s) each")
    earlier = sorted({r["earlier"] for r in rows if r.get("earlier")})
    lines = [heading(args), "", f"Command: `python benchmarks/quality_vs_time.py {' '.join(argv)}`", "",
             f"MNIST, {args.minutes:g} minutes of training wall-clock per recipe on this machine ({mode}); "
             f"every {args.every:g} minutes of training time the weights are saved and later evaluated: {args.n} "
             f"samples (sample i seeded {args.seed} * 2^20 + i), Frechet distance to the 10k test split in the feature "
             "space of difflab's clean evaluation classifier (`eval-classifier-mnist`, 99.55% test accuracy). "
             f"Floor: {args.n} real training images against the test split: FD **{floor:.3f}**.", "",
             *([f"Rows of {', '.join(sorted({r['recipe'] for r in rows if r.get('earlier')}))} come from an earlier "
                f"run of this benchmark ({', '.join(earlier)}): same machine, same settings, evaluated the same way.",
                ""] if earlier else []),
             *(["difflab's `mnist-fast` is class-conditional: it trains on the labels (dropped to the null class 10% "
                "of the time) and its samples request the classes 0..9 in turn, with classifier-free guidance; the "
                "diffusers tutorial recipe is unconditional, as its tutorial is; the diffusers recipe at its best is "
                "mnist-fast's recipe built from diffusers' parts (module docstring of the benchmark).", ""]
               if args.preset == "mnist-fast" else []),
             "| training minutes | " + " | ".join(f"{label[r]}: step | FD | FD / floor" for r in recipes)
             + "".join(f" | difflab / {r}" for r in peers if "difflab" in recipes) + " |",
             "|---" * (1 + 3 * len(recipes) + (len(peers) if "difflab" in recipes else 0)) + "|"]
    for m in marks:
        cells = [f"{m:g}"]
        for rec in recipes:
            r = by.get((rec, m))
            cells += ([str(r["step"]) + (" *" if r.get("replayed") else ""), f"{r['fd']:.2f}",
                       f"{r['fd'] / r['floor']:.2f}x"] if r else ["-", "-", "-"])
        if "difflab" in recipes:
            a = by.get(("difflab", m))
            cells += [f"{a['fd'] / b['fd']:.2f}" if a and b else "-" for b in (by.get((p, m)) for p in peers)]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.get("replayed") for r in rows):
        lines += ["", "\\* This checkpoint was pruned during the run (train.keep_checkpoints counted the step-based "
                  "checkpoints too; fixed since: the benchmark now keeps only the time-based ones). It was re-created by "
                  "replaying the same seed to the same step on one thread (a replay to step 500 gave weights "
                  "bit-identical to the run's own step-500 checkpoint); the step is the first whose logged training "
                  "time passes the mark, interpolated between the logged steps."]
    first = {rec: next(r for r in rows if r["recipe"] == rec) for rec in recipes}
    lines += ["", "Samplers: " + "; ".join(f"{label[rec]}: {first[rec]['sampler']} ({first[rec]['nfe']} NFE)"
                                           for rec in recipes)
              + ". NFE: network evaluations per sample; a classifier-free guided step counts two.", ""]
    ours = [r for r in rows if r["recipe"] == "difflab"]
    targets = []
    if ours and "diffusers" in recipes:
        half = all(by[("difflab", m)]["fd"] <= 0.5 * by[("diffusers", m)]["fd"] for m in marks
                   if ("difflab", m) in by and ("diffusers", m) in by)
        targets.append(f"difflab at most half of the diffusers tutorial recipe's distance at every point: "
                       f"{'met' if half else 'NOT met'}")
    for limit, at in ((3.0, 10.0), (1.5, 25.0), (3.0, 25.0)):
        r = (final if final and abs(final["minutes"] - at) < 1e-9 else by.get(("difflab", at)))
        if r:
            targets.append(f"difflab at most {limit:g}x the floor after {at:g} minutes ({r.get('n', args.n)} samples): "
                           f"FD {r['fd']:.2f} against a floor of {r['floor']:.2f} = {r['fd'] / r['floor']:.2f}x, "
                           f"{'met' if r['fd'] <= limit * r['floor'] else 'NOT met'}")
    lines += ["Targets: " + "; ".join(targets) + ".", ""] if targets else []
    plot = ARTIFACTS / f"quality_vs_time{tag(args)}.png"
    fig = new_figure((6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for rec in recipes:
        rs = [r for r in rows if r["recipe"] == rec]
        ax.plot([r["minutes"] for r in rs], [r["fd"] for r in rs], marker="o", label=label[rec])
    ax.axhline(floor, color="gray", linestyle="--", label=f"floor ({args.n} real train vs test)")
    ax.axhline(3 * floor, color="gray", linestyle=":", label="3x floor")
    ax.set_yscale("log")
    ax.set_xlabel("training wall-clock (minutes)")
    ax.set_ylabel("Frechet distance to test split")
    ax.legend(fontsize=8)
    save_figure(fig, plot)
    lines += [f"![quality vs time]({plot.relative_to(RESULTS.parent).as_posix()})", "",
              "Final samples (first 64 of the evaluated samples): " + ", ".join(label[r] for r in recipes) + ":", "",
              " ".join(f"![{r}](artifacts/quality_vs_time{tag(args)}_{r}_samples.png)" for r in recipes), ""]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=25.0, help="training wall-clock per recipe")
    ap.add_argument("--preset", default="mnist-fast", help="difflab's recipe (mnist-fast-uncond: without labels)")
    ap.add_argument("--every", type=float, default=5.0, help="evaluate every N minutes of training")
    ap.add_argument("--out", default="runs/quality-vs-time")
    ap.add_argument("--data-root", default=str(MNIST_DIR))
    ap.add_argument("--n", type=int, default=1000, help="samples per evaluation")
    ap.add_argument("--final-n", type=int, default=1000, help="samples for the last difflab point (3x-floor target)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="threads per recipe (default: all cores)")
    ap.add_argument("--parallel", action="store_true", help="train both recipes at once, one thread each")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the saved points of an earlier run")
    ap.add_argument("--train-only", action="store_true", help="train and save the points; evaluate later")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    ap.add_argument("--difflab-steps", type=int, default=None, help="sampling steps for difflab (default: the run's)")
    ap.add_argument("--difflab-guidance", default=None,
                    help="classifier-free guidance weight w for difflab, or 'none' (default: the run's)")
    ap.add_argument("--best-guidance", type=float, default=None,
                    help=f"guidance weight for diffusers-best (default: {BEST_W:g}, as mnist-fast; 0: none)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the RESULTS.md section from benchmarks/artifacts/quality_vs_time.json")
    ap.add_argument("--tag", default=None, help="a name for this run: its RESULTS.md section and artifacts get it "
                                                "as a suffix (default: the main section)")
    ap.add_argument("--eval-marks", nargs="+", type=float, default=None,
                    help="evaluate only the points saved at these training minutes (default: every point)")
    ap.add_argument("--recipes", nargs="+", choices=tuple(LABELS), default=list(LABELS),
                    help="the recipes to train and evaluate (default: all three)")
    ap.add_argument("--earlier", default=None, help="an earlier run's quality_vs_time.json: its rows of the "
                                                    "recipes not measured here join the table")
    ap.add_argument("--_train-diffusers", dest="train_diffusers", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_train-diffusers-best", dest="train_diffusers_best", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_eval-recipe", dest="eval_recipe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_diffusers:
        train_diffusers(Path(args.train_diffusers), args.data_root, args.minutes, args.every, args.seed)
        return
    if args.train_diffusers_best:
        train_diffusers_best(Path(args.train_diffusers_best), args.data_root, args.minutes, args.every, args.seed)
        return
    if args.eval_recipe:
        evaluate_recipe(args, args.eval_recipe)
        return
    if args.report_only:
        rows = json.loads((ARTIFACTS / f"quality_vs_time{tag(args)}.json").read_text())
    else:
        if not args.eval_only:
            train_all(args)
        if args.train_only:
            return
        rows = evaluate_all(args)
    text = report(rows, args, [a for a in argv if a not in ("--eval-only", "--train-only", "--report-only")])
    print(text)
    if not args.no_write:
        write_section(RESULTS, heading(args), text)


if __name__ == "__main__":
    main()
