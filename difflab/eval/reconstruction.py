"""How well an autoencoder reconstructs held-out images: PSNR, mean absolute error and the Frechet
distance between the features of the reconstructions and of the originals."""

from __future__ import annotations

from typing import Any

import torch

from .frechet import compute_stats, frechet_distance


def psnr(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], on the [0, 1] scale:
    ``10 log10(1 / MSE)`` with ``MSE = mean(((x - x_rec) / 2)^2)`` over C, H, W."""
    mse = ((x - x_rec) / 2).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp(min=1e-12))


@torch.no_grad()
def reconstruction_quality(ae, images: torch.Tensor, batch_size: int = 256, featurizer=None) -> dict[str, Any]:
    """PSNR and mean absolute error of the posterior-mean reconstructions ``D(E(x).mode())``
    (clamped to [-1, 1]) of ``images`` (float, [-1, 1]); with a ``featurizer``
    (:class:`difflab.eval.Featurizer`) also ``fd``: the Frechet distance between the features of
    the reconstructions and those of ``images`` (the reference; both n images, so a perfect
    autoencoder scores 0)."""
    device = next(ae.parameters()).device
    was_training = ae.training
    ae.eval()
    values, abs_err, recs = [], 0.0, []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        x_rec = ae.decode(ae.encode(x).mode()).clamp(-1, 1)
        values.append(psnr(x, x_rec).double().cpu())
        abs_err += float((x - x_rec).abs().flatten(1).mean(dim=1).sum())
        if featurizer is not None:
            recs.append(x_rec.cpu())
    ae.train(was_training)
    p = torch.cat(values)
    out = {"psnr_db": float(p.mean()), "psnr_db_std": float(p.std()) if len(p) > 1 else 0.0,
           "mean_abs_error": abs_err / len(images), "n": len(images)}
    if featurizer is not None:
        if len(images) < 2:
            raise ValueError(f"the Frechet distance needs at least 2 held-out images, got {len(images)}")
        ref = compute_stats(featurizer.features(images, batch_size), featurizer.name, "held-out", "originals")
        rec = compute_stats(featurizer.features(torch.cat(recs), batch_size), featurizer.name, "held-out",
                            "reconstructions")
        out.update(fd=frechet_distance(rec, ref), fd_featurizer=featurizer.name)
    return out
