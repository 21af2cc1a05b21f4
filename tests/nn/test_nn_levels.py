"""Attention placement by fraction of the image size ("1/4") or by pixel size (7): same levels, same
networks, same checkpoints; presets survive a change of image_size."""

import dataclasses

import pytest
import torch

from _nn_helpers import inputs
from difflab.config import load_config, resolve_config, save_config
from difflab.nn import (CLASSIFIER_PRESETS, UNET_PRESETS, ClassifierConfig, EncoderClassifier, UNet, UNetConfig,
                        get_unet_preset)
from difflab.interop.unet2d import state_dict_to_unet2d, unet2d_config
from difflab.nn.attention import SelfAttention2d, SpatialTransformer
from difflab.nn.io import check_state_dict
from difflab.nn.levels import fraction_level, level_fractions, resolution_levels


def test_fractions_and_pixels_name_the_same_levels():
    assert level_fractions(3) == ["1/1", "1/2", "1/4"]
    assert [fraction_level(f) for f in ("1/1", "1/2", " 1 / 8 ", "1/3", "2/4", "1/0", "x")] == \
        [0, 1, 3, None, None, None, None]
    assert resolution_levels(("1/4",), 28, 3) == resolution_levels((7,), 28, 3) == (2,)
    assert resolution_levels(("1/4",), 32, 3) == resolution_levels((8,), 32, 3) == (2,)
    assert resolution_levels((16, "1/1", "1/2"), 32, 4) == (0, 1)     # mixed; duplicates collapse
    assert resolution_levels((), 32, 4) == ()


@pytest.mark.parametrize("entries, image_size, levels, message", [
    ((7,), 32, 3, "attention_resolutions [7] are not level resolutions; allowed: [32, 16, 8]"),
    (("1/8",), 32, 3, "'1/8' is not a level (this network has 3 level(s))"),
    (("1/3",), 32, 3, "'1/3' is not a level (not a fraction 1/F with F a power of two)"),
    ((True,), 32, 3, "must be pixel sizes (int) or fractions"),
    ([8], 32, 3, "must be a tuple"),
])
def test_entries_that_are_not_levels_are_refused(entries, image_size, levels, message):
    with pytest.raises(ValueError) as e:
        resolution_levels(entries, image_size, levels)
    assert message in str(e.value)


def _attention_levels(model: UNet) -> tuple[list, list]:
    """(levels, kind) of every attention layer in the encoder, in order."""
    out = []
    cfg = model.config
    n = cfg.num_res_blocks
    for i, block in enumerate(model.input_blocks[1:]):
        level = i // (n + 1)
        out += [(level, type(layer).__name__) for layer in block
                if isinstance(layer, (SelfAttention2d, SpatialTransformer))]
    return out


@pytest.mark.parametrize("pixels, fraction, overrides", [
    ((7,), ("1/4",), dict(image_size=28, channel_mult=(1, 2, 2))),
    ((8, 4), ("1/1", "1/2"), dict(image_size=8, context_dim=6)),
])
def test_both_forms_build_identical_networks_and_share_checkpoints(pixels, fraction, overrides):
    cross = "context_dim" in overrides
    def config(entries):
        key = "cross_attention_resolutions" if cross else "attention_resolutions"
        return get_unet_preset("tiny", **overrides, **{key: entries})

    torch.manual_seed(0)
    old = UNet(config(pixels)).eval()
    new = UNet(config(fraction))
    assert _attention_levels(old) == _attention_levels(new) and _attention_levels(new)
    state = old.state_dict()
    check_state_dict(new, state)                 # same keys and shapes: old checkpoints load
    new.load_state_dict(state)
    new.eval()
    kw = inputs(old, b=2)
    with torch.no_grad():
        torch.testing.assert_close(new(**kw), old(**kw), rtol=0, atol=0)


def test_classifier_accepts_both_forms():
    old = ClassifierConfig(image_size=28, attention_resolutions=(7,), norm_groups=8)
    new = dataclasses.replace(old, attention_resolutions=("1/4",))
    assert EncoderClassifier(old).state_dict().keys() == EncoderClassifier(new).state_dict().keys()


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_every_unet_preset_survives_other_image_sizes(name):
    preset = UNET_PRESETS[name]
    levels = len(preset.channel_mult)
    assert all(isinstance(e, str) for e in preset.attention_resolutions + preset.cross_attention_resolutions), \
        "presets place attention by fraction of the image size"
    want = resolution_levels(preset.attention_resolutions, preset.image_size, levels)
    for size in (8, 12, 16, 24, 28, 32, 48, 64):
        if size % 2 ** (levels - 1) or size // 2 ** (levels - 1) < 1:
            continue
        cfg = dataclasses.replace(preset, image_size=size)
        assert resolution_levels(cfg.attention_resolutions, size, levels) == want


@pytest.mark.parametrize("name", sorted(CLASSIFIER_PRESETS))
def test_every_classifier_preset_survives_other_image_sizes(name):
    preset = CLASSIFIER_PRESETS[name]
    for size in (16, 32, 64):
        assert dataclasses.replace(preset, image_size=size).image_size == size


def test_tiny_preset_builds_at_16_with_attention_one_level_down():
    model = UNet(get_unet_preset("tiny", image_size=16))
    assert _attention_levels(model) == [(1, "SelfAttention2d")]


def test_old_config_dicts_read_back_to_the_same_network(tmp_path):
    # a run folder written before fractions existed: pixel sizes in config.yaml
    cfg = resolve_config("mnist", overrides=["model.attention_resolutions=[7]"])
    save_config(cfg, tmp_path / "config.yaml")
    back = load_config(tmp_path / "config.yaml")
    assert back.model.attention_resolutions == (7,)
    # and a new one with fractions round-trips through YAML as the same strings
    new = resolve_config("mnist", overrides=["data.image_size=32", "model.image_size=32"])
    save_config(new, tmp_path / "new.yaml")
    assert load_config(tmp_path / "new.yaml") == new and new.model.attention_resolutions == ("1/4",)
    assert UNetConfig.from_dict(new.model.to_dict()) == new.model


def test_both_forms_map_to_the_same_diffusers_unet2d():
    pixels = UNET_PRESETS["cifar10"].replace(attention_resolutions=(16,), model_channels=32, norm_groups=8)
    fraction = pixels.replace(attention_resolutions=("1/2",))
    assert unet2d_config(fraction) == unet2d_config(pixels)
    assert unet2d_config(fraction)["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                           "DownBlock2D")
    torch.manual_seed(0)
    state = UNet(fraction).state_dict()
    assert state_dict_to_unet2d(state, fraction).keys() == state_dict_to_unet2d(state, pixels).keys()
