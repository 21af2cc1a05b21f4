"""The automatic recipe's choices for synthetic datasets, budgets and speeds, and the budget warnings."""

import dataclasses
import types

import pytest
import torch

from difflab.config import RunConfig, TrainSettings, apply_overrides, get_run_preset, merge, run_config_from_dict
from difflab.data import DatasetFacts
from difflab.nn.cost import training_cost, unet_macs
from difflab.recipe import (LADDER, TARGET_STEPS, StepRate, auto_recipe, check_budget, ema_decay_for, ema_profile,
                            guidance_for, network, num_levels, probe_network, recipe_config)
from difflab.train import EMA


def facts(side=28, channels=1, count=60_000, classes=10, captions=0):
    names = None if classes is None else tuple(str(i) for i in range(classes))
    counts = None if classes is None else (count // classes,) * classes
    return DatasetFacts(name="synthetic", count=count, image_size=side, min_side=side, max_side=side, square=True,
                        channels=channels, class_names=names, class_counts=counts, captions=captions)


def rate_for(f, device, steps_of_probe, minutes=25):
    """A StepRate at which the probe network makes ``steps_of_probe`` steps in ``minutes``."""
    model, batch = probe_network(f, device)
    return StepRate(model, batch, steps_of_probe / (60 * minutes))


def config_of(recipe, root="/data", overrides=()):
    return recipe_config(recipe, {"dataset": "folder", "root": root}, overrides)


def test_mnist_like_data_on_a_cpu_gets_mnist_fasts_recipe_from_the_rules():
    f = facts()
    r = auto_recipe(f, 25, rate_for(f, "cpu", 1700), "cpu")
    o = r.overrides
    # the measured mnist-fast speed leaves mnist-fast's network: 32 channels, 28 -> 14 -> 7, no attention
    assert (o["model.model_channels"], o["model.channel_mult"], o["model.num_res_blocks"]) == (32, (1, 2, 2), 1)
    assert o["model.attention_resolutions"] == () and o["model.mid_attention"] is False
    assert 1500 <= r.expected_steps <= 1700
    assert (o["train.batch_size"], o["train.lr"], o["train.lr_decay"]) == (64, 2e-3, "constant")
    assert o["train.warmup_steps"] == round(0.05 * r.expected_steps)
    assert 1 / (1 - o["train.ema_decay"]) == pytest.approx(0.1 * r.expected_steps, rel=0.01)
    assert (o["diffusion.prediction"], o["diffusion.loss_weighting"], o["diffusion.min_snr_gamma"]) == ("v", "min_snr", 5)
    assert o["data.labels"] is True and o["model.num_classes"] == 10 and o["train.class_dropout"] == 0.1
    assert o["sample.guidance_scale"] == pytest.approx(0.25, abs=0.02)
    assert (o["train.max_minutes"], o["sample.sampler"], o["sample.eta"]) == (25.0, "ddim", 1.0)
    assert o["data.hflip"] is False and r.warnings == ()
    cfg = config_of(r)
    assert cfg.model.image_size == cfg.data.image_size == 28 and cfg.data.labels
    # every choice can be passed on as --set arguments and gives the same config
    again = run_config_from_dict(apply_overrides(merge(RunConfig().to_dict(), {"data": {"dataset": "folder",
                                                                                        "root": "/data"}}),
                                                 r.set_args()))
    assert again == cfg
    # and the user's overrides win over the recipe's choices
    mine = config_of(r, overrides=["train.lr=1e-4", "model.model_channels=64"])
    assert (mine.train.lr, mine.model.model_channels, mine.train.batch_size) == (1e-4, 64, 64)
    assert "32 channels" in r.describe() and "class-conditional on the 10 class folders" in r.describe()


def test_more_budget_means_a_wider_network_more_steps_and_longer_warm_up_and_ema():
    f = facts(side=32, channels=3, count=20_000)
    prev = None
    for minutes in (5, 25, 120, 600, 6000):
        r = auto_recipe(f, minutes, rate_for(f, "cpu", 1700), "cpu")
        o = r.overrides
        if prev is not None:
            assert o["model.model_channels"] >= prev[0]["model.model_channels"] and r.expected_steps > prev[1]
            assert o["train.lr"] <= prev[0]["train.lr"]
            assert o["train.warmup_steps"] >= prev[0]["train.warmup_steps"]
            assert o["train.ema_decay"] > prev[0]["train.ema_decay"]
            assert o["sample.guidance_scale"] <= prev[0]["sample.guidance_scale"]
        # warm-up and EMA horizon follow the steps the budget allows
        assert o["train.warmup_steps"] == min(1000, round(0.05 * r.expected_steps))
        assert 1 / (1 - o["train.ema_decay"]) == pytest.approx(0.1 * r.expected_steps, rel=0.01)
        assert r.expected_steps >= TARGET_STEPS or o["model.model_channels"] == LADDER[0][0]
        config_of(r)                                  # always a valid config
        prev = o, r.expected_steps
    o, steps = prev                                   # 100 hours: compute goes to both width and steps
    assert o["model.model_channels"] == 96 and o["model.num_res_blocks"] == 2 and steps > 20 * TARGET_STEPS
    assert o["model.attention_resolutions"] == ("1/4",) and o["model.mid_attention"] is True
    # a small dataset caps the width whatever the budget
    few = facts(side=32, channels=3, count=3000)
    assert auto_recipe(few, 6000, rate_for(few, "cpu", 1700), "cpu").overrides["model.model_channels"] == 64


def test_a_gpu_trains_wider_with_bigger_batches_and_more_sampling_steps():
    f = facts(side=32, channels=3, count=50_000)
    cpu = auto_recipe(f, 25, rate_for(f, "cpu", 1700), "cpu").overrides
    gpu = auto_recipe(f, 25, rate_for(f, "cuda", 40_000), "cuda").overrides
    assert gpu["train.batch_size"] == 128 and cpu["train.batch_size"] == 64
    assert gpu["model.model_channels"] > cpu["model.model_channels"] and gpu["sample.steps"] > cpu["sample.steps"]


def test_a_hopeless_budget_takes_the_smallest_network_and_says_so():
    f = facts(side=32, channels=3, count=5000, classes=5)
    r = auto_recipe(f, 2, rate_for(f, "cpu", 50, minutes=2), "cpu")
    assert r.overrides["model.model_channels"] == LADDER[0][0] and r.expected_steps < 400
    assert len(r.warnings) == 1 and "expect noisy samples" in r.warnings[0] and "minutes would allow" in r.warnings[0]
    assert r.overrides["train.warmup_steps"] >= 10


def test_large_unlabelled_photos_are_trained_smaller_on_a_cpu():
    f = facts(side=256, channels=3, count=3000, classes=None)
    r = auto_recipe(f, 25, rate_for(f, "cpu", 400), "cpu")
    o = r.overrides
    assert o["data.image_size"] == o["model.image_size"] <= 64 and o["model.in_channels"] == 3
    assert o["data.labels"] is False and o["model.num_classes"] is None and "sample.guidance_scale" not in o
    assert any("unconditional (no class sub-folders)" in x for x in r.reasons)
    assert any("resolution" in x for x in r.reasons)
    assert o["model.model_channels"] <= 64                            # 3,000 images
    assert o["train.batch_size"] == 64 and config_of(r).model.channel_mult[0] == 1


def test_small_digit_like_data():
    f = facts(side=8, channels=1, count=1437)
    r = auto_recipe(f, 5, rate_for(f, "cpu", 3000, minutes=5), "cpu")
    o = r.overrides
    assert o["model.channel_mult"] == (1, 2)                          # 8 -> 4
    assert o["train.batch_size"] == 64 and o["model.model_channels"] <= 64
    assert any("data.hflip=true" in x for x in r.reasons)             # data-limited: flips suggested, not forced
    small = facts(side=16, channels=1, count=100, classes=2)
    assert auto_recipe(small, 5, rate_for(small, "cpu", 3000, 5)).overrides["train.batch_size"] == 8


def test_captions_train_text_conditional_only_with_the_encoder():
    f = facts(side=32, channels=3, count=20_000, classes=None, captions=20_000)
    with_text = auto_recipe(f, 25, rate_for(f, "cpu", 1700), "cpu", text_encoder=True)
    o = with_text.overrides
    assert o["cond.text"] == "pretrained" and o["model.context_dim"] == 384
    assert o["model.cross_attention_resolutions"] == (f"1/{2 ** (len(o['model.channel_mult']) - 1)}",)
    assert o["sample.guidance_scale"] > 0
    assert config_of(with_text).cond.text == "pretrained"
    without = auto_recipe(f, 25, rate_for(f, "cpu", 1700), "cpu")
    assert "cond.text" not in without.overrides
    assert any("captions need the pretrained text encoder" in x for x in without.reasons)


def test_network_shapes_and_rate_prediction():
    assert [num_levels(s) for s in (8, 12, 16, 24, 28, 32, 48, 64, 128, 7)] == [2, 2, 2, 3, 3, 3, 4, 4, 5, 1]
    a = network(32, 3, LADDER[2])
    b = network(32, 3, LADDER[5])
    rate = StepRate(a, 64, 2.0)
    assert rate.predict(a, 64) == pytest.approx(2.0)
    assert rate.predict(b, 32) == pytest.approx(2.0 * training_cost(a) * 64 / (training_cost(b) * 32))
    assert training_cost(a) > unet_macs(a)
    with pytest.raises(ValueError, match="steps_per_second > 0"):
        StepRate(a, 64, 0.0)
    with pytest.raises(ValueError, match="device kind"):
        auto_recipe(facts(), 25, rate, "tpu")
    with pytest.raises(ValueError, match="positive number of minutes"):
        auto_recipe(facts(), 0, rate)
    assert ema_decay_for(100) == pytest.approx(0.9) and ema_decay_for(10**9) == 0.9999
    assert guidance_for(100) == 0.5 and guidance_for(10**7) == 0.1


@pytest.mark.parametrize("decay, warmup, steps", [(0.9995, True, 124), (0.9995, False, 124), (0.999, True, 1697),
                                                   (0.99, True, 3), (0.9, False, 40)])
def test_ema_profile_matches_the_ema_that_training_uses(decay, warmup, steps):
    model = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1.0)                         # the initial weight is 1, every later one 0:
        ema = EMA(model, decay, warmup)                 # the EMA's value is the initial weights' share
        model.weight.fill_(0.0)
    for _ in range(steps):
        ema.update(model)
    share, horizon = ema_profile(decay, warmup, steps)
    assert share == pytest.approx(float(ema.model.weight), rel=1e-6, abs=1e-300)
    d_last = min(decay, steps / (steps + 9)) if warmup else decay
    assert horizon == pytest.approx(1 / (1 - d_last))


