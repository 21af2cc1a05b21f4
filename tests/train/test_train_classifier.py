"""Noise-aware classifier training: checkpoints, exact resume, per-noise-level accuracy, --diffusion-from."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from difflab.config import ConfigError, resolve_config, save_config
from difflab.diffusion import DiffusionConfig
from difflab.runs import load_classifier
from difflab.train.classifier import (accuracy_by_noise_level, accuracy_metrics, resolve_classifier_config,
                                      timestep_buckets, train_classifier)
from difflab.train.metrics import read_metrics

QUIET = dict(progress=False, log=lambda msg: None)


def tiny(*overrides):
    return resolve_classifier_config("tiny", overrides=["train.num_threads=1", *overrides])


def weights(run_dir, step):
    return load_file(os.path.join(run_dir, "checkpoints", f"step_{step:08d}", "model.safetensors"))


def test_train_writes_checkpoint_metrics_and_accuracy_per_noise_level(tmp_path):
    run = tmp_path / "clf"
    res = train_classifier(tiny("train.steps=3", "train.checkpoint_every=2"), run, **QUIET)
    assert res.step == 3 and not res.interrupted
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert {p.name for p in res.checkpoint.iterdir()} == {"model.safetensors", "training_state.pt", "classifier.yaml"}
    doc = json.loads((run / "accuracy.json").read_text())
    assert doc["num_timesteps"] == 100 and doc["split"] == "test" and doc["n"] == 64
    buckets = [(b["t_min"], b["t_max"]) for b in doc["buckets"]]
    assert buckets == [(0, 10), (10, 30), (30, 50), (50, 70), (70, 90), (90, 100)]
    assert all(0.0 <= b["accuracy"] <= 1.0 and b["n"] == 64 for b in doc["buckets"])
    assert "| [0, 10) |" in (run / "accuracy.md").read_text()
    assert (run / "metrics.jsonl").read_text().count("\n") >= 1
    loaded = load_classifier(run)
    assert loaded.step == 3 and loaded.num_classes == 10 and not loaded.model.training
    assert loaded.diffusion.num_timesteps == 100


def test_sample_every_logs_held_out_accuracy_per_noise_level_during_training(tmp_path):
    run = tmp_path / "clf"
    res = train_classifier(tiny("train.steps=4", "train.sample_every=2", "train.log_every=2", "train.eval_n=16",
                                "train.tensorboard=false"), run, **QUIET)
    evals = [r for r in read_metrics(run) if "loss" not in r]
    assert [r["step"] for r in evals] == [2, 4]
    T = json.loads((run / "accuracy.json").read_text())["num_timesteps"]
    assert T == 100 and len(evals[0]) == 1 + 2 * 6      # step, accuracy and cross-entropy of each bucket
    # the last row is the final evaluation of accuracy.json, the first one an earlier model's
    assert evals[1] == {"step": 4, **accuracy_metrics(res.accuracy, T)}
    assert evals[1]["heldout_accuracy/t000-010"] == res.accuracy[0]["accuracy"]
    assert (run / "samples" / "step_00000002.png").is_file() and res.accuracy_png == run / "accuracy.png"
    assert res.accuracy_png.is_file()
    # metrics.csv keeps the training rows only
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]] == ["2", "4"]


def test_resume_repeats_an_uninterrupted_run(tmp_path):
    train_classifier(tiny("train.steps=4", "train.checkpoint_every=2"), tmp_path / "a", **QUIET)
    train_classifier(tiny("train.steps=2", "train.checkpoint_every=2"), tmp_path / "b", **QUIET)
    train_classifier(tiny("train.steps=4", "train.checkpoint_every=2"), tmp_path / "b", resume=True, **QUIET)
    a, b = weights(tmp_path / "a", 4), weights(tmp_path / "b", 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train_classifier(tiny("train.steps=4"), tmp_path / "a", **QUIET)
    with pytest.raises(ConfigError, match="its diffusion config differs"):
        train_classifier(tiny("train.steps=6", "diffusion.num_timesteps=50"), tmp_path / "a", resume=True, **QUIET)


def test_diffusion_from_takes_schedule_shape_and_classes_of_the_run(tmp_path):
    run_cfg = resolve_config("tiny", overrides=["diffusion.schedule=cosine", "diffusion.num_timesteps=40",
                                                "model.num_classes=10", "data.labels=true"])
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    save_config(run_cfg, tmp_path / "run" / "config.yaml")
    save_config(run_cfg, ckpt / "config.yaml")
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt.parent / "latest").write_text("step_00000001\n")
    cfg = resolve_classifier_config("digits", diffusion_from=tmp_path / "run", overrides=["train.lr=0.01"])
    assert cfg.diffusion == DiffusionConfig(schedule="cosine", num_timesteps=40)
    assert (cfg.model.image_size, cfg.model.in_channels, cfg.model.num_classes) == (8, 1, 10)
    assert cfg.train.lr == 0.01


def test_timestep_buckets_scale_with_T():
    assert timestep_buckets(1000) == [(0, 100), (100, 300), (300, 500), (500, 700), (700, 900), (900, 1000)]
    assert timestep_buckets(4) == [(0, 1), (1, 2), (2, 3), (3, 4)]   # empty buckets dropped, [0, T) covered


def test_accuracy_by_noise_level_falls_with_noise():
    """A classifier reading the class off the mean brightness: perfect on clean images, chance at t ~ T."""
    class Brightness(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([-1.0, 1.0]))

        def forward(self, x, t):
            return x.mean(dim=(1, 2, 3))[:, None] * self.w

    y = torch.arange(400) % 2
    x_0 = (2.0 * y - 1.0)[:, None, None, None].expand(400, 1, 4, 4).clone() * 0.9
    diffusion = DiffusionConfig(schedule="linear", num_timesteps=1000).build()
    rows = accuracy_by_noise_level(Brightness(), diffusion, x_0, y, seed=0)
    acc = [r["accuracy"] for r in rows]
    assert acc[0] == 1.0 and acc[-1] < 0.7
    assert all(a >= b - 0.05 for a, b in zip(acc, acc[1:]))
    assert accuracy_by_noise_level(Brightness(), diffusion, x_0, y, seed=0) == rows   # seeded
