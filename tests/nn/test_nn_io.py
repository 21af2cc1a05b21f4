import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from _nn_helpers import full_tiny, inputs, perturb_
from difflab.nn import EncoderClassifier, UNet, get_classifier_preset, get_unet_preset, load_pretrained, save_pretrained


def test_unet_round_trip_identical_outputs(tmp_path):
    model = full_tiny().eval()
    save_pretrained(model, tmp_path / "unet")
    meta = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert meta["class_name"] == "UNet" and meta["config"]["num_classes"] == 3
    loaded = load_pretrained(tmp_path / "unet", expected_config=model.config).eval()
    assert isinstance(loaded, UNet) and loaded.config == model.config
    kw = inputs(model)
    with torch.no_grad():
        assert torch.equal(loaded(**kw), model(**kw))


def test_classifier_round_trip(tmp_path):
    torch.manual_seed(0)
    model = perturb_(EncoderClassifier(get_classifier_preset("tiny"))).eval()
    save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["class_name"] == "EncoderClassifier"
    loaded = load_pretrained(tmp_path).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([4, 400])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))


def test_config_that_does_not_match_tensors_names_the_shapes(tmp_path):
    save_pretrained(UNet(get_unet_preset("tiny")), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["model_channels"] = 16
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"shape mismatches \[.*time_embed\.linear_1\.weight"):
        load_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    save_pretrained(UNet(get_unet_preset("tiny")), tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    del tensors["out_conv.bias"]
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"missing keys \['out_conv.bias'\].*unexpected keys \['extra.weight'\]"):
        load_pretrained(tmp_path)


def test_expected_config_mismatch_names_fields(tmp_path):
    save_pretrained(UNet(get_unet_preset("tiny")), tmp_path)
    with pytest.raises(ValueError, match="dropout: saved 0.0 vs expected 0.1"):
        load_pretrained(tmp_path, expected_config=get_unet_preset("tiny", dropout=0.1))
    with pytest.raises(ValueError, match="ClassifierConfig"):
        load_pretrained(tmp_path, expected_config=get_classifier_preset("tiny"))


def test_corrupt_or_pickled_weights_give_clear_error(tmp_path):
    save_pretrained(UNet(get_unet_preset("tiny")), tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_pretrained(tmp_path)
    torch.save({"w": torch.zeros(1)}, path)          # a pickle is refused, never unpickled
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_pretrained(tmp_path)


def test_bad_config_json(tmp_path):
    with pytest.raises(ValueError, match="config.json not found"):
        load_pretrained(tmp_path)
    save_pretrained(UNet(get_unet_preset("tiny")), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["colour"] = "red"
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="colour"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pretrained(tmp_path)


def test_save_rejects_unknown_module(tmp_path):
    with pytest.raises(ValueError, match="cannot save a Linear"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)
