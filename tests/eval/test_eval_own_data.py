"""Measuring samples of a user's own images: the folder's evaluation classifier (trained on the training
side of the held-out split, cached by a fingerprint of the files, held-out accuracy reported), the order
in which featurizers are chosen, and every figure beside its floor."""

import numpy as np
import pytest
import torch
from PIL import Image

import difflab.eval.folder_classifier as folder_classifier_module
from _cli_helpers import run_cli
from difflab.data import list_image_files, load_dataset, split_files
from difflab.eval import (ClassifierFeaturizer, EvalClassifier, EvalClassifierConfig, evaluate_against,
                          folder_featurizer, format_result, open_featurizer, plan_featurizer, prepare_reference)
from difflab.eval.select import FEATURE_FREE_METRICS, SAMPLE_METRICS, default_inception_weights

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 40, 210)}


def make_folder(root, per_class=40, side=12, seed=0):
    """Three classes told apart by colour and by where a bright bar sits, with pixel noise."""
    rng = np.random.default_rng(seed)
    for k, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            x = np.clip(np.array(colour) + rng.normal(0, 40, (side, side, 3)), 0, 255)
            x[:, 4 * k:4 * k + 3] = 255
            Image.fromarray(x.astype(np.uint8)).save(root / name / f"{i:03d}.png")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "images"
    make_folder(root)
    cache = root.parent / "cache"
    split = split_files(list_image_files(root), 0.25, seed=0)
    feat = folder_featurizer(root, split, image_size=12, channels=3, cache_dir=cache, epochs=8)
    return root, cache, split, feat


def test_folder_classifier_is_trained_on_the_training_side_and_cached(labelled, monkeypatch):
    root, cache, split, feat = labelled
    assert not feat.cached and feat.n_train == len(split.train) and feat.n_heldout == len(split.heldout)
    assert feat.heldout_accuracy >= 0.9 and feat.class_names == ("blue", "green", "red")
    assert feat.featurizer.name.startswith(f"eval-classifier-{feat.key}-") and feat.key.startswith("folder-")
    assert "held-out accuracy" in feat.describe()

    def no_training(*a, **k):
        raise AssertionError("a cached classifier must not be trained again")

    monkeypatch.setattr(folder_classifier_module, "train_eval_classifier", no_training)
    again = folder_featurizer(root, split, image_size=12, channels=3, cache_dir=cache)
    assert again.cached and again.heldout_accuracy == feat.heldout_accuracy and again.key == feat.key
    assert again.featurizer.name == feat.featurizer.name
    # another shape or another split is another classifier; so is any edited image
    assert folder_featurizer(root, split, image_size=16, channels=3, cache_dir=cache, train_if_missing=False) is None
    other = split_files(list_image_files(root), 0.25, seed=1)
    assert folder_featurizer(root, other, image_size=12, channels=3, cache_dir=cache, train_if_missing=False) is None


def test_an_edited_image_changes_the_key(tmp_path):
    make_folder(tmp_path / "a", per_class=4)
    split = split_files(list_image_files(tmp_path / "a"), 0.5, seed=0)
    key = folder_classifier_module.featurizer_key
    fp = folder_classifier_module.fingerprint_files
    before = key(fp(tmp_path / "a", split.train + split.heldout), 12, 3, split)
    Image.new("RGB", (12, 12)).save(tmp_path / "a" / split.heldout[0])
    assert key(fp(tmp_path / "a", split.train + split.heldout), 12, 3, split) != before


