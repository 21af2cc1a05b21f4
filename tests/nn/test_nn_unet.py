import dataclasses

import pytest
import torch

from _nn_helpers import full_tiny, inputs
from difflab.nn import UNET_PRESETS, UNet, UNetConfig, get_unet_preset, timestep_embedding
from difflab.nn.unet import Dropout


@pytest.mark.parametrize("name", [n for n in UNET_PRESETS if n != "cifar10"])
def test_preset_forward_shape(name):
    model = UNet(UNET_PRESETS[name]).eval()
    kw = inputs(model, b=2)
    with torch.no_grad():
        out = model(**kw)
    cfg = model.config
    assert out.shape == (2, cfg.resolved_out_channels, cfg.image_size, cfg.image_size)
    assert out.is_contiguous()


def test_cifar10_preset_is_ddpm_network():
    model = UNet(UNET_PRESETS["cifar10"]).eval()
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 35.7e6) < 0.1e6          # DDPM paper, Table/Appendix B: 35.7M parameters
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), torch.tensor([10]))
    assert out.shape == (1, 3, 32, 32)


def test_zero_initialised_output_and_learn_sigma():
    model = UNet(get_unet_preset("tiny", learn_sigma=True))
    out = model(**inputs(model))
    assert out.shape[1] == 2 * model.config.in_channels
    assert torch.count_nonzero(out) == 0      # zero-init output conv


def test_all_conditioning_shapes_and_effect():
    model = full_tiny().eval()
    kw = inputs(model, b=3)
    with torch.no_grad():
        base = model(**kw)
        assert base.shape == (3, 2, 8, 8) and torch.isfinite(base).all()
        for key in ("y", "cond", "context", "t"):
            changed = dict(kw)
            if key == "y":
                changed["y"] = (kw["y"] + 1) % 3
            elif key == "t":
                changed["t"] = kw["t"] + 100
            else:
                changed[key] = kw[key] + 1.0
            assert not torch.allclose(model(**changed), base), f"{key} has no effect"


def test_gradients_reach_every_parameter():
    model = full_tiny(dropout=0.1).train()
    kw = inputs(model, b=4)
    kw["y"] = torch.tensor([0, 1, 2, model.null_class])
    kw["context_mask"] = torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 5, [True] * 5])
    model(**kw).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_padding_tokens_do_not_change_output():
    model = full_tiny().eval()
    kw = inputs(model, b=2, seq=6)
    mask = torch.tensor([[True, True, True, False, False, False], [True] * 6])
    kw["context_mask"] = mask
    with torch.no_grad():
        out = model(**kw)
        noisy = dict(kw, context=torch.where(mask[..., None], kw["context"], torch.randn_like(kw["context"]) * 100))
        torch.testing.assert_close(model(**noisy), out, atol=1e-6, rtol=0)
        # row 0 alone with only its 3 real tokens, no mask
        alone = model(x=kw["x"][:1], t=kw["t"][:1], y=kw["y"][:1], cond=kw["cond"][:1], context=kw["context"][:1, :3])
        torch.testing.assert_close(alone, out[:1], atol=1e-5, rtol=1e-5)


def test_all_padding_row_is_finite_and_ignores_context():
    model = full_tiny().eval()
    kw = inputs(model, b=2)
    kw["context_mask"] = torch.zeros(2, 5, dtype=torch.bool)
    with torch.no_grad():
        out = model(**kw)
        other = model(**dict(kw, context=torch.randn_like(kw["context"]) * 50))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(other, out, atol=1e-6, rtol=0)


def test_null_class():
    model = full_tiny().eval()
    assert model.null_class == 3 == model.config.num_classes
    kw = inputs(model)
    kw["y"] = torch.full((2,), model.null_class)
    with torch.no_grad():
        assert torch.isfinite(model(**kw)).all()
    with pytest.raises(ValueError, match="class labels"):
        model(**dict(kw, y=torch.full((2,), 4)))
    with pytest.raises(ValueError, match="y"):
        model(**{k: v for k, v in kw.items() if k != "y"})
    assert UNet(get_unet_preset("tiny")).null_class is None


def test_input_validation_messages():
    model = full_tiny()
    kw = inputs(model)
    with pytest.raises(ValueError, match="x must be"):
        model(**dict(kw, x=torch.randn(2, 1, 9, 9)))
    with pytest.raises(ValueError, match="cond must be"):
        model(**dict(kw, cond=torch.randn(2, 1, 8, 8)))
    with pytest.raises(ValueError, match="context must be"):
        model(**dict(kw, context=torch.randn(2, 5, 7)))
    with pytest.raises(ValueError, match="context_mask"):
        model(**dict(kw, context_mask=torch.ones(2, 5)))
    with pytest.raises(ValueError, match="t must"):
        model(**dict(kw, t=torch.zeros(3, dtype=torch.long)))


def test_forward_does_not_mutate_inputs_and_float_t_matches_long_t():
    model = full_tiny().eval()
    kw = inputs(model)
    copies = {k: v.clone() for k, v in kw.items()}
    with torch.no_grad():
        a = model(**kw)
        b = model(**dict(kw, t=kw["t"].float()))
    for k in kw:
        assert torch.equal(kw[k], copies[k])
    torch.testing.assert_close(a, b)


def test_batch_equals_singles():
    model = full_tiny().eval()
    kw = inputs(model, b=3)
    with torch.no_grad():
        full = model(**kw)
        singles = torch.cat([model(**{k: v[i:i + 1] for k, v in kw.items()}) for i in range(3)])
    torch.testing.assert_close(full, singles, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_matches_with_dropout():
    a = full_tiny(dropout=0.3).train()
    b = full_tiny(dropout=0.3, use_checkpoint=True).train()
    b.load_state_dict(a.state_dict())
    kw = inputs(a)
    outs = []
    for m in (a, b):
        torch.manual_seed(123)
        out = m(**kw)
        out.square().sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1])
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


