"""Latent diffusion (Rombach et al. 2022): diffusion on the scaled latents of a frozen
KL autoencoder, decoded back to images at the end.

Notation
--------
x            image ``[B, C, H, W]`` in [-1, 1]
z            autoencoder latent, a sample (or the mode) of q(z | x)
scale_factor 1 / std(z) over training data (LDM section 4.3.2 / Appendix G "rescaling")
z_0          diffusion's data: ``z_0 = scale_factor * z`` ~ unit variance
x_T          sampler's starting noise in latent space ``[B, latent_channels, h, w]``
pred_x0      the model's estimate of z_0 at a step (a *latent*, decoded for display)

The diffusion, samplers and guidance are unchanged: they see ``z_0`` as their ``x_0``. The
latent model function has the usual contract ``model(z_t, t, **model_kwargs)``. Latents are
not bounded, so never sample with ``clip_denoised=True`` (it would clip z_0 to [-1, 1]).

``scale_factor`` is computed from data (:func:`compute_scale_factor`), kept in a buffer and in
``latent.json`` beside the autoencoder: it is never a hard-coded constant.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from . import rng
from .diffusion import GaussianDiffusion
from .nn.autoencoder import AutoencoderKL
from .nn.io import load_pretrained, save_pretrained

LATENT_CONFIG_NAME = "latent.json"
AUTOENCODER_DIR = "autoencoder"


def _latents(ae: AutoencoderKL, x: torch.Tensor, sample: bool, generator: rng.Generator) -> torch.Tensor:
    posterior = ae.encode(x)
    return posterior.sample(generator) if sample else posterior.mode()


@torch.no_grad()
def compute_scale_factor(ae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64, *, sample: bool = True,
                         generator: rng.Generator = None) -> float:
    """``1 / std(z)`` over every element of the latents of ``images`` (LDM's rescaling).

    ``sample=True`` (latent-diffusion's choice, and :meth:`LatentDiffusion.encode_to_latent`'s
    default) uses posterior samples z ~ q(z | x); ``sample=False`` the posterior means. Use the
    same choice as when training the diffusion model. ``images`` are encoded in batches of
    ``batch_size`` on the autoencoder's device (eval mode); the std is accumulated in float64.
    """
    if not torch.is_floating_point(images) or images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty float [N, C, H, W] batch in [-1, 1], "
                         f"got {images.dtype} {tuple(images.shape)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = next(ae.parameters()).device
    was_training = ae.training
    ae.eval()
    try:
        return scale_factor_from_latents(_latents(ae, images[start:start + batch_size].to(device), sample, generator)
                                         for start in range(0, images.shape[0], batch_size))
    finally:
        ae.train(was_training)


def scale_factor_from_latents(latents: Iterable[torch.Tensor]) -> float:
    """``1 / std`` over every element of the latent batches (float64 sums, unbiased variance)."""
    total, total_sq, count = 0.0, 0.0, 0
    for z in latents:
        z = z.double()
        total += z.sum().item()
        total_sq += z.pow(2).sum().item()
        count += z.numel()
    if count == 0:
        raise ValueError("no latents to compute a scale factor from")
    mean = total / count
    var = (total_sq - count * mean * mean) / max(count - 1, 1)
    if not var > 0 or not math.isfinite(var):
        raise ValueError(f"latents have variance {var}: cannot compute a scale factor")
    return 1.0 / math.sqrt(var)


@dataclass
class LatentSample:
    """Decoded images ``[B, C, H, W]`` in [-1, 1] and the latent sampler's output."""

    images: torch.Tensor
    latent: object          # difflab.samplers.SampleOutput


class LatentDiffusion(nn.Module):
    """A (frozen) autoencoder and the latent ``scale_factor``: ``x -> z_0`` and back.

    The denoising network and the ``GaussianDiffusion`` are arguments of the methods, not
    attributes (the math takes the model as an argument). The autoencoder is used as a frozen
    first stage: encoding and decoding run without gradients (it has no dropout or batch
    norm, so its train/eval mode does not matter), but it is not modified, so it can still be
    trained elsewhere. ``scale_factor`` is a float64 buffer, so it is in the state dict of any
    checkpoint that holds this module.
    """

    def __init__(self, autoencoder: AutoencoderKL, scale_factor: float):
        super().__init__()
        if not isinstance(autoencoder, AutoencoderKL):
            raise ValueError(f"LatentDiffusion expects an AutoencoderKL, got {type(autoencoder).__name__}")
        scale_factor = float(scale_factor)
        if not (math.isfinite(scale_factor) and scale_factor > 0):
            raise ValueError(f"scale_factor must be a positive finite number, got {scale_factor}")
        self.autoencoder = autoencoder
        self.register_buffer("scale_factor", torch.tensor(scale_factor, dtype=torch.float64))

    @classmethod
    def from_data(cls, autoencoder: AutoencoderKL, images: torch.Tensor, batch_size: int = 64, *,
                  generator: rng.Generator = None) -> "LatentDiffusion":
        """Compute ``scale_factor`` from ``images`` (posterior samples) and wrap ``autoencoder``."""
        return cls(autoencoder, compute_scale_factor(autoencoder, images, batch_size, generator=generator))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.autoencoder.config.latent_shape

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        return self.scale_factor.to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def encode_to_latent(self, x: torch.Tensor, generator: rng.Generator = None, sample: bool = True) -> torch.Tensor:
        """z_0 = scale_factor * z, z ~ q(z | x) (``sample=True``) or its mean."""
        return self.scale(_latents(self.autoencoder, x, sample, generator))

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        """z_0 = scale_factor * z (LDM Appendix G); :meth:`decode_from_latent` undoes it."""
        return z * self._scale(z)

    @torch.no_grad()
    def decode_from_latent(self, z_0: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """x = D(z_0 / scale_factor); clamped to [-1, 1] when ``clamp``."""
        x = self.autoencoder.decode(z_0 / self._scale(z_0))
        return x.clamp(-1.0, 1.0) if clamp else x

    def noise(self, batch_size: int, generator: rng.Generator = None, device=None) -> torch.Tensor:
        """Starting noise x_T ``[B, latent_channels, h, w]`` for a sampler."""
        return rng.randn((batch_size,) + self.latent_shape, generator, device=device)

    def training_losses(self, model, diffusion: GaussianDiffusion, x: torch.Tensor, t: torch.Tensor, *,
                        generator: rng.Generator = None, noise: torch.Tensor | None = None,
                        model_kwargs: dict | None = None) -> dict[str, torch.Tensor]:
        """``diffusion.training_losses`` on the latents of the images ``x`` (per example)."""
        z_0 = self.encode_to_latent(x, generator)
        if noise is None:
            noise = rng.randn(z_0.shape, generator, device=z_0.device, dtype=z_0.dtype)
        return diffusion.training_losses(model, z_0, t, noise=noise, model_kwargs=model_kwargs)

    @torch.no_grad()
    def sample(self, sampler: Callable, model, diffusion: GaussianDiffusion, x_T: torch.Tensor,
               **sampler_kwargs) -> LatentSample:
        """Run ``sampler(model, diffusion, x_T, **sampler_kwargs)`` in latent space and decode.

        Any sampler of ``difflab.samplers`` and any (guided) latent model function works;
        ``clip_denoised=True`` is refused because latents are unbounded.
        """
        if tuple(x_T.shape[1:]) != self.latent_shape:
            raise ValueError(f"x_T must be [B, {', '.join(map(str, self.latent_shape))}] latents, "
                             f"got {tuple(x_T.shape)}")
        if sampler_kwargs.get("clip_denoised"):
            raise ValueError("clip_denoised=True would clip latents to [-1, 1]; latents are unbounded")
        out = sampler(model, diffusion, x_T, **sampler_kwargs)
        return LatentSample(images=self.decode_from_latent(out.sample, clamp=True), latent=out)

    @torch.no_grad()
    def decode_trajectory(self, latents: Sequence[torch.Tensor], batch_size: int = 64) -> list[torch.Tensor]:
        """Decode each latent batch (e.g. ``SampleOutput.pred_x0s``) to images in [-1, 1], on
        the CPU, ready for ``difflab.viz.save_trajectory_gif``."""
        device = self.scale_factor.device
        frames = []
        for z in latents:
            parts = [self.decode_from_latent(z[i:i + batch_size].to(device), clamp=True).cpu()
                     for i in range(0, z.shape[0], batch_size)]
            frames.append(torch.cat(parts))
        return frames

    def save(self, directory: str | Path) -> Path:
        """Write ``autoencoder/`` (``difflab.nn.io`` format) and ``latent.json`` (the scale factor)."""
        directory = Path(directory)
        save_pretrained(self.autoencoder, directory / AUTOENCODER_DIR)
        meta = {"format_version": 1, "scale_factor": float(self.scale_factor)}
        tmp = directory / f".{LATENT_CONFIG_NAME}.tmp"
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        tmp.replace(directory / LATENT_CONFIG_NAME)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device="cpu") -> "LatentDiffusion":
        directory = Path(directory)
        path = directory / LATENT_CONFIG_NAME
        if not path.is_file():
            raise ValueError(f"{path} not found: a saved LatentDiffusion holds {LATENT_CONFIG_NAME} "
                             f"and {AUTOENCODER_DIR}/")
        try:
            meta = json.loads(path.read_text())
            scale_factor = float(meta["scale_factor"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} must be JSON with a numeric 'scale_factor' ({type(e).__name__}: {e})") from None
        ae = load_pretrained(directory / AUTOENCODER_DIR, device=device)
        if not isinstance(ae, AutoencoderKL):
            raise ValueError(f"{directory / AUTOENCODER_DIR} holds a {type(ae).__name__}, not an AutoencoderKL")
        return cls(ae, scale_factor).to(device)


# ----------------------------------------------------------------------------------------
# Captions for MNIST digits

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Templates: ``{word}`` is the number word ("seven"), ``{digit}`` the numeral ("7").
# Training templates are used to train the text-conditional model; held-out templates use
# wordings (and words) that never occur in training captions and serve only to evaluate
# generalisation to unseen phrasing.
TRAIN_TEMPLATES = (
    "a handwritten {word}",
    "the digit {digit}",
    "number {word}, written thin",
    "number {word}, written bold",
    "a picture of the number {word}",
    "the digit {word}",
    "{word}",
    "{digit}",
    "an image of a {digit}",
    "a {word} written by hand",
)
HELD_OUT_TEMPLATES = (
    "someone scribbled a {word}",
    "a photo showing the numeral {digit}",
    "this is a {word}",
    "digit: {word}",
)


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates must not be empty")
    for tpl in templates:
        if not isinstance(tpl, str) or ("{word}" not in tpl and "{digit}" not in tpl):
            raise ValueError(f"each template must be a str containing {{word}} or {{digit}}, got {tpl!r}")
    return templates


def make_mnist_captions(labels: torch.Tensor, generator: rng.Generator = None,
                        templates: Sequence[str] | None = None, held_out: bool = False) -> list[str]:
    """One caption per label (0..9), each from a template drawn uniformly with ``generator``.

    ``templates`` defaults to :data:`TRAIN_TEMPLATES`, or :data:`HELD_OUT_TEMPLATES` with
    ``held_out=True`` (then ``templates`` must not be given). Per-sample generators give one
    draw each, so captions then do not depend on the batch composition.
    """
    if templates is not None and held_out:
        raise ValueError("give either templates or held_out=True, not both")
    templates = _check_templates(templates if templates is not None
                                 else HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES)
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise ValueError(f"MNIST labels must lie in 0..9, got range [{int(labels.min())}, {int(labels.max())}]")
    choice = rng.randint(len(templates), labels.numel(), generator)
    return [templates[int(k)].format(word=NUMBER_WORDS[int(y)], digit=int(y))
            for y, k in zip(labels.tolist(), choice.tolist())]
