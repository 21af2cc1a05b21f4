"""Sample quality against the number of network evaluations, for every sampler, on one trained model.

Ours: DDPM (full chain, sigma^2 = beta-tilde and beta), DDIM (eta 0 / 0.5 / 1 at 10, 20, 50,
100 steps), DPM-Solver++(2M) and Heun (about 10 and 20 NFE). Peers on the same model and
the same starting noise: diffusers' DDIMScheduler and DPMSolverMultistepScheduler at 10 and 20 NFE.

Quality = Frechet distance to the held-out test split in the feature space of difflab's
clean evaluation classifier (trained on the training split only), with the same number of
samples for every row, and the floor: that many real training images against the test split.

    .venv/bin/python benchmarks/sampler_quality.py --run runs/digits-demo --dataset digits --n 1000

Writes the "## Sampler quality (<dataset>)" section of benchmarks/RESULTS.md and a plot in
benchmarks/artifacts/.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import ARTIFACTS, RESULTS, child, write_section  # noqa: E402  (puts the repository on sys.path)
from difflab.data import load_dataset  # noqa: E402
from difflab.eval import (EvalClassifierConfig, compute_stats, frechet_distance,  # noqa: E402
                          load_eval_classifier, train_eval_classifier, save_eval_classifier)
from difflab.eval.classifier import ClassifierFeaturizer  # noqa: E402
from difflab.rng import per_sample_generators, randn  # noqa: E402
from difflab.samplers import get_sampler  # noqa: E402
from difflab.runs import load_run  # noqa: E402
from difflab.sampling import class_labels  # noqa: E402



# ----------------------------------------------------------------------------- evaluator
def evaluator(dataset: str, data_root: str | None):
    """The clean classifier's featurizer and the test split's statistics."""
    train = load_dataset(dataset, root=data_root, split="train")
    test = load_dataset(dataset, root=data_root, split="test")
    path = ARTIFACTS / f"eval_classifier_{dataset.replace('-', '_')}"
    if (path / "model.safetensors").is_file():
        clf = load_eval_classifier(path)
    else:
        size = max(16, train.images.shape[-1])
        epochs = 30 if len(train) < 5000 else 3
        clf = train_eval_classifier(train.to_float(), train.labels, epochs=epochs, seed=0,
                                    config=EvalClassifierConfig(in_channels=train.images.shape[1], image_size=size))
        save_eval_classifier(clf, path, metadata={"dataset": dataset, "epochs": epochs})
    feat = ClassifierFeaturizer(clf, name=f"eval-classifier-{dataset}")
    ref = compute_stats(feat.features(test.to_float()), feat.name, dataset, "test")
    return feat, ref, train, test


def fd_of(feat, ref, images: torch.Tensor) -> float:
    return frechet_distance(compute_stats(feat.features(images), feat.name, "samples", "generated"), ref)


# ----------------------------------------------------------------------------- samplers
def conditioning(run, start: int, stop: int) -> dict:
    """Model inputs beyond (x, t) for samples start..stop-1: a class-conditional run samples sample i
    as class i mod num_classes (no guidance); an unconditional run takes nothing."""
    labels = class_labels(stop, run.config.model.num_classes)
    return {} if labels is None else {"y": labels[start:stop]}


def ours(run, name: str, steps, n: int, seed: int, batch: int, **opts):
    sampler = get_sampler(name)
    params = inspect.signature(sampler).parameters
    shape = (run.config.model.in_channels, run.config.model.image_size, run.config.model.image_size)
    outs, nfe = [], 0
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        gens = per_sample_generators([seed * 2**20 + i for i in range(start, stop)])
        x_T = randn((len(gens), *shape), gens)
        kw = {k: v for k, v in opts.items() if k in params}
        out = sampler(run.model, run.diffusion, x_T, steps=steps, generator=gens, clip_denoised=True,
                      model_kwargs=conditioning(run, start, stop), **kw)
        outs.append(out.sample)
        nfe = out.nfe
    return torch.cat(outs).clamp(-1, 1), nfe


def diffusers_peer(run, kind: str, steps: int, n: int, seed: int, batch: int):
    """diffusers' scheduler loop on our model, with our betas and prediction type."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    d = run.diffusion
    pred = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[d.prediction]
    common = dict(num_train_timesteps=d.num_timesteps, trained_betas=d.terms.betas.astype(np.float32),
                  prediction_type=pred)
    if kind == "ddim":
        sched = DDIMScheduler(clip_sample=True, set_alpha_to_one=True, **common)
    else:
        # thresholding with sample_max_value=1 clips pred_x0 to [-1, 1], as clip_sample does for DDIM and
        # clip_denoised for ours (without it diffusers' DPM-Solver diverges on this cosine-schedule model)
        sched = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, thresholding=True,
                                            sample_max_value=1.0, **common)
    shape = (run.config.model.in_channels, run.config.model.image_size, run.config.model.image_size)
    outs = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        gens = per_sample_generators([seed * 2**20 + i for i in range(start, stop)])
        x = randn((len(gens), *shape), gens)
        cond = conditioning(run, start, stop)
        sched.set_timesteps(steps)
        with torch.no_grad():
            for t in sched.timesteps:
                tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
                out = run.model(x, tt, **cond)
                x = sched.step(out, t, x).prev_sample
        outs.append(x)
    return torch.cat(outs).clamp(-1, 1), steps


