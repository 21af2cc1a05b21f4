"""Text-conditioned latent diffusion end to end: training through the CLI, prompts, the null prompt."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.config import SampleConfig
from difflab.guidance import classifier_free
from difflab.train import load_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli_helpers import LATENT, TEXT, png, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def text_run(ae_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("text") / "run"
    from difflab.cli import main

    assert main([str(a) for a in (*LATENT, *TEXT, "latent.autoencoder=" + str(ae_run), "train.class_dropout=0.5",
                                  "--steps", 3, "--out", run)]) == 0
    return run


def test_cli_samples_prompts_with_guidance_and_a_decoded_gif(text_run, tmp_path, capsys):
    out = tmp_path / "p.png"
    code, stdout, err = run_cli(capsys, "sample", "--checkpoint", text_run, "--prompt", "a handwritten three",
                                "someone scribbled a seven", "--guidance-scale", 2, "-n", 3, "--steps", 2, "--gif",
                                "--out", out, "--no-progress")
    assert code == 0, err
    assert "empty prompt" in stdout and "<unk>: scribbled, someone" in stdout     # held-out words are reported
    grid = png(out)
    assert grid.shape[1] > grid.shape[0]                      # 2 prompts x 3 columns of decoded 8x8 images
    assert out.with_suffix(".gif").is_file()


def _sample(run, prompts, w=None):
    cond = run.conditioning
    model = run.model if w is None else classifier_free(run.model, w, uncond=cond.prompts.uncond)
    sc = SampleConfig(sampler="ddim", steps=3, n=len(prompts), clip_denoised=False)
    return cond.sample(model, run.diffusion, sc, prompts=prompts, seed_indices=[0] * len(prompts))[0]


def test_prompts_change_samples_and_the_null_prompt_is_the_unconditional_branch(text_run):
    run = load_run(text_run)
    x = _sample(run, ["a handwritten three", "a handwritten seven", "a handwritten three"])
    assert torch.equal(x[0], x[2]) and not torch.equal(x[0], x[1])       # same noise: only the prompt differs
    # the empty prompt has no tokens: guidance then compares the model with itself, for any w
    empty = run.conditioning.model_kwargs([""])
    assert not empty["token_mask"].any()
    assert torch.equal(run.conditioning.prompts.uncond(run.conditioning.model_kwargs(["a three"]))["token_mask"],
                       empty["token_mask"])
    torch.testing.assert_close(_sample(run, [""], w=4.0), _sample(run, [""]), rtol=0, atol=1e-5)
    assert not torch.allclose(_sample(run, ["a handwritten three"], w=4.0), _sample(run, ["a handwritten three"]))


def test_the_training_grid_of_a_text_run_uses_the_runs_default_guidance(text_run, tmp_path):
    import dataclasses

    run = load_run(text_run)
    cond = run.conditioning

    def model(x, t, **kw):   # the trained network plus a term that depends on the prompt's tokens
        return run.model(x, t, **kw) + 0.05 * kw["token_mask"].float().sum(1).view(-1, 1, 1, 1)

    grids = {}
    for w in (None, 4.0):
        cond.config = dataclasses.replace(cond.config, sample=dataclasses.replace(cond.config.sample,
                                                                                  guidance_scale=w, steps=2))
        grids[w] = png(cond.sample_grid(model, run.diffusion, "cpu", tmp_path / f"grid-{w}.png"))
    assert grids[None].shape == grids[4.0].shape
    assert not np.array_equal(grids[None], grids[4.0])      # w=4 pushes away from the empty prompt's output


def test_padding_tokens_do_not_reach_the_model(text_run):
    run = load_run(text_run)
    kwargs = run.conditioning.model_kwargs(["a handwritten three"])
    x_t, t = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([50])
    garbage = kwargs["tokens"].masked_fill(~kwargs["token_mask"], 5)      # some word id at every padding slot
    with torch.no_grad():
        torch.testing.assert_close(run.model(x_t, t, **kwargs), run.model(x_t, t, tokens=garbage,
                                                                          token_mask=kwargs["token_mask"]))


def test_text_errors_are_one_line(text_run, ae_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", "--checkpoint", text_run, "--prompt", "  ", "--no-progress")
    assert code == 2 and "must not be empty" in err
    code, _, err = run_cli(capsys, "sample", "--checkpoint", text_run, "--cond-from-test", 2)
    assert code == 2 and "not a super-resolution model" in err
    plain = tmp_path / "plain"
    assert run_cli(capsys, *LATENT, "latent.autoencoder=" + str(ae_run), "--steps", 1, "--out", plain)[0] == 0
    code, _, err = run_cli(capsys, "sample", "--checkpoint", plain, "--prompt", "a three", "--no-progress")
    assert code == 2 and "not text-conditioned" in err and len(err.strip().splitlines()) == 1
    assert np.asarray(png(plain / "samples.png")).ndim == 2                 # decoded 1-channel images
    code, _, err = run_cli(capsys, *LATENT, *TEXT, "latent.autoencoder=" + str(ae_run), "cond.max_length=2",
                           "--steps", 1, "--out", tmp_path / "short")
    assert code == 2 and "cond.max_length=2 is too short" in err
