"""Train (or reuse) the clean MNIST evaluation classifier and measure the evaluation floor.

The floor is what the metrics say about *real* data against the held-out test split in the
classifier's feature space: a generator can not be expected to beat it at the same sample
size. Writes the "## Evaluation floor" section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/eval_floor.py            # reuse artifacts if present
    .venv/bin/python benchmarks/eval_floor.py --retrain  # train the classifier again
"""

from __future__ import annotations

import argparse
import gzip
import platform
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import ARTIFACTS, MNIST_DIR, RESULTS, ROOT, write_section  # noqa: E402  (puts the repository on sys.path)

from difflab.eval import (  # noqa: E402
    ClassifierFeaturizer,
    EvalClassifierConfig,
    FeatureStats,
    compute_stats,
    evaluate_accuracy,
    frechet_distance,
    load_eval_classifier,
    load_metadata,
    precision_recall,
    save_eval_classifier,
    stats_filename,
    train_eval_classifier,
)

ARTIFACT = ARTIFACTS / "eval_classifier_mnist"
STATS_DIR = ARTIFACTS / "eval_stats"
SECTION = "## Evaluation floor"


def read_idx(path: Path) -> np.ndarray:
    """Minimal IDX reader (unsigned-byte data only, as in the MNIST files)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    images = torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0)[:, None]  # [N, 1, 28, 28] in [-1, 1]
    return images, torch.from_numpy(y.astype(np.int64))


def scipy_fd(a: FeatureStats, b: FeatureStats) -> float | None:
    """Cross-check with the classic scipy.linalg.sqrtm formula (dev dependency only)."""
    try:
        from scipy import linalg
    except ImportError:
        return None
    covmean = linalg.sqrtm(a.cov @ b.cov)
    covmean = np.real(covmean)
    d = a.mean - b.mean
    return float(d @ d + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(covmean))


def digits_accuracy(seed: int = 0) -> dict:
    """Same classifier on sklearn's 8x8 digits (resized to 16x16), 25% held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # pixel values 0..16
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = len(y) // 4
    te, tr = perm[:n_test], perm[n_test:]
    cfg = EvalClassifierConfig(image_size=16)
    t0 = time.perf_counter()
    model = train_eval_classifier(x[tr], y[tr], config=cfg, epochs=30, batch_size=64, lr=2e-3, seed=seed)
    secs = time.perf_counter() - t0
    return {"acc": evaluate_accuracy(model, x[te], y[te]), "secs": secs, "n_train": len(tr), "n_test": len(te)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retrain", action="store_true", help="train the classifier even if the artifact exists")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5, help="random 1k subsets for the 1k floor")
    ap.add_argument("--no-digits", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    command = " ".join([".venv/bin/python benchmarks/eval_floor.py", *sys.argv[1:]])
    if args.threads:
        torch.set_num_threads(args.threads)

    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")

    if args.retrain or not (ARTIFACT / "model.safetensors").is_file():
        t0 = time.perf_counter()
        model = train_eval_classifier(x_train, y_train, epochs=args.epochs, batch_size=128, lr=2e-3, seed=0, progress=True)
        train_secs = time.perf_counter() - t0
        acc = evaluate_accuracy(model, x_test, y_test)
        meta = {
            "dataset": "mnist",
            "train_split": "train (60000)",
            "epochs": args.epochs,
            "batch_size": 128,
            "lr": 2e-3,
            "seed": 0,
            "train_seconds": round(train_secs, 1),
            "test_accuracy": acc,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "command": command,
        }
        save_eval_classifier(model, ARTIFACT, metadata=meta)
        print(f"trained in {train_secs:.1f}s, test accuracy {acc:.4%}; saved to {ARTIFACT}")
    meta = load_metadata(ARTIFACT)
    featurizer = ClassifierFeaturizer(load_eval_classifier(ARTIFACT), name="eval-classifier-mnist")
    test_acc = evaluate_accuracy(featurizer.model, x_test, y_test)
    train_acc = evaluate_accuracy(featurizer.model, x_train, y_train)

    t0 = time.perf_counter()
    f_test = featurizer.features(x_test, batch_size=500, progress=True)
    feat_secs = time.perf_counter() - t0
    f_train = featurizer.features(x_train, batch_size=500, progress=True)
    ref = compute_stats(f_test, featurizer.name, "mnist", "test")
    ref_path = ref.save(STATS_DIR / stats_filename(featurizer.name, "mnist", "test"))

    rows = []
    for n in (1000, 10000):
        fds, fds_scipy, prs = [], [], []
        repeats = args.repeats
        for r in range(repeats):
            idx = torch.randperm(len(f_train), generator=torch.Generator().manual_seed(r))[:n].numpy()
            s = compute_stats(f_train[idx], featurizer.name, "mnist", "train-subset")
            fds.append(frechet_distance(s, ref))
            fds_scipy.append(scipy_fd(s, ref))
            t1 = time.perf_counter()
            prs.append(precision_recall(f_test, f_train[idx], k=3, density_coverage=True))
            pr_secs = time.perf_counter() - t1
        rows.append((n, repeats, fds, fds_scipy, prs, pr_secs))
        print(f"n={n}: FD {statistics.median(fds):.4f}  P/R {prs[0]}")

    digits = None if args.no_digits else digits_accuracy()

    def med(vals):
        return statistics.median(vals)

    def rng(vals):
        return f"{min(vals):.3f}-{max(vals):.3f}" if len(vals) > 1 else "-"

    lines = [
        SECTION,
        "",
        f"Command: `{command}` (without `--retrain` it reuses `benchmarks/artifacts/eval_classifier_mnist/`;"
        f" the classifier there was trained by `{meta.get('command', 'n/a')}`).",
        f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU only.",
        "",
        "Clean evaluation classifier (`difflab.eval.classifier.EvalClassifier`, default config: conv 32 / 64 / 64"
        " with BN, 128-d penultimate layer; AdamW, one-cycle cosine LR, no augmentation), trained on the 60k MNIST"
        " training images, tested on the 10k test images nobody tuned on:",
        "",
        "| dataset | epochs | train time (s) | test accuracy | train accuracy |",
        "|---|---|---|---|---|",
        f"| MNIST 28x28 | {meta.get('epochs')} | {meta.get('train_seconds')} | {test_acc:.2%} | {train_acc:.2%} |",
    ]
    if digits is not None:
        lines.append(
            f"| sklearn digits 8x8 (resized to 16x16), {digits['n_train']} train / {digits['n_test']} held out, seed 0"
            f" | 30 | {digits['secs']:.1f} | {digits['acc']:.2%} | - |"
        )
    lines += [
        "",
        f"Floor: random MNIST *training* images against the full 10k test split. Featurizer `{featurizer.name}`"
        f" (128-d), reference statistics `mnist`/`test` saved to `{ref_path.relative_to(ROOT)}`. Feature extraction:"
        f" {len(f_test) / feat_secs:.0f} images/s. FD in float64 via eigh (`difflab.eval.frechet`); the scipy.linalg.sqrtm"
        " formula is shown as a cross-check. Precision/recall/density/coverage with k=3, real = the 10k test features,"
        f" generated = the n training features. Median over {args.repeats} random training subsets per n (range in"
        " brackets); the FD bias shrinks like 1/n, so compare generated samples only at the same n. Coverage counts"
        " real points whose own ball holds a generated one, so it is low when n << 10k by construction.",
        "",
        "| n (train images) | FD | max abs(FD - scipy FD) | precision | recall | density | coverage | P/R time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, repeats, fds, fds_scipy, prs, pr_secs in rows:
        diffs = [abs(a - b) for a, b in zip(fds, fds_scipy) if b is not None]
        cols = [f"{med(fds):.3f} [{rng(fds)}]" if repeats > 1 else f"{med(fds):.3f}", f"{max(diffs):.1e}" if diffs else "n/a"]
        for key in ("precision", "recall", "density", "coverage"):
            vals = [p[key] for p in prs]
            cols.append(f"{med(vals):.4f} [{rng(vals)}]" if repeats > 1 else f"{med(vals):.4f}")
        lines.append(f"| {n} | " + " | ".join(cols) + f" | {pr_secs:.1f} |")
    lines.append("")
    write_section(RESULTS, SECTION, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote the '{SECTION}' section of {RESULTS}")


if __name__ == "__main__":
    main()
