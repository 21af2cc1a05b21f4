"""FID Inception-v3: architecture, pytorch-fid key names, loading local weights (no download)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from difflab.eval.inception import (
    FID_FEATURE_DIM,
    FID_WEIGHTS_URL,
    FIDInceptionE,
    FIDInceptionV3,
    InceptionFeaturizer,
    load_fid_inception,
)


def random_state_dict(seed=0):
    """Every key of the network, filled with random values of the right shapes (BN stats included)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in FIDInceptionV3().state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # absent from the TF port
        if k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("bn.weight"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * (0.05 if k.endswith("conv.weight") else 0.1)
    return out


@pytest.fixture(scope="module")
def state():
    return random_state_dict()


def test_pytorch_fid_key_names_and_shapes(state):
    # Keys of pytorch-fid's pt_inception-2015-12-05 state dict (torchvision Inception3 names).
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_mean": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
        "Mixed_7c.branch3x3dbl_3b.bn.running_var": (384,),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for k, shape in expected.items():
        assert tuple(state[k].shape) == shape, k
    assert not any(k.startswith("AuxLogits") for k in state)
    n_params = sum(v.numel() for k, v in state.items() if "running" not in k)
    assert 23_000_000 < n_params < 24_500_000  # Inception-v3 without the aux head: ~23.9M
    assert FID_WEIGHTS_URL.endswith("pt_inception-2015-12-05-6726825d.pth")


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_load_local_weights(tmp_path, state, fmt):
    path = tmp_path / f"inception.{fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)  # a plain state dict, read back with weights_only=True
    model = load_fid_inception(path)
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_featurize_two_images(state):
    model = FIDInceptionV3().eval()
    model.load_state_dict(state, strict=False)
    feat = InceptionFeaturizer(model)
    assert (feat.feature_dim, feat.image_size, feat.channels) == (2048, 299, 3)
    images = torch.rand(2, 1, 28, 28) * 2 - 1  # grey, small: converted to RGB and resized to 299
    f = feat.features(images, batch_size=2)
    assert f.shape == (2, FID_FEATURE_DIM)
    assert (f >= 0).all() and f.std() > 0  # mean of ReLU outputs, not constant
    assert not np.array_equal(f[0], f[1])
    prepared = feat.prepare(images)  # grey repeated to RGB, bilinear to 299 x 299
    assert prepared.shape == (2, 3, 299, 299) and torch.equal(prepared[:, 0], prepared[:, 2])


def test_missing_or_misshapen_weights_raise(tmp_path, state):
    partial = {k: v for k, v in state.items() if not k.startswith("Mixed_7c")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing keys"):
        load_fid_inception(tmp_path / "partial.safetensors")
    bad = dict(state)
    bad["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(1, 1, 1, 1)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="wrong shapes"):
        load_fid_inception(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="download"):
        load_fid_inception(tmp_path / "absent.pth")
    # fc and num_batches_tracked are optional: pool3 features do not need the classifier.
    no_fc = {k: v for k, v in state.items() if not k.startswith("fc.")}
    save_file(no_fc, str(tmp_path / "no_fc.safetensors"))
    load_fid_inception(tmp_path / "no_fc.safetensors")


def test_hash_check(tmp_path, state):
    path = tmp_path / "w.safetensors"
    save_file({"fc.bias": state["fc.bias"]}, str(path))
    with pytest.raises(ValueError, match="SHA-256"):
        load_fid_inception(path, check_hash=True)


def test_fid_patches_of_the_e_blocks():
    # Mixed_7c (E_2) max-pools its pool branch; Mixed_7b (E_1) average-pools without padding.
    torch.manual_seed(0)
    avg, mx = FIDInceptionE(8, pool="avg").eval(), FIDInceptionE(8, pool="max").eval()
    mx.load_state_dict(avg.state_dict())
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        a, m = avg(x), mx(x)
    assert a.shape == m.shape == (1, 320 + 768 + 768 + 192, 5, 5)
    torch.testing.assert_close(a[:, :-192], m[:, :-192])  # the other branches agree
    assert not torch.allclose(a[:, -192:], m[:, -192:])
    with torch.no_grad():
        pooled = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        torch.testing.assert_close(a[:, -192:], avg.branch_pool(pooled))
    with pytest.raises(ValueError, match="pool must be"):
        FIDInceptionE(8, pool="min")
