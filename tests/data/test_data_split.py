"""The held-out split: disjoint, seeded, stable when files are added, written and read back, and
loadable side by side with shared class indices."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from difflab.data import (HoldoutSplit, extend_split, fingerprint_files, holdout_score, list_image_files,
                          load_dataset, read_split, split_files, write_split)

names = st.lists(st.text(alphabet="abcdef/._0123456789", min_size=1, max_size=12), min_size=2, max_size=80,
                 unique=True)


def _split_or_none(files, fraction, seed):
    try:
        return split_files(files, fraction, seed)
    except ValueError as e:
        assert "empty" in str(e)
        return None


@given(names, names, st.floats(0.05, 0.5), st.integers(0, 3))
def test_split_is_a_partition_and_adding_files_moves_nothing(files, added, fraction, seed):
    before = _split_or_none(files, fraction, seed)
    after = _split_or_none(files + added, fraction, seed)
    for s in (before, after):
        if s is not None:
            assert not set(s.train) & set(s.heldout)
            assert list(s.train) == sorted(s.train) and list(s.heldout) == sorted(s.heldout)
    if before is not None and after is not None:
        assert set(before.train) | set(before.heldout) == set(files)
        assert set(before.heldout) <= set(after.heldout) and set(before.train) <= set(after.train)


def test_fraction_seed_and_order():
    files = [f"class{i % 7}/img{i:05d}.png" for i in range(20_000)]
    s = split_files(files, 0.1, seed=0)
    # binomial: 2000 +- 42 (sd); a 5-sd band
    assert abs(len(s.heldout) - 2000) < 5 * math.sqrt(20_000 * 0.1 * 0.9)
    assert split_files(list(reversed(files)), 0.1, seed=0) == s          # listing order does not matter
    other = split_files(files, 0.1, seed=1)
    assert other.heldout != s.heldout                                     # the seed matters
    assert 0 <= holdout_score("a.png", 0) < 1 and holdout_score("a.png", 0) != holdout_score("a.png", 1)


def test_empty_side_is_a_clear_error():
    with pytest.raises(ValueError, match="leaves the held-out side of 1 image"):
        split_files(["only.png"], 0.1)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        split_files(["a.png", "b.png"], 1.0)


def test_extend_split_never_moves_a_held_out_image_into_training():
    files = [f"img{i:04d}.png" for i in range(300)]
    saved = split_files(files, 0.2, seed=3)
    # the rule changed under our feet (a hand-edited file, another fraction): saved sides still win
    tampered = HoldoutSplit(train=saved.train[10:], heldout=saved.heldout + saved.train[:10], fraction=0.5, seed=9)
    now = files[5:] + [f"new{i:03d}.png" for i in range(100)]
    ext = extend_split(tampered, now)
    assert set(tampered.heldout) & set(now) <= set(ext.heldout)
    assert not set(ext.train) & set(tampered.heldout)
    assert set(ext.train) | set(ext.heldout) == set(now) and not set(ext.train) & set(ext.heldout)
    new_held = {p for p in ext.heldout if p.startswith("new")}
    assert new_held == {p for p in now if p.startswith("new") and holdout_score(p, 9) < 0.5}


def test_write_and_read_back(tmp_path):
    s = split_files([f"{c}/{i}.png" for c in "ab" for i in range(50)], 0.25, seed=2)
    path = write_split(s, tmp_path / "run" / "split.json")
    assert read_split(path) == s
    doc = json.loads(path.read_text())
    assert doc["n_train"] == len(s.train) and doc["fraction"] == 0.25 and "sha256" in doc["rule"]
    doc["heldout"].append(doc["train"][0])
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="must not overlap the training set"):
        read_split(path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable split file"):
        read_split(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no held-out split was written"):
        read_split(tmp_path / "missing.json")


def _folder(root, n_per_class=6, classes=("b_cat", "a_dog", "c_owl")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_both_sides_load_disjointly_with_shared_class_indices(tmp_path):
    _folder(tmp_path)
    files = list_image_files(tmp_path)
    assert files[0] == "a_dog/0.png" and len(files) == 18
    # a split where one class has no held-out image: class indices must still agree
    held = ("b_cat/1.png", "c_owl/4.png")
    s = HoldoutSplit(train=tuple(f for f in files if f not in held), heldout=held, fraction=0.1)
    train = load_dataset("folder", root=tmp_path, files=s.train, labels_from_folders=True, channels=3)
    test = load_dataset("folder", root=tmp_path, files=s.heldout, labels_from_folders=True, channels=3)
    assert len(train) == 16 and len(test) == 2
    assert train.class_names == test.class_names == ["a_dog", "b_cat", "c_owl"]
    assert test.labels.tolist() == [1, 2]
    full = load_dataset("folder", root=tmp_path, labels_from_folders=True)
    # the held-out images are exactly the full dataset's images at those paths, never in training
    idx = [files.index(p) for p in held]
    assert torch.equal(test.images, full.images[idx])
    train_rows = {bytes(x.numpy()) for x in train.images}
    assert not any(bytes(x.numpy()) in train_rows for x in test.images)
    with pytest.raises(ValueError, match="1 listed image"):
        load_dataset("folder", root=tmp_path, files=["a_dog/0.png", "gone.png"])
    with pytest.raises(ValueError, match="apply to 'folder' datasets"):
        load_dataset("digits", files=["x.png"])


def test_fingerprint_changes_with_content_names_and_membership(tmp_path):
    _folder(tmp_path)
    files = list_image_files(tmp_path)
    fp = fingerprint_files(tmp_path, files)
    assert fingerprint_files(tmp_path, list(reversed(files))) == fp and len(fp) == 64
    assert fingerprint_files(tmp_path, files[1:]) != fp
    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(tmp_path / files[0])
    assert fingerprint_files(tmp_path, files) != fp
