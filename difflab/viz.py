"""Pictures of what the models do: image grids, GIFs of sampling, loss curves, 2-D plots.

Images come in as float tensors in ``[-1, 1]``, ``[N, C, H, W]`` with C in (1, 3).
Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend
switch, safe in threads and headless jobs); images and GIFs are written with PIL.
Every function creates the parent folders of its output and returns the path written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from difflab.data.transforms import float_to_uint8

#: Small images are enlarged (nearest neighbour) until their shorter side reaches this.
MIN_DISPLAY_SIDE = 32
GRID_PAD_VALUE = 1.0  # white separators (in [-1, 1] units)
PLOT_DPI = 120


# ----------------------------------------------------------------------------- helpers
def _out_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _check_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"{what} must be [N, C, H, W] with N >= 1 and C in (1, 3), got {tuple(images.shape)}")
    return images


def auto_upscale(height: int, width: int, min_side: int = MIN_DISPLAY_SIDE) -> int:
    """Integer nearest-neighbour factor giving a shorter side of at least ``min_side``."""
    return max(1, min_side // max(1, min(height, width)))


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[-1, 1]`` float -> uint8 numpy of the same shape."""
    return float_to_uint8(x.detach().cpu()).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2,
              upscale: int | None = 1, pad_value: float = GRID_PAD_VALUE) -> np.ndarray:
    """Tile ``images`` (``[-1, 1]``, ``[N, C, H, W]``) into one ``uint8`` array ``[H', W', C]``.

    ``nrow`` is the number of images per row (default ``ceil(sqrt(N))``); each image is
    enlarged ``upscale`` times with nearest neighbour (``None``: automatic, see
    :func:`auto_upscale`) and separated by ``padding`` pixels of ``pad_value``.
    """
    x = _check_images(images)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1 or padding < 0:
        raise ValueError(f"nrow must be >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    s = auto_upscale(h, w) if upscale is None else int(upscale)
    if s < 1:
        raise ValueError(f"upscale must be a positive integer, got {upscale}")
    if s > 1:
        x = x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        h, w = h * s, w * s
    ncol, nrows = min(nrow, n), math.ceil(n / nrow)
    grid = torch.full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value))
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i].detach().to("cpu", torch.float32)
    return _to_uint8(grid).transpose(1, 2, 0).copy()


def _pil(grid: np.ndarray) -> Image.Image:
    return Image.fromarray(grid[:, :, 0], "L") if grid.shape[2] == 1 else Image.fromarray(grid, "RGB")


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
              upscale: int | None = None, padding: int = 2) -> Path:
    """Save ``images`` as one PNG grid (small images enlarged automatically); return the path."""
    path = _out_path(path)
    _pil(make_grid(images, nrow=nrow, padding=padding, upscale=upscale)).save(path, format="PNG")
    return path


def save_images(images: torch.Tensor, directory: str | os.PathLike, prefix: str = "img",
                start: int = 0) -> list[Path]:
    """Save each image as ``directory/<prefix>_<index:05d>.png`` at its own size; return the paths."""
    x = _check_images(images)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arr = _to_uint8(x).transpose(0, 2, 3, 1)
    paths = []
    for i, a in enumerate(arr):
        p = directory / f"{prefix}_{start + i:05d}.png"
        _pil(a).save(p, format="PNG")
        paths.append(p)
    return paths


def _frame(frame, nrow: int | None, upscale: int | None) -> np.ndarray:
    if isinstance(frame, torch.Tensor):
        return make_grid(frame, nrow=nrow, upscale=upscale)
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"a GIF frame must be a tensor in [-1, 1] or a uint8 array [H, W(, C)], "
                         f"got {arr.dtype} {arr.shape}")
    return arr[:, :, None] if arr.ndim == 2 else arr


def save_gif(frames: Sequence, path: str | os.PathLike, duration_ms: int | Sequence[int] = 100,
             loop: int = 0, nrow: int | None = None, upscale: int | None = None) -> Path:
    """Write an animated GIF.

    ``frames``: grids from :func:`make_grid` (uint8 ``[H, W, C]``) or image tensors in
    ``[-1, 1]`` (tiled with ``nrow``/``upscale``); all must have the same size.
    ``duration_ms``: one value or one per frame. ``loop=0`` repeats forever.
    Note that GIF players merge identical consecutive frames' durations.
    """
    grids = [_frame(f, nrow, upscale) for f in frames]
    if not grids:
        raise ValueError("save_gif needs at least one frame")
    if len({g.shape for g in grids}) != 1:
        raise ValueError(f"all GIF frames must have the same size, got {sorted({g.shape for g in grids})}")
    durations = [int(duration_ms)] * len(grids) if np.isscalar(duration_ms) else [int(d) for d in duration_ms]
    if len(durations) != len(grids) or min(durations) <= 0:
        raise ValueError(f"duration_ms must be positive, one value or one per frame ({len(grids)})")
    images = [_pil(g).convert("RGB") if g.shape[2] == 3 else _pil(g) for g in grids]
    path = _out_path(path)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=durations if len(durations) > 1 else durations[0], loop=loop, optimize=False)
    return path


