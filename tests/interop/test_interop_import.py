"""diffusers UNet2DModel + scheduler folders -> difflab runs: same function, or a refusal naming the field."""

import itertools
import json
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDPMScheduler  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from _interop_helpers import edit_json, make_diffusers_folder, probe  # noqa: E402
from difflab.interop import InteropError, diffusion_from_scheduler, import_diffusers, match_schedule  # noqa: E402
from difflab.runs import load_run  # noqa: E402
from difflab.schedules import make_betas  # noqa: E402

ATOL = 1e-5


def _assert_same_function(run_dir, reference, num_timesteps=1000):
    run = load_run(run_dir)
    x, t, y = probe(run.config.model, num_timesteps=num_timesteps)
    with torch.no_grad():
        ours = run.model(x, t) if y is None else run.model(x, t, y=y)
        theirs = reference(x, t, class_labels=y).sample
    assert ours.shape == theirs.shape
    assert theirs.abs().max() > 0.5            # a real output, not a zero that anything matches
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    return run


# google/ddpm-cifar10-32's family: flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6
@pytest.mark.parametrize("flip,shift,pad,eps", list(itertools.product([True, False], [0, 1], [0, 1], [1e-5, 1e-6])))
def test_every_combination_of_the_four_flags_imports_to_the_same_function(tmp_path, flip, shift, pad, eps):
    flags = dict(flip_sin_to_cos=flip, freq_shift=shift, downsample_padding=pad, norm_eps=eps)
    folder, reference = make_diffusers_folder(tmp_path, "hf", unet=flags)
    res = import_diffusers(folder, tmp_path / "run", dataset="cifar10")
    run = _assert_same_function(tmp_path / "run", reference)
    m = run.config.model
    assert (m.flip_sin_to_cos, m.freq_shift, m.downsample_padding, m.norm_eps) == (flip, shift, pad, eps)
    assert res.max_difference is not None and res.max_difference < ATOL   # the import's own check ran


@pytest.mark.parametrize("flag,value", [("flip_sin_to_cos", False), ("freq_shift", 1), ("downsample_padding", 0),
                                        ("norm_eps", 0.1)])
def test_each_flag_changes_the_function_so_the_test_above_can_fail(tmp_path, flag, value):
    folder, reference = make_diffusers_folder(tmp_path, "hf", unet={flag: value})
    import_diffusers(folder, tmp_path / "run", dataset="cifar10")
    run = load_run(tmp_path / "run")
    assert getattr(run.config.model, flag) == value
    default = run.config.model.replace(**{flag: {"flip_sin_to_cos": True, "freq_shift": 0.0, "downsample_padding": 1,
                                                 "norm_eps": 1e-5}[flag]})
    from difflab.nn import UNet

    ignored = UNet(default).eval()
    ignored.load_state_dict(run.model.state_dict())       # what loading the weights alone used to give
    x, t, _ = probe(default)
    with torch.no_grad():
        assert (ignored(x, t) - reference(x, t).sample).abs().max() > 1e-2


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_old_attention_names_and_bin_weights(tmp_path, weights):
    folder, reference = make_diffusers_folder(tmp_path, "hf", legacy=True, weights=weights,
                                              unet=dict(flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
                                                        norm_eps=1e-6))
    unet_dir = folder / "unet"
    names = set(torch.load(unet_dir / "diffusion_pytorch_model.bin", weights_only=True)) if weights == "bin" \
        else set(load_file(str(unet_dir / "diffusion_pytorch_model.safetensors")))
    assert any(".query." in k for k in names) and not any(".to_q." in k for k in names)
    import_diffusers(folder, tmp_path / "run", dataset="cifar10")
    _assert_same_function(tmp_path / "run", reference)


def test_scale_shift_resblock_resampling_classes_and_learned_range(tmp_path):
    unet = dict(in_channels=1, out_channels=2, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=4,
                down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"), downsample_type="resnet",
                up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"), upsample_type="resnet",
                attention_head_dim=None, num_class_embeds=4, layers_per_block=2, add_attention=True)
    sched = dict(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                 variance_type="learned_range", clip_sample=False, timestep_spacing="trailing")
    folder, reference = make_diffusers_folder(tmp_path, "hf", unet=unet, scheduler=sched)
    import_diffusers(folder, tmp_path / "run")                  # 8x8x1: the digits shape, no --dataset needed
    run = _assert_same_function(tmp_path / "run", reference, num_timesteps=200)
    m, d, s = run.config.model, run.config.diffusion, run.config.sample
    assert (m.num_classes, m.learn_sigma, m.resblock_updown, m.use_scale_shift_norm, m.num_head_channels) == \
        (3, True, True, True, -1)
    assert (d.schedule, d.num_timesteps, d.prediction, d.variance) == ("cosine", 200, "v", "learned_range")
    assert (s.clip_denoised, s.spacing, run.config.data.dataset, run.config.data.labels) == \
        (False, "trailing", "digits", True)


def _folder(tmp_path, src):
    dst = tmp_path / "hf"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory):
    folder, _ = make_diffusers_folder(tmp_path_factory.mktemp("plain"), "hf")
    return folder


REFUSED_UNET = [
    ("act_fn", "gelu"), ("time_embedding_type", "fourier"), ("center_input_sample", True),
    ("class_embed_type", "timestep"), ("mid_block_scale_factor", 2.0), ("resnet_time_scale_shift", "ada_group"),
    ("downsample_padding", 2), ("time_embedding_dim", 32), ("attn_norm_num_groups", 2),
    ("block_out_channels", [16, 24]), ("some_new_option", 3), ("mid_block_type", None),
    ("down_block_types[0]", "SkipDownBlock2D"), ("up_block_types[0]", "UpBlock2D"),
]


