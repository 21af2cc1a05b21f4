"""The DDPM / Improved DDPM ablation on MNIST: L_simple against L_hybrid with learned variance.

Two runs of the same network, data, optimiser and wall-clock budget (``difflab train --preset
mnist-fast-uncond`` with ``train.max_minutes``), differing only in the objective, as in the papers:

- ``simple``: eps prediction, L_simple (unweighted eps MSE), fixed variance sigma^2 = beta-tilde;
- ``hybrid``: eps prediction, L_hybrid = L_simple + 0.001 L_vlb with the learned interpolated
  variance of iDDPM eq. 15 (``learned_range``; the network outputs 2 channels).

Each is evaluated for sample quality (Frechet distance to the 10k test split in the clean
evaluation classifier's feature space, ``--n`` ancestral DDPM samples on a ``--steps``-step
respaced chain, EMA weights) and likelihood (test bits/dim with the full T-step variational
bound on ``--nll-n`` test images, with its standard error). The papers' pattern: L_simple gives
the better samples, the learned variance the better likelihood.

    .venv/bin/python benchmarks/loss_ablation.py --minutes 10 --out runs/loss-ablation

Both runs train at the same time with one thread each; their evaluations too. Writes the
"## L_simple vs L_hybrid (MNIST)" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import ARTIFACTS, MNIST_DIR, RESULTS, child, write_section  # noqa: E402  (puts the repository on sys.path)
from difflab.config import load_config  # noqa: E402
from sampler_quality import drop_flags, evaluator, fd_of, ours  # noqa: E402

HEADING = "## L_simple vs L_hybrid (MNIST)"
VARIANTS = {
    "simple": ["diffusion.prediction=eps", "diffusion.loss_weighting=none", "diffusion.loss=simple",
               "diffusion.variance=fixed_small", "model.learn_sigma=false"],
    "hybrid": ["diffusion.prediction=eps", "diffusion.loss_weighting=none", "diffusion.loss=hybrid",
               "diffusion.variance=learned_range", "model.learn_sigma=true"],
}


def run_all(procs: dict[str, subprocess.Popen], what: str, out: Path) -> None:
    for name, p in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"{what} of {name} failed (exit {p.returncode}); see {out / (name + '.' + what + '.log')}")


PARTS = ("fd", "nll", "nll-clip")


def evaluate(variant: str, args) -> dict:
    """Measure ``args.parts`` of one run and merge them into its ``<variant>.eval.json`` (a part measured
    before on the same checkpoint step is replaced, the others are kept)."""
    from difflab.data import load_dataset
    from difflab.eval.nll import evaluate_nll
    from difflab.runs import load_run

    torch.set_num_threads(1)
    run = load_run(Path(args.out) / variant)
    path = Path(args.out) / f"{variant}.eval.json"
    row = json.loads(path.read_text()) if path.is_file() else {}
    if row.get("step") != run.step:   # measured on another checkpoint: start again
        row = {}
    row.update(variant=variant, step=run.step)
    parts = args.parts.split(",")
    if "fd" in parts:
        feat, ref, train, test = evaluator("mnist", args.data_root)
        t0 = time.perf_counter()
        images, nfe = ours(run, "ddpm", args.steps, args.n, args.seed, args.batch)
        row.update(fd=fd_of(feat, ref, images), fd_n=args.n, nfe=nfe, sample_seconds=time.perf_counter() - t0)
    nll_parts = [(part, clip) for part, clip in (("nll", False), ("nll-clip", True)) if part in parts]
    if nll_parts:
        test_images = load_dataset("mnist", root=args.data_root, split="test").to_float()[:args.nll_n]
    for part, clip in nll_parts:
        t0 = time.perf_counter()
        nll = evaluate_nll(run.model, run.diffusion, test_images, batch_size=50, seed=args.seed, clip_denoised=clip)
        row[part] = dict(**nll.to_dict(), seconds=time.perf_counter() - t0, per_image_bpd=nll.per_image.tolist(),
                         terms=nll.terms.tolist())
    path.write_text(json.dumps(row))
    return row


def paired_difference(simple: dict, hybrid: dict) -> str:
    """Both runs are scored on the same test images, so their bits/dim differ with a paired standard error,
    smaller than either run's own."""
    d = np.asarray(simple["per_image_bpd"]) - np.asarray(hybrid["per_image_bpd"])
    se = d.std(ddof=1) / np.sqrt(len(d))
    better = "L_hybrid" if d.mean() > 0 else "L_simple"
    return (f"L_simple minus L_hybrid, paired over the same {len(d)} test images: {d.mean():+.3f} +- {se:.3f} "
            f"bits/dim ({better} has the better likelihood; {abs(d.mean()) / se:.1f} standard errors)")


