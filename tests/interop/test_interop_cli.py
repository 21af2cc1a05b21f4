"""`difflab export-diffusers` / `difflab import-diffusers` end to end, with `difflab sample` and `difflab eval`."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDIMPipeline  # noqa: E402

from _interop_helpers import edit_json, make_diffusers_folder, make_run  # noqa: E402
from difflab.sampling import SEED_STRIDE  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli_helpers import png, run_cli  # noqa: E402

GOOGLE_DDPM_FLAGS = dict(flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6)


def test_export_then_diffusers_ddim_draws_difflab_samples_pixels(tmp_path, capsys):
    run = make_run(tmp_path, "run", diffusion={"prediction": "v", "schedule": "cosine"})
    code, out, err = run_cli(capsys, "export-diffusers", run, tmp_path / "hf")
    assert code == 0, err
    assert "max |difflab - diffusers|" in out and "timestep_spacing='leading'" in out
    code, out, err = run_cli(capsys, "sample", "--checkpoint", run, "--sampler", "ddim", "--eta", "0", "--spacing",
                             "leading", "--steps", 10, "-n", 4, "--seed", 3, "--save-individual", "--no-progress",
                             "--out", tmp_path / "ours.png")
    assert code == 0, err
    pipe = DDIMPipeline.from_pretrained(tmp_path / "hf")
    gens = [torch.Generator().manual_seed(3 * SEED_STRIDE + i) for i in range(4)]
    images = pipe(batch_size=4, generator=gens, num_inference_steps=10, eta=0.0, use_clipped_model_output=True,
                  output_type="np").images                               # floats in [0, 1]
    ours = np.stack([png(p) for p in sorted((tmp_path / "ours").glob("*.png"))]).astype(np.float64)
    assert ours.shape[0] == 4 and ours.std() > 5
    # the PNGs are 8-bit: within half a level of diffusers' floats (plus the 1e-4 agreement)
    assert np.abs(ours.reshape(images.shape) - 255 * images).max() <= 0.5 + 255 * 1e-4


def test_import_a_google_ddpm_style_folder_then_sample_and_eval(tmp_path, capsys):
    folder, _ = make_diffusers_folder(tmp_path, "hf", legacy=True, unet=dict(in_channels=1, out_channels=1,
                                                                             **GOOGLE_DDPM_FLAGS),
                                      scheduler=dict(num_train_timesteps=50))
    code, out, err = run_cli(capsys, "import-diffusers", folder, tmp_path / "run")
    assert code == 0, err
    assert "data.dataset='digits'" in out and "max |difflab - diffusers|" in out
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "flip_sin_to_cos: false" in config and "downsample_padding: 0" in config
    code, out, err = run_cli(capsys, "sample", "--checkpoint", tmp_path / "run", "--steps", 5, "-n", 4,
                             "--no-progress", "--out", tmp_path / "grid.png")
    assert code == 0, err
    assert png(tmp_path / "grid.png").ndim >= 2
    code, out, err = run_cli(capsys, "eval", "nll", "--checkpoint", tmp_path / "run", "-n", 2, "--out",
                             tmp_path / "nll")
    assert code == 0, err
    bpd = json.loads(next((tmp_path / "nll").glob("*.json")).read_text())["bpd"]
    assert np.isfinite(bpd) and bpd > 0


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    folder, _ = make_diffusers_folder(tmp_path, "hf")
    edit_json(folder / "unet" / "config.json", act_fn="gelu")
    code, out, err = run_cli(capsys, "import-diffusers", folder, tmp_path / "run", "--dataset", "cifar10")
    assert code == 1 and err.count("\n") == 1 and "act_fn='gelu'" in err
    code, out, err = run_cli(capsys, "export-diffusers", tmp_path / "missing", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and "does not exist" in err
    run = make_run(tmp_path, "run")
    monkeypatch.setitem(sys.modules, "diffusers", None)                 # as without the extra installed
    code, out, err = run_cli(capsys, "export-diffusers", run, tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and "pip install 'difflab[diffusers]'" in err
