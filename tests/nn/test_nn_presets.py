import pytest


from difflab.nn.levels import resolution_levels
from difflab.nn import (CLASSIFIER_PRESETS, UNET_PRESETS, ClassifierConfig, UNetConfig, get_classifier_preset,
                        get_unet_preset)


def test_required_presets_exist_with_their_shapes():
    assert {"tiny", "digits", "mnist", "cifar10", "latent"} <= set(UNET_PRESETS)
    assert {"tiny", "digits", "mnist"} <= set(CLASSIFIER_PRESETS)
    shapes = {n: (c.image_size, c.in_channels) for n, c in UNET_PRESETS.items()}
    assert shapes["digits"] == (8, 1) and shapes["mnist"] == (28, 1) and shapes["cifar10"] == (32, 3)
    assert UNET_PRESETS["latent"].context_dim is not None and UNET_PRESETS["latent"].cross_attention_resolutions
    c = UNET_PRESETS["cifar10"]
    assert (c.model_channels, c.channel_mult, c.num_res_blocks, c.dropout) == (128, (1, 2, 2, 2), 2, 0.1)
    # self-attention at 16x16 only (level 1 of 32 -> 16 -> 8 -> 4), written as a fraction of the image size
    assert c.attention_resolutions == ("1/2",)
    assert resolution_levels(c.attention_resolutions, c.image_size, 4) == resolution_levels((16,), 32, 4) == (1,)
    assert all(isinstance(c, UNetConfig) for c in UNET_PRESETS.values())
    assert all(isinstance(c, ClassifierConfig) for c in CLASSIFIER_PRESETS.values())


def test_overrides_and_unknown_names():
    cfg = get_unet_preset("mnist", num_classes=10, dropout=0.0)
    assert cfg.num_classes == 10 and cfg.dropout == 0.0 and UNET_PRESETS["mnist"].num_classes is None
    with pytest.raises(ValueError, match=r"unknown U-Net preset 'imagenet'.*cifar10.*mnist"):
        get_unet_preset("imagenet")
    with pytest.raises(ValueError, match="learning_rate"):
        get_unet_preset("tiny", learning_rate=1e-4)
    with pytest.raises(ValueError, match=r"unknown classifier preset 'cifar10'.*digits"):
        get_classifier_preset("cifar10")
    assert get_classifier_preset("mnist", num_classes=5).num_classes == 5
