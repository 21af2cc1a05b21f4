import numpy as np
import pytest
import torch
from PIL import Image

from difflab import viz


def _imgs(n=6, c=1, h=8, w=8, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_make_grid_layout_and_values():
    x = torch.full((5, 1, 3, 4), -1.0)
    x[1] = 1.0
    before = x.clone()
    g = viz.make_grid(x, nrow=3, padding=1, upscale=2)
    assert torch.equal(x, before)
    assert g.dtype == np.uint8 and g.shape == (2 * (6 + 1) + 1, 3 * (8 + 1) + 1, 1)
    assert (g[1:7, 1:9] == 0).all() and (g[1:7, 10:18] == 255).all()  # image 0 black, image 1 white
    assert (g[0] == 255).all() and (g[:, 0] == 255).all()  # white padding
    assert (g[8:14, 19:27] == 255).all()  # the empty 6th cell is padding colour
    rgb = viz.make_grid(_imgs(4, c=3), nrow=2, padding=0, upscale=1)
    assert rgb.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="C in"):
        viz.make_grid(torch.zeros(2, 2, 4, 4))


def test_make_grid_clamps_and_rounds():
    x = torch.tensor([-3.0, 0.0, 3.0]).reshape(3, 1, 1, 1)
    g = viz.make_grid(x, nrow=3, padding=0, upscale=1)
    assert g[0, :, 0].tolist() == [0, 128, 255]


def test_save_grid_upscales_small_images(tmp_path):
    p = viz.save_grid(_imgs(16), tmp_path / "a" / "b" / "grid.png", nrow=4)
    assert p.exists()
    with Image.open(p) as im:
        assert im.format == "PNG" and im.mode == "L"
        assert im.size == (4 * (32 + 2) + 2,) * 2  # 8x8 enlarged 4x to 32x32
    p2 = viz.save_grid(_imgs(4, c=3, h=32, w=32), tmp_path / "rgb.png")
    with Image.open(p2) as im:
        assert im.mode == "RGB" and im.size == (2 * 34 + 2,) * 2


def test_save_images(tmp_path):
    x = _imgs(3, c=3, h=5, w=7)
    paths = viz.save_images(x, tmp_path / "out", prefix="s")
    assert [p.name for p in paths] == ["s_00000.png", "s_00001.png", "s_00002.png"]
    with Image.open(paths[2]) as im:
        back = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1
    assert im.size == (7, 5) and (back - x[2]).abs().max() <= 1 / 127.5 + 1e-6


def test_save_gif_frames_and_durations(tmp_path):
    frames = [_imgs(4, seed=s) for s in range(3)]
    p = viz.save_gif(frames, tmp_path / "g" / "anim.gif", duration_ms=[50, 60, 700], loop=0, nrow=2)
    with Image.open(p) as im:
        assert im.format == "GIF" and im.n_frames == 3 and im.info.get("loop") == 0
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    assert durations == [50, 60, 700]
    with pytest.raises(ValueError, match="same size"):
        viz.save_gif([_imgs(4), _imgs(9)], tmp_path / "bad.gif")


def test_save_trajectory_gif_side_by_side_with_hold(tmp_path):
    xs = [_imgs(4, seed=s) for s in range(5)]
    preds = [_imgs(4, seed=10 + s) for s in range(4)]  # one fewer: no prediction for x_T
    p = viz.save_trajectory_gif(xs, preds, tmp_path / "traj.gif", duration_ms=40, hold_ms=900)
    grid_w = viz.make_grid(xs[0], upscale=None).shape[1]
    with Image.open(p) as im:
        assert im.n_frames == 5
        assert im.size[0] == 2 * grid_w + 6 and im.size[1] > grid_w
        im.seek(4)
        assert im.info["duration"] == 900
    with pytest.raises(ValueError, match="same length or one fewer"):
        viz.save_trajectory_gif(xs, preds[:2], tmp_path / "x.gif")


