"""Run config: presets, files, overrides, validation messages, round trips."""

import json

import pytest

from difflab.config import (RUN_PRESETS, ConfigError, DataConfig, RunConfig, TrainConfig, get_run_preset,
                            load_config, parse_override, resolve_config, run_config_from_dict, save_config)
from difflab.nn.unet import UNetConfig


def test_required_presets_exist_and_are_consistent():
    assert {"tiny", "digits", "mnist", "cifar10"} <= set(RUN_PRESETS)
    for name, cfg in RUN_PRESETS.items():
        assert isinstance(cfg, RunConfig)
        assert isinstance(cfg.model, UNetConfig)
        assert cfg.data.dataset in ("digits", "mnist", "cifar10"), name
    assert RUN_PRESETS["digits"].data.dataset == "digits" and RUN_PRESETS["digits"].model.image_size == 8
    assert RUN_PRESETS["mnist"].model.image_size == 28 and RUN_PRESETS["cifar10"].model.in_channels == 3


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("name", sorted(RUN_PRESETS))
def test_save_load_round_trip_is_exact(tmp_path, name, suffix):
    cfg = get_run_preset(name)
    path = save_config(cfg, tmp_path / f"config{suffix}")
    back = load_config(path)
    assert back == cfg
    assert run_config_from_dict(cfg.to_dict()) == cfg
    assert isinstance(back.model.channel_mult, tuple) and isinstance(back.train.adam_betas, tuple)


def test_round_trip_keeps_non_default_values(tmp_path):
    cfg = resolve_config("tiny", overrides=["train.lr=3.3e-4", "model.num_classes=10", "data.labels=true",
                                            "diffusion.schedule_kwargs={s: 0.01}", "diffusion.schedule=cosine",
                                            "sample.spacing=trailing"])
    back = load_config(save_config(cfg, tmp_path / "c.yaml"))
    assert back == cfg and back.train.lr == 3.3e-4 and back.diffusion.schedule_kwargs == {"s": 0.01}


def test_overrides_parse_values_with_yaml():
    cfg = resolve_config("tiny", overrides=["train.lr=1e-3", "model.channel_mult=[1,2]", "train.ema_warmup=false",
                                            "data.root=/some/where", "train.steps=1e2"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)   # YAML 1.1 reads '1e-3' as a string
    assert cfg.model.channel_mult == (1, 2)
    assert cfg.train.ema_warmup is False
    assert cfg.data.root == "/some/where"
    assert cfg.train.steps == 100 and isinstance(cfg.train.steps, int)
    assert parse_override("sample.spacing=null") == (["sample", "spacing"], None)


@pytest.mark.parametrize("override, suggestion", [
    ("train.lrr=1", "train.lr"),
    ("trian.lr=1", "train.lr"),
    ("lr=1", "train.lr"),
    ("model.chanel_mult=[1]", "model.channel_mult"),
    ("sample.sampler_steps=3", None),
])
def test_unknown_keys_name_the_key_and_suggest(override, suggestion):
    with pytest.raises(ConfigError) as e:
        resolve_config("tiny", overrides=[override])
    key = override.split("=")[0]
    assert f"unknown config key {key!r}" in str(e.value)
    if suggestion:
        assert f"did you mean {suggestion!r}" in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("train.steps=abc", "train.steps must be an integer, got 'abc'"),
    ("train.steps=1.5", "train.steps must be an integer"),
    ("train.lr=fast", "train.lr must be a number"),
    ("train.ema_warmup=1", "train.ema_warmup must be true or false"),
    ("model.channel_mult=3", "model.channel_mult must be a list"),
    ("train.adam_betas=[0.9]", "train.adam_betas must be a list of 2 values"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("train.ema_decay=1.5", "train.ema_decay must be in [0, 1)"),
    ("train.mixed_precision=fp8", "train.mixed_precision must be one of no, bf16, fp16"),
    ("sample.sampler=euler", "sample.sampler must be one of"),
    ("diffusion.prediction=score", "unknown prediction target 'score'"),
    ("data.channels=2", "data.channels must be 1, 3 or null"),
    ("train.lr=[1", "not valid YAML"),
])
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=None) as e:
        resolve_config("tiny", overrides=[override])
    assert message in str(e.value)


def test_cross_section_checks():
    with pytest.raises(ConfigError, match="data.labels=true needs a class-conditional model"):
        resolve_config("tiny", overrides=["data.labels=true"])
    with pytest.raises(ConfigError, match="model.learn_sigma=False does not match"):
        resolve_config("tiny", overrides=["diffusion.variance=learned_range"])
    ok = resolve_config("tiny", overrides=["diffusion.variance=learned_range", "model.learn_sigma=true",
                                           "diffusion.loss=hybrid"])
    assert ok.model.learn_sigma and ok.diffusion.loss == "hybrid"
    with pytest.raises(ConfigError, match="override 'train.lr' must look like"):
        resolve_config("tiny", overrides=["train.lr"])


def test_files_merge_over_presets(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\n[train]\nlr = 5e-4\nsteps = 7\n[model]\nchannel_mult = [1, 2]\n')
    cfg = resolve_config(config_file=toml)
    assert cfg.train.lr == 5e-4 and cfg.train.steps == 7
    assert cfg.model == get_run_preset("tiny").model            # untouched sections come from the preset
    yml = tmp_path / "run.yaml"
    yml.write_text("train:\n  lr: 1e-4\n")                        # no preset key: --preset / default
    cfg = resolve_config("tiny", config_file=yml, overrides=["train.lr=2e-4"])
    assert cfg.train.lr == 2e-4                                   # overrides beat the file
    assert resolve_config(config_file=yml).data.dataset == "digits"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrate: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.lrate'; did you mean 'train.lr'"):
        resolve_config("tiny", config_file=bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match="could not be parsed"):
        resolve_config("tiny", config_file=broken)
    with pytest.raises(ConfigError, match="not found"):
        resolve_config("tiny", config_file=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown run preset 'tinny'.*did you mean 'tiny'"):
        resolve_config("tinny")


def test_saved_yaml_is_plain_data(tmp_path):
    path = save_config(get_run_preset("tiny"), tmp_path / "c.json")
    d = json.loads(path.read_text())
    assert set(d) == {"model", "diffusion", "data", "train", "sample", "latent", "cond"}
    assert d["model"]["channel_mult"] == [1, 2]


def test_sections_validate_on_direct_construction():
    with pytest.raises(ValueError, match="train.batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="needs data.root"):
        DataConfig(dataset="folder")


def test_example_config_files_resolve():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.*"))
    assert files
    from difflab.config import ClassifierRunConfig
    from difflab.train.classifier import resolve_classifier_config

    for f in files:
        if f.name.startswith("classifier-"):   # noise-aware classifier runs (difflab train-classifier)
            assert isinstance(resolve_classifier_config(config_file=f), ClassifierRunConfig), f
            continue
        cfg = resolve_config(config_file=f)
        assert isinstance(cfg, RunConfig), f
    cond = resolve_config(config_file=Path(__file__).resolve().parents[2] / "configs" / "digits-conditional.yaml")
    assert cond.model.num_classes == 10 and cond.data.labels and cond.data.dataset == "digits"


def test_digits_config_file_spells_out_the_preset():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "digits.yaml"
    assert resolve_config(config_file=path) == get_run_preset("digits")
