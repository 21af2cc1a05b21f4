"""The dataset inspector: the facts a recipe needs, from a folder's image headers or a loaded dataset."""

import json

import numpy as np
import pytest
from PIL import Image

from difflab.data import facts_of_dataset, inspect_folder, load_dataset


def _img(path, w, h, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), 128).save(path)


def test_folder_facts_sizes_channels_labels(tmp_path):
    for i in range(3):
        _img(tmp_path / "cats" / f"{i}.png", 40, 30)        # shorter side 30
    for i in range(2):
        _img(tmp_path / "dogs" / f"{i}.jpg", 64, 64, "L")
    f = inspect_folder(tmp_path)
    assert (f.count, f.image_size, f.min_side, f.max_side, f.square, f.channels) == (5, 30, 30, 64, False, 3)
    assert f.class_names == ("cats", "dogs") and f.class_counts == (3, 2) and f.num_classes == 2
    assert f.captions == 0 and f.unreadable == ()
    assert "5 images" in f.describe() and "2 classes" in f.describe() and "RGB" in f.describe()
    # restricted to some files (one side of a split)
    sub = inspect_folder(tmp_path, files=["dogs/0.jpg", "dogs/1.jpg"])
    assert (sub.count, sub.channels, sub.square, sub.class_names) == (2, 1, True, None)


def test_loose_images_mean_no_labels_and_a_train_subfolder_is_used(tmp_path):
    _img(tmp_path / "train" / "a.png", 8, 8, "L")
    _img(tmp_path / "train" / "sub" / "b.png", 8, 8, "L")
    _img(tmp_path / "test" / "c.png", 16, 16)
    f = inspect_folder(tmp_path)
    assert (f.count, f.image_size, f.channels, f.class_names) == (2, 8, 1, None)
    assert inspect_folder(tmp_path, split="test").channels == 3
    single = tmp_path / "one"
    _img(single / "only" / "x.png", 8, 8)
    assert inspect_folder(single).class_names is None           # one sub-folder is not a labelling


def test_captions_unreadable_and_empty(tmp_path):
    for i in range(4):
        _img(tmp_path / f"{i}.png", 12, 12)
    (tmp_path / "0.txt").write_text("a red square")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "1.png", "text": "blue"}) + "\n" +
                                             json.dumps({"file": "0.png", "text": "red"}) + "\n")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    f = inspect_folder(tmp_path)
    assert f.captions == 2 and f.unreadable == ("broken.png",) and f.count == 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        inspect_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        inspect_folder(tmp_path / "nope")


def test_facts_of_a_loaded_dataset():
    f = facts_of_dataset(load_dataset("digits"))
    assert (f.image_size, f.channels, f.num_classes, f.square) == (8, 1, 10, True)
    assert sum(f.class_counts) == f.count == 1437
    rgb = load_dataset("digits", image_size=16, channels=3)
    assert facts_of_dataset(rgb).channels == 3 and facts_of_dataset(rgb).image_size == 16
    assert np.isclose(sum(facts_of_dataset(rgb).class_counts), len(rgb))
