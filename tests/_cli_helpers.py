"""Helpers shared by the CLI tests (not a test module)."""

import numpy as np
from PIL import Image

from difflab.cli import main

TINY = ["--preset", "tiny", "--no-progress", "--set", "train.num_threads=1"]


def run_cli(capsys, *argv):
    """Run ``difflab argv`` in-process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path))
