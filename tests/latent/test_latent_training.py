"""The autoencoder trainer, latent / text / super-resolution training through ``difflab train``."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difflab.data import load_dataset
from difflab.data.transforms import low_res_condition
from difflab.latent import compute_scale_factor
from difflab.nn.autoencoder import AutoencoderKL
from difflab.eval import reconstruction_quality
from difflab.runs import load_autoencoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli_helpers import AE, LATENT, TEXT, run_cli  # noqa: E402


def test_autoencoder_trainer_resumes_bit_for_bit_and_reports_psnr(ae_run, tmp_path, capsys):
    # 4 steps, then resumed to 6 (the discriminator is active from step 2) == 6 steps in one go
    ae_run = Path(shutil.copytree(ae_run, tmp_path / "resumed"))
    code, out, err = run_cli(capsys, "train-autoencoder", "--out", ae_run, "--resume", "--steps", 6, "--no-progress")
    assert code == 0, err
    assert "resuming from" in err and "PSNR" in out and "reconstruction.json" in out
    straight = tmp_path / "straight"
    assert run_cli(capsys, *AE, "--steps", 6, "--out", straight)[0] == 0
    for name in ("model.safetensors", "discriminator.safetensors"):
        a = load_file(str(ae_run / "checkpoints" / "step_00000006" / name))
        b = load_file(str(straight / "checkpoints" / "step_00000006" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the reported PSNR is that of the saved weights on the held-out (test) split
    doc = json.loads((ae_run / "reconstruction.json").read_text())
    ae, cfg, ckpt = load_autoencoder(ae_run)
    assert doc["step"] == 6 and doc["held_out"] == "digits test split" and ckpt.name == "step_00000006"
    test = load_dataset("digits", split="test").to_float()[:cfg.train.eval_n]
    assert doc["psnr_db"] == pytest.approx(reconstruction_quality(ae, test)["psnr_db"], rel=1e-6)
    assert (ae_run / "reconstructions.png").is_file()


def test_low_res_condition_is_block_average_then_resize():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    low = low_res_condition(x, 2, 2)
    torch.testing.assert_close(low, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    up = low_res_condition(x, 2, 4)
    assert up.shape == (1, 1, 4, 4) and up.mean().item() == pytest.approx(x.mean().item())
    with pytest.raises(ValueError, match="divisible"):
        low_res_condition(x, 3, 4)


def test_scale_factor_from_data_is_kept_on_resume_without_the_autoencoder(ae_run, tmp_path, capsys):
    ae_copy = tmp_path / "ae"
    shutil.copytree(ae_run, ae_copy)
    run = tmp_path / "latent"
    code, out, err = run_cli(capsys, *LATENT, *TEXT, "latent.autoencoder=" + str(ae_copy), "--steps", 2,
                             "--out", run)
    assert code == 0, err
    scale = json.loads((run / "checkpoints" / "step_00000002" / "latent" / "latent.json").read_text())["scale_factor"]
    # 1 / std of posterior samples of all training images, drawn with the run's seed (train.seed = 0)
    ae = load_autoencoder(ae_copy)[0]
    images = load_dataset("digits", split="train").to_float()
    expected = compute_scale_factor(ae, images, batch_size=256, generator=torch.Generator().manual_seed(0))
    assert scale == pytest.approx(expected, rel=1e-5) and "computed from the training data" in err
    # the checkpoint holds the autoencoder: resuming (and sampling) no longer needs its run folder
    shutil.rmtree(ae_copy)
    code, out, err = run_cli(capsys, "train", "--out", run, "--resume", "--steps", 3, "--no-progress")
    assert code == 0, err
    again = json.loads((run / "checkpoints" / "step_00000003" / "latent" / "latent.json").read_text())["scale_factor"]
    assert again == scale and "from the checkpoint" in err
    saved = AutoencoderKL.__name__
    assert json.loads((run / "checkpoints" / "step_00000003" / "latent" / "autoencoder" / "config.json")
                      .read_text())["class_name"] == saved


def test_super_resolution_run_through_the_cli(ae_run, tmp_path, capsys):
    run = tmp_path / "sr"
    code, out, err = run_cli(capsys, *LATENT, "model.cond_channels=1", "cond.low_res_factor=2",
                             "latent.autoencoder=" + str(ae_run), "--steps", 2, "--out", run)
    assert code == 0, err
    assert "--cond-from-test" in out
    code, out, err = run_cli(capsys, "sample", "--checkpoint", run, "--cond-from-test", 3, "--steps", 2,
                             "--out", tmp_path / "sr.png", "--no-progress")
    assert code == 0, err
    for name in ("sr.png", "sr-input.png", "sr-target.png"):
        assert (tmp_path / name).is_file()
    assert "PSNR to the targets" in out
    # the condition is required, and a prompt is refused
    code, _, err = run_cli(capsys, "sample", "--checkpoint", run, "--steps", 2, "--no-progress")
    assert code == 2 and "--cond-from-test" in err
    code, _, err = run_cli(capsys, "sample", "--checkpoint", run, "--cond-from-test", 2, "--prompt", "a three")
    assert code == 2 and "not text-conditioned" in err


@pytest.mark.parametrize("overrides, message", [
    (["latent.autoencoder=/nonexistent/ae"], "latent.autoencoder=/nonexistent/ae"),
    (["model.in_channels=3", "latent.autoencoder={ae}"], "set model.in_channels=2"),
    (["cond.text=trainable"], "cond.text=trainable needs cross-attention"),
    (["model.cond_channels=1"], "needs cond.low_res_factor"),
])
def test_bad_latent_configs_are_one_line_errors(ae_run, tmp_path, capsys, overrides, message):
    overrides = [o.format(ae=ae_run) for o in overrides]
    code, out, err = run_cli(capsys, *LATENT, *overrides, "--steps", 1, "--out", tmp_path / "bad")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
