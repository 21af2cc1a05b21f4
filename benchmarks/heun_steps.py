"""Why Heun gets worse with more steps on the MNIST model: FD and ODE error against the step count.

For each row (a sampler, its grid and its step count), on one trained run and the same starting
noise for every row:

* FD: Frechet distance to the test split in the clean evaluation classifier's feature space
  (as benchmarks/sampler_quality.py, ``--n`` samples);
* ODE error: the root-mean-square pixel distance between the row's samples and the endpoint of
  the same probability-flow ODE solved finely (DPM-Solver++(2M), ``--ref-steps`` steps, trailing
  grid, clipped like every row) from the same x_T, over the first ``--n-ref`` samples. A
  deterministic solver that converges drives it to 0; it says how far a row is from the ODE
  solution whose FD the deterministic rows approach;
* spread: the per-pixel standard deviation across samples, averaged over pixels, relative to the
  reference's (above 1: the solver's error adds variance);
* what FD sees: its mean term |mu_samples - mu_test|^2 (the rest is the covariance term) and the
  evaluation classifier's accuracy on the requested classes (sample i asks for class i mod 10).

    .venv/bin/python benchmarks/heun_steps.py --run runs/mnist-fast-1697 --data-root ../shared/data/mnist

Writes the "## Heun against its step count (mnist)" section of RESULTS.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from _common import ARTIFACTS, RESULTS, write_section  # noqa: E402  (puts the repository on sys.path)
from sampler_quality import conditioning, evaluator, ours  # noqa: E402
from difflab.eval import compute_stats, frechet_distance  # noqa: E402
from difflab.eval.classifier import predict  # noqa: E402
from difflab.sampling import class_labels  # noqa: E402
from difflab.rng import per_sample_generators, randn  # noqa: E402
from difflab.samplers import get_sampler  # noqa: E402
from difflab.runs import load_run  # noqa: E402

SECTION = "## Heun against its step count (mnist)"


def rows(quick: bool):
    """(label, sampler, steps, options) for every row."""
    heun_steps = (6, 11, 16, 21) if quick else (4, 6, 8, 11, 16, 21, 31)
    out = [("Heun, timesteps grid (trailing, from sigma 80)", "heun", s, {}) for s in heun_steps]
    out += [("Heun, timesteps grid, no clipping", "heun", s, {"clip": False}) for s in (6, 11)]
    out += [("Heun, timesteps grid from sigma 20", "heun", s, {"sigma_max": 20.0}) for s in (6, 11, 21)]
    out += [("Heun, Karras grid (rho 7, sigma 80 .. sigma_min)", "heun", s, {"sigma_schedule": "karras"})
            for s in (6, 11, 21)]
    out += [("DPM-Solver++(2M)", "dpm++2m", s, {}) for s in (10, 20)]
    out += [("DDIM eta=0", "ddim", s, {"eta": 0.0}) for s in (10, 20)]
    out += [("DDIM eta=1 (stochastic, for scale)", "ddim", 10, {"eta": 1.0}),
            ("DPM-Solver++(2M) SDE (stochastic, for scale)", "dpm++2m-sde", 10, {})]
    return out


def samples(run, name, steps, n, seed, batch, opts):
    opts = dict(opts)
    clip = opts.pop("clip", True)
    if clip:
        return ours(run, name, steps, n, seed, batch, **opts)
    # sampler_quality.ours always clips pred_x0; the unclipped variant calls the sampler itself
    m = run.config.model
    outs, nfe = [], 0
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        gens = per_sample_generators([seed * 2**20 + i for i in range(start, stop)])
        x_T = randn((len(gens), m.in_channels, m.image_size, m.image_size), gens)
        out = get_sampler(name)(run.model, run.diffusion, x_T, steps=steps, generator=gens, clip_denoised=False,
                                model_kwargs=conditioning(run, start, stop), **opts)
        outs.append(out.sample)
        nfe = out.nfe
    return torch.cat(outs).clamp(-1, 1), nfe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n", type=int, default=500, help="samples per row for FD")
    ap.add_argument("--n-ref", type=int, default=100, help="samples compared with the fine ODE solution")
    ap.add_argument("--ref-steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer Heun step counts")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    feat, ref_stats, _, _ = evaluator("mnist", args.data_root)
    t0 = time.perf_counter()
    reference, _ = ours(run, "dpm++2m", args.ref_steps, args.n_ref, args.seed, args.batch)
    print(f"reference: DPM-Solver++(2M) {args.ref_steps} steps on {args.n_ref} samples, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    ref_spread = float(reference.std(0).mean())
    table = []
    for label, name, steps, opts in rows(args.quick):
        t0 = time.perf_counter()
        images, nfe = samples(run, name, steps, args.n, args.seed, args.batch, opts)
        head = images[:args.n_ref]
        stats = compute_stats(feat.features(images), feat.name, "samples", "generated")
        labels = class_labels(len(images), run.config.model.num_classes)
        accuracy = float((predict(feat.model, images) == labels).double().mean()) if labels is not None else None
        table.append(dict(row=label, steps=steps, nfe=nfe, fd=frechet_distance(stats, ref_stats),
                          fd_mean_term=float(((stats.mean - ref_stats.mean) ** 2).sum()), accuracy=accuracy,
                          ode_error=float((head - reference).square().mean().sqrt()),
                          spread=float(head.std(0).mean()) / ref_spread, seconds=time.perf_counter() - t0))
        print(json.dumps(table[-1]), flush=True)
    (ARTIFACTS / "heun_steps_mnist.json").write_text(json.dumps(table, indent=1))
    command = "python benchmarks/heun_steps.py " + " ".join(a for a in sys.argv[1:] if a != "--no-write")
    lines = [SECTION, "", f"Command: `{command}`", "",
             f"Model: `{args.run}` (step {run.step}, {run.weights} weights; prediction {run.diffusion.prediction}, "
             f"{run.config.diffusion.schedule} schedule); class i mod 10 for sample i, no guidance; sample i seeded "
             f"{args.seed} * 2^20 + i in every row; predicted x_0 clipped to [-1, 1] unless the row says otherwise. "
             f"FD: {args.n} samples against the test split (`{feat.name}` features). ODE error: RMS pixel distance "
             f"(pixels in [-1, 1]) of the first {args.n_ref} samples to the endpoint of the same ODE solved with "
             f"DPM-Solver++(2M) at {args.ref_steps} steps; spread: per-pixel standard deviation across those samples "
             "relative to the reference's; FD mean term: |mu_samples - mu_test|^2 in the same features; accuracy: the "
             "evaluation classifier's, on the requested classes.", "",
             "| row | steps | NFE | FD | FD mean term | accuracy | ODE error | spread | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        lines.append(f"| {r['row']} | {r['steps']} | {r['nfe']} | {r['fd']:.2f} | {r['fd_mean_term']:.2f} | {acc} | "
                     f"{r['ode_error']:.4f} | {r['spread']:.3f} | {r['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(RESULTS, SECTION, text)


if __name__ == "__main__":
    main()
