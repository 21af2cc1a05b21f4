import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import load_dataset


def _img(path, size=(20, 12), color=(255, 0, 0), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


@pytest.fixture
def classes(tmp_path):
    root = tmp_path / "pets"
    _img(root / "dog" / "a.png", color=(255, 0, 0))
    _img(root / "dog" / "sub" / "b.JPG", color=(0, 0, 255), fmt="JPEG")
    _img(root / "cat" / "c.webp", color=(0, 255, 0), fmt="WEBP")
    return root


def test_labels_from_sorted_subfolders_resize_crop(classes):
    ds = load_dataset("folder", root=classes, image_size=8, labels_from_folders=True)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    # files sorted by relative path: cat/c.webp, dog/a.png, dog/sub/b.JPG
    assert ds.labels.tolist() == [0, 1, 1]
    assert ds.images.shape == (3, 3, 8, 8) and ds.hflip is True
    centre = ds.images[:, :, 4, 4].int()
    assert centre[0, 1] > 200 and centre[1, 0] > 200 and centre[2, 2] > 200  # green, red, blue
    with pytest.raises(ValueError, match="different sizes.*image_size"):
        _img(classes / "cat" / "big.png", size=(30, 30))
        load_dataset("folder", root=classes)


def test_resize_is_shorter_side_then_center_crop(tmp_path):
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)  # left third red, middle green, right blue
    arr[:, 10:20] = (0, 255, 0)
    arr[:, 20:] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    ds = load_dataset("folder", root=tmp_path, image_size=10)
    # the crop keeps only the middle (green) third
    x = ds.images[0].int()
    assert ds.images.shape == (1, 3, 10, 10) and (x[1] > 200).all() and (x[0] < 60).all() and (x[2] < 60).all()


def test_grayscale_rgb_conversion(tmp_path):
    _img(tmp_path / "g.png", size=(6, 6), color=128, mode="L")
    _img(tmp_path / "rgba.png", size=(6, 6), color=(0, 0, 0, 0), mode="RGBA")  # fully transparent
    auto = load_dataset("folder", root=tmp_path)
    assert auto.images.shape == (2, 3, 6, 6)  # one image is colour -> RGB
    assert (auto.images[0] == 128).all() and (auto.images[1] == 255).all()  # alpha over white
    gray = load_dataset("folder", root=tmp_path, channels=1)
    assert gray.images.shape == (2, 1, 6, 6) and (gray.images[0] == 128).all()
    os.remove(tmp_path / "rgba.png")
    assert load_dataset("folder", root=tmp_path).images.shape == (1, 1, 6, 6)  # all gray -> 1 channel


def test_captions_sidecar_and_file(tmp_path):
    _img(tmp_path / "a.png", size=(4, 4))
    _img(tmp_path / "sub" / "b.png", size=(4, 4))
    (tmp_path / "a.txt").write_text("  a red square \n")
    with pytest.warns(UserWarning, match="1 image"):
        ds = load_dataset("folder", root=tmp_path)
    assert ds.captions is not None and ds.captions[0] == "a red square"
    (tmp_path / "sub" / "b.txt").write_text("sidecar b")
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"file": "sub/b.png", "caption": "from file"}) + "\n\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sidecars and the caption file are not "ignored files"
        ds = load_dataset("folder", root=tmp_path)
    assert ds.captions == ["a red square", "from file"]  # the caption file wins over the sidecar
    assert ds.get_captions([1]) == ["from file"]
    os.remove(tmp_path / "captions.jsonl")
    (tmp_path / "caps.csv").write_text('file_name,text\nsub/b.png,"csv, with comma"\na.png,csv a\n')
    ds = load_dataset("folder", root=tmp_path, captions_file="caps.csv")
    assert ds.captions == ["csv a", "csv, with comma"]


