"""Bad input through the command line: each row's exit code and one-line message, no traceback.

Rows run in-process (``difflab.cli.main(argv)``) with stderr captured; every one fails before
training starts, so stderr must be exactly one ``difflab: error: ...`` line.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from difflab.cli import build_parser, main

TINY = ["--preset", "tiny", "--no-progress", "--set", "train.num_threads=1"]


def _copy_run(trained, tmp):
    run = tmp / "run"
    shutil.copytree(trained, run)
    return run, run / "checkpoints" / "step_00000002"


def _images(folder: Path, n=4, size=8, mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(folder / f"img{i}.png")
    return folder


# ---- setups: (tmp, trained run) -> argv
def broken_png(tmp, _):
    folder = _images(tmp / "imgs", n=20)
    good = (folder / "img0.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 2])
    return ["train", *TINY, "--out", tmp / "o", "--set", "data.dataset=folder", f"data.root={folder}"]


def truncated(name):
    def setup(tmp, trained):
        run, ck = _copy_run(trained, tmp)
        data = (ck / name).read_bytes()
        (ck / name).write_bytes(data[: len(data) // 3])
        if name == "training_state.pt":
            return ["train", "--out", run, "--resume", "--no-progress"]
        return ["sample", "--checkpoint", run, "-n", 1, "--steps", 1, "--no-progress"] + \
            (["--no-ema"] if name == "model.safetensors" else [])
    return setup


def random_bytes(tmp, trained):
    run, ck = _copy_run(trained, tmp)
    (ck / "ema.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    return ["sample", "--checkpoint", run, "-n", 1, "--steps", 1]


def foreign_safetensors(tmp, trained):
    run, ck = _copy_run(trained, tmp)
    save_file({f"encoder.layer{i}.weight": torch.zeros(3, 3) for i in range(40)}, ck / "ema.safetensors")
    return ["sample", "--checkpoint", run, "-n", 1, "--steps", 1]


def architecture_mismatch(tmp, trained):
    run, ck = _copy_run(trained, tmp)
    cfg = yaml.safe_load((ck / "config.yaml").read_text())
    cfg["model"]["model_channels"] = 16
    (ck / "config.yaml").write_text(yaml.safe_dump(cfg))
    return ["sample", "--checkpoint", run, "-n", 1, "--steps", 1]


def resume_with(*overrides):
    def setup(tmp, trained):
        run, _ = _copy_run(trained, tmp)
        return ["train", "--out", run, "--resume", "--no-progress", "--set", *overrides]
    return setup


def resume_on_folder(size, mode):
    def setup(tmp, trained):
        run, _ = _copy_run(trained, tmp)
        folder = _images(tmp / "imgs", n=20, size=size, mode=mode)
        return ["train", "--out", run, "--resume", "--no-progress", "--set", "data.dataset=folder",
                f"data.root={folder}", "train.steps=4"]
    return setup


def corrupt_latest(tmp, trained):
    run, _ = _copy_run(trained, tmp)
    (run / "checkpoints" / "latest").write_text("../../../etc\n")
    return ["sample", "--checkpoint", run]


def pretrained_folder_as_checkpoint(tmp, _):
    from difflab.nn.io import save_pretrained
    from difflab.nn.presets import get_unet_preset
    from difflab.nn.unet import UNet

    save_pretrained(UNet(get_unet_preset("tiny")), tmp / "pretrained")
    return ["sample", "--checkpoint", tmp / "pretrained"]


def config_file(text, suffix=".yaml"):
    def setup(tmp, _):
        path = tmp / f"cfg{suffix}"
        path.write_text(text)
        return ["train", *TINY, "--out", tmp / "o", "--config", path]
    return setup


def no_checkpoint_yet(tmp, _):
    (tmp / "run").mkdir()
    (tmp / "run" / "config.yaml").write_text("{}\n")
    return ["train", "--out", tmp / "run", "--resume"]


def existing_run(tmp, trained):
    run, _ = _copy_run(trained, tmp)
    return ["train", *TINY, "--out", run]


def _write(path, text):
    path.write_text(text)
    return path


def argv(*a):
    return lambda tmp, trained: list(a)


def train_set(*overrides):
    return lambda tmp, trained: ["train", *TINY, "--out", tmp / "o", "--set", *overrides]


def sample_with(*a):
    return lambda tmp, trained: ["sample", "--checkpoint", trained, "--no-progress", *a]


ROWS = [
    # unknown keys, with the closest valid name
    ("unknown key", train_set("train.lrr=1"), 2, "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    ("misspelt model key", train_set("model.chanel_mult=[1,2]"), 2, "did you mean 'model.channel_mult'?"),
    ("misspelt section", train_set("trian.steps=3"), 2, "unknown config key 'trian.steps'; did you mean 'train.steps'?"),
    ("bare key", train_set("ema_decay=0.5"), 2, "unknown config key 'ema_decay'; did you mean 'train.ema_decay'?"),
    ("whole section", train_set("train=3"), 2, "sets a whole section; name a key inside it"),
    ("unknown key in a file", config_file("train:\n  stepz: 3\n"), 2,
     "unknown config key 'train.stepz'; did you mean 'train.steps'?"),
    # values out of range
    ("steps 0", lambda tmp, _: ["train", *TINY, "--out", tmp / "o", "--steps", 0], 2, "train.steps must be >= 1, got 0"),
    ("batch size 0", train_set("train.batch_size=0"), 2, "train.batch_size must be >= 1, got 0"),
    ("batch larger than the data", train_set("train.batch_size=5000"), 2,
     "train.batch_size: batch_size 5000 is larger than dataset 'digits'"),
    ("image size vs down-sampling", train_set("model.image_size=9", "data.image_size=9"), 2,
     "image_size=9 is not divisible by 2**(levels-1)=2"),
    ("image size vs attention", train_set("model.image_size=16", "model.attention_resolutions=[4]"), 2,
     "attention_resolutions [4] are not level resolutions; allowed: [16, 8]"),
    ("negative seed", train_set("train.seed=-1"), 2, "train.seed must be >= 0"),
    ("seed too large", train_set("train.seed=18446744073709551617"), 2, "train.seed must be in [0, 2**63 - 1]"),
    ("eta in config", train_set("sample.eta=-0.5"), 2, "sample.eta must be a finite number >= 0"),
    ("eta inf in config", train_set("sample.eta=.inf"), 2, "sample.eta must be a finite number >= 0"),
    ("lr nan", train_set("train.lr=.nan"), 2, "train.lr must be a positive number"),
    ("sample steps 0", sample_with("--steps", 0), 2, "--steps must be >= 1, got 0"),
    ("sample eta < 0", sample_with("--eta", -1), 2, "--eta must be >= 0"),
    ("sample eta inf", sample_with("--eta", "inf"), 2, "sample.eta must be a finite number >= 0"),
    ("sample n 0", sample_with("-n", 0), 2, "--n must be >= 1"),
    ("sample seed too large", sample_with("--seed", 2**50), 2, "sample.seed must be in [0, 2**43 - 1]"),
    # wrong types
    ("steps not an int", train_set("train.steps=many"), 2, "train.steps must be an integer, got 'many'"),
    ("lr not a number", train_set("train.lr=fast"), 2, "train.lr must be a number, got 'fast'"),
    ("bool", train_set("train.ema_warmup=maybe"), 2, "train.ema_warmup must be true or false"),
    ("list", train_set("model.channel_mult=5"), 2, "model.channel_mult must be a list, got 5"),
    ("pair", train_set("train.adam_betas=[0.9]"), 2, "train.adam_betas must be a list of 2 values"),
    ("argparse int", argv("train", "--steps", "ten"), 2, "argument --steps: invalid int value: 'ten'"),
    # (with --set train.num_threads=1 this used to silently replace the whole section by its defaults)
    ("section not a mapping + --set", config_file("train: 3\n"), 2, "train is 3 (int), not a mapping"),
    ("section not a mapping", lambda tmp, _: ["config", "--config", _write(tmp / "c.yaml", "train: 3\n")], 2,
     "config section 'train' must be a mapping"),
    ("unparsable yaml", config_file("train: [1,\n"), 2, "could not be parsed"),
    # missing files
    ("missing config", lambda tmp, _: ["train", "--config", tmp / "nope.yaml"], 2, "nope.yaml not found"),
    ("config suffix", config_file("{}", suffix=".txt"), 2, "config files must end in .yaml"),
    ("folder without root", train_set("data.dataset=folder"), 2, "data.dataset 'folder' needs data.root"),
    ("missing data folder", lambda tmp, _: ["train", *TINY, "--out", tmp / "o", "--set", "data.dataset=folder",
                                            f"data.root={tmp / 'nope'}"], 1, "does not exist"),
    ("missing checkpoint", argv("sample", "--checkpoint", "/definitely/not/here"), 1, "does not exist"),
    ("resume without checkpoint", no_checkpoint_yet, 1, "has no finished checkpoint yet"),
    # corrupt data and checkpoints
    ("broken png", broken_png, 1, "1 corrupt or unreadable image file(s)"),
    ("truncated model weights", truncated("model.safetensors"), 1,
     "corrupt or incomplete: model.safetensors could not be read"),
    ("truncated ema weights", truncated("ema.safetensors"), 1, "corrupt or incomplete: ema.safetensors could not be read"),
    ("truncated training state", truncated("training_state.pt"), 1, "training_state.pt could not be read"),
    ("random bytes", random_bytes, 1, "ema.safetensors could not be read"),
    ("foreign safetensors", foreign_safetensors, 1, "does not match the model config"),
    ("corrupt latest pointer", corrupt_latest, 1, "latest is corrupt"),
    ("not a training checkpoint", pretrained_folder_as_checkpoint, 1, "config.yaml is missing"),
    # disagreements with the checkpoint
    ("architecture vs weights", architecture_mismatch, 1, "does not match the model config: shape mismatches"),
    ("resume: image size", resume_with("model.image_size=16", "model.attention_resolutions=[8]"), 2,
     "its model config differs"),
    ("resume: channels", resume_with("model.in_channels=3"), 2, "its model config differs"),
    ("resume: data channels", resume_with("data.channels=3"), 2, "data.channels=3 differs from model.in_channels=1"),
    ("resume: data image size", resume_with("data.image_size=16"), 2,
     "data.image_size=16 differs from model.image_size=8"),
    ("resume on RGB images", resume_on_folder(8, "RGB"), 2, "have 3 channel(s) but model.in_channels=1"),
    ("resume on larger images", resume_on_folder(16, "L"), 2, "images are 16x16 but model.image_size=8"),
    ("overwrite a run", existing_run, 2, "already holds checkpoints; resume them (--resume)"),
]


@pytest.mark.parametrize("setup, code, phrase", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_with_an_exit_code(trained, tmp_path, capsys, setup, code, phrase):
    args = [str(a) for a in setup(tmp_path, trained)]
    got = main(args)
    out, err = capsys.readouterr()
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difflab: error: "), err
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "checkpoints").exists()      # nothing was trained


def test_a_foreign_weights_file_names_a_few_keys_not_all(trained, tmp_path, capsys):
    assert main([str(a) for a in foreign_safetensors(tmp_path, trained)]) == 1
    line = capsys.readouterr().err.strip()
    assert "missing keys" in line and "40 unexpected keys" in line and "(and 35 more)" in line
    assert len(line) < 1500, len(line)


def test_debug_shows_the_traceback_instead(trained, tmp_path):
    args = [str(a) for a in random_bytes(tmp_path, trained)]
    with pytest.raises(ValueError, match="ema.safetensors could not be read"):
        main(args + ["--debug"])


def _has_option(command, option):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return option in sub.choices[command]._option_string_actions


def test_guidance_scale_out_of_range(trained, capsys):
    if not _has_option("sample", "--guidance-scale"):
        pytest.skip("no --guidance-scale flag yet")
    got = main(["sample", "--checkpoint", str(trained), "--guidance-scale", "-1", "--no-progress"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert got == 2 and len(lines) == 1 and lines[0].startswith("difflab: error: ") and "guidance" in lines[0], err
