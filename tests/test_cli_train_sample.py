"""End-to-end command line: train, resume, sample (PNG, GIF, individual files), show-forward, errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from difflab.cli import COMMANDS, main
from difflab.samplers import SAMPLERS

REPO = Path(__file__).resolve().parents[1]
from _cli_helpers import TINY, png, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained for 4 steps through the CLI (shared by the sampling tests)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--steps", "4", "--out", str(run), "--set", "sample.n=4", "sample.steps=3"]) == 0
    return run


def test_train_writes_outputs_and_says_where(trained, capsys):
    assert (trained / "config.yaml").is_file() and (trained / "samples.png").is_file()
    assert (trained / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    # resume continues to a new total and reports where things are
    code, out, err = run_cli(capsys, "train", "--out", trained, "--resume", "--steps", "6", "--no-progress")
    assert code == 0, err
    assert "done: 6 steps" in out and "step_00000006" in out and "samples.png" in out
    assert "difflab sample --checkpoint" in out


def test_sample_png_gif_and_individual_files(trained, tmp_path, capsys):
    out_png = tmp_path / "grid.png"
    code, out, err = run_cli(capsys, "sample", "--checkpoint", trained, "-n", 4, "--steps", 3, "--out", out_png,
                             "--gif", "--save-individual", "--no-progress")
    assert code == 0, err
    assert out_png.is_file() and str(out_png) in out
    gif = Image.open(out_png.with_suffix(".gif"))
    assert gif.n_frames == 3 + 1                 # x_T + one frame per step (the last shows the sample)
    assert sorted(p.name for p in out_png.with_suffix("").iterdir()) == [f"sample_{i:05d}.png" for i in range(4)]
    assert png(out_png.with_suffix("") / "sample_00000.png").shape == (8, 8)
    # same seed -> same images; a different seed -> different ones; -n 2 is a prefix of -n 4 (per-sample seeds)
    code, *_ = run_cli(capsys, "sample", "--checkpoint", trained, "-n", 4, "--steps", 3, "--out", tmp_path / "b.png",
                       "--no-progress")
    assert code == 0 and np.array_equal(png(out_png), png(tmp_path / "b.png"))
    run_cli(capsys, "sample", "--checkpoint", trained, "-n", 4, "--steps", 3, "--seed", 1, "--out",
            tmp_path / "c.png", "--no-progress")
    assert not np.array_equal(png(out_png), png(tmp_path / "c.png"))
    run_cli(capsys, "sample", "--checkpoint", trained, "-n", 2, "--steps", 3, "--out", tmp_path / "d.png",
            "--save-individual", "--no-progress")
    for i in range(2):
        name = f"sample_{i:05d}.png"
        assert np.array_equal(png(tmp_path / "d" / name), png(out_png.with_suffix("") / name))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_registered_sampler_runs_from_the_cli(trained, tmp_path, capsys, sampler):
    code, out, err = run_cli(capsys, "sample", "--checkpoint", trained, "--sampler", sampler, "-n", 2, "--steps", 3,
                             "--out", tmp_path / f"{sampler}.png", "--no-ema", "--no-progress")
    assert code == 0, err
    assert "model weights" in out and (tmp_path / f"{sampler}.png").is_file()


@pytest.mark.parametrize("sampler", ["dpm++2m", "dpm++2m-sde", "heun"])
def test_sigma_schedule_flag_picks_the_karras_grid(trained, tmp_path, capsys, sampler):
    paths = {}
    for grid in ("timesteps", "karras"):
        code, out, err = run_cli(capsys, "sample", "--checkpoint", trained, "--sampler", sampler, "-n", 2,
                                 "--steps", 4, "--sigma-schedule", grid, "--no-progress", "--out",
                                 tmp_path / f"{grid}.png")
        assert code == 0, err
        paths[grid] = tmp_path / f"{grid}.png"
    assert not np.array_equal(png(paths["timesteps"]), png(paths["karras"]))   # another grid, other images
    code, out, err = run_cli(capsys, "sample", "--checkpoint", trained, "--sampler", sampler, "-n", 1, "--steps", 2,
                             "--sigma-schedule", "karras", "--no-progress")
    assert code == 0, err
    assert (trained / "samples" / f"{sampler}-karras-2steps-seed0.png").is_file()


def test_sigma_schedule_flag_needs_a_solver_with_a_grid(trained, capsys):
    code, _, err = run_cli(capsys, "sample", "--checkpoint", trained, "--sampler", "ddim", "--sigma-schedule",
                           "karras", "-n", 1)
    assert code == 2 and err.count("\n") == 1 and "--sigma-schedule: the ddim sampler has no noise-level grid" in err


def test_compile_failure_falls_back_to_eager_with_the_same_images(trained, tmp_path, capsys, monkeypatch):
    def no_compiler(module, **options):
        def fail(*args, **kwargs):
            raise RuntimeError("no working C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", no_compiler)
    args = ["sample", "--checkpoint", trained, "-n", 2, "--steps", 2, "--no-progress"]
    code, out, err = run_cli(capsys, *args, "--compile", "--out", tmp_path / "c.png")
    assert code == 0, err
    assert "--compile: torch.compile (inductor) failed (RuntimeError: no working C++ compiler found); running eager" \
        in out
    run_cli(capsys, *args, "--out", tmp_path / "e.png")
    assert np.array_equal(png(tmp_path / "c.png"), png(tmp_path / "e.png"))


@pytest.mark.slow
def test_compile_flag_samples_the_same_images_as_eager(trained, tmp_path, capsys):
    """A real inductor compile of the tiny U-Net (~10 s with a warm inductor cache, about a minute cold
    on a busy 2-core machine)."""
    args = ["sample", "--checkpoint", trained, "-n", 4, "--steps", 4, "--no-progress"]
    code, out, err = run_cli(capsys, *args, "--compile", "--out", tmp_path / "c.png")
    assert code == 0, err
    assert "--compile: compiled with torch.compile (inductor) in" in out or "not faster than eager" in out, out
    assert "output matches eager" in out or "not faster than eager" in out, out
    run_cli(capsys, *args, "--out", tmp_path / "e.png")
    assert np.abs(png(tmp_path / "c.png").astype(int) - png(tmp_path / "e.png").astype(int)).max() <= 1


def test_class_conditional_run_samples_a_chosen_class(tmp_path, capsys):
    run = tmp_path / "cond"
    code, _, err = run_cli(capsys, "train", *TINY, "model.num_classes=10", "data.labels=true", "--steps", 2,
                           "--out", run, "--set", "sample.n=10", "sample.steps=2")
    assert code == 0, err
    assert png(run / "samples.png").shape[1] > png(run / "samples.png").shape[0]   # one row of 10 classes
    code, out, err = run_cli(capsys, "sample", "--checkpoint", run, "--class-label", 3, "-n", 2, "--steps", 2,
                             "--out", tmp_path / "three.png", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli(capsys, "sample", "--checkpoint", run, "--class-label", 11, "-n", 2)
    assert code == 2 and "--class-label must be in 0..9" in err


def test_show_forward_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "fwd.png"
    code, stdout, err = run_cli(capsys, "show-forward", "--preset", "tiny", "-n", 3, "--columns", 4, "--out", out)
    assert code == 0, err
    assert out.is_file() and str(out) in stdout
    assert png(out).shape[0] > 100     # a matplotlib figure, not a raw 8x8 image


def test_config_command_prints_the_resolved_config(capsys):
    code, out, _ = run_cli(capsys, "config", "--preset", "tiny", "--set", "train.lr=0.5")
    assert code == 0 and "lr: 0.5" in out and "model:" in out


@pytest.mark.parametrize("argv, code, message", [
    (["train", "--preset", "tiny", "--set", "train.lrr=1"], 2, "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    (["train", "--preset", "tiny", "--set", "train.steps=many"], 2, "train.steps must be an integer"),
    (["train", "--preset", "nope"], 2, "invalid choice: 'nope'"),
    (["train", "--resume"], 2, "--resume needs the run folder"),
    (["sample", "--checkpoint", "/definitely/not/here"], 1, "does not exist"),
    (["sample"], 2, "the following arguments are required: --checkpoint"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ([], 2, "choose a command"),
])
def test_user_errors_are_one_line_with_an_exit_code(capsys, argv, code, message):
    got, out, err = run_cli(capsys, *argv)
    assert got == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difflab: error: ") and message in lines[0], err


def test_run_errors_after_training(trained, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", *TINY, "--steps", "2", "--out", trained)
    assert code == 2 and "already holds checkpoints" in err
    code, _, err = run_cli(capsys, "sample", "--checkpoint", trained, "--class-label", 3)
    assert code == 2 and "this model is unconditional" in err
    code, _, err = run_cli(capsys, "sample", "--checkpoint", trained, "--out", tmp_path / "x.jpg")
    assert code == 2 and "must be a .png path" in err
    # a damaged checkpoint: one line, exit 1; --debug shows the traceback instead
    broken = tmp_path / "broken"
    ck = trained / "checkpoints" / "step_00000004"
    import shutil
    shutil.copytree(ck, broken)
    (broken / "ema.safetensors").write_bytes(b"\x00" * 20)
    code, _, err = run_cli(capsys, "sample", "--checkpoint", broken)
    assert code == 1 and "corrupt or incomplete: ema.safetensors could not be read" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="corrupt"):
        main(["sample", "--checkpoint", str(broken), "--debug"])


def test_subcommand_table_is_extensible():
    names = [c.name for c in COMMANDS]
    assert {"train", "sample", "show-forward"} <= set(names)
    assert all(callable(c.add_arguments) and callable(c.run) for c in COMMANDS)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_for_logged_steps(proc, metrics: Path, n: int, timeout_s: float) -> None:
    """Block until the trainer has logged ``n`` steps to metrics.jsonl. Steps are logged inside the
    training loop, after its SIGINT handler is installed, so this is the point where Ctrl-C means
    "checkpoint and stop". Fails (and kills the trainer) if it exits first or never gets there; it
    never signals an unready process."""
    deadline = time.monotonic() + timeout_s
    while not (metrics.is_file() and metrics.read_text().count("\n") >= n):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the trainer exited (code {proc.returncode}) before logging {n} steps:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the trainer logged fewer than {n} steps in {timeout_s:.0f} s:\n{out}\n{err}")
        time.sleep(0.1)


@pytest.mark.slow
def test_sigint_writes_a_checkpoint_and_resume_matches_a_straight_run(tmp_path, capsys):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "difflab", "train", *TINY, "--steps", "100000", "--out", str(run),
                             "--set", "train.log_every=1", "train.checkpoint_every=100000"],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # a generous limit: on a loaded machine start-up alone can take a minute; the test waits for the
    # event, not for the limit
    _wait_for_logged_steps(proc, run / "metrics.jsonl", 3, timeout_s=600)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "difflab train --out" in out and "--resume" in out, out
    latest = (run / "checkpoints" / "latest").read_text().strip()
    k = int(latest.split("_")[1])
    assert k >= 3
    # continue for two more steps, and compare with an uninterrupted run of k + 2 steps
    assert main(["train", "--out", str(run), "--resume", "--steps", str(k + 2), "--no-progress"]) == 0
    assert main(["train", *TINY, "--steps", str(k + 2), "--out", str(tmp_path / "straight")]) == 0
    capsys.readouterr()
    name = f"step_{k + 2:08d}"
    for f in ("model.safetensors", "ema.safetensors"):
        a = load_file(run / "checkpoints" / name / f)
        b = load_file(tmp_path / "straight" / "checkpoints" / name / f)
        assert all(torch.equal(a[key], b[key]) for key in a), f
