"""Training loop: EMA, warm-up, batches, exact resume, non-finite losses, checkpoints."""

import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from difflab.config import ConfigError, resolve_config
from difflab.diffusion import GaussianDiffusion
from difflab.train import (EMA, CheckpointError, NonFiniteLossError, learning_rate, list_checkpoints, load_run,
                           read_latest, train)
from difflab.runs import checkpoint as ckpt_mod
from difflab.train.data import IndexStream
from difflab.train.diffusion import draw_batch
from difflab.train.metrics import read_metrics

QUIET = dict(progress=False, log=lambda msg: None)


def tiny(*overrides):
    return resolve_config("tiny", overrides=["train.num_threads=1", *overrides])


def weights(run_dir, step, name="model"):
    return load_file(os.path.join(run_dir, "checkpoints", f"step_{step:08d}", f"{name}.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- pieces
def test_learning_rate_warms_up_linearly():
    assert [learning_rate(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert learning_rate(0, 0.1, 0) == 0.1
    cos = [learning_rate(s, 1.0, 2, "cosine", 6) for s in range(7)]
    assert cos[:3] == [0.5, 1.0, 1.0] and cos[4] == pytest.approx(0.5) and cos[6] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(cos[1:], cos[2:]))
    assert [learning_rate(s, 1.0, 0, "linear", 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_ema_matches_the_closed_form_with_warmup():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=True)
    expected = 0.0
    for n in range(30):
        with torch.no_grad():
            model.weight.fill_(float(n + 1))
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * (n + 1)
        ema.update(model)
    assert ema.num_updates == 30
    assert ema.model.weight.item() == pytest.approx(expected, rel=1e-6)
    assert not ema.model.weight.requires_grad
    no_warm = EMA(model, decay=0.5, warmup=False)
    assert no_warm.current_decay() == 0.5


def test_index_stream_visits_each_example_once_per_epoch():
    s = IndexStream(10, torch.Generator().manual_seed(0))
    seen = torch.cat([s.next(3) for _ in range(3)])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist())) and len(seen) == 9
    s.next(3)                                   # 1 left over: a new epoch starts
    assert s.epoch == 1 and s.pos == 3


def test_draw_batch_shards_and_label_dropout():
    images = torch.randint(0, 256, (400, 1, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (400,))

    def draw(shard, p=0.5):
        gen = torch.Generator().manual_seed(3)
        return draw_batch(images, labels, IndexStream(400, gen), gen, batch_size=400, num_timesteps=100,
                          hflip=True, null_class=10, class_dropout=p, shard=shard)

    full = draw(slice(0, 400))
    half = draw(slice(200, 400))
    assert torch.equal(full.x_0[200:], half.x_0) and torch.equal(full.noise[200:], half.noise)
    assert torch.equal(full.t[200:], half.t) and torch.equal(full.y[200:], half.y)
    frac_null = (full.y == 10).float().mean().item()
    assert 0.4 < frac_null < 0.6
    assert (draw(slice(0, 400), p=0.0).y < 10).all()
    assert full.x_0.min() >= -1 and full.x_0.max() <= 1


# ----------------------------------------------------------------------------- end to end
def test_training_reduces_the_loss_and_writes_outputs(tmp_path):
    cfg = tiny("train.steps=40", "train.log_every=10", "train.sample_every=20", "train.checkpoint_every=20",
               "train.keep_checkpoints=1", "sample.n=4", "sample.steps=3")
    res = train(cfg, tmp_path / "run", **QUIET)
    assert res.step == 40 and not res.interrupted
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]           # eps-MSE starts near 1
    assert all(math.isfinite(r["images_per_s"]) and r["lr"] == 1e-3 for r in rows)
    assert res.samples.is_file() and res.loss_plot.is_file()
    assert (tmp_path / "run" / "samples" / "step_00000020.png").is_file()
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].startswith("step,loss")
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000040"]   # keep_checkpoints=1
    run = load_run(tmp_path / "run")
    assert run.step == 40 and run.weights == "ema"
    assert_same_weights(run.model.state_dict(), weights(tmp_path / "run", 40, "ema"))


@pytest.mark.parametrize("overrides", [
    ("model.dropout=0.1", "data.hflip=true"),
    ("model.num_classes=10", "data.labels=true", "train.class_dropout=0.3"),
    # T=4: the loss history (10 per t) fills within the first steps, so the resumed half draws t by importance
    ("train.timestep_sampling=loss_aware", "diffusion.num_timesteps=4", "sample.steps=4"),
    ("train.channels_last=true", "model.dropout=0.1"),
])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, overrides):
    cfg = tiny("train.steps=6", *overrides)
    train(cfg, tmp_path / "straight", **QUIET)
    train(resolve_config(base=cfg, overrides=["train.steps=3"]), tmp_path / "split", **QUIET)
    res = train(cfg, tmp_path / "split", resume=True, **QUIET)
    assert res.step == 6
    for name in ("model", "ema"):
        assert_same_weights(weights(tmp_path / "straight", 6, name), weights(tmp_path / "split", 6, name))
    # the metrics of the resumed run continue the first part's
    assert [r["step"] for r in read_metrics(tmp_path / "split")] == [3, 5, 6]