def test_budget_warnings_for_the_issues_run():
    # `--preset mnist` on a folder with 25 minutes: 124 steps were made (issue 16)
    cfg = get_run_preset("mnist").replace(train=dataclasses.replace(get_run_preset("mnist").train, max_minutes=25.0))
    rate = 124 / (25 * 60)
    warnings = check_budget(cfg, rate)
    assert len(warnings) == 2
    assert "too few for any network" in warnings[0]
    assert "train.warmup_steps=500 is longer than the ~124 steps that 25 minutes allow" in warnings[1]
    assert "ends at 25% of train.lr" in warnings[1] and "--set train.warmup_steps=6" in warnings[1]
    # the EMA warm-up keeps the average on recent weights; without it 0.9995 is mostly the initial weights
    no_warmup = cfg.replace(train=dataclasses.replace(cfg.train, ema_warmup=False))
    ema = [w for w in check_budget(no_warmup, rate) if "ema_decay" in w]
    assert len(ema) == 1 and "still 94% the initial random weights" in ema[0]
    # a budget given explicitly wins over train.max_minutes; a long one clears the warm-up warning
    assert check_budget(cfg, rate, budget_minutes=2000) == []
    # an EMA without warm-up whose horizon (100 steps) is not short against the run (150 steps)
    short = cfg.replace(train=dataclasses.replace(cfg.train, ema_warmup=False, ema_decay=0.99, warmup_steps=5,
                                                  max_minutes=0.0, steps=150))
    assert check_budget(short, 1.0)[1:] == [f"train.ema_decay=0.99 averages over ~100 steps, longer than the 150 steps "
                                        f"of train.steps: the EMA weights that sampling uses are still 22% the "
                                        f"initial random weights at the end; e.g. --set train.ema_decay=0.9333"]
    assert check_budget(short.replace(train=dataclasses.replace(short.train, steps=400)), 1.0) == []
    # any run kind's train section works; one without an EMA (a classifier's may have none) has no EMA warning
    no_ema = types.SimpleNamespace(train=TrainSettings(ema_decay=None, steps=150, warmup_steps=5))
    assert [w for w in check_budget(no_ema, 1.0) if "ema" in w] == []