def _png_size(p):
    with Image.open(p) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib figure saved during the test, so its axes can be inspected (the PNG is
    still written by the real savefig)."""
    from matplotlib.figure import Figure

    saved = []
    real = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_losses_draws_raw_and_smoothed_curves_on_the_right_scale(tmp_path, figures):
    steps = np.arange(200)
    losses = 1.0 / (1 + steps) + 0.01
    p = viz.plot_losses(steps, losses, tmp_path / "plots" / "loss.png", smooth=0.8)
    assert _png_size(p) == (6 * viz.PLOT_DPI, 4 * viz.PLOT_DPI)
    ax = figures[-1].axes[0]
    raw, smoothed = ax.get_lines()
    np.testing.assert_array_equal(raw.get_ydata(), losses)
    np.testing.assert_allclose(smoothed.get_ydata(), viz.ema_smooth(losses, 0.8))
    assert raw.get_alpha() < 1 and smoothed.get_linewidth() > raw.get_linewidth()   # raw faint, EMA bold
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "step" and _legend(ax) == ["loss (EMA 0.8)"]
    # a non-positive series makes the axis linear; one colour per series
    viz.plot_losses(steps, {"train": losses, "val": losses - 0.5}, tmp_path / "neg.png")
    ax = figures[-1].axes[0]
    assert ax.get_yscale() == "linear" and _legend(ax) == ["train (EMA 0.9)", "val (EMA 0.9)"]
    colours = [line.get_color() for line in ax.get_lines()]
    assert colours[0] == colours[1] != colours[2] == colours[3]


def test_2d_plots_show_the_given_points(tmp_path, figures):
    pts = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    assert _png_size(viz.scatter_2d(pts, pts + 1, tmp_path / "s.png", lim=4)) == (600, 600)
    ax = figures[-1].axes[0]
    data, samples = ax.collections
    np.testing.assert_allclose(data.get_offsets(), (pts + 1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(samples.get_offsets(), pts.numpy(), rtol=1e-6)
    assert ax.get_xlim() == (-4, 4) and ax.get_ylim() == (-4, 4) and _legend(ax) == ["data", "samples"]
    traj = [pts * (1 - k / 10) for k in range(11)]
    assert _png_size(viz.plot_trajectories_2d(traj, tmp_path / "t.png", max_paths=50)) == (600, 600)
    ax = figures[-1].axes[0]
    paths = ax.get_lines()
    assert len(paths) == 50                                           # max_paths of the 300
    np.testing.assert_allclose(paths[7].get_xydata(), np.stack([t[7].numpy() for t in traj]), rtol=1e-6)
    start, end = ax.collections
    np.testing.assert_allclose(start.get_offsets(), traj[0][:50].numpy(), rtol=1e-6)
    np.testing.assert_allclose(end.get_offsets(), traj[-1][:50].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        viz.scatter_2d(torch.randn(5, 3), None, tmp_path / "bad.png")


def test_curves_and_bars_plot_the_given_values(tmp_path, figures):
    p = viz.plot_curve([1, 10, 100], {"ours": [3, 2, 1], "peer": [4, 3, 2]}, tmp_path / "c.png",
                       xlabel="steps", ylabel="FID", logx=True)
    assert _png_size(p)[1] == 4 * viz.PLOT_DPI
    ax = figures[-1].axes[0]
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[3, 2, 1], [4, 3, 2]]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear" and _legend(ax) == ["ours", "peer"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("steps", "FID")
    viz.plot_bars(["a", "b", "c"], {"x": [1, 2, 3], "y": [2, 1, 3]}, tmp_path / "b.png", logy=True)
    ax = figures[-1].axes[0]
    bars = ax.patches
    assert [b.get_height() for b in bars] == [1, 2, 3, 2, 1, 3]
    centres = [b.get_x() + b.get_width() / 2 for b in bars]
    np.testing.assert_allclose(centres, [-0.2, 0.8, 1.8, 0.2, 1.2, 2.2])   # grouped side by side per label
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"] and ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="values for 3 x positions"):
        viz.plot_curve([1, 2, 3], {"bad": [1, 2]}, tmp_path / "bad.png")


def test_ema_smooth_is_debiased():
    assert np.allclose(viz.ema_smooth([5.0, 5.0, 5.0], 0.9), 5.0)
    out = viz.ema_smooth([0.0, 10.0], 0.5)
    assert out[0] == 0.0 and np.isclose(out[1], (0.5 * 10) / (1 - 0.25))


def test_forward_process_grid(tmp_path, figures):
    x0 = _imgs(3, c=3)
    cols = [x0 * (1 - k / 4) for k in range(4)]
    p = viz.forward_process_grid(cols, [0, 100, 500, 999], tmp_path / "fwd" / "grid.png")
    w, h = _png_size(p)
    assert w > h  # 4 columns of t by 3 rows of images
    cells = {(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start): ax for ax in figures[-1].axes}
    assert sorted(cells) == [(i, j) for i in range(3) for j in range(4)]
    assert [cells[0, j].get_title() for j in range(4)] == ["t=0", "t=100", "t=500", "t=999"]
    assert cells[1, 0].get_title() == ""
    # row i, column j shows image i of batch j as 8-bit RGB
    shown = cells[2, 1].get_images()[0].get_array()
    expected = torch.round((cols[1][2].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(shown, dtype=np.float64) - expected).max() <= 1
    with pytest.raises(ValueError, match="4 image batches for 3 timesteps"):
        viz.forward_process_grid(cols, [0, 1, 2], tmp_path / "bad.png")