def test_refuses_to_overwrite_a_run_and_checks_resume_config(tmp_path):
    cfg = tiny("train.steps=2")
    train(cfg, tmp_path / "run", **QUIET)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(cfg, tmp_path / "run", **QUIET)
    with pytest.raises(ConfigError, match="its model config differs"):
        train(resolve_config(base=cfg, overrides=["model.model_channels=16"]), tmp_path / "run", resume=True, **QUIET)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(cfg, tmp_path / "nothing-here", resume=True, **QUIET)


def test_data_that_does_not_fit_the_model_is_a_config_error(tmp_path):
    from difflab.data import ImageDataset

    big = ImageDataset(images=torch.zeros(32, 1, 16, 16, dtype=torch.uint8), name="big")
    with pytest.raises(ConfigError, match=r"images are 16x16 but model.image_size=8; set data.image_size=8"):
        train(tiny(), tmp_path / "a", dataset=big, **QUIET)
    rgb = ImageDataset(images=torch.zeros(32, 3, 8, 8, dtype=torch.uint8), name="rgb")
    with pytest.raises(ConfigError, match="3 channel"):
        train(tiny(), tmp_path / "b", dataset=rgb, **QUIET)
    few = ImageDataset(images=torch.zeros(8, 1, 8, 8, dtype=torch.uint8), name="few")
    with pytest.raises(ConfigError, match="train.batch_size: batch_size 16 is larger than"):
        train(tiny(), tmp_path / "c", dataset=few, **QUIET)
    unlabelled = ImageDataset(images=torch.zeros(32, 1, 8, 8, dtype=torch.uint8), name="plain")
    with pytest.raises(ConfigError, match="data.labels=true but plain has no labels"):
        train(tiny("model.num_classes=10", "data.labels=true"), tmp_path / "d", dataset=unlabelled, **QUIET)


def test_nonfinite_losses_are_skipped_then_stop_training(tmp_path, monkeypatch):
    real = GaussianDiffusion.training_losses
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in (2,) or calls["n"] >= 5:        # one isolated NaN, then NaN forever
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(GaussianDiffusion, "training_losses", flaky)
    cfg = tiny("train.steps=50", "train.max_nonfinite_steps=3", "train.checkpoint_every=2")
    with pytest.raises(NonFiniteLossError, match=r"NaN or infinite for 3 steps in a row.*step_00000002"):
        train(cfg, tmp_path / "run", **QUIET)
    # calls 1, 3, 4 were good -> 3 updates; the isolated NaN was skipped, not counted as a step
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000002" / "training_state.pt", weights_only=True)
    assert state["step"] == 2 and state["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run", 2).values())


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    cfg = tiny("train.steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=5")
    train(cfg, tmp_path / "run", **QUIET)
    assert read_latest(tmp_path / "run").name == "step_00000002"
    good = weights(tmp_path / "run", 2)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        train(resolve_config(base=cfg, overrides=["train.steps=3"]), tmp_path / "run", resume=True, **QUIET)
    root = tmp_path / "run" / "checkpoints"
    assert read_latest(tmp_path / "run").name == "step_00000002"         # the pointer still names a good one
    assert not (root / "step_00000003").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]  # no half-written folder left
    assert_same_weights(weights(tmp_path / "run", 2), good)
    monkeypatch.undo()
    assert train(resolve_config(base=cfg, overrides=["train.steps=3"]), tmp_path / "run", resume=True,
                 **QUIET).step == 3


