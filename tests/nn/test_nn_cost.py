"""The closed-form MAC count of a U-Net against a count taken from the shapes of a real forward pass,
and the step-rate probe."""

import pytest
import torch
from torch import nn

from _nn_helpers import full_tiny, inputs
from difflab.nn import UNET_PRESETS, UNet, get_unet_preset
from difflab.nn.cost import measure_steps_per_second, unet_activations, unet_macs


def counted_forward(model, kw, monkeypatch) -> tuple[int, int]:
    """MACs and conv/linear output elements of one forward pass, read off the real tensors: every Conv2d
    and Linear output element costs its fan-in; attention costs N * L * d for Q K^T and again for A V,
    per head and image."""
    total = acts = 0

    def layer_hook(module, args, out):
        nonlocal total, acts
        acts += out.numel()
        if isinstance(module, nn.Conv2d):
            kh, kw_ = module.kernel_size
            total += out.numel() * module.in_channels // module.groups * kh * kw_
        else:
            total += out.numel() * module.in_features

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def attention(q, k, v, **options):
        nonlocal total
        total += 2 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
        return sdpa(q, k, v, **options)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", attention)
    hooks = [m.register_forward_hook(layer_hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(**kw)
    for h in hooks:
        h.remove()
    return total, acts


@pytest.mark.parametrize("cfg", [
    full_tiny().config,                                       # classes, cond image, cross-attention, scale-shift,
    UNET_PRESETS["mnist"],                                    #   resample blocks, learned sigma
    UNET_PRESETS["latent"],
    get_unet_preset("tiny", image_size=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                    attention_resolutions=("1/2", "1/8"), mid_attention=False),
], ids=["full-tiny", "mnist", "latent", "four-levels"])
def test_macs_match_the_count_of_a_real_forward_pass(cfg, monkeypatch):
    model = UNet(cfg).eval()
    assert counted_forward(model, inputs(model, b=1, seq=16), monkeypatch) == \
        (unet_macs(cfg, context_len=16), unet_activations(cfg, context_len=16))
    # (checked once against torch.utils.flop_counter on the meta device: the same numbers)


def test_macs_scale_with_pixels_and_width():
    base = get_unet_preset("tiny", image_size=16, attention_resolutions=(), mid_attention=False)
    # no attention: every term is linear in the number of pixels, and about quadratic in the width
    bigger = base.replace(image_size=32)
    ratio = unet_macs(bigger) / unet_macs(base)
    assert 3.9 < ratio < 4.0                                   # the time-embedding MLP does not grow
    wide = base.replace(model_channels=16)
    assert 3.5 < unet_macs(wide) / unet_macs(base) <= 4.0


def test_measured_step_rate_is_positive_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    rate = measure_steps_per_second(UNET_PRESETS["tiny"], batch_size=4, seconds=0.05, min_steps=2)
    assert rate > 0 and torch.equal(torch.get_rng_state(), before)
    cond = full_tiny().config
    assert measure_steps_per_second(cond, batch_size=2, seconds=0.01, min_steps=1) > 0
    with pytest.raises(ValueError, match="batch_size >= 1"):
        measure_steps_per_second(UNET_PRESETS["tiny"], batch_size=0)