def _caption_bar(width: int, text: str, height: int = 14) -> np.ndarray:
    bar = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(bar).text((2, 1), text, fill=(0, 0, 0), font=ImageFont.load_default())
    return np.asarray(bar)


def _rgb(grid: np.ndarray) -> np.ndarray:
    return np.repeat(grid, 3, axis=2) if grid.shape[2] == 1 else grid


def save_trajectory_gif(xs: Sequence[torch.Tensor], pred_x0s: Sequence[torch.Tensor], path: str | os.PathLike,
                        nrow: int | None = None, upscale: int | None = None, duration_ms: int = 80,
                        hold_ms: int = 1500, loop: int = 0) -> Path:
    """GIF of a sampling run: ``x_t`` (left) beside the predicted ``x_0`` (right) at each step.

    ``xs[i]`` and ``pred_x0s[i]`` are batches ``[N, C, H, W]`` in ``[-1, 1]``. When
    ``pred_x0s`` has one entry fewer than ``xs`` (no prediction yet for the initial noise),
    the first frame's right panel is left grey. The last frame is held for ``hold_ms``.
    """
    xs, pred_x0s = list(xs), list(pred_x0s)
    if not xs:
        raise ValueError("save_trajectory_gif needs at least one step")
    if len(pred_x0s) not in (len(xs), len(xs) - 1):
        raise ValueError(f"got {len(xs)} x_t and {len(pred_x0s)} pred_x0 batches; "
                         f"pred_x0s must have the same length or one fewer")
    if len(pred_x0s) == len(xs) - 1:
        pred_x0s = [torch.zeros_like(xs[0])] + pred_x0s
    n = len(xs)
    frames = []
    for i, (x_t, x_0) in enumerate(zip(xs, pred_x0s)):
        left, right = _rgb(make_grid(x_t, nrow, upscale=upscale)), _rgb(make_grid(x_0, nrow, upscale=upscale))
        if left.shape != right.shape:
            raise ValueError(f"step {i}: x_t and pred_x0 grids differ in size ({left.shape} vs {right.shape})")
        gap = np.full((left.shape[0], 6, 3), 255, np.uint8)
        body = np.concatenate([left, gap, right], axis=1)
        label = f"step {i + 1}/{n}   left: x_t   right: predicted x_0"
        frames.append(np.concatenate([_caption_bar(body.shape[1], label), body], axis=0))
    return save_gif(frames, path, duration_ms=[duration_ms] * (n - 1) + [hold_ms], loop=loop)