def test_featurizer_order_of_availability(tmp_path, labelled):
    _, cache, _, feat = labelled
    # no Inception weights: the cached classifier, else one to train for labelled data, else none
    plan = plan_featurizer(labelled=True, classifier_dir=feat.directory, cache_dir=tmp_path)
    assert plan.kind == "classifier" and plan.metrics == SAMPLE_METRICS
    assert open_featurizer(plan, feat.key).name == feat.featurizer.name
    plan = plan_featurizer(labelled=True, classifier_dir=tmp_path / "not-yet", cache_dir=tmp_path)
    assert plan.kind == "train-classifier" and plan.path == tmp_path / "not-yet"
    with pytest.raises(ValueError, match="no featurizer to open yet"):
        open_featurizer(plan)
    plan = plan_featurizer(labelled=False, cache_dir=tmp_path)
    assert plan.kind == "none" and plan.metrics == FEATURE_FREE_METRICS and plan.path is None
    assert "no class labels" in plan.message and "What can be measured" in plan.message
    assert str(default_inception_weights(tmp_path)) in plan.message
    # the Inception weights come first whenever their file is there
    weights = default_inception_weights(tmp_path)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    for labelled_data in (True, False):
        plan = plan_featurizer(labelled=labelled_data, classifier_dir=feat.directory, cache_dir=tmp_path)
        assert plan.kind == "inception" and plan.path == weights
    with pytest.raises(ValueError, match="not found"):
        plan_featurizer(labelled=True, inception_weights=tmp_path / "missing.pth")


def test_every_figure_comes_with_its_floor(labelled):
    root, _, split, feat = labelled
    train = load_dataset("folder", root=root, files=split.train, image_size=12, channels=3).to_float()
    held = load_dataset("folder", root=root, files=split.heldout, image_size=12, channels=3).to_float()
    ref = prepare_reference(feat.featurizer, held, train, n=20, seed=1, dataset=feat.key)
    assert ref.n == 20 and ref.stats.n == len(held) and ref.floor["fd"] > 0
    # the floor is exactly what n training images score
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:20]
    same = evaluate_against(ref, train[idx])
    assert same["fd"] == pytest.approx(ref.floor["fd"], rel=1e-9) and same["fd_over_floor"] == pytest.approx(1.0)
    # samples of one class only are far from the held-out images: worse than the floor
    labels = load_dataset("folder", root=root, files=split.train, image_size=12, channels=3,
                          labels_from_folders=True).labels
    one_class = train[labels == 0][:20]
    bad = evaluate_against(ref, one_class)
    assert bad["fd_over_floor"] > 2 and bad["recall"] < ref.floor["recall"]
    line = format_result(bad)
    assert "floor" in line and feat.featurizer.name in line and "heldout" in line
    with pytest.raises(ValueError, match="measure exactly that many samples"):
        evaluate_against(ref, train[:10])
    ref_all = prepare_reference(feat.featurizer, held, train, n=10_000)
    assert ref_all.n == len(train)                       # capped at the training images there are


def test_reference_works_with_any_featurizer():
    model = EvalClassifier(EvalClassifierConfig(in_channels=1, image_size=8, num_classes=2, feature_dim=6)).eval()
    feat = ClassifierFeaturizer(model, "random-net")
    g = torch.Generator().manual_seed(0)
    real = torch.rand(60, 1, 8, 8, generator=g) * 2 - 1
    ref = prepare_reference(feat, real[:30], real[30:], n=30)
    assert evaluate_against(ref, real[:30])["fd"] == pytest.approx(0.0, abs=1e-6)   # the held-out set itself


def test_cli_train_featurizer(tmp_path, capsys):
    make_folder(tmp_path / "imgs", per_class=30)
    args = ["eval", "train-featurizer", "--data", tmp_path / "imgs", "--cache-dir", tmp_path / "cache",
            "--epochs", 5, "--holdout-fraction", 0.3, "--no-progress"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "90 images, 12x12, RGB, 3 classes" in out
    assert "held-out accuracy" in out and "trained in" in out and "floor:" in out and "FD" in out
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "(cached)" in out
    # unlabelled images: a clear message with what can be measured instead
    (tmp_path / "flat").mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / f"{i}.png")
    code, out, err = run_cli(capsys, "eval", "train-featurizer", "--data", tmp_path / "flat", "--cache-dir",
                             tmp_path / "cache", "--no-progress")
    assert code == 2 and "no class sub-folders" in err and "What can be measured" in err and err.count("\n") == 1
