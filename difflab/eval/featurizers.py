"""The featurizer interface: images in [-1, 1] -> float64 feature vectors.

A ``Featurizer`` maps ``[N, C, H, W]`` images in [-1, 1] to ``[N, feature_dim]`` float64
numpy features, running its network under ``torch.no_grad`` in eval mode, in batches, with
an optional tqdm bar. The base class converts channels (grey -> RGB by repetition, RGB ->
grey by ITU-R BT.601 luma) and resizes (bilinear) to what the network expects; subclasses
only implement ``_forward`` on a prepared batch.

Concrete featurizers live beside their networks: ``ClassifierFeaturizer`` in
``difflab.eval.classifier`` and ``InceptionFeaturizer`` in ``difflab.eval.inception``.
``name`` identifies the network *and its weights*; it names cached reference statistics,
so two featurizers with different weights must have different names.
"""

from __future__ import annotations

import abc

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, for RGB -> grey.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Tolerance on the [-1, 1] range check: resampling and fp round-off overshoot slightly.
RANGE_TOLERANCE = 1e-3


def check_images(images: torch.Tensor, what: str = "images", channels: int | None = None) -> None:
    """Raise ``ValueError`` unless ``images`` is a non-empty float ``[N, C, H, W]`` tensor in [-1, 1]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"{what} must be a [N, C, H, W] tensor, got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise ValueError(f"{what} must be a float tensor in [-1, 1], got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{what} must have {channels} channel(s), got {images.shape[1]}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{what} contain NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.0 - RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        raise ValueError(f"{what} must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB (repeat) or RGB -> grey (BT.601 luma); other conversions raise."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device)
        return (x * w[None, :, None, None]).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels (only 1 <-> 3 is supported)")


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to ``size x size`` (antialiased when shrinking); identity if already that size."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class Featurizer(abc.ABC):
    """Images in [-1, 1] -> features. Subclasses set the attributes and implement ``_forward``.

    Attributes:
        name: identifies network and weights; used to name cached statistics.
        feature_dim: D, the length of each feature vector.
        image_size: side the network is fed (inputs are resized to it), or None for any size.
        channels: channels the network is fed (inputs are converted to it).
        device: where the network runs.
    """

    name: str
    feature_dim: int
    image_size: int | None
    channels: int
    device: torch.device

    @abc.abstractmethod
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared batch ``[B, channels, image_size, image_size]`` on ``device`` -> ``[B, feature_dim]``."""

    @abc.abstractmethod
    def module(self) -> torch.nn.Module:
        """The network (put in eval mode while featurizing)."""

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Channel conversion and resizing of one batch (already on ``device``, float32)."""
        x = convert_channels(x, self.channels)
        if self.image_size is not None:
            x = resize(x, self.image_size)
        return x

    def features(self, images: torch.Tensor, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """``images`` [N, C, H, W] in [-1, 1] -> float64 numpy ``[N, feature_dim]``."""
        check_images(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        net = self.module()
        was_training = net.training
        net.eval()
        out = np.empty((images.shape[0], self.feature_dim), dtype=np.float64)
        starts = range(0, images.shape[0], batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"features ({self.name})", unit="batch")
        try:
            with torch.no_grad():
                for i in starts:
                    x = images[i : i + batch_size].to(self.device, torch.float32)
                    f = self._forward(self.prepare(x))
                    assert f.shape == (x.shape[0], self.feature_dim), f.shape
                    out[i : i + x.shape[0]] = f.double().cpu().numpy()
        finally:
            net.train(was_training)
        return out