def test_mnist_fast_fits_its_own_budget():
    assert check_budget(get_run_preset("mnist-fast"), 1697 / (25 * 60)) == []


def test_the_pieces_chain_into_a_training_run(tmp_path, capsys):
    """inspect a folder -> time the probe -> recipe -> budget check -> train with the recipe's --set arguments."""
    import numpy as np
    from PIL import Image

    from _cli_helpers import run_cli
    from difflab.config import resolve_config
    from difflab.data import inspect_folder
    from difflab.nn.cost import measure_steps_per_second

    rng = np.random.default_rng(0)
    for i in range(48):
        folder = tmp_path / "images" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    f = inspect_folder(tmp_path / "images")
    probe, batch = probe_network(f)
    rate = StepRate(probe, batch, measure_steps_per_second(probe, batch, seconds=0.05, min_steps=2))
    recipe = auto_recipe(f, 0.05, rate)
    assert recipe.overrides["train.batch_size"] == 8 and recipe.overrides["model.num_classes"] == 2
    sets = recipe.set_args() + ["data.dataset=folder", f"data.root={tmp_path / 'images'}", "sample.n=2",
                                "sample.steps=2", "train.num_threads=1"]
    cfg = resolve_config(overrides=sets)
    # the recipe's own warm-up and EMA always fit its budget
    assert not [w for w in check_budget(cfg, recipe.steps_per_second) if "warmup" in w or "ema_decay" in w]
    code, out, err = run_cli(capsys, "train", "--out", tmp_path / "run", "--steps", 2, "--no-progress", "--set", *sets)
    assert code == 0, err
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000002"
