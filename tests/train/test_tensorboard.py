"""TensorBoard (the ``tensorboard`` extra) for every run kind: the metrics rows as scalars, the figures a run
writes as images, read back with TensorBoard's own EventAccumulator; --no-tensorboard writes none; asked
for without the package, one line saying how to install it."""

import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from difflab.cli import main
from difflab.config import ConfigError, resolve_config
from difflab.runs import resolve_checkpoint
from difflab.train import Callback, train
from difflab.train.metrics import read_metrics
from difflab.train.tensorboard import INSTALL, TENSORBOARD_DIR, read_png
from difflab.viz import save_grid

QUIET = dict(progress=False, log=lambda msg: None)
FLAGS = ["--no-progress", "--steps", "4", "--set", "train.num_threads=1", "train.log_every=1", "train.sample_every=2",
         "train.checkpoint_every=2"]
KINDS = {
    # command, extra settings, config file, the figure of train.sample_every and its final version
    "diffusion": ("train", ["sample.n=4", "sample.steps=2"], "config.yaml", "samples", "samples.png"),
    "classifier": ("train-classifier", ["train.eval_n=16"], "classifier.yaml", "heldout_accuracy", "accuracy.png"),
    "autoencoder": ("train-autoencoder", ["train.eval_n=16", "train.eval_classifier=none"], "autoencoder.yaml",
                    "reconstructions", "reconstructions.png"),
}
BUCKETS = ["t000-010", "t010-030", "t030-050", "t050-070", "t070-090", "t090-100"]   # T = 100 in the tiny presets
SCALARS = {
    "diffusion": {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s", "train/train_s"},
    "classifier": {"train/loss", "train/train_accuracy", "train/lr", *(f"heldout_accuracy/{b}" for b in BUCKETS),
                   *(f"heldout_loss/{b}" for b in BUCKETS)},
    "autoencoder": {"train/loss", "train/rec", "train/kl", "train/psnr_db", "train/d_loss", "train/lr"},
}


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def events(run: Path):
    """TensorBoard's own reader on the run's event files (all events kept)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    ea = accumulator.EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def decoded(image_event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)).convert("RGB"))


def event_files(run: Path) -> list[Path]:
    return list(run.rglob("events.out.tfevents*"))


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_run_kind_writes_its_metrics_and_figures_to_tensorboard_and_the_flag_off_writes_none(
        tmp_path, capsys, kind):
    pytest.importorskip("tensorboard")
    command, settings, config_name, figure, final = KINDS[kind]
    run = tmp_path / kind
    code, out, err = cli(capsys, command, "--preset", "tiny", "--out", run, "--tensorboard", *FLAGS, *settings)
    assert code == 0, err
    assert f"tensorboard --logdir {run}" in out
    assert yaml.safe_load((run / config_name).read_text())["train"]["tensorboard"] is True
    ea = events(run)

    # scalars: every number of every metrics row (training rows, the classifier's held-out rows), same step and value
    assert SCALARS[kind] <= set(ea.Tags()["scalars"])
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    seen = 0
    for row in rows:
        for key, value in row.items():
            if key == "step":
                continue
            scalar = key if "/" in key else f"train/{key}"
            got = [e.value for e in ea.Scalars(scalar) if e.step == row["step"]]
            assert len(got) == 1 and math.isclose(got[0], value, rel_tol=1e-6, abs_tol=1e-12), (scalar, row["step"])
            seen += 1
    assert seen >= 4 * len([k for k in SCALARS[kind] if k.startswith("train/")])
    if kind == "classifier":     # held-out accuracy per noise level at the sample interval and at the end
        assert [e.step for e in ea.Scalars(f"heldout_accuracy/{BUCKETS[0]}")] == [2, 4]

    # images: the sample-interval figure, its final version and the loss curve, pixel for pixel the PNG files
    assert set(ea.Tags()["images"]) == {figure, "loss"}
    images = ea.Images(figure)
    assert [e.step for e in images] == [2, 4]
    np.testing.assert_array_equal(decoded(images[0]), read_png(run / "samples" / "step_00000002.png"))
    np.testing.assert_array_equal(decoded(images[1]), read_png(run / final))
    (loss,) = ea.Images("loss")
    assert loss.step == 4
    np.testing.assert_array_equal(decoded(loss), read_png(run / "loss.png"))

    # the flag off: no event files at all
    off = tmp_path / f"{kind}-off"
    code, out, err = cli(capsys, command, "--preset", "tiny", "--out", off, "--no-tensorboard", *FLAGS, *settings)
    assert code == 0, err
    assert (off / final).is_file() and not (off / TENSORBOARD_DIR).exists() and not event_files(off)
    assert "tensorboard" not in out


def test_tensorboard_asked_for_without_the_package_is_one_line_that_says_how_to_install_it(tmp_path, capsys,
                                                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)    # as if the extra were not installed
    for argv in (["train", "--tensorboard"], ["train-classifier", "--tensorboard"],
                 ["train-autoencoder", "--set", "train.tensorboard=true"]):
        run = tmp_path / argv[0]
        code, out, err = cli(capsys, *argv, "--preset", "tiny", "--out", run, *FLAGS)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("difflab: error: ") and INSTALL in err and "tensorboard package is not installed" in err
        assert not run.exists()       # refused before anything was written
    # the default (auto) trains without it and writes no event files
    code, out, err = cli(capsys, "train", "--preset", "tiny", "--out", tmp_path / "auto", *FLAGS, "sample.n=4",
                         "sample.steps=2")
    assert code == 0, err
    assert (tmp_path / "auto" / "samples.png").is_file() and not event_files(tmp_path / "auto")


def test_the_tensorboard_setting_is_auto_by_default_and_refuses_other_values():
    assert resolve_config("tiny").train.tensorboard == "auto"
    assert resolve_config("tiny", overrides=["train.tensorboard=false"]).train.tensorboard is False
    with pytest.raises(ConfigError, match="train.tensorboard must be auto, true or false"):
        resolve_config("tiny", overrides=["train.tensorboard=sometimes"])


def test_resumed_runs_keep_tensorboard_in_step_with_the_metrics(tmp_path, capsys):
    """A run resumed from step 2 after it had logged steps 3 and 4: TensorBoard shows every step once, the
    resumed run's values (the older file's events after the checkpoint are dropped, as metrics.jsonl's are)."""
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--out", run, *FLAGS, "sample.n=4", "sample.steps=2"]
    assert cli(capsys, *argv)[0] == 0
    # as if the process had died after step 4's rows and figures but before its checkpoint
    latest = resolve_checkpoint(run)
    for f in latest.iterdir():
        f.unlink()
    latest.rmdir()
    (run / "checkpoints" / "latest").write_text("step_00000002\n")
    code, out, err = cli(capsys, "train", "--out", run, "--resume", *FLAGS)
    assert code == 0, err
    ea = events(run)
    rows = {r["step"]: r for r in read_metrics(run)}
    for tag, key in (("train/loss", "loss"), ("train/elapsed_s", "elapsed_s")):
        scalars = ea.Scalars(tag)
        assert [e.step for e in scalars] == [1, 2, 3, 4]
        assert all(math.isclose(e.value, rows[e.step][key], rel_tol=1e-6) for e in scalars)
    assert [e.step for e in ea.Images("samples")] == [2, 4] and [e.step for e in ea.Images("loss")] == [4]


class EvaluateEveryTwoSteps(Callback):
    """What an evaluation during training does: a row through run.log_metrics, a figure through run.log_figure."""

    def on_step_end(self, run):
        if run.step % 2 == 0 and run.env.info.is_main:
            run.log_metrics({"fd": 10.0 / run.step, "fd_floor": 1.0})
            path = save_grid(run.task.images[:4].float() / 127.5 - 1, run.run_dir / "eval" / f"{run.step}.png")
            run.log_figure("eval/samples", path)


def test_an_evaluation_callback_reaches_tensorboard_without_tensorboard_code(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = resolve_config("tiny", overrides=["train.steps=4", "train.log_every=2", "train.num_threads=1",
                                            "sample.n=4", "sample.steps=2", "train.tensorboard=true"])
    train(cfg, tmp_path / "run", callbacks=[EvaluateEveryTwoSteps()], **QUIET)
    ea = events(tmp_path / "run")
    assert [(e.step, e.value) for e in ea.Scalars("eval/fd")] == [(2, 5.0), (4, 2.5)]
    assert [e.step for e in ea.Scalars("eval/fd_floor")] == [2, 4]
    assert "train/fd" not in ea.Tags()["scalars"]
    assert [e.step for e in ea.Images("eval/samples")] == [2, 4]
    np.testing.assert_array_equal(decoded(ea.Images("eval/samples")[1]), read_png(tmp_path / "run" / "eval" / "4.png"))
    # the evaluation rows are in metrics.jsonl too, and not in the training table (metrics.csv)
    assert [r["fd"] for r in read_metrics(tmp_path / "run") if "fd" in r] == [5.0, 2.5]
    csv_steps = [line.split(",")[0] for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_steps == ["2", "4"]
