"""Data-parallel training: ``torchrun --nproc_per_node=2 -m difflab train`` on CPU (gloo)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from difflab.config import resolve_config
from difflab.train import DistInfo, train
from difflab.train.distributed import check_replicas_in_sync

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo")
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    overrides = ["train.num_threads=1", "train.batch_size=16", "sample.n=4", "sample.steps=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "difflab", "train", "--preset", "tiny", "--steps", str(STEPS), "--out", str(tmp_path / "ddp"),
           "--no-progress", "--set", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    # every checkpoint compares the replicas' parameters and raises if they differ
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 processes" in proc.stderr and proc.stdout.count("done: 3 steps") == 1   # rank 0 alone reports

    train(resolve_config("tiny", overrides=overrides + [f"train.steps={STEPS}"]), tmp_path / "single",
          progress=False, log=lambda m: None)
    name = f"step_{STEPS:08d}"
    for f in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "ddp" / "checkpoints" / name / f)
        b = load_file(tmp_path / "single" / "checkpoints" / name / f)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    state = torch.load(tmp_path / "ddp" / "checkpoints" / name / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["rng_cpu"].shape[0] == 2


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo")
def test_two_processes_stop_together_at_the_time_budget_with_a_time_based_lr_decay(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "difflab", "train", "--preset", "tiny", "--steps", "100000", "--out", str(tmp_path / "ddp"),
           "--no-progress", "--set", "train.num_threads=1", "train.batch_size=16", "sample.n=4", "sample.steps=2",
           "train.max_minutes=0.02", "train.lr_decay=cosine"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    # the replicas must leave the loop at one step (else the next collective hangs) and agree on the LR
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("time budget reached") == 1, proc.stderr[-2000:]   # rank 0 alone logs it
    ckpts = tmp_path / "ddp" / "checkpoints"
    state = torch.load(ckpts / (ckpts / "latest").read_text().strip() / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] > 0


def test_max_over_ranks_without_ddp_returns_the_values():
    from difflab.train.distributed import max_over_ranks

    assert max_over_ranks([True, 2.5], DistInfo(), torch.device("cpu")) == [1.0, 2.5]


def test_replica_check_is_a_no_op_without_ddp():
    check_replicas_in_sync(torch.nn.Linear(2, 2), DistInfo(), torch.device("cpu"))
    assert DistInfo().is_main and not DistInfo().enabled and DistInfo(rank=1, world_size=2).enabled


_RELEASE_SCRIPT = """
import os, sys
import torch
from difflab.train import distributed as D
from torch.distributed.distributed_c10d import _get_default_group

before = len(os.listdir("/proc/self/task"))
info, created = D.init_distributed("cpu")
group = _get_default_group()
torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())    # what every task builds: it imports torch._dynamo
t = torch.ones(2)
D.gather_tensors(t, info)
D.cleanup(created)
refs = sys.getrefcount(group) - 1      # this script's own reference only, if nothing else holds the group
del group
sys.stdout.write(f"refs {refs} threads {len(os.listdir('/proc/self/task')) - before}\\n")
sys.stdout.flush()
"""


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()) or not Path("/proc/self/task").is_dir(),
                    reason="needs torch.distributed + gloo, and Linux's /proc")
def test_the_process_group_is_freed_at_the_end_of_a_run(tmp_path):
    """A group that outlives destroy_process_group keeps its worker threads into interpreter shutdown,
    where a worker dropping its last collective aborts the process (SIGABRT, seen under load): after
    cleanup nothing may hold the group (the optimiser's first import of torch._dynamo used to bind it
    as a default argument of torch.distributed.nn.functional) and its threads are gone."""
    script = tmp_path / "release.py"
    script.write_text(_RELEASE_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--master_port=29531", str(script)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("refs")]
    assert len(rows) == 2, proc.stdout
    for row in rows:
        assert int(row[1]) == 1, f"something still holds the process group after cleanup: {row}"
        assert int(row[3]) <= 1, f"the group's worker threads outlived it: {row}"
