"""The README's command for training on a folder of your own images works as written."""

import re
import shlex
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from _cli_helpers import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_folder_command() -> tuple[list[str], str]:
    """The `difflab train ... data.dataset=folder ...` command of the README (continuation lines
    joined) as argv without the program name, and the README's hint line for class labels."""
    text = README.read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [ln.strip() for ln in joined.splitlines()]
    command = next(ln for ln in lines if ln.startswith("difflab train") and "data.dataset=folder" in ln)
    hint = next(ln for ln in lines if ln.startswith("#") and "data.labels=true" in ln)
    return shlex.split(command)[1:], hint


def write_folder(root: Path, n: int, seed: int = 0) -> None:
    """n random RGB images of 40x36 pixels (not square: resized and centre-cropped) in two class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_readme_own_folder_command_trains_as_written(tmp_path, capsys):
    argv, hint = readme_folder_command()
    assert "--preset" in argv and "data.image_size=32" in argv and "model.in_channels=3" in argv
    images, out = tmp_path / "images", tmp_path / "faces"
    write_folder(images, 130)          # more than the preset's batch of 128
    argv = [a.replace("/path/to/images", str(images)).replace("runs/faces", str(out)) for a in argv]
    quick = ["train.num_threads=1", "sample.n=2", "sample.steps=2"]
    code, stdout, err = run_cli(capsys, *argv, *quick, "--steps", 1, "--no-progress")
    assert code == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["image_size"] == 32 and saved["model"]["in_channels"] == 3
    assert saved["model"]["attention_resolutions"] == ["1/4"]          # 8x8 at 32 pixels
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    assert np.asarray(Image.open(out / "samples.png")).shape[-1] == 3

    # the README's hint for class labels from sub-folder names, with the number of folders filled in
    extra = re.findall(r"\S+=\S+", hint)
    assert extra == ["data.labels=true", "model.num_classes=<number"]
    labelled = [a.replace(str(out), str(tmp_path / "labelled")) for a in argv]
    code, stdout, err = run_cli(capsys, *labelled, *quick, "data.labels=true", "model.num_classes=2",
                                "train.batch_size=16", "--steps", 1, "--no-progress")
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "labelled" / "config.yaml").read_text())["model"]["num_classes"] == 2
