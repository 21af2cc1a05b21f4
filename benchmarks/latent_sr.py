"""4x super-resolution in latent space (MNIST 7x7 -> 28x28): how close the samples come to the truth.

For the first ``--n`` images of the MNIST test split: the 7x7 input (4x4 average pooling), the
super-resolution model's sample (DDIM, the run's sampler settings, one sample per input) and two
references: bilinear upsampling of the input (the baseline) and the autoencoder's reconstruction of
the true image (the ceiling of any latent model on this first stage). For each: PSNR to the true
image, the accuracy of difflab's clean evaluation classifier against the true label (is the
digit's identity kept?), and the Frechet distance to the true images in that classifier's features.

    .venv/bin/python benchmarks/latent_sr.py --checkpoint runs/latent-sr-v --n 500

Prints a Markdown table and the command.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from _common import ARTIFACTS, MNIST_DIR  # noqa: E402  (puts the repository on sys.path)
from difflab.data import load_dataset  # noqa: E402
from difflab.data.transforms import low_res_condition  # noqa: E402
from difflab.eval import ClassifierFeaturizer, compute_stats, frechet_distance, load_eval_classifier, predict  # noqa: E402
from difflab.train import load_run  # noqa: E402
from difflab.eval import psnr  # noqa: E402


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a super-resolution run (preset mnist-latent-sr)")
    p.add_argument("--data-root", default=str(MNIST_DIR))
    p.add_argument("--classifier", default=str(ARTIFACTS / "eval_classifier_mnist"))
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    run = load_run(args.checkpoint)
    cond = run.conditioning
    if cond is None or not run.config.cond.low_res_factor:
        raise SystemExit(f"{args.checkpoint} is not a super-resolution run (cond.low_res_factor is 0)")
    test = load_dataset("mnist", root=args.data_root, split="test")
    x, y = test.to_float()[:args.n], torch.as_tensor(test.labels[:args.n]).long()
    t0 = time.perf_counter()
    with torch.no_grad():
        sample, _ = cond.sample(run.model, run.diffusion, run.config.sample, cond_images=x)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        bilinear = low_res_condition(x, run.config.cond.low_res_factor, x.shape[-1])
        ae = cond.latent.autoencoder
        recon = ae.decode(ae.encode(x).mean).clamp(-1, 1)
    classifier = load_eval_classifier(args.classifier)
    feat = ClassifierFeaturizer.from_directory(args.classifier)
    truth = compute_stats(feat.features(x))
    s = run.config.sample
    print(f"Run: {run.checkpoint} (step {run.step}, {run.weights} weights); {s.sampler} {s.steps} steps, eta {s.eta:g}; "
          f"first {args.n} MNIST test images; sampling took {seconds:.0f} s ({args.threads} thread(s))\n")
    print("| images | PSNR to the truth (dB) | classifier accuracy (true label) | FD to the true images |")
    print("|---|---|---|---|")
    for name, imgs in (("bilinear upsampling of the 7x7 input (baseline)", bilinear),
                       ("latent diffusion super-resolution sample", sample),
                       ("autoencoder reconstruction of the truth (ceiling)", recon),
                       ("the true 28x28 images", x)):
        acc = float((predict(classifier, imgs) == y).double().mean())
        fd = frechet_distance(compute_stats(feat.features(imgs)), truth)
        print(f"| {name} | {float(psnr(x, imgs).mean()):.2f} | {acc:.3f} | {fd:.2f} |")
    print(f"\nCommand: `python benchmarks/latent_sr.py {' '.join(argv)}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
