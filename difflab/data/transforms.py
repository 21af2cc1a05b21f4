"""Image transforms: uint8 <-> [-1, 1], channel conversion, resize + center crop, flips.

Resizing and channel conversion go through PIL for every source (folders, IDX, CIFAR),
so a given image is processed the same way whatever format it came from.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from difflab import rng

#: Background that transparent pixels are composited onto before dropping alpha.
ALPHA_BACKGROUND = (255, 255, 255)
_MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` 0..255 -> ``float32`` in ``[-1, 1]`` (a new tensor)."""
    return images.to(torch.float32) / 127.5 - 1.0


def float_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` float -> ``uint8`` 0..255 (clamped, rounded; a new tensor)."""
    return ((x.detach().to(torch.float32).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def random_hflip(x: torch.Tensor, generator: rng.Generator = None) -> torch.Tensor:
    """Flip each image of the batch ``x [N, C, H, W]`` left-right with probability 1/2.

    The coin flips come from ``generator`` (one generator, one per sample, or None);
    returns a new tensor and leaves ``x`` untouched.
    """
    if x.ndim != 4:
        raise ValueError(f"random_hflip expects a batch [N, C, H, W], got shape {tuple(x.shape)}")
    flip = rng.randint(2, x.shape[0], generator).to(device=x.device, dtype=torch.bool)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def low_res_condition(x: torch.Tensor, factor: int, size: int) -> torch.Tensor:
    """The conditioning image of ``factor``-x super-resolution: ``x [N, C, H, W]`` averaged over
    ``factor x factor`` blocks (area downsampling), then bilinearly resized to ``size x size``
    (returned as is when it already has that size). A new tensor; ``x`` is untouched."""
    import torch.nn.functional as F

    if x.ndim != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"images {tuple(x.shape)} must be [N, C, H, W] with H and W divisible by {factor}")
    low = F.avg_pool2d(x, factor)
    if tuple(low.shape[-2:]) == (size, size):
        return low
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def check_channels(channels: int | None) -> int | None:
    if channels is not None and channels not in _MODE_FOR_CHANNELS:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return channels


def check_image_size(image_size: int | None) -> int | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer (square side in pixels), got {image_size!r}")
    return image_size


def convert_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert a PIL image to ``L`` (channels=1) or ``RGB`` (channels=3).

    Transparent pixels are composited onto :data:`ALPHA_BACKGROUND` first; 16/32-bit
    grayscale is rescaled to 8 bits rather than clipped.
    """
    mode = _MODE_FOR_CHANNELS[check_channels(channels)]
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        img = Image.alpha_composite(bg, rgba).convert("RGB")
    return img if img.mode == mode else img.convert(mode)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic, antialiased), then center-crop ``size x size``."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """``uint8 [C, H, W]`` with C in (1, 3) -> PIL image."""
    arr = image.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL ``L``/``RGB`` image -> ``uint8 [C, H, W]``."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def adapt_images(images: torch.Tensor, image_size: int | None = None, channels: int | None = None) -> torch.Tensor:
    """Apply :func:`convert_channels` and :func:`resize_center_crop` to a ``uint8`` batch.

    Returns ``images`` itself when nothing needs to change.
    """
    check_image_size(image_size)
    check_channels(channels)
    n, c, h, w = images.shape
    need_size = image_size is not None and (h, w) != (image_size, image_size)
    need_channels = channels is not None and channels != c
    if not (need_size or need_channels):
        return images
    out_c = channels if channels is not None else c
    out_h, out_w = (image_size, image_size) if image_size is not None else (h, w)
    out = torch.empty((n, out_c, out_h, out_w), dtype=torch.uint8)
    for i in range(n):
        img = tensor_to_pil(images[i])
        if need_channels:
            img = convert_channels(img, out_c)
        if need_size:
            img = resize_center_crop(img, image_size)
        out[i] = pil_to_tensor(img)
    return out

