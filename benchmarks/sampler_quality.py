"""Sample quality against the number of network evaluations, for every sampler, on one trained model.

Ours: DDPM (full chain, sigma^2 = beta-tilde and beta), DDIM (eta 0 / 0.5 / 1 at 10, 20, 50,
100 steps), DPM-Solver++(2M), its SDE and Heun (about 10 and 20 NFE), the last three also on the
Karras grid. Peers on the same model and the same starting noise: diffusers' DDIMScheduler and
DPMSolverMultistepScheduler (dpmsolver++ and sde-dpmsolver++, with and without use_karras_sigmas)
at 10 and 20 NFE. NFE = network evaluations per sample (a classifier-free guided step would count
two; these rows are unguided).

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
        # kind: dpm, dpm-sde, dpm-karras or dpm-sde-karras. thresholding with sample_max_value=1 clips pred_x0
        # to [-1, 1], as clip_sample does for DDIM and clip_denoised for ours (without it diffusers' DPM-Solver
        # diverges on this cosine-schedule model)
        sched = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++" if "sde" in kind else "dpmsolver++",
                                            solver_order=2, thresholding=True, sample_max_value=1.0,
                                            use_karras_sigmas="karras" in kind, **common)
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
                # the SDE's noise from the per-sample generators (after x_T), as ours draws it
                extra = {"generator": gens} if "sde" in kind else {}
                x = sched.step(out, t, x, **extra).prev_sample
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
        rows.append(("difflab", "dpm++2m", "DPM-Solver++(2M), Karras", steps, dict(sigma_schedule="karras")))
        rows.append(("difflab", "dpm++2m-sde", "DPM-Solver++(2M) SDE", steps, {}))
        rows.append(("difflab", "dpm++2m-sde", "DPM-Solver++(2M) SDE, Karras", steps, dict(sigma_schedule="karras")))
    for steps in (6, 11):   # Heun: 2 * steps - 1 NFE -> 11 and 21
        rows.append(("difflab", "heun", "Heun (EDM)", steps, {}))
        rows.append(("difflab", "heun", "Heun (EDM), Karras", steps, dict(sigma_schedule="karras")))
    for kind, label in (("ddim", "diffusers DDIMScheduler (eta 0)"), ("dpm", "diffusers DPMSolverMultistep (2M)"),
                        ("dpm-sde", "diffusers DPMSolverMultistep (2M SDE)"),
                        ("dpm-karras", "diffusers DPMSolverMultistep (2M, Karras)"),
                        ("dpm-sde-karras", "diffusers DPMSolverMultistep (2M SDE, Karras)")):
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


def targets_line(table: list[dict]) -> str:
    """The targets: the best difflab sampler at <= 10 NFE against the best DDPM-1000, against DDIM eta=1 at
    10 NFE and against the best diffusers scheduler at <= 10 NFE (each part only where its rows exist;
    rows that failed, with fd None, are left out)."""
    table = [r for r in table if r["fd"] is not None]
    mine = [r for r in table if r["impl"] == "difflab" and r["nfe"] <= 10]
    if not mine:
        return "Targets: no difflab row at <= 10 NFE."
    best10 = min(mine, key=lambda r: r["fd"])
    parts = [f"Targets: best difflab sampler at <= 10 NFE ({best10['sampler']}, {best10['nfe']} NFE): "
             f"FD {best10['fd']:.3f}"]
    ddpm = [r["fd"] for r in table if r["sampler"].startswith("DDPM")]
    if ddpm:
        parts.append(f"= {best10['fd'] / min(ddpm):.2f}x the best DDPM-1000 ({min(ddpm):.3f}) (target <= 1.5x: "
                     f"{'met' if best10['fd'] <= 1.5 * min(ddpm) else 'NOT met'});")
    eta1 = [r for r in table if r["sampler"] == "DDIM eta=1" and r["nfe"] == 10]
    others = [r for r in mine if r["sampler"] != "DDIM eta=1"]
    if eta1 and others:
        rival = min(others, key=lambda r: r["fd"])
        parts.append(f"best other than DDIM eta=1: {rival['sampler']} {rival['fd']:.3f} against DDIM eta=1's "
                     f"{eta1[0]['fd']:.3f} (target: below: {'met' if rival['fd'] < eta1[0]['fd'] else 'NOT met'});")
    peers = [r for r in table if r["impl"] == "diffusers" and r["nfe"] <= 10]
    if peers:
        peer10 = min(peers, key=lambda r: r["fd"])
        parts.append(f"best diffusers scheduler at 10 NFE: {peer10['sampler']} {peer10['fd']:.3f} "
                     f"({'ours at least as good' if best10['fd'] <= peer10['fd'] else 'diffusers better'}).")
    return " ".join(parts)


def measure(run, feat, ref, row, args) -> dict:
    impl, name, label, steps, opts = row
    t0 = time.perf_counter()
    if impl == "difflab":
        images, nfe = ours(run, name, steps, args.n, args.seed, args.batch, **opts)
    else:
        try:
            images, nfe = diffusers_peer(run, name, steps, args.n, args.seed, args.batch)
        except Exception as e:   # a peer that cannot sample this model is a result too: say how it failed
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            return dict(sampler=label, impl=impl, nfe=steps, fd=None, error=error, seconds=time.perf_counter() - t0)
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
    ap.add_argument("--max-nfe", type=int, default=None, help="only rows with at most this many network evaluations")
    ap.add_argument("--min-nfe", type=int, default=0, help="only rows with at least this many network evaluations")
    ap.add_argument("--tag", default=None, help="a name for this model's table: section '## Sampler quality "
                                                "(<dataset>, <tag>)' and its own JSON / plot, beside the untagged one")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    ap.add_argument("--only", default=None, help="re-measure only rows whose label contains this text (alternatives "
                                                 "separated by |); the other rows come from the previous run's JSON")
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
    T = run.diffusion.num_timesteps
    rows = [r for r in rows if args.min_nfe <= cost(r, T) <= (args.max_nfe or T)]
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

    name = args.dataset + (f"_{args.tag}" if args.tag else "")
    heading = f"## Sampler quality ({args.dataset}" + (f", {args.tag})" if args.tag else ")")
    stored = ARTIFACTS / f"sampler_quality_{name}.json"
    only = args.only.split("|") if args.only else [""]
    wanted = lambda label: any(p in label for p in only)  # noqa: E731
    if args.report_only:
        table, todo = json.loads(stored.read_text()), []
    else:
        # rows re-measured now replace their stored versions; every other stored row is kept
        redo = {(row[2], cost(row, T)) for row in rows if wanted(row[2])}
        table = [r for r in json.loads(stored.read_text()) if (r["sampler"], r["nfe"]) not in redo] \
            if args.only else []
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
    # the table is the full run's (--only re-measured some rows of it)
    cmd = "python benchmarks/sampler_quality.py " + " ".join(
        a for a in drop_flags(argv if argv is not None else sys.argv[1:], ("--only",))
        if a not in ("--report-only", "--no-write"))
    lines = [heading, "",
             f"Command: `{cmd}`", "",
             f"Model: `{args.run}` (step {run.step}, {run.weights} weights; prediction {run.diffusion.prediction}, "
             f"{run.config.diffusion.schedule} schedule, T={run.diffusion.num_timesteps}"
             + (f"; class-conditional, sample i drawn as class i mod {run.config.model.num_classes}, no guidance"
                if run.config.model.num_classes else "") + "). "
             f"Featurizer: `{feat.name}` (difflab's clean classifier, trained on the training split only); "
             f"reference: the {len(test)}-image test split. {args.n} samples per row, sample i seeded "
             f"{args.seed} * 2^20 + i (the same starting noise for every row), predicted x_0 clipped to [-1, 1]. "
             "NFE: network evaluations per sample (a classifier-free guided step would count two; these rows are "
             "unguided).", "",
             f"Floor: {args.n} real training images against the test split: FD **{floor:.3f}**.", "",
             "| sampler | implementation | NFE | FD | FD / floor | seconds |", "|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: (r["impl"] != "difflab", r["sampler"], r["nfe"])):
        if r["fd"] is None:
            lines.append(f"| {r['sampler']} | {r['impl']} | {r['nfe']} | failed: {r['error']} | - | "
                         f"{r['seconds']:.0f} |")
            continue
        lines.append(f"| {r['sampler']} | {r['impl']} | {r['nfe']} | {r['fd']:.3f} | {r['fd'] / floor:.2f} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", targets_line(table), ""]
    plot = ARTIFACTS / f"sampler_quality_{name}.png"
    from difflab.viz import new_figure, save_figure
    fig = new_figure((7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    measured = [r for r in table if r["fd"] is not None]
    labels = sorted({r["sampler"] for r in measured})
    for lab in labels:
        rs = sorted((r for r in measured if r["sampler"] == lab), key=lambda r: r["nfe"])
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
        write_section(RESULTS, heading, text)


if __name__ == "__main__":
    main()