def configurations(quick: bool):
    """Every row: (implementation, sampler name or scheduler kind, label, steps, options)."""
    rows = [("difflab", "ddpm", "DDPM, sigma^2 = beta-tilde", None, dict(variance="fixed_small")),
            ("difflab", "ddpm", "DDPM, sigma^2 = beta", None, dict(variance="fixed_large"))]
    for eta in (0.0, 0.5, 1.0):
        for steps in ((10, 20, 50) if quick else (10, 20, 50, 100)):
            rows.append(("difflab", "ddim", f"DDIM eta={eta:g}", steps, dict(eta=eta)))
    for steps in (10, 20):
        rows.append(("difflab", "dpm++2m", "DPM-Solver++(2M)", steps, {}))
    for steps in (6, 11):   # Heun: 2 * steps - 1 NFE -> 11 and 21
        rows.append(("difflab", "heun", "Heun (EDM)", steps, {}))
    for kind, label in (("ddim", "diffusers DDIMScheduler (eta 0)"), ("dpm", "diffusers DPMSolverMultistep (2M)")):
        for steps in (10, 20):
            rows.append(("diffusers", kind, label, steps, {}))
    return rows


def cost(row, num_timesteps: int) -> int:
    """Network evaluations per sample, near enough to balance rows over processes."""
    impl, name, _, steps, _ = row
    return num_timesteps if steps is None else (2 * steps - 1 if name == "heun" else steps)


def split_rows(rows: list, jobs: int, num_timesteps: int) -> list[list[int]]:
    """Row indices for each of ``jobs`` processes: longest first, each to the least loaded process."""
    parts, loads = [[] for _ in range(jobs)], [0] * jobs
    for i in sorted(range(len(rows)), key=lambda i: -cost(rows[i], num_timesteps)):
        j = loads.index(min(loads))
        parts[j].append(i)
        loads[j] += cost(rows[i], num_timesteps)
    return [sorted(p) for p in parts if p]


