"""What the benchmark scripts share: the repository paths, RESULTS.md section writing, and
single-threaded child processes (one per core) for measurements run side by side.

Importing this module puts the repository root on ``sys.path``, so a script run as
``python benchmarks/<name>.py`` can import difflab without installing it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
ARTIFACTS = ROOT / "benchmarks" / "artifacts"
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"   # the official MNIST files, in shared/ beside the repo

from difflab.files import write_text_atomic  # noqa: E402  (after the path set-up above)


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the ``heading`` section of ``path`` (up to the next "## " heading) with ``text``, or
    append it; the file is replaced atomically, so an interrupted write leaves the old one."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = old.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        new = old.rstrip() + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        body = text.rstrip("\n").splitlines() + ([""] if end < len(lines) else [])
        new = "\n".join(lines[:start] + body + lines[end:]) + "\n"
    write_text_atomic(path, new)


def child(cmd: list[str], log: Path | None = None, threads: int = 1) -> subprocess.Popen:
    """Start ``cmd`` in the repository root with ``threads`` math threads; its output goes to ``log``
    (or to this process's output)."""
    print("$ " + " ".join(cmd), flush=True)
    out = open(log, "w") if log is not None else None
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=env, cwd=ROOT)


def timed(f) -> float:
    """Seconds one call of ``f()`` takes."""
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def matmul_peak(n: int = 2048, repeats: int = 7) -> tuple[float, float]:
    """fp32 matmul GFLOP/s on this machine with torch's current thread count: (best, median) over repeats."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    rates = [2 * n**3 / timed(lambda: a @ b) / 1e9 for _ in range(repeats)]
    return max(rates), statistics.median(rates)


def conv_peak(channels: int = 256, size: int = 32, batch: int = 8, repeats: int = 7) -> tuple[float, float]:
    """GFLOP/s of a 3x3 fp32 convolution (oneDNN, channels-last; 2 FLOPs per multiply-add): (best, median).

    On CPUs where torch's matmul library is not tuned (MKL on AMD reaches about 100 GFLOP/s on one
    thread where oneDNN's convolution reaches about 240), this is the better estimate of the peak."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3)
    F.conv2d(x, w, padding=1)
    flops = 2 * batch * channels * channels * 9 * size * size
    rates = [flops / timed(lambda: F.conv2d(x, w, padding=1)) / 1e9 for _ in range(repeats)]
    return max(rates), statistics.median(rates)