def test_corrupt_checkpoints_are_reported_clearly(tmp_path):
    cfg = tiny("train.steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=3")
    train(cfg, tmp_path / "run", **QUIET)
    ck = tmp_path / "run" / "checkpoints" / "step_00000002"
    data = (ck / "ema.safetensors").read_bytes()
    (ck / "ema.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"step_00000002 is corrupt or incomplete: ema.safetensors could not "
                                              r"be read.*an earlier checkpoint is .*step_00000001"):
        load_run(tmp_path / "run")
    (ck / "training_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="training_state.pt could not be read"):
        train(cfg, tmp_path / "run", resume=True, **QUIET)
    assert load_run(tmp_path / "run" / "checkpoints" / "step_00000001").step == 1   # the earlier one still works
    shutil.rmtree(ck)
    with pytest.raises(CheckpointError, match="names step_00000002, which does not exist"):
        load_run(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("../../etc")
    with pytest.raises(CheckpointError, match="latest is corrupt"):
        load_run(tmp_path / "run")


def test_time_budget_stops_training_and_checkpoints_by_training_time(tmp_path, monkeypatch):
    import types

    import difflab.train.engine as loop
    from difflab.runs import load_training_state

    # a fake clock that advances one second per reading: every optimiser step takes exactly 1 s
    clock = iter(range(10**6))
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    budget = ["train.steps=20", "train.checkpoint_every=100", "train.keep_checkpoints=10", "sample.n=2",
              "sample.steps=2", "train.checkpoint_every_minutes=0.05"]            # 3 s
    res = train(tiny(*budget, "train.max_minutes=0.1"), tmp_path / "run", **QUIET)   # 6 s
    assert res.step == 6 and not res.interrupted and res.samples.is_file()
    ckpts = list_checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == ["step_00000003", "step_00000006"]
    assert [load_training_state(p)["train_seconds"] for p in ckpts] == [3.0, 6.0]
    # resuming continues the training-time count: a 9 s budget adds 3 steps
    res = train(tiny(*budget, "train.max_minutes=0.15"), tmp_path / "run", resume=True, **QUIET)
    assert res.step == 9
    assert load_training_state(list_checkpoints(tmp_path / "run")[-1])["train_seconds"] == 9.0
    with pytest.raises(ConfigError, match="max_minutes"):
        tiny("train.max_minutes=-1")


def test_learning_rate_decay_follows_the_time_budget_when_it_comes_first():
    # 1000 steps would take the decay a tenth of the way; half the time budget takes it halfway
    assert learning_rate(100, 1.0, 0, "cosine", 1000, time_frac=0.5) == pytest.approx(0.5)
    assert learning_rate(100, 1.0, 0, "linear", 1000, time_frac=0.25) == pytest.approx(0.75)
    assert learning_rate(900, 1.0, 0, "linear", 1000, time_frac=0.25) == pytest.approx(0.1)   # steps further along
    assert learning_rate(10, 1.0, 0, "cosine", 1000, time_frac=1.7) == 0.0
    assert learning_rate(10, 1.0, 0, "constant", 1000, time_frac=0.9) == 1.0
    assert learning_rate(1, 1.0, 4, "cosine", 1000, time_frac=0.9) == 0.5                    # warm-up first


def test_a_time_budget_ends_the_cosine_decay_at_the_budget(tmp_path, monkeypatch):
    import types

    import difflab.train.engine as loop

    clock = iter(range(10**6))   # every optimiser step takes exactly 1 s
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    res = train(tiny("train.steps=1000", "train.max_minutes=0.1", "train.lr_decay=cosine", "train.lr=1.0",
                     "train.warmup_steps=0", "train.log_every=1", "sample.n=2", "sample.steps=2"),
                tmp_path / "run", **QUIET)
    assert res.step == 6
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run") if "lr" in r]
    # step k starts after k seconds of training: lr = 0.5 (1 + cos(pi k / 6))
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])


def test_channels_last_trains_the_same_network_in_oneDNN_s_layout(tmp_path, monkeypatch):
    """train.channels_last stores the U-Net NHWC during training: the same run to float rounding (other
    convolution kernels), and checkpoints that load like any other."""
    layouts = []
    conv_forward = torch.nn.Conv2d.forward

    def recording(self, x):
        if self.kernel_size != (1, 1) and self.in_channels > 1:   # weights whose two layouts differ
            layouts.append(self.weight.is_contiguous(memory_format=torch.channels_last))
        return conv_forward(self, x)

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recording)
    cfg = tiny("train.steps=3", "sample.n=2", "sample.steps=2")
    train(cfg, tmp_path / "nchw", **QUIET)
    assert layouts and not any(layouts)
    layouts.clear()
    train(resolve_config(base=cfg, overrides=["train.channels_last=true"]), tmp_path / "nhwc", **QUIET)
    assert layouts and all(layouts)
    for name in ("model", "ema"):
        a, b = weights(tmp_path / "nchw", 3, name), weights(tmp_path / "nhwc", 3, name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    run = load_run(tmp_path / "nhwc")
    assert_same_weights(run.model.state_dict(), weights(tmp_path / "nhwc", 3, "ema"))


@pytest.mark.parametrize("works", [True, False])
def test_train_compile_uses_the_same_parameters_and_falls_back_on_failure(tmp_path, monkeypatch, works):
    """train.compile wraps the training forward (difflab.compile); the stand-in "compiler" here returns the
    module itself (or a function that fails), so the weights must equal an eager run's bit for bit and the
    checkpoint keys stay the module's own. A real inductor compile is tested in tests/test_compile.py."""
    cfg = tiny("train.steps=3", "sample.n=2", "sample.steps=2")
    train(cfg, tmp_path / "eager", **QUIET)

    def fake_compile(module, **options):
        if works:
            return module

        def fail(*args, **kwargs):
            raise RuntimeError("inductor is unavailable")
        return fail

    monkeypatch.setattr(torch, "compile", fake_compile)
    logs = []
    train(resolve_config(base=cfg, overrides=["train.compile=true"]), tmp_path / "compiled", progress=False,
          log=logs.append)
    expected = "compiled with torch.compile (inductor)" if works else \
        "torch.compile (inductor) failed (RuntimeError: inductor is unavailable); running eager"
    assert any(expected in line for line in logs), logs
    for name in ("model", "ema"):
        assert_same_weights(weights(tmp_path / "eager", 3, name), weights(tmp_path / "compiled", 3, name))