# ----------------------------------------------------------------------------- plots
def new_figure(figsize=(6.0, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    path = _out_path(path)
    fig.tight_layout()
    fig.savefig(path, format=path.suffix.lstrip(".").lower() or "png")
    return path


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def ema_smooth(values: Sequence[float], smooth: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard-style) with weight ``smooth`` in [0, 1)."""
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    v = _np(values)
    out, acc = np.empty_like(v), 0.0
    for i, x in enumerate(v):
        acc = smooth * acc + (1 - smooth) * x
        out[i] = acc / (1 - smooth ** (i + 1))
    return out


def plot_losses(steps: Sequence[float], losses: Sequence[float] | Mapping[str, Sequence[float]],
                path: str | os.PathLike, smooth: float = 0.9, title: str | None = None) -> Path:
    """Training loss(es) against step: raw values faint, EMA-smoothed curve bold.

    ``losses`` is one sequence or ``{name: sequence}``. The y axis is logarithmic when
    every value is positive, linear otherwise.
    """
    series = dict(losses) if isinstance(losses, Mapping) else {"loss": losses}
    s = _np(steps)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    all_positive = True
    for k, (label, ys) in enumerate(series.items()):
        y = _np(ys)
        if y.shape != s.shape:
            raise ValueError(f"{label}: {y.shape[0]} losses for {s.shape[0]} steps")
        all_positive &= bool(np.all(y > 0))
        color = f"C{k}"
        ax.plot(s, y, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(s, ema_smooth(y, smooth), color=color, linewidth=1.8, label=f"{label} (EMA {smooth})")
    if all_positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def _check_2d(x, what: str) -> np.ndarray:
    a = _np(x)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{what} must be [N, 2], got {a.shape}")
    return a


def scatter_2d(samples, data=None, path: str | os.PathLike = "scatter.png", title: str | None = None,
               lim: float | None = None) -> Path:
    """Scatter model ``samples`` ([N, 2]) over the ``data`` ([M, 2], optional)."""
    s = _check_2d(samples, "samples")
    fig = new_figure((5.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    if data is not None:
        d = _check_2d(data, "data")
        ax.scatter(d[:, 0], d[:, 1], s=3, alpha=0.35, color="0.5", label="data")
    ax.scatter(s[:, 0], s[:, 1], s=3, alpha=0.6, color="C3", label="samples")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=3)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_trajectories_2d(traj: Sequence, path: str | os.PathLike, max_paths: int = 200,
                         data=None, title: str | None = None) -> Path:
    """Paths of 2-D samples over time: ``traj[i]`` is ``[N, 2]`` at step ``i``.

    Draws up to ``max_paths`` paths, the start points (grey) and end points (red).
    """
    pts = np.stack([_check_2d(t, f"traj[{i}]") for i, t in enumerate(traj)])  # [T, N, 2]
    if pts.shape[0] < 2:
        raise ValueError("plot_trajectories_2d needs at least 2 steps")
    pts = pts[:, :max_paths]
    fig = new_figure((5.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    if data is not None:
        d = _check_2d(data, "data")
        ax.scatter(d[:, 0], d[:, 1], s=2, alpha=0.2, color="0.7")
    for j in range(pts.shape[1]):
        ax.plot(pts[:, j, 0], pts[:, j, 1], color="C0", alpha=0.3, linewidth=0.6)
    ax.scatter(pts[0, :, 0], pts[0, :, 1], s=4, color="0.4", label="start")
    ax.scatter(pts[-1, :, 0], pts[-1, :, 1], s=4, color="C3", label="end")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=3)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_curve(xs: Sequence[float], ys_dict: Mapping[str, Sequence[float]], path: str | os.PathLike,
               xlabel: str = "x", ylabel: str = "y", logx: bool = False, logy: bool = False,
               title: str | None = None, marker: str = "o") -> Path:
    """One line per entry of ``ys_dict`` against shared ``xs`` (benchmarks, metrics vs steps)."""
    x = _np(xs)
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for label, ys in ys_dict.items():
        y = _np(ys)
        if y.shape != x.shape:
            raise ValueError(f"{label}: {y.shape[0]} values for {x.shape[0]} x positions")
        ax.plot(x, y, marker=marker, markersize=3, label=label)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ys_dict:
        ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_bars(labels: Sequence[str], values: Sequence[float] | Mapping[str, Sequence[float]],
              path: str | os.PathLike, ylabel: str = "", title: str | None = None, logy: bool = False) -> Path:
    """Bar chart; with ``{series: values}`` the bars of each label are grouped side by side."""
    series = dict(values) if isinstance(values, Mapping) else {"": values}
    labels = list(labels)
    fig = new_figure((max(4.0, 0.6 * len(labels) * max(1, len(series)) + 2), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    pos = np.arange(len(labels), dtype=np.float64)
    for k, (name, vals) in enumerate(series.items()):
        v = _np(vals)
        if v.shape != (len(labels),):
            raise ValueError(f"series {name!r}: {v.shape[0] if v.ndim else 1} values for {len(labels)} labels")
        ax.bar(pos + (k - (len(series) - 1) / 2) * width, v, width, label=name or None)
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def forward_process_grid(images_per_t: Sequence[torch.Tensor], ts: Sequence[int], path: str | os.PathLike,
                         title: str | None = None) -> Path:
    """Grid of the forward process: row = image, column = timestep ``t`` (labelled on top).

    ``images_per_t[j]`` is the batch ``x_t`` (``[-1, 1]``, ``[N, C, H, W]``) at ``ts[j]``.
    """
    cols = [_check_images(x, f"images_per_t[{j}]") for j, x in enumerate(images_per_t)]
    if len(cols) != len(ts) or not cols:
        raise ValueError(f"got {len(cols)} image batches for {len(ts)} timesteps")
    if len({tuple(x.shape) for x in cols}) != 1:
        raise ValueError("every batch in images_per_t must have the same shape")
    n = cols[0].shape[0]
    fig = new_figure((1.1 * len(cols) + 0.4, 1.1 * n + (0.5 if title else 0.3)))
    for j, (x, t) in enumerate(zip(cols, ts)):
        arr = _to_uint8(x).transpose(0, 2, 3, 1)
        for i in range(n):
            ax = fig.add_subplot(n, len(cols), i * len(cols) + j + 1)
            if arr.shape[3] == 1:
                ax.imshow(arr[i, :, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(arr[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t={int(t)}", fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