@pytest.mark.parametrize("field,value", REFUSED_UNET)
def test_what_difflab_cannot_represent_is_refused_naming_field_and_value(tmp_path, plain_folder, field, value):
    folder = _folder(tmp_path, plain_folder)
    if field == "down_block_types[0]":
        edit_json(folder / "unet" / "config.json", down_block_types=[value, "AttnDownBlock2D"])
    elif field == "up_block_types[0]":    # attention going down at level 1 but not coming up
        edit_json(folder / "unet" / "config.json", up_block_types=[value, "UpBlock2D"])
    else:
        edit_json(folder / "unet" / "config.json", **{field: value})
    with pytest.raises(InteropError, match=f"{field}={value!r}".replace("[", r"\[").replace("]", r"\]")):
        import_diffusers(folder, tmp_path / "run", dataset="cifar10")
    assert not (tmp_path / "run").exists()                 # nothing written


REFUSED_SCHEDULER = [
    ("beta_schedule", "laplace"), ("variance_type", "learned"), ("rescale_betas_zero_snr", True),
    ("prediction_type", "flow_prediction"), ("_class_name", "EulerDiscreteScheduler"), ("clip_sample_range", 2.0),
]


@pytest.mark.parametrize("field,value", REFUSED_SCHEDULER)
def test_scheduler_settings_difflab_lacks_are_refused(tmp_path, plain_folder, field, value):
    folder = _folder(tmp_path, plain_folder)
    edit_json(folder / "scheduler" / "scheduler_config.json", **{field: value})
    with pytest.raises(InteropError, match=f"{field}={value!r}"):
        import_diffusers(folder, tmp_path / "run", dataset="cifar10")
    assert not (tmp_path / "run").exists()


def test_free_form_betas_are_refused_and_extra_output_channels_too(tmp_path, plain_folder):
    folder = _folder(tmp_path, plain_folder)
    betas = np.random.default_rng(0).uniform(1e-4, 2e-2, 1000).tolist()
    edit_json(folder / "scheduler" / "scheduler_config.json", trained_betas=betas)
    with pytest.raises(InteropError, match="trained_betas=.*matches none"):
        import_diffusers(folder, tmp_path / "run", dataset="cifar10")
    folder2, _ = make_diffusers_folder(tmp_path, "hf6", unet=dict(out_channels=6))
    with pytest.raises(InteropError, match="out_channels=6 with in_channels=3"):
        import_diffusers(folder2, tmp_path / "run", dataset="cifar10")
    with pytest.raises(InteropError, match="which dataset"):      # 8x8x3 is no registered dataset's shape
        import_diffusers(plain_folder, tmp_path / "run")
    with pytest.raises(InteropError, match="no scheduler/scheduler_config.json"):
        shutil.rmtree(folder / "scheduler")
        import_diffusers(folder, tmp_path / "run", dataset="cifar10")


SCHEDULES = [("linear", {}), ("linear", {"beta_start": 2e-4, "beta_end": 0.03}), ("scaled_linear", {}),
             ("cosine", {}), ("sigmoid", {}), ("sigmoid", {"beta_start": 3e-4, "beta_end": 0.05})]


@pytest.mark.parametrize("name,kwargs", SCHEDULES)
def test_trained_betas_of_a_difflab_schedule_are_recognised(name, kwargs):
    betas = make_betas(name, 1000, **kwargs)
    for given in (betas, betas.astype(np.float32)):        # float32 as diffusers stores them
        found, kw = match_schedule(given)
        assert found == name
        np.testing.assert_allclose(make_betas(found, 1000, **kw), betas, rtol=1e-6)
    assert match_schedule(betas * (1 + 1e-3 * np.sin(np.arange(1000)))) is None


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_scheduler_names_give_diffusers_betas(beta_schedule):
    kw = dict(beta_schedule=beta_schedule, num_train_timesteps=1000)
    if beta_schedule == "scaled_linear":
        kw.update(beta_start=0.00085, beta_end=0.012)
    sched = DDPMScheduler(**kw)
    diffusion, _, _ = diffusion_from_scheduler(dict(sched.config), learn_sigma=False)
    np.testing.assert_allclose(diffusion.build().terms.betas, sched.betas.double().numpy(), rtol=2e-6)


def test_import_without_diffusers_installed_says_it_was_not_cross_checked(tmp_path, plain_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    res = import_diffusers(plain_folder, tmp_path / "run", dataset="cifar10")
    assert res.max_difference is None
    assert any("not cross-checked" in n and "difflab[diffusers]" in n for n in res.notes)
    assert load_run(tmp_path / "run").step == 0


def test_an_early_minimal_config_reads_as_diffusers_reads_it(tmp_path):
    # the keys of a config written by diffusers 0.0.x (google/ddpm-* era); the missing ones take diffusers'
    # defaults (attention_head_dim=8: four heads at width 32), as diffusers itself reads the folder
    folder, _ = make_diffusers_folder(tmp_path, "hf", legacy=True, weights="bin", unet=dict(
        attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6))
    early = ("_class_name", "_diffusers_version", "act_fn", "block_out_channels", "center_input_sample",
             "down_block_types", "downsample_padding", "flip_sin_to_cos", "freq_shift", "in_channels",
             "layers_per_block", "mid_block_scale_factor", "norm_eps", "norm_num_groups", "out_channels", "sample_size",
             "time_embedding_type", "up_block_types")
    path = folder / "unet" / "config.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k in early}))
    from diffusers import UNet2DModel

    reference = UNet2DModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False).eval()
    import_diffusers(folder, tmp_path / "run", dataset="cifar10")
    assert load_run(tmp_path / "run").config.model.num_head_channels == 8
    _assert_same_function(tmp_path / "run", reference)