def drop_flags(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` without the given ``--flag value`` pairs."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return out


def measure(run, feat, ref, row, args) -> dict:
    impl, name, label, steps, opts = row
    t0 = time.perf_counter()
    if impl == "difflab":
        images, nfe = ours(run, name, steps, args.n, args.seed, args.batch, **opts)
    else:
        images, nfe = diffusers_peer(run, name, steps, args.n, args.seed, args.batch)
    return dict(sampler=label, impl=impl, nfe=nfe, fd=fd_of(feat, ref, images), seconds=time.perf_counter() - t0)


def measure_in_processes(rows: list, parts: list[list[int]], argv: list[str]) -> list[dict]:
    """Run each part's rows in its own single-threaded process (``--_rows``) and gather their results."""
    with tempfile.TemporaryDirectory(prefix="sampler_quality_") as workdir:
        procs = []
        for k, part in enumerate(parts):
            out = Path(workdir) / f"part{k}.json"
            cmd = [sys.executable, __file__, *argv, "--threads", "1", "--_rows", ",".join(map(str, part)),
                   "--_rows-out", str(out)]
            print(f"process {k}: " + "; ".join(f"{rows[i][2]} {rows[i][3] or ''}".strip() for i in part), flush=True)
            procs.append((child(cmd), out))
        table = []
        for p, out in procs:
            if p.wait() != 0:
                raise SystemExit(f"a measuring process failed (exit {p.returncode}); its rows are missing")
            table += json.loads(out.read_text())
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder trained with difflab")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n", type=int, default=1000, help="samples per row")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="fewer DDIM step counts")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    ap.add_argument("--only", default=None, help="re-measure only rows whose label contains this text; the other "
                                                 "rows come from the previous run's JSON")
    ap.add_argument("--report-only", action="store_true", help="write the section from the stored rows "
                                                                  "(benchmarks/artifacts/sampler_quality_<dataset>.json)")
    ap.add_argument("--jobs", type=int, default=1, help="measure the rows in this many single-threaded processes "
                                                         "at once (one per core); the figures do not change")
    ap.add_argument("--_rows", dest="rows", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_rows-out", dest="rows_out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")

    run = load_run(args.run)
    feat, ref, train, test = evaluator(args.dataset, args.data_root)
    rows = configurations(args.quick)
    if args.rows is not None:   # a worker of --jobs: measure these rows only, hand them back in a file
        done = []
        for i in map(int, args.rows.split(",")):
            done.append(measure(run, feat, ref, rows[i], args))
            print(json.dumps(done[-1]), flush=True)
        Path(args.rows_out).write_text(json.dumps(done))
        return
    g = torch.Generator().manual_seed(args.seed)
    floor_idx = torch.randperm(len(train), generator=g)[:args.n]
    floor = fd_of(feat, ref, train.to_float()[floor_idx])
    print(f"floor: {args.n} training images vs test: FD {floor:.3f}", flush=True)

    stored = ARTIFACTS / f"sampler_quality_{args.dataset}.json"
    wanted = (lambda label: args.only in label) if args.only else (lambda label: True)
    if args.report_only:
        table, todo = json.loads(stored.read_text()), []
    else:
        table = [r for r in json.loads(stored.read_text()) if not wanted(r["sampler"])] if args.only else []
        todo = [row for row in rows if wanted(row[2])]
    if args.jobs > 1 and len(todo) > 1:
        # workers get their rows by index, one thread each
        worker_argv = drop_flags(argv if argv is not None else sys.argv[1:], ("--jobs", "--threads", "--only"))
        parts = split_rows(todo, args.jobs, run.diffusion.num_timesteps)
        index = [rows.index(row) for row in todo]
        table += measure_in_processes(rows, [[index[i] for i in part] for part in parts], worker_argv)
    else:
        for row in todo:
            table.append(measure(run, feat, ref, row, args))
            print(json.dumps(table[-1]), flush=True)

    stored.write_text(json.dumps(table, indent=1))
    ddpm_best = min(r["fd"] for r in table if r["sampler"].startswith("DDPM"))
    best10 = min((r for r in table if r["impl"] == "difflab" and r["nfe"] <= 10), key=lambda r: r["fd"])
    peer10 = min((r for r in table if r["impl"] == "diffusers" and r["nfe"] <= 10), key=lambda r: r["fd"])
    # the table is the full run's (--only re-measured some rows of it)
    cmd = "python benchmarks/sampler_quality.py " + " ".join(
        a for a in drop_flags(argv if argv is not None else sys.argv[1:], ("--only",))
        if a not in ("--report-only", "--no-write"))
    lines = [f"## Sampler quality ({args.dataset})", "",
             f"Command: `{cmd}`", "",
             f"Model: `{args.run}` (step {run.step}, {run.weights} weights; prediction {run.diffusion.prediction}, "
             f"{run.config.diffusion.schedule} schedule, T={run.diffusion.num_timesteps}"
             + (f"; class-conditional, sample i drawn as class i mod {run.config.model.num_classes}, no guidance"
                if run.config.model.num_classes else "") + "). "
             f"Featurizer: `{feat.name}` (difflab's clean classifier, trained on the training split only); "
             f"reference: the {len(test)}-image test split. {args.n} samples per row, sample i seeded "
             f"{args.seed} * 2^20 + i (the same starting noise for every row), predicted x_0 clipped to [-1, 1].", "",
             f"Floor: {args.n} real training images against the test split: FD **{floor:.3f}**.", "",
             "| sampler | implementation | NFE | FD | FD / floor | seconds |", "|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: (r["impl"] != "difflab", r["sampler"], r["nfe"])):
        lines.append(f"| {r['sampler']} | {r['impl']} | {r['nfe']} | {r['fd']:.3f} | {r['fd'] / floor:.2f} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", f"Targets: best difflab sampler at <= 10 NFE ({best10['sampler']}, {best10['nfe']} NFE): "
                  f"FD {best10['fd']:.3f} = {best10['fd'] / ddpm_best:.2f}x the best DDPM-1000 ({ddpm_best:.3f}) "
                  f"(target <= 1.5x: {'met' if best10['fd'] <= 1.5 * ddpm_best else 'NOT met'}); "
                  f"best diffusers scheduler at 10 NFE: {peer10['fd']:.3f} "
                  f"({'ours at least as good' if best10['fd'] <= peer10['fd'] else 'diffusers better'}).", ""]
    plot = ARTIFACTS / f"sampler_quality_{args.dataset}.png"
    from difflab.viz import new_figure, save_figure
    fig = new_figure((7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    labels = sorted({r["sampler"] for r in table})
    for lab in labels:
        rs = sorted((r for r in table if r["sampler"] == lab), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rs], [r["fd"] for r in rs], marker="o", label=lab)
    ax.axhline(floor, color="gray", linestyle="--", label="floor (real train vs test)")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("Frechet distance to test split")
    ax.legend(fontsize=7)
    save_figure(fig, plot)
    lines += [f"![sampler quality]({plot.relative_to(RESULTS.parent).as_posix()})", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(RESULTS, f"## Sampler quality ({args.dataset})", text)


if __name__ == "__main__":
    main()
