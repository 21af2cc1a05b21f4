"""Faults during training: SIGKILL anywhere, SIGTERM, a full disk or unwritable folder, NaN losses.

The SIGKILL matrix runs ``rel_crash_driver.py`` in one subprocess: it forks one child per fault
point, and each child kills itself with SIGKILL at that point (see the driver's docstring). The
library has no test hook for this: the driver monkeypatches os.replace / os.fsync /
safetensors / torch.save / shutil.rmtree / EMA.update inside the doomed child only.

Full disk and unwritable folders are simulated by monkeypatching the writer in-process to raise
``OSError(ENOSPC)`` / ``PermissionError(EACCES)``: the tests run as root, where ``chmod`` does
not stop writes, and a read-only bind mount needs privileges a test should not assume.
"""

import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difflab.cli import main
from difflab.diffusion import GaussianDiffusion
from difflab.train import CheckpointError, list_checkpoints, load_run, read_latest, resolve_checkpoint
from difflab.runs import CHECKPOINT_FILES, load_training_state
from difflab.train.ema import EMA
from difflab.train.metrics import read_metrics

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TINY = ["--preset", "tiny", "--no-progress", "--set", "train.num_threads=1", "sample.n=2", "sample.steps=2"]

# fault -> the step of the checkpoint that must load after the kill (None: none was finished yet).
# The driver resumes each attempt from the previous one's state, so this is one deterministic story.
EXPECTED_LATEST = {
    "after-first-update": None,
    "torn-model-weights": None,
    "after-rename-before-pointer": 2,     # renamed into place, `latest` never written
    "torn-training-state": 2,
    "pointer-written-not-renamed": 4,     # step_4 complete, `latest` not yet replaced
    "third-fsync": 4,
    "while-pruning": 6,
    "between-steps": 8,
    "resave-moved-aside": 6,              # resumed from step_6 while `latest` named step_8
    "metrics-rewrite": 6,
    "torn-ema-weights": 6,
    "checkpoint-config": 6,
    "after-fourth-update": 8,
}


def one_line_error(err: str, phrase: str) -> str:
    """The error is one line, the last on stderr (training's progress log lines come before it)."""
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("difflab: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert phrase in errors[0], err
    assert "Traceback" not in err
    return errors[0]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_same_weights(dir_a: Path, dir_b: Path) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(dir_a / name), load_file(dir_b / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


# ----------------------------------------------------------------------------- SIGKILL
@pytest.fixture(scope="module")
def crash_story(tmp_path_factory):
    work = tmp_path_factory.mktemp("crash")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(HERE / "rel_crash_driver.py"), str(work)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, json.loads((work / "report.json").read_text())


@pytest.mark.slow
def test_every_fault_point_killed_the_trainer(crash_story):
    _, report = crash_story
    assert [f["name"] for f in report["faults"]] == list(EXPECTED_LATEST)
    assert len(report["faults"]) >= 10
    for f in report["faults"]:   # each child died of SIGKILL at its fault point (not finished, not raised)
        assert f["signal"] == signal.SIGKILL, f
    assert report["final"] == {"signal": None, "exit": 0} and report["straight"] == {"signal": None, "exit": 0}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(EXPECTED_LATEST))
def test_after_a_sigkill_the_last_checkpoint_loads(crash_story, fault):
    _, report = crash_story
    snap = Path(next(f["snapshot"] for f in report["faults"] if f["name"] == fault))
    step = EXPECTED_LATEST[fault]
    if step is None:   # killed before the first checkpoint finished: nothing half-written looks finished
        assert list_checkpoints(snap) == [] and read_latest(snap) is None
        with pytest.raises(CheckpointError, match="no finished checkpoint yet"):
            resolve_checkpoint(snap)
        return
    ckpt = resolve_checkpoint(snap)
    assert ckpt.name == f"step_{step:08d}" and ckpt.is_dir()
    for c in list_checkpoints(snap):          # every step_* folder is complete, none half-written or half-deleted
        assert sorted(p.name for p in c.iterdir()) == sorted(CHECKPOINT_FILES), c
    assert load_training_state(ckpt)["step"] == step
    for use_ema in (True, False):
        run = load_run(snap, use_ema=use_ema)
        assert run.step == step
        assert all(torch.isfinite(v).all() for v in run.model.state_dict().values())


@pytest.mark.slow
def test_crash_windows_that_needed_a_fix(crash_story):
    """The windows that used to leave an un-resumable run, each now recovered."""
    _, report = crash_story
    snap = {f["name"]: Path(f["snapshot"]) for f in report["faults"]}
    # renamed into place but no pointer yet: --resume used to fail with "no finished checkpoint yet"
    assert not (snap["after-rename-before-pointer"] / "checkpoints" / "latest").exists()
    # re-saving a step that `latest` named: the pointer used to name a folder that was moved aside
    assert (snap["resave-moved-aside"] / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    assert any(p.name.startswith(".old-step_00000008") for p in (snap["resave-moved-aside"] / "checkpoints").iterdir())
    # pruning renames the doomed folder first: the half-deleted copy is not a step_* folder
    assert any(p.name.startswith(".del-step_00000002") for p in (snap["while-pruning"] / "checkpoints").iterdir())
    # the metrics rewrite on resume is atomic: the rows logged before the kill are still there
    assert [r["step"] for r in read_metrics(snap["metrics-rewrite"])][:6] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_resuming_through_all_the_kills_matches_an_uninterrupted_run(crash_story):
    work, _ = crash_story
    run, straight = work / "run", work / "straight"
    assert resolve_checkpoint(run).name == resolve_checkpoint(straight).name == "step_00000016"
    assert_same_weights(resolve_checkpoint(run), resolve_checkpoint(straight))
    # one metrics row per step, none duplicated or lost across 13 kills
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 17))
    # the leftovers of the crashed writers were cleaned up by later checkpoints
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000014", "step_00000016"]


