"""Untrusted checkpoints and dataset folders: no code runs, no path escapes the folder it names.

Every malicious payload here would create a marker file if it were executed; each test shows the
marker is absent and the error is one clear line.
"""

import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main
from difflab.data import load_dataset


class Payload:
    """Unpickling this calls Path.touch(marker): arbitrary code, in miniature."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def raw_pickle(marker) -> bytes:
    return pickle.dumps({"step": Payload(marker)})


def torch_zip_pickle(marker) -> bytes:   # the same payload inside torch.save's zip container
    buf = io.BytesIO()
    torch.save({"step": 2, "optimizer": Payload(marker)}, buf)
    return buf.getvalue()


def cli_error(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("difflab: error: ") and "Traceback" not in err, err
    return code, lines[0]


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """Control: the payload is live, so its absence below means the loader refused it."""
    marker = tmp_path / "pwned"
    pickle.loads(raw_pickle(marker))
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(torch_zip_pickle(marker)), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("make", [raw_pickle, torch_zip_pickle], ids=["raw pickle", "torch zip"])
def test_a_malicious_training_state_runs_no_code(trained, tmp_path, capsys, make):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "pwned"
    (run / "checkpoints" / "step_00000002" / "training_state.pt").write_bytes(make(marker))
    code, line = cli_error(capsys, "train", "--out", run, "--resume", "--steps", 3, "--no-progress")
    assert code == 1 and "training_state.pt could not be read" in line
    assert not marker.exists()


@pytest.mark.parametrize("name, flags", [("model.safetensors", ["--no-ema"]), ("ema.safetensors", [])])
@pytest.mark.parametrize("make", [raw_pickle, torch_zip_pickle], ids=["raw pickle", "torch zip"])
def test_malicious_weights_run_no_code(trained, tmp_path, capsys, name, flags, make):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "pwned"
    (run / "checkpoints" / "step_00000002" / name).write_bytes(make(marker))
    code, line = cli_error(capsys, "sample", "--checkpoint", run, "-n", 1, "--steps", 1, *flags)
    assert code == 1 and f"{name} could not be read" in line
    assert not marker.exists()
    # resuming reads the raw weights too
    code, line = cli_error(capsys, "train", "--out", run, "--resume", "--steps", 3, "--no-progress")
    assert code == 1 and "could not be read" in line and not marker.exists()


def test_yaml_tags_in_a_checkpoint_config_run_no_code(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "pwned"
    (run / "checkpoints" / "step_00000002" / "config.yaml").write_text(
        f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    code, line = cli_error(capsys, "sample", "--checkpoint", run, "-n", 1, "--steps", 1)
    assert code == 1 and "config.yaml is not a valid run config" in line
    assert not marker.exists()
    cfg = tmp_path / "evil.yaml"                       # the same in a --config file: a config error
    cfg.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    code, line = cli_error(capsys, "config", "--config", cfg)
    assert code == 2 and "could not be parsed" in line and not marker.exists()


# ----------------------------------------------------------------------------- paths
def _folder(root: Path, n=2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), (37 * i) % 256, dtype=np.uint8)).save(root / f"img{i}.png")
    return root


@pytest.fixture
def outside(tmp_path):
    """A secret and an image outside the dataset folder."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text("the secret")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(out / "other.png")
    return out


@pytest.mark.parametrize("entry", ["../outside/other.png", "sub/../../outside/other.png", "ABSOLUTE",
                                   "..\\outside\\other.png"])
def test_captions_file_paths_cannot_leave_the_folder(tmp_path, outside, entry):
    root = _folder(tmp_path / "data")
    entry = str(outside / "other.png") if entry == "ABSOLUTE" else entry
    (root / "captions.jsonl").write_text(f'{{"file": "{entry}", "text": "x"}}\n'.replace("\\", "\\\\"))
    with pytest.raises(ValueError, match=r"captions.jsonl:1: image path .* must be relative to the dataset folder"):
        load_dataset("folder", root=root)


def test_captions_file_symlink_pointing_outside_is_refused(tmp_path, outside):
    root = _folder(tmp_path / "data")
    os.symlink(outside / "other.png", root / "link.png")
    (root / "captions.jsonl").write_text('{"file": "link.png", "text": "x"}\n')
    with pytest.raises(ValueError, match="image path 'link.png' resolves outside the dataset folder"):
        load_dataset("folder", root=root)


def test_a_sidecar_caption_symlinked_outside_is_not_read(tmp_path, outside):
    root = _folder(tmp_path / "data")
    os.symlink(outside / "secret.txt", root / "img0.txt")
    with pytest.raises(ValueError, match=r"caption .*img0.txt is a symbolic link resolving outside the dataset folder"):
        load_dataset("folder", root=root)
    # a sidecar inside the folder (even through a symlink within it) is still read
    (root / "img0.txt").unlink()
    (root / "real.txt").write_text("a caption")
    os.symlink(root / "real.txt", root / "img0.txt")
    assert load_dataset("folder", root=root).captions[0] == "a caption"


@pytest.mark.parametrize("split", ["../outside", "..", "a/b", "/etc"])
def test_a_split_cannot_name_a_folder_outside_the_root(tmp_path, outside, split):
    root = _folder(tmp_path / "data")
    with pytest.raises(ValueError, match="split must be a plain sub-folder name"):
        load_dataset("folder", root=root, split=split)


def test_path_escapes_through_the_cli_are_one_line_errors(tmp_path, outside, capsys):
    root = _folder(tmp_path / "data", n=20)
    (root / "captions.jsonl").write_text('{"file": "../outside/other.png", "text": "x"}\n')
    code, line = cli_error(capsys, "train", "--preset", "tiny", "--no-progress", "--out", tmp_path / "o", "--set",
                           "data.dataset=folder", f"data.root={root}")
    assert code == 1 and "must be relative to the dataset folder" in line
    (root / "captions.jsonl").unlink()
    code, line = cli_error(capsys, "train", "--preset", "tiny", "--no-progress", "--out", tmp_path / "o", "--set",
                           "data.dataset=folder", f"data.root={root}", "data.split=../outside")
    assert code == 1 and "split must be a plain sub-folder name" in line