def plot_terms(rows: list[dict], path: Path) -> Path:
    """Each run's per-timestep bound L_t (bits/dim, unclipped) against t, on one log-scale plot."""
    from difflab.viz import plot_curve

    curves = {f"L_{r['variant']} ({r['nll']['bpd']:.3f} bits/dim)": np.maximum(np.asarray(r["nll"]["terms"]), 1e-12)
              for r in rows}
    # log t: the learned variance matters most in the first steps, which a linear axis squeezes into its edge
    return plot_curve(np.arange(1, len(rows[0]["nll"]["terms"]) + 1), curves, path, xlabel="timestep t + 1",
                      ylabel="bits/dim", logx=True, logy=True, marker="", title="variational bound per term, test images")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-clock per run")
    ap.add_argument("--out", default="runs/loss-ablation")
    ap.add_argument("--data-root", default=str(MNIST_DIR))
    ap.add_argument("--n", type=int, default=1000, help="samples for the Frechet distance")
    ap.add_argument("--steps", type=int, default=50, help="respaced DDPM steps for sampling")
    ap.add_argument("--nll-n", type=int, default=100, help="test images for bits/dim")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-only", action="store_true", help="evaluate the trained runs again, do not train")
    ap.add_argument("--report-only", action="store_true", help="write the section from the stored evaluations")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="what to evaluate: fd (sample quality), nll (the bound), nll-clip (the bound with predicted "
                         "x_0 clipped to [-1, 1], the model as it samples); comma-separated, default all")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--_eval", dest="eval_variant", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if set(args.parts.split(",")) - set(PARTS):
        ap.error(f"--parts takes a comma-separated subset of {', '.join(PARTS)}, got {args.parts!r}")
    if args.eval_variant:
        print(json.dumps(evaluate(args.eval_variant, args)))
        return
    out.mkdir(parents=True, exist_ok=True)
    if not (args.eval_only or args.report_only):
        run_all({v: child([sys.executable, "-m", "difflab", "train", "--preset", "mnist-fast-uncond", "--out", str(out / v),
                           "--no-progress", "--set", f"data.root={args.data_root}", f"train.max_minutes={args.minutes}",
                           "train.num_threads=1", f"train.seed={args.seed}", *VARIANTS[v]], out / f"{v}.train.log")
                 for v in VARIANTS}, "train", out)
    passthrough = ["--out", args.out, "--data-root", args.data_root, "--n", str(args.n), "--steps", str(args.steps),
                   "--nll-n", str(args.nll_n), "--batch", str(args.batch), "--seed", str(args.seed),
                   "--parts", args.parts]
    if not args.report_only:
        run_all({v: child([sys.executable, __file__, "--_eval", v, *passthrough], out / f"{v}.eval.log")
                 for v in VARIANTS}, "eval", out)
    rows = [json.loads((out / f"{v}.eval.json").read_text()) for v in VARIANTS]
    # the command that measures everything (--parts only re-measures some of it)
    command = " ".join(a for a in drop_flags(argv, ("--parts",)) if a not in ("--eval-only", "--report-only",
                                                                               "--no-write"))
    minutes = load_config(out / "simple" / "config.yaml").train.max_minutes   # the budget the runs trained with

    lines = [HEADING, "", f"Command: `python benchmarks/loss_ablation.py {command}`",
             "", f"Both runs: the `mnist-fast-uncond` recipe with eps prediction and no loss weighting, {minutes:g} minutes "
             "of training wall-clock each, trained at the same time with one thread each (same seed, data order and "
             f"network except the variance channels). Samples: {args.n} ancestral DDPM samples on a {args.steps}-step "
             "respaced chain (sigma^2 = beta-tilde for L_simple, the learned variance for L_hybrid), EMA weights, FD "
             "to the 10k test split in the clean evaluation classifier's feature space. Likelihood: bits/dim of the "
             f"first {rows[0]['nll']['n']} test images with the full variational bound (all T terms + L_T), EMA "
             "weights; unclipped (the network's own x_0) and, where measured, with predicted x_0 clipped to [-1, 1] "
             "in every term (the model as it samples).", "",
             "| objective | variance | steps trained | FD | test bits/dim (+- s.e.) | L_0 | L_T-1 (last term) "
             "| bits/dim, x_0 clipped |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        var = "fixed beta-tilde" if r["variant"] == "simple" else "learned (iDDPM eq. 15)"
        nll, clipped = r["nll"], r.get("nll-clip")
        lines.append(f"| L_{r['variant']} | {var} | {r['step']} | {r['fd']:.2f} | {nll['bpd']:.3f} +- "
                     f"{nll['bpd_se']:.3f} | {nll['decoder_bpd']:.3f} | {nll['terms'][-1]:.3f} | "
                     + (f"{clipped['bpd']:.3f} +- {clipped['bpd_se']:.3f} |" if clipped else "not measured |"))
    lines.append("")
    for part, what in (("nll", "Unclipped bound"), ("nll-clip", "Clipped bound")):
        if all(part in r for r in rows):
            lines += [f"{what}: {paired_difference(rows[0][part], rows[1][part])}.", ""]
    plot = plot_terms(rows, ARTIFACTS / "loss_ablation_terms.png")
    lines += [f"![per-term bound]({plot.relative_to(RESULTS.parent).as_posix()})", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(RESULTS, HEADING, text)


if __name__ == "__main__":
    main()
