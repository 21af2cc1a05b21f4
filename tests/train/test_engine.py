"""The training engine gives every task the same guarantees: resume bit for bit, SIGKILL at any point,
one writer per run folder, the same train settings (EMA, LR decay, time budget, torchrun)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from difflab.cli import main
from difflab.runs import (list_checkpoints, load_autoencoder, load_classifier, load_run, load_training_state,
                          resolve_checkpoint)
from difflab.train.metrics import read_metrics

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LEGACY = REPO / "tests" / "fixtures" / "legacy_runs"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
           PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
LOADERS = {"diffusion": load_run, "classifier": load_classifier, "autoencoder": load_autoencoder}
# the weight files of a checkpoint of each task (the classifier and autoencoder train with EMA in the driver)
WEIGHTS = {"diffusion": ("model", "ema"), "classifier": ("model", "ema"),
           "autoencoder": ("model", "ema", "discriminator")}
# fault -> the checkpoint that loads after the kill (the driver resumes each attempt from the last one)
EXPECTED_LATEST = {"between-checkpoints": "step_00000002", "torn-weights": "step_00000002",
                   "renamed-before-pointer": "step_00000002"}


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_same_checkpoint(a: Path, b: Path, names) -> None:
    for name in names:
        x, y = load_file(a / f"{name}.safetensors"), load_file(b / f"{name}.safetensors")
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x), name


# ----------------------------------------------------------------------------- resume and kill -9, per task
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["diffusion", "classifier", "autoencoder"])
def test_resume_through_kill_9_at_any_point_matches_an_uninterrupted_run(kind, tmp_path):
    proc = subprocess.run([sys.executable, str(HERE / "engine_crash_driver.py"), kind, str(tmp_path)], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for f in report["faults"]:       # each child died of SIGKILL at its point, and the last checkpoint loads
        assert f["signal"] == signal.SIGKILL, f
        assert f["latest"] == EXPECTED_LATEST[f["name"]], f
        snap = Path(f["snapshot"])
        for ckpt in list_checkpoints(snap):     # no step_* folder is half-written
            assert load_training_state(ckpt)["step"] == int(ckpt.name[5:])
        loaded = LOADERS[kind](snap)
        assert Path(loaded.checkpoint if kind != "autoencoder" else loaded[2]).name == f["latest"]
    assert report["final"] == {"signal": None, "exit": 0} and report["straight"] == {"signal": None, "exit": 0}
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert resolve_checkpoint(run).name == resolve_checkpoint(straight).name == "step_00000008"
    assert_same_checkpoint(resolve_checkpoint(run), resolve_checkpoint(straight), WEIGHTS[kind])   # bit for bit
    a, b = load_training_state(resolve_checkpoint(run)), load_training_state(resolve_checkpoint(straight))
    assert torch.equal(a["data_generator"], b["data_generator"]) and torch.equal(a["rng_cpu"], b["rng_cpu"])
    # one metrics row per step across the kills, with the same values as the uninterrupted run
    rows, straight_rows = read_metrics(run), read_metrics(straight)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows]
    assert [r["lr"] for r in rows] == [r["lr"] for r in straight_rows]   # the warm-up and cosine decay resumed


# ----------------------------------------------------------------------------- one writer per run folder
@pytest.mark.slow
def test_a_second_writer_fails_at_once_naming_the_first_and_readers_keep_working(tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "difflab", "train", "--preset", "tiny", "--steps", "1000000",
                              "--out", str(run), "--no-progress", "--set", "train.num_threads=1",
                              "train.checkpoint_every=2", "sample.n=2", "sample.steps=2"],
                             cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(run) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert list_checkpoints(run), first.stderr.read() if first.poll() is not None else "no checkpoint"
        t0 = time.monotonic()
        code, out, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress")
        assert code == 1 and time.monotonic() - t0 < 30
        line = err.strip().splitlines()[-1]
        assert line.startswith("difflab: error: ") and f"(PID {first.pid})" in line and "in use" in line, err
        code, out, err = cli(capsys, "train", "--preset", "tiny", "--out", run, "--no-progress")
        assert code == 1 and f"(PID {first.pid})" in err
        assert load_run(run).step >= 2                      # a reader needs no lock
        assert first.poll() is None                          # the first writer was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)                    # kill -9: the OS releases the lock
        first.wait(timeout=60)
    metrics_steps = [r["step"] for r in read_metrics(run)]
    assert metrics_steps == sorted(set(metrics_steps))       # one writer: no step logged twice
    code, out, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "--steps",
                         load_training_state(resolve_checkpoint(run))["step"] + 1, "--set", "sample.n=2",
                         "sample.steps=2")
    assert code == 0, err


def test_a_failed_start_leaves_no_run_folder_behind(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--preset", "tiny", "--no-progress", "--out", tmp_path / "new",
                       "--set", "data.dataset=nope")
    assert code != 0 and not (tmp_path / "new").exists(), err


# ----------------------------------------------------------------------------- the same train settings everywhere
@pytest.mark.parametrize("command,kind", [("train-classifier", "classifier"), ("train-autoencoder", "autoencoder")])
def test_classifier_and_autoencoder_take_the_engines_train_settings(command, kind, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(capsys, command, "--preset", "tiny", "--no-progress", "--out", run, "--steps", 6,
                         "--set", "train.num_threads=1", "train.ema_decay=0.5", "train.warmup_steps=2",
                         "train.lr_decay=linear", "train.log_every=1", "train.eval_n=8", "train.max_minutes=60",
                         "train.checkpoint_every=3")
    assert code == 0, err
    ckpt = resolve_checkpoint(run)
    assert (ckpt / "ema.safetensors").is_file() and load_training_state(ckpt)["ema_updates"] == 6
    lrs = [r["lr"] for r in read_metrics(run)]
    assert lrs[0] == pytest.approx(lrs[1] / 2) and lrs[1] > lrs[2] > lrs[3] > lrs[5] > 0   # warm-up, then decay
    loaded = LOADERS[kind](run)
    model = loaded.model if kind == "classifier" else loaded[0]
    ema = load_file(ckpt / "ema.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())   # the loaders use the EMA
    # the time budget stops the run and checkpoints it
    code, out, err = cli(capsys, command, "--out", run, "--resume", "--no-progress", "--steps", 100000,
                         "--set", "train.max_minutes=1e-9")
    assert code == 0 and "time budget reached" in err, err
    assert resolve_checkpoint(run).name == "step_00000006"
    # settings that make no sense for a task are refused in one line (a classifier's train.sample_every is its
    # held-out accuracy per noise level, tests/train/test_train_classifier.py)
    code, _, err = cli(capsys, command, "--preset", "tiny", "--out", tmp_path / "x", "--set", "train.class_dropout=0.5")
    assert code == 2 and "train." in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo")
def test_classifier_and_autoencoder_under_torchrun_match_one_process(tmp_path):
    flags = ["--preset", "tiny", "--steps", "2", "--no-progress", "--set", "train.num_threads=1",
             "train.batch_size=16", "train.eval_n=8", "train.checkpoint_every=2", "train.lr=1e-4"]
    commands = ("train-classifier", "train-autoencoder")
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               f"--master_port={29511 + i}", "-m", "difflab", command, "--out",
                               str(tmp_path / f"ddp-{command}"), *flags],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, command in enumerate(commands)]          # both launched at once: their start-up overlaps
    for command, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "x 2 processes" in err and out.count("done: 2 steps") == 1       # rank 0 alone reports
        assert main([command, "--out", str(tmp_path / f"one-{command}"), *flags]) == 0
        a, b = resolve_checkpoint(tmp_path / f"ddp-{command}"), resolve_checkpoint(tmp_path / f"one-{command}")
        assert load_training_state(a)["world_size"] == 2
        for name in ("model",) + (("discriminator",) if command == "train-autoencoder" else ()):
            x, y = load_file(a / f"{name}.safetensors"), load_file(b / f"{name}.safetensors")
            for k in x:   # the same updates up to the order of the gradient sums (Adam's normalised step makes a
                #           near-zero gradient's rounding visible: far below lr = 1e-4, which un-averaged
                #           gradients would reach; every checkpoint also checks the replicas are identical)
                torch.testing.assert_close(x[k], y[k], rtol=1e-4, atol=2e-5, msg=lambda m: f"{command} {name} {k}: {m}")


# ----------------------------------------------------------------------------- run folders of the earlier loops
@pytest.fixture
def legacy(tmp_path):
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy"


def test_run_folders_written_before_the_engine_load_sample_and_resume(legacy, capsys):
    run = load_run(legacy / "diffusion")
    assert run.step == 2 and run.weights == "ema"
    code, out, err = cli(capsys, "sample", "--checkpoint", legacy / "diffusion", "-n", 2, "--steps", 2,
                         "--out", legacy / "s.png", "--no-progress")
    assert code == 0 and (legacy / "s.png").is_file(), err
    clf = load_classifier(legacy / "classifier")
    assert clf.step == 2 and clf.num_classes == 10
    ae, ae_cfg, _ = load_autoencoder(legacy / "autoencoder")
    assert ae_cfg.model.latent_channels == ae.config.latent_channels
    for command, run_dir in (("train", "diffusion"), ("train-classifier", "classifier"),
                             ("train-autoencoder", "autoencoder")):
        code, out, err = cli(capsys, command, "--out", legacy / run_dir, "--resume", "--steps", 3, "--no-progress",
                             "--set", "train.eval_n=8" if command != "train" else "sample.n=2")
        assert code == 0 and "done: 3 steps" in out, err
        assert resolve_checkpoint(legacy / run_dir).name == "step_00000003"
