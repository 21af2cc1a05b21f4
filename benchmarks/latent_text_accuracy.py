"""Accuracy of text-to-image samples vs the classifier-free guidance weight (issue 6).

A text-conditioned MNIST run (``difflab train --preset mnist-latent-text``) draws ``--per-prompt``
images for every (template, digit) prompt; the evaluation classifier
(benchmarks/artifacts/eval_classifier_mnist, trained on the MNIST training split) labels them, and
the accuracy is the fraction whose label is the prompt's digit. Held-out templates
(``difflab.latent.HELD_OUT_TEMPLATES``) never occurred in training captions; training templates are
shown beside them (the first ``--train-templates`` of them). Prints a markdown table (and the command) to paste into RESULTS.md.

    python benchmarks/latent_text_accuracy.py --checkpoint runs/latent-text --weights 0 1 2 4
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from difflab.config import SampleConfig
from difflab.eval import load_eval_classifier, predict
from difflab.latent import HELD_OUT_TEMPLATES, NUMBER_WORDS, TRAIN_TEMPLATES
from difflab.train import GuidanceOptions, build_guided_model, load_run


def accuracy(run, classifier, templates, w: float | None, per_prompt: int, steps: int, seed: int):
    prompts, digits = [], []
    for tpl in templates:
        for d, word in enumerate(NUMBER_WORDS):
            prompts += [tpl.format(word=word, digit=d)] * per_prompt
            digits += [d] * per_prompt
    sc = SampleConfig(sampler="ddim", steps=steps, eta=0.0, n=len(prompts), seed=seed, clip_denoised=False,
                      batch_size=500)
    if w is None:
        model, diffusion, options = run.model, run.diffusion, {}
    else:
        g = build_guided_model(run, sc, GuidanceOptions(guidance_scale=w))
        model, diffusion, options = g.model, g.diffusion, g.sampler_options
    images, _ = run.conditioning.sample(model, diffusion, sc, prompts=prompts, sampler_options=options)
    return float((predict(classifier, images) == torch.tensor(digits)).double().mean()), len(prompts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--classifier", default="benchmarks/artifacts/eval_classifier_mnist")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--train-templates", type=int, default=4, help="how many training templates to compare with")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    run = load_run(args.checkpoint)
    classifier = load_eval_classifier(args.classifier)
    rows = []
    for w in args.weights:
        t0 = time.perf_counter()
        held, n_held = accuracy(run, classifier, HELD_OUT_TEMPLATES, w or None, args.per_prompt, args.steps, args.seed)
        train, n_train = accuracy(run, classifier, TRAIN_TEMPLATES[:args.train_templates], w or None, args.per_prompt, args.steps, args.seed)
        rows.append(f"| {w:g} | {held:.3f} (n={n_held}) | {train:.3f} (n={n_train}) | {time.perf_counter() - t0:.0f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"Run: {run.checkpoint} (step {run.step}, {run.weights} weights); DDIM {args.steps} steps, eta 0; "
          f"classifier {args.classifier}\n")
    print("| guidance w | accuracy, held-out templates | accuracy, training templates | seconds |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nCommand: python benchmarks/latent_text_accuracy.py {' '.join(argv or sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
