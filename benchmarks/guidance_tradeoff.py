"""Fidelity / diversity trade-off of guidance on MNIST: accuracy and Frechet distance against the strength.

Two kinds of guidance, each on the model it needs:

- classifier-free guidance on a class-conditional model trained with label dropout to the null
  class: eps~ = (1 + w) eps(x, y) - w eps(x, null), for ``--cfg-weights`` (default 0, 0.5, 1, 2, 4);
- classifier guidance on an unconditional model with a noise-aware classifier
  (``difflab train-classifier``): eps^ = eps - sqrt(1 - abar_t) s grad log p(y | x_t) for
  deterministic samplers, guided-diffusion's mean shift for DDPM, for ``--classifier-scales``
  (default 0, 1, 2, 5, 10).

For every strength: ``--n`` samples with the requested classes cycling 0..9 (the same starting
noise for every row), the accuracy of difflab's clean evaluation classifier with respect to
the requested class, and the Frechet distance to the 10k test split in that classifier's
feature space (with precision and recall). At s = 0 classifier guidance is the unconditional
model: its "accuracy" is chance-level agreement, a reference point.

    .venv/bin/python benchmarks/guidance_tradeoff.py --cfg-run runs/mnist-cfg --uncond-run runs/mnist-fast-uncond \\
        --classifier runs/mnist-noisy-classifier --n 1000

Writes the "## Guidance trade-off (MNIST)" section of benchmarks/RESULTS.md and a plot. To use
both cores, measure one kind per process (``--kinds classifier-free --no-write`` and ``--kinds
classifier --no-write`` at the same time), then write the report from their JSON with ``--kinds none``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np
import torch

from _common import ARTIFACTS, MNIST_DIR, RESULTS, write_section  # noqa: E402  (puts the repository on sys.path)
from sampler_quality import evaluator  # noqa: E402

from difflab.eval import compute_stats, frechet_distance, precision_recall, predict  # noqa: E402
from difflab.runs import load_run  # noqa: E402
from difflab.runs import load_classifier  # noqa: E402
from difflab.sampling import GuidanceOptions, build_guided_model, sample_images  # noqa: E402

HEADING = "## Guidance trade-off (MNIST)"


def guided_samples(run, sample_cfg, guidance: GuidanceOptions, classifier, n: int):
    guided = build_guided_model(run, sample_cfg, guidance, classifier)
    labels = torch.arange(n) % 10
    out = sample_images(guided.model, guided.diffusion, sample_cfg, shape=(1, 28, 28), n=n, labels=labels,
                        sampler_options=guided.sampler_options, progress=False)
    return out.sample.clamp(-1, 1), labels, guided.description


def measure(feat, ref, images, labels) -> dict:
    feats = feat.features(images)
    stats = compute_stats(feats, feat.name, "samples", "generated")
    pr = precision_recall(ref.features, feats, k=3) if ref.features is not None else {}
    acc = float((predict(feat.model, images) == labels).float().mean())
    return dict(fd=frechet_distance(stats, ref), accuracy=acc, precision=pr.get("precision"),
                recall=pr.get("recall"))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg-run", required=True, help="class-conditional run trained with label dropout")
    ap.add_argument("--uncond-run", required=True, help="unconditional run")
    ap.add_argument("--classifier", required=True, help="noise-aware classifier run (difflab train-classifier)")
    ap.add_argument("--data-root", default=str(MNIST_DIR))
    ap.add_argument("--cfg-weights", default="0,0.5,1,2,4")
    ap.add_argument("--classifier-scales", default="0,1,2,5,10")
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--kinds", default="classifier-free,classifier",
                    help="which guidance kinds to measure now (the others' rows are read from their last JSON, so two "
                         "processes can measure one kind each)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    feat, ref, train, test = evaluator("mnist", args.data_root)
    if ref.features is None:
        ref = dataclasses.replace(ref, features=np.asarray(feat.features(test.to_float()), dtype=np.float32))
    cond, uncond = load_run(args.cfg_run), load_run(args.uncond_run)
    clf = load_classifier(args.classifier)

    def sample_cfg(run):
        return dataclasses.replace(run.config.sample, sampler=args.sampler, steps=args.steps, eta=args.eta,
                                   seed=args.seed, batch_size=args.batch)

    rows = []
    kinds = args.kinds.split(",")
    for kind, values in (("classifier-free", args.cfg_weights), ("classifier", args.classifier_scales)):
        stored = ARTIFACTS / f"guidance_tradeoff_{kind}.json"
        if kind not in kinds:
            rows += json.loads(stored.read_text()) if stored.is_file() else []
            continue
        measured = []
        for v in [float(x) for x in values.split(",")]:
            t0 = time.perf_counter()
            if kind == "classifier-free":
                images, labels, how = guided_samples(cond, sample_cfg(cond), GuidanceOptions(guidance_scale=v),
                                                     None, args.n)
            else:
                images, labels, how = guided_samples(uncond, sample_cfg(uncond), GuidanceOptions(classifier_scale=v),
                                                     clf, args.n)
            measured.append(dict(kind=kind, strength=v, guidance=how, n=args.n, seconds=time.perf_counter() - t0,
                                 **measure(feat, ref, images, labels)))
            print(json.dumps(measured[-1]), flush=True)
            from difflab.viz import save_grid
            order = torch.argsort(labels[:100], stable=True)
            save_grid(images[:100][order], ARTIFACTS / "guidance" / f"{kind}_{v:g}.png", nrow=10)
        stored.write_text(json.dumps(measured, indent=1))
        rows += measured

    cmd_args = [a for i, a in enumerate(argv) if a != "--kinds" and (i == 0 or argv[i - 1] != "--kinds")]
    lines = [HEADING, "", f"Command: `python benchmarks/guidance_tradeoff.py {' '.join(cmd_args)}` (or the same "
             "twice with `--kinds classifier-free` and `--kinds classifier`, in parallel)", "",
             f"Classifier-free guidance: `{args.cfg_run}` (class-conditional, step {cond.step}, "
             f"label dropout {cond.config.train.class_dropout:g}). Classifier guidance: `{args.uncond_run}` "
             f"(unconditional, step {uncond.step}) with the noise-aware classifier `{args.classifier}` "
             f"(step {clf.step}). Sampler: {args.sampler}, {args.steps} steps"
             + (f", eta {args.eta:g}" if args.sampler in ("ddim", "dpm++2m") else "")
             + f", EMA weights; {args.n} samples per row, requested classes cycling 0..9, sample i seeded "
             f"{args.seed} * 2^20 + i. Accuracy: difflab's clean evaluation classifier (99.55% on the test split) "
             "against the requested class. FD: Frechet distance to the 10k test split in that classifier's "
             "feature space; precision / recall: k=3 nearest-neighbour manifolds in the same space.", "",
             "| guidance | strength | accuracy | FD | precision | recall | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {'w' if r['kind'] == 'classifier-free' else 's'} = {r['strength']:g} | "
                     f"{100 * r['accuracy']:.1f}% | {r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['seconds']:.0f} |")
    from difflab.viz import new_figure, save_figure
    fig = new_figure((10, 4))
    for i, (key, label) in enumerate((("accuracy", "accuracy w.r.t. requested class"), ("fd", "FD to test split"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for kind, sym in (("classifier-free", "w"), ("classifier", "s")):
            rs = [r for r in rows if r["kind"] == kind]
            ax.plot(range(len(rs)), [r[key] for r in rs], marker="o", label=f"{kind} ({sym})")
            for j, r in enumerate(rs):
                ax.annotate(f"{sym}={r['strength']:g}", (j, r[key]), fontsize=7)
        ax.set_xlabel("guidance strength (index: w in 0,0.5,1,2,4 / s in 0,1,2,5,10)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    plot = ARTIFACTS / "guidance_tradeoff.png"
    save_figure(fig, plot)
    lines += ["", f"![guidance trade-off]({plot.relative_to(RESULTS.parent).as_posix()})", "",
              "Samples (one row per class, first 100 samples): "
              + ", ".join(f"[{r['kind']} {r['strength']:g}](artifacts/guidance/{r['kind']}_{r['strength']:g}.png)"
                          for r in rows), ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(RESULTS, HEADING, text)


if __name__ == "__main__":
    main()