def test_autocast_bf16_close_to_fp32():
    model = full_tiny().eval()
    kw = inputs(model)
    with torch.no_grad():
        ref = model(**kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**kw)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.05 * ref.abs().max().item(), rtol=0.05)


@pytest.mark.parametrize("size,mult,ok", [(28, (1, 2, 2), True), (28, (1, 2, 2, 2), False),
                                          (8, (1, 2), True), (8, (1, 2, 2), True), (10, (1, 2, 2), False)])
def test_image_size_must_divide_levels(size, mult, ok):
    kw = dict(image_size=size, in_channels=1, model_channels=8, channel_mult=mult, norm_groups=4,
              attention_resolutions=())
    if ok:
        UNetConfig(**kw)
    else:
        with pytest.raises(ValueError, match="not divisible by 2"):
            UNetConfig(**kw)


@pytest.mark.parametrize("override,match", [
    (dict(attention_resolutions=(5,)), "attention_resolutions"),
    (dict(norm_groups=3), "norm_groups"),
    (dict(num_head_channels=3), "num_head_channels"),
    (dict(dropout=1.5), "dropout"),
    (dict(cross_attention_resolutions=(4,)), "context_dim"),
    (dict(context_dim=4, cross_attention_resolutions=(3,)), "cross_attention_resolutions"),
    (dict(num_classes=0), "num_classes"),
    (dict(channel_mult=[1, 2]), "channel_mult"),
])
def test_config_validation(override, match):
    with pytest.raises(ValueError, match=match):
        get_unet_preset("tiny", **override)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = get_unet_preset("latent")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.image_size = 3
    with pytest.raises(ValueError, match="bogus"):
        UNetConfig.from_dict(dict(cfg.to_dict(), bogus=1))


def test_dropout_statistics_and_gradient():
    torch.manual_seed(0)
    d = Dropout(0.2).train()
    x = torch.ones(64, 16, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = d(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - 0.2)), rtol=1e-4, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())         # d out / d x = mask * scale
    # the mask is i.i.d. across channels (not one mask per pixel)
    assert (y[:, 0] != y[:, 1]).any()
    assert torch.equal(d.eval()(x), x)


def test_timestep_embedding_matches_diffusers():
    pytest.importorskip("diffusers")
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 17, 999])
    ref = get_timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 32), ref)


@pytest.mark.parametrize("name", ["tiny", "digits"])
def test_same_function_as_diffusers_unet2d_with_same_weights(name):
    pytest.importorskip("diffusers")
    from diffusers import UNet2DModel

    from difflab.interop import state_dict_to_difflab, unet2d_config

    cfg = get_unet_preset(name)
    torch.manual_seed(0)
    ref = UNet2DModel(**unet2d_config(cfg)).eval()
    ours = UNet(cfg).eval()
    ours.load_state_dict(state_dict_to_difflab(ref.state_dict(), cfg))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 999])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), ref(x, t).sample, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flip,shift,dim", [(True, 0, 32), (False, 0, 32), (True, 1, 32), (False, 1, 33)])
def test_timestep_embedding_layouts_match_diffusers(flip, shift, dim):
    pytest.importorskip("diffusers")
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 17, 999])
    ref = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    torch.testing.assert_close(timestep_embedding(t, dim, flip_sin_to_cos=flip, freq_shift=shift), ref)


def test_downsample_padding_0_pads_right_and_bottom_like_diffusers():
    pytest.importorskip("diffusers")
    from diffusers.models.downsampling import Downsample2D

    from difflab.nn.unet import Downsample

    torch.manual_seed(0)
    ref = Downsample2D(4, use_conv=True, padding=0, name="op")
    ours = Downsample(4, padding=0)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(ours(x), ref(x))
    padded_all_round = Downsample(4, padding=1)
    padded_all_round.load_state_dict(ours.state_dict())
    assert (padded_all_round(x) - ours(x)).abs().max() > 0.1          # the padding matters


def test_fields_for_foreign_networks_default_to_todays_network_and_are_validated():
    from difflab.config import resolve_config

    cfg = get_unet_preset("tiny")
    old = {k: v for k, v in cfg.to_dict().items()
           if k not in ("flip_sin_to_cos", "freq_shift", "downsample_padding", "norm_eps")}   # a config from before
    assert UNetConfig.from_dict(old) == cfg
    assert (cfg.flip_sin_to_cos, cfg.freq_shift, cfg.downsample_padding, cfg.norm_eps) == (True, 0.0, 1, 1e-5)
    for field, bad in (("flip_sin_to_cos", "yes"), ("freq_shift", -1), ("freq_shift", 4), ("downsample_padding", 2),
                       ("norm_eps", 0.0)):
        with pytest.raises(ValueError, match=field):
            cfg.replace(**{field: bad})
    run = resolve_config(preset="tiny", overrides=["model.flip_sin_to_cos=false", "model.freq_shift=1",
                                                   "model.downsample_padding=0", "model.norm_eps=1e-6"])
    m = run.model
    assert (m.flip_sin_to_cos, m.freq_shift, m.downsample_padding, m.norm_eps) == (False, 1.0, 0, 1e-6)
    net = UNet(m)
    assert net.out_norm.eps == 1e-6 and net.input_blocks[0][0].out_channels == 8
