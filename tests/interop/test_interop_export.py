"""difflab runs -> diffusers pipeline folders that DDPMPipeline / DDIMPipeline load and sample like difflab."""

import dataclasses
import json

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, UNet2DModel  # noqa: E402

from _interop_helpers import make_run  # noqa: E402
from difflab.interop import InteropError, export_diffusers, import_diffusers  # noqa: E402
from difflab.runs import load_run  # noqa: E402
from difflab.sampling import SEED_STRIDE, sample_images  # noqa: E402

STEPS, N = 10, 4
TOL = 1e-4


def _difflab_ddim(run_dir, labels=None):
    """What `difflab sample --sampler ddim --eta 0 --spacing leading --steps 10 -n 4` computes (its code path)."""
    run = load_run(run_dir)
    m = run.config.model
    sc = dataclasses.replace(run.config.sample, sampler="ddim", eta=0.0, steps=STEPS, spacing="leading", n=N)
    return sample_images(run.model, run.diffusion, sc, shape=(m.in_channels, m.image_size, m.image_size),
                         labels=labels).sample, sc


def _generators(seed):
    return [torch.Generator().manual_seed(seed * SEED_STRIDE + i) for i in range(N)]


CASES = {   # name: (model, diffusion, sample) overrides of the tiny preset
    "eps-linear": ({}, {}, {}),
    "x0-linear": ({}, {"prediction": "x0"}, {}),
    "v-cosine": ({}, {"prediction": "v", "schedule": "cosine"}, {}),
    "eps-scaled-linear-noclip": ({}, {"schedule": "scaled_linear"}, {"clip_denoised": False}),
    "eps-sigmoid-trained-betas": ({}, {"schedule": "sigmoid", "schedule_kwargs": {"beta_end": 0.03}}, {}),
    "v-cosine-s-trained-betas": ({}, {"prediction": "v", "schedule": "cosine", "schedule_kwargs": {"s": 0.02}}, {}),
    "flags-scale-shift-resblock-updown": (dict(flip_sin_to_cos=False, freq_shift=1.0, downsample_padding=0,
                                               norm_eps=1e-6, use_scale_shift_norm=True, resblock_updown=True),
                                          {"prediction": "v"}, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_diffusers_ddim_on_the_export_matches_difflab_ddim(tmp_path, case):
    model, diffusion, sample = CASES[case]
    run = make_run(tmp_path, "run", model=model, diffusion=diffusion, sample=sample)
    res = export_diffusers(run, tmp_path / "hf")
    assert res.max_difference < 1e-5
    DDPMPipeline.from_pretrained(tmp_path / "hf")                      # loads offline, as DDPM too
    pipe = DDIMPipeline.from_pretrained(tmp_path / "hf")
    ours, sc = _difflab_ddim(run)
    images = pipe(batch_size=N, generator=_generators(sc.seed), num_inference_steps=STEPS, eta=0.0,
                  use_clipped_model_output=True, output_type="np").images
    theirs = torch.from_numpy(images).permute(0, 3, 1, 2)
    expected = (ours / 2 + 0.5).clamp(0, 1)
    assert expected.std() > 0.05                                         # a picture, not a constant
    torch.testing.assert_close(theirs, expected, atol=TOL, rtol=0)
    sched = json.loads((tmp_path / "hf" / "scheduler" / "scheduler_config.json").read_text())
    assert ("trained-betas" in case) == (sched["trained_betas"] is not None)
    assert sched["clip_sample"] == sc.clip_denoised


def test_class_conditional_export_samples_each_class_like_difflab(tmp_path):
    run = make_run(tmp_path, "run", model={"num_classes": 3}, diffusion={"prediction": "v", "schedule": "cosine"})
    export_diffusers(run, tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "class_labels" in card and "label 3 is the null class" in card
    DDIMPipeline.from_pretrained(tmp_path / "hf")
    unet = UNet2DModel.from_pretrained(tmp_path / "hf", subfolder="unet").eval()
    sched = DDIMScheduler.from_pretrained(tmp_path / "hf", subfolder="scheduler")
    assert unet.config.num_class_embeds == 4
    labels = torch.tensor([0, 1, 2, 3])                                  # 3 = the null class
    ours, sc = _difflab_ddim(run, labels)
    x = torch.stack([torch.randn(1, 8, 8, generator=g) for g in _generators(sc.seed)])
    sched.set_timesteps(STEPS)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t, class_labels=labels).sample, t, x, eta=0.0,
                           use_clipped_model_output=True).prev_sample
    torch.testing.assert_close(x, ours, atol=TOL, rtol=0)               # unclamped, on the [-1, 1] scale
    assert (ours[0] - ours[1]).abs().max() > 0.05                       # the label matters


def test_learned_variance_is_refused_unless_dropped_explicitly(tmp_path):
    run = make_run(tmp_path, "run", model={"learn_sigma": True}, diffusion={"variance": "learned_range"})
    with pytest.raises(InteropError, match="drop-learned-variance"):
        export_diffusers(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    res = export_diffusers(run, tmp_path / "hf", drop_learned_variance=True)
    assert res.unet_config["out_channels"] == 1 and res.scheduler_config["variance_type"] == "fixed_small"
    assert any("learned variance left out" in n for n in res.notes)
    pipe = DDIMPipeline.from_pretrained(tmp_path / "hf")
    ours, sc = _difflab_ddim(run)                                        # DDIM reads the mean channels only
    images = pipe(batch_size=N, generator=_generators(sc.seed), num_inference_steps=STEPS, eta=0.0,
                  use_clipped_model_output=True, output_type="np").images
    torch.testing.assert_close(torch.from_numpy(images).permute(0, 3, 1, 2), (ours / 2 + 0.5).clamp(0, 1),
                               atol=TOL, rtol=0)


@pytest.mark.parametrize("model,sections,match", [
    ({"channel_mult": (2, 2)}, {}, r"channel_mult\[0\]=2"),
    ({"num_heads": 2, "num_head_channels": -1, "attention_resolutions": (8, 4)}, {}, "num_heads=2"),
    ({"cond_channels": 1}, {"cond": {"low_res_factor": 4}}, "cond.low_res_factor=4"),
    ({}, {"latent": {"autoencoder": "runs/ae"}, "sample": {"clip_denoised": False}}, "latent.autoencoder='runs/ae'"),
])
def test_runs_diffusers_cannot_hold_are_refused(tmp_path, model, sections, match):
    run = make_run(tmp_path, "run", model=model, **sections)    # refused before any weights are read
    with pytest.raises(InteropError, match=match):
        export_diffusers(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_round_trip_export_then_import_gives_back_the_same_run(tmp_path):
    flags = dict(num_classes=3, flip_sin_to_cos=False, freq_shift=1.0, downsample_padding=0, norm_eps=1e-6)
    run = make_run(tmp_path, "run", model=flags, diffusion={"prediction": "x0", "schedule": "sigmoid"},
                   sample={"spacing": "trailing"})
    export_diffusers(run, tmp_path / "hf")
    with pytest.raises(InteropError, match="not empty"):
        export_diffusers(run, tmp_path / "hf")
    export_diffusers(run, tmp_path / "hf", overwrite=True)
    import_diffusers(tmp_path / "hf", tmp_path / "back")
    a, b = load_run(run), load_run(tmp_path / "back")
    assert b.config.model == a.config.model and b.config.diffusion == a.config.diffusion
    assert b.config.sample.spacing == "trailing"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