def test_missing_captions_get_empty_with_warning(tmp_path):
    _img(tmp_path / "a.png", size=(4, 4))
    _img(tmp_path / "b.png", size=(4, 4))
    (tmp_path / "a.txt").write_text("only a")
    with pytest.warns(UserWarning, match=r"1 image\(s\) have no caption.*b\.png"):
        ds = load_dataset("folder", root=tmp_path)
    assert ds.captions == ["only a", ""]


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "sub/../../x.png", "C:\\x.png"])
def test_caption_paths_must_stay_inside(tmp_path, bad):
    _img(tmp_path / "a.png", size=(4, 4))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": bad, "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"captions\.jsonl:1: image path .* must be relative .*'\.\.'"):
        load_dataset("folder", root=tmp_path)


def test_caption_file_naming_unknown_image(tmp_path):
    _img(tmp_path / "a.png", size=(4, 4))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "nope.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"names 1 image\(s\) not found.*nope\.png"):
        load_dataset("folder", root=tmp_path)
    (tmp_path / "captions.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"captions\.jsonl:1: invalid JSON"):
        load_dataset("folder", root=tmp_path)


def test_corrupt_images_reported_or_skipped(tmp_path):
    _img(tmp_path / "ok.png", size=(8, 8))
    good = tmp_path / "ok.png"
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ValueError) as e:
        load_dataset("folder", root=tmp_path)
    msg = str(e.value)
    assert msg.startswith("2 corrupt or unreadable image file(s)")
    assert "trunc.png" in msg and "garbage.jpg" in msg and "skip_corrupt=True" in msg
    with pytest.warns(UserWarning, match=r"skipping 2 corrupt.*garbage\.jpg.*trunc\.png"):
        ds = load_dataset("folder", root=tmp_path, skip_corrupt=True)
    assert len(ds) == 1 and sorted(os.path.basename(p) for p in ds.skipped) == ["garbage.jpg", "trunc.png"]


def test_unreadable_file_named(tmp_path, monkeypatch):
    _img(tmp_path / "fine.png", size=(4, 4))
    _img(tmp_path / "locked.png", size=(4, 4))
    real_open = Image.open

    def fake_open(fp, *a, **k):  # a permission error, as for a file without read access
        if str(fp).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", fake_open)
    with pytest.raises(ValueError, match=r"1 corrupt or unreadable.*locked\.png \(PermissionError"):
        load_dataset("folder", root=tmp_path)


def test_missing_empty_and_other_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("folder", root=tmp_path / "nope")
    with pytest.raises(ValueError, match="contains no images"):
        load_dataset("folder", root=tmp_path)
    with pytest.raises(ValueError, match="needs root"):
        load_dataset("folder")
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    _img(tmp_path / "a.PNG", size=(4, 4))
    with pytest.warns(UserWarning, match=r"ignored 1 file\(s\).*notes\.md") as rec:
        ds = load_dataset("folder", root=tmp_path)
    assert len(ds) == 1 and not any(".DS_Store" in str(w.message) for w in rec)


def test_labels_need_subfolders_and_split_subfolder(tmp_path):
    _img(tmp_path / "train" / "x" / "a.png", size=(4, 4))
    _img(tmp_path / "train" / "loose.png", size=(4, 4))
    _img(tmp_path / "test" / "x" / "b.png", size=(4, 4))
    with pytest.raises(ValueError, match=r"class sub-folder.*loose\.png"):
        load_dataset("folder", root=tmp_path, labels_from_folders=True)
    test = load_dataset("folder", root=tmp_path, split="test", labels_from_folders=True)
    assert len(test) == 1 and test.class_names == ["x"] and test.split == "test"
    with pytest.raises(ValueError, match="no 'val' sub-folder"):
        load_dataset("folder", root=tmp_path, split="val")


def test_batch_size_larger_than_folder(tmp_path):
    from difflab.data import check_batch_size

    _img(tmp_path / "a.png", size=(4, 4))
    ds = load_dataset("folder", root=tmp_path)
    with pytest.raises(ValueError, match=r"batch_size 4 is larger.*1 images"):
        check_batch_size(ds, 4)
    x, _ = ds.get_batch(torch.tensor([0]))
    assert x.shape == (1, 3, 4, 4)
