"""The clean evaluation classifier: learns, round-trips through safetensors, is deterministic."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from difflab.eval.classifier import (
    ClassifierFeaturizer,
    EvalClassifier,
    EvalClassifierConfig,
    default_classifier_path,
    evaluate_accuracy,
    load_eval_classifier,
    load_metadata,
    load_or_train_eval_classifier,
    save_eval_classifier,
    train_eval_classifier,
)

SMALL = EvalClassifierConfig(image_size=8, widths=(8, 16), feature_dim=32, dropout=0.0)




@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits in [-1, 1], split 75 / 25 with a fixed permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = len(y) // 4
    return x[perm[n_test:]], y[perm[n_test:]], x[perm[:n_test]], y[perm[:n_test]]


@pytest.fixture(scope="module")
def trained(digits):
    x, y, _, _ = digits
    return train_eval_classifier(x, y, config=SMALL, epochs=8, batch_size=64, lr=5e-3, seed=0)


def test_learns_held_out_digits(digits, trained):
    _, _, x_test, y_test = digits
    assert not trained.training
    acc = evaluate_accuracy(trained, x_test, y_test)
    assert acc > 0.9  # chance is 0.1; a few seconds of training on 1348 images


def test_untrained_is_near_chance(digits):
    _, _, x_test, y_test = digits
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = EvalClassifier(SMALL).eval()
    assert evaluate_accuracy(model, x_test, y_test) < 0.4


def test_training_is_deterministic_and_leaves_global_rng_alone(digits):
    x, y, _, _ = digits
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = train_eval_classifier(x[:200], y[:200], config=SMALL, epochs=1, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = train_eval_classifier(x[:200], y[:200], config=SMALL, epochs=1, seed=7)
    c = train_eval_classifier(x[:200], y[:200], config=SMALL, epochs=1, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["fc.weight"], sc["fc.weight"])


def test_does_not_mutate_inputs(digits):
    x, y, _, _ = digits
    x0, y0 = x[:100].clone(), y[:100].clone()
    xs, ys = x[:100], y[:100]
    train_eval_classifier(xs, ys, config=SMALL, epochs=1)
    assert torch.equal(xs, x0) and torch.equal(ys, y0)


def test_save_load_roundtrip(tmp_path, digits, trained):
    _, _, x_test, _ = digits
    d = save_eval_classifier(trained, tmp_path / "clf", metadata={"dataset": "digits", "test_accuracy": 0.95})
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    doc = json.loads((d / "config.json").read_text())
    assert doc["config"] == SMALL.to_dict()
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:  # plain tensors, no pickle
        assert set(f.keys()) == set(trained.state_dict())
    back = load_eval_classifier(d)
    assert back.config == SMALL and not back.training
    with torch.no_grad():
        torch.testing.assert_close(back(x_test), trained(x_test), rtol=0, atol=0)
    assert load_metadata(d) == {"dataset": "digits", "test_accuracy": 0.95}


def test_load_rejects_non_classifier_dir(tmp_path):
    with pytest.raises(ValueError, match="need config.json"):
        load_eval_classifier(tmp_path)
    (tmp_path / "config.json").write_text('{"kind": "something else"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="does not describe"):
        load_eval_classifier(tmp_path)


def test_resizes_any_input_size():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = EvalClassifier(EvalClassifierConfig(image_size=28, widths=(4, 8), feature_dim=16)).eval()
    for size in (8, 28, 32):
        x = torch.rand(3, 1, size, size) * 2 - 1
        assert model(x).shape == (3, 10)
        assert model.features(x).shape == (3, 16)
    x28 = torch.rand(2, 1, 28, 28) * 2 - 1
    big = torch.nn.functional.interpolate(x28, size=(56, 56), mode="nearest")
    # A 2x nearest upsample, antialiased back down to 28, is close to the original.
    with torch.no_grad():
        torch.testing.assert_close(model.features(big), model.features(x28), atol=0.05, rtol=0.05)


def test_bad_inputs_raise(digits):
    x, y, _, _ = digits
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train_eval_classifier((x[:10] + 1) * 127.5, y[:10], config=SMALL)
    with pytest.raises(ValueError, match="labels must be in"):
        train_eval_classifier(x[:10], y[:10] + 10, config=SMALL)
    with pytest.raises(ValueError, match="channel"):
        train_eval_classifier(x[:10].repeat(1, 3, 1, 1), y[:10], config=SMALL)
    with pytest.raises(ValueError, match="multiple of 4"):
        EvalClassifierConfig(image_size=30)
    with pytest.raises(ValueError, match="unknown EvalClassifierConfig fields"):
        EvalClassifierConfig.from_dict({"depth": 3})


def test_cache_path_and_load_or_train(tmp_path, digits):
    x, y, _, _ = digits
    path = default_classifier_path("digits", tmp_path)
    assert path == tmp_path / "eval_classifier" / "digits"
    with pytest.raises(ValueError, match="dataset_name"):
        default_classifier_path("../etc", tmp_path)
    a = load_or_train_eval_classifier("digits", x[:128], y[:128], cache_dir=tmp_path, config=SMALL, epochs=1)
    assert (path / "model.safetensors").is_file()
    assert load_metadata(path)["dataset"] == "digits"
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    # Second call loads the cache: no images needed, nothing rewritten, same weights.
    b = load_or_train_eval_classifier("digits", None, None, cache_dir=tmp_path)
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert torch.equal(a.state_dict()["head.weight"], b.state_dict()["head.weight"])


def test_classifier_featurizer_is_the_penultimate_layer(digits, trained):
    _, _, x_test, _ = digits
    feat = ClassifierFeaturizer(trained, name="eval-classifier-digits")
    f = feat.features(x_test[:50], batch_size=16)
    assert f.dtype == np.float64 and f.shape == (50, SMALL.feature_dim)
    with torch.no_grad():
        np.testing.assert_allclose(f, trained.features(x_test[:50]).double().numpy(), rtol=1e-6, atol=1e-6)
        logits = trained.head(torch.from_numpy(f).float())
    # The head applied to the features gives the network's predictions.
    assert torch.equal(logits.argmax(1), trained(x_test[:50]).argmax(1))
