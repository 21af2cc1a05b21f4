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


# Latent diffusion (tests/latent): the tiny autoencoder (8x8 digits -> 2x4x4, discriminator from step 2)
# and the tiny U-Net on its latents, optionally text-conditioned through a 16-wide trainable encoder.
AE = ["train-autoencoder", "--preset", "tiny", "--no-progress", "--set", "train.num_threads=1", "model.disc_start=2",
      "train.checkpoint_every=2"]
LATENT = ["train", "--preset", "tiny", "--no-progress", "--set", "train.num_threads=1", "sample.clip_denoised=false",
          "model.image_size=4", "model.in_channels=2", "sample.n=4", "sample.steps=2"]
TEXT = ["model.context_dim=16", "model.cross_attention_resolutions=[4]", "cond.text=trainable", "cond.text_dim=16",
        "cond.text_heads=2"]