# ----------------------------------------------------------------------------- SIGTERM
def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    real_update, calls = EMA.update, {"n": 0}

    def update(self, model):   # a real SIGTERM to this process, delivered in the middle of step 3
        real_update(self, model)
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(EMA, "update", update)
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", *TINY, "--steps", 50, "--out", run, "--set", "train.checkpoint_every=1000")
    monkeypatch.undo()
    assert code == 130, err
    assert "received SIGTERM: finishing this step and writing a checkpoint" in err
    assert "interrupted at step 3 of 50" in out and f"resume with: difflab train --out {run} --resume" in out
    assert signal.getsignal(signal.SIGTERM) is before            # the handler was restored
    assert resolve_checkpoint(run).name == "step_00000003" and load_run(run).step == 3
    # resuming reaches the same weights as a run that was never interrupted
    assert cli(capsys, "train", "--out", run, "--resume", "--steps", 5, "--no-progress")[0] == 0
    assert cli(capsys, "train", *TINY, "--steps", 5, "--out", tmp_path / "straight")[0] == 0
    assert_same_weights(resolve_checkpoint(run), resolve_checkpoint(tmp_path / "straight"))


# ----------------------------------------------------------------------------- full disk, unwritable folder
def _fail_nth(real, n, exc, when=lambda *a, **k: True):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise exc
        return real(*args, **kwargs)
    return wrapper


def _enospc(name):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)


@pytest.mark.parametrize("fault", ["model weights", "training state", "unwritable folder", "latest pointer"])
def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, capsys, monkeypatch, fault):
    import safetensors.torch as st

    # the step-2 checkpoint fails; step 1's must survive and the message must say what happened
    if fault == "model weights":      # 1st and 2nd calls: step 1's model and EMA; 3rd: step 2's model
        monkeypatch.setattr(st, "save_file", _fail_nth(st.save_file, 3, _enospc("model.safetensors")))
        cause = "No space left on device"
    elif fault == "training state":
        monkeypatch.setattr(torch, "save", _fail_nth(torch.save, 2, _enospc("training_state.pt")))
        cause = "No space left on device"
    elif fault == "unwritable folder":   # the temp folder of a checkpoint cannot be created
        monkeypatch.setattr(Path, "mkdir", _fail_nth(Path.mkdir, 2, PermissionError(errno.EACCES, "Permission denied"),
                                                     when=lambda self, *a, **k: self.name.startswith(".tmp-step_")
                                                     and not k.get("exist_ok")))
        cause = "Permission denied"
    else:
        monkeypatch.setattr(os, "replace", _fail_nth(os.replace, 2, _enospc("latest"),
                                                     when=lambda src, dst, *a, **k: Path(dst).name == "latest"))
        cause = "No space left on device"
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", *TINY, "--steps", 3, "--out", run, "--set", "train.checkpoint_every=1")
    monkeypatch.undo()
    assert code == 1
    line = one_line_error(err, "could not write checkpoint step_00000002")
    assert cause in line and "the previous checkpoint" in line and "step_00000001 is intact" in line
    assert read_latest(run).name == "step_00000001" and load_run(run).step == 1
    root = run / "checkpoints"
    assert not [p for p in root.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    # once there is space again, the run resumes and finishes
    code, out, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress")
    assert code == 0 and "done: 3 steps" in out, err


# ----------------------------------------------------------------------------- NaN / inf
def test_a_divergent_run_stops_with_the_last_good_checkpoint_intact(tmp_path, capsys):
    """Real divergence, no mocking: a huge lr overflows the network after the first update."""
    run = tmp_path / "run"
    # (warm-up keeps the first step's lr at 2e37: with 1e38 itself AdamW's step size overflows float32)
    code, _, err = cli(capsys, "train", *TINY, "--steps", 20, "--out", run, "--set", "train.lr=1e38",
                       "train.max_nonfinite_steps=3", "train.checkpoint_every=1")
    assert code == 1
    line = one_line_error(err, "the loss was NaN or infinite for 3 steps in a row (at step 2); training stopped")
    assert "the last checkpoint is" in line and "step_00000001" in line and "train.lr" in line
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001"]
    assert load_training_state(resolve_checkpoint(run))["step"] == 1
    assert all(torch.isfinite(v).all() for v in load_run(run, use_ema=False).model.state_dict().values())


def test_nonfinite_gradients_with_a_finite_loss_are_skipped_and_counted(tmp_path, capsys, monkeypatch):
    real, calls = GaussianDiffusion.training_losses, {"n": 0}

    def poisoned(self, model, *args, **kwargs):
        out = real(self, model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:   # d/dq sqrt(q - q) = inf * 0 = NaN: the loss stays finite, the gradient does not
            q = next(model.parameters()).sum()
            out["loss"] = out["loss"] + 0.0 * torch.sqrt(q - q)
            assert torch.isfinite(out["loss"]).all()
        return out

    monkeypatch.setattr(GaussianDiffusion, "training_losses", poisoned)
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", *TINY, "--steps", 3, "--out", run, "--set", "train.log_every=1")
    assert code == 0, err
    assert "step 2: non-finite loss" in err and "update skipped (1 in a row)" in err
    assert "done: 3 steps" in out and "(1 non-finite steps skipped)" in out
    assert load_training_state(resolve_checkpoint(run))["skipped_steps"] == 1
    assert [r["skipped_steps"] for r in read_metrics(run)] == [0, 1, 1]
    assert all(math.isfinite(v) for v in (r["loss"] for r in read_metrics(run)))
    assert all(torch.isfinite(v).all() for v in load_run(run, use_ema=False).model.state_dict().values())
