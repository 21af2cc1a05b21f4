import dataclasses
import gzip
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.data import download_file, load_dataset, md5sum
from difflab.data.idx import FASHION_MNIST, MNIST, load_idx_split, read_idx

MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"   # shared/ beside the repo
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="MNIST files not available")


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_set(folder: Path, n_train=12, n_test=5, gz=False, seed=0):
    rs = np.random.RandomState(seed)
    data = {}
    for split, n, (img, lbl) in (("train", n_train, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
                                 ("test", n_test, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))):
        x, y = rs.randint(0, 256, (n, 28, 28)), rs.randint(0, 10, n)
        for stem, arr in ((img, x), (lbl, y)):
            raw = _idx_bytes(arr)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
        data[split] = (x, y)
    return data


@needs_mnist
def test_mnist_from_shared_folder():
    ds = load_dataset("mnist", root=MNIST_DIR)
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (60000,) and ds.labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert torch.bincount(ds.labels).tolist()[:2] == [5923, 6742]  # published class counts
    assert ds.num_classes == 10 and ds.hflip is False and int(ds.images.max()) == 255
    test = load_dataset("mnist", root=MNIST_DIR, split="test")
    assert test.images.shape == (10000, 1, 28, 28)
    for name, expected in MNIST.md5.items():
        assert md5sum(MNIST_DIR / name) == expected


@needs_mnist
def test_mnist_corrupted_copy_fails_naming_file(tmp_path):
    for name in MNIST.md5:
        shutil.copy(MNIST_DIR / name, tmp_path / name)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"checksum mismatch for .*t10k-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", root=tmp_path, split="test")
    # without the checksum the damage still surfaces as a clear error naming the file
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", root=tmp_path, split="test", verify_md5=False)
    # the train split's files are intact
    assert len(load_dataset("mnist", root=tmp_path, split="train")) == 60000


def test_fashion_mnist_synthetic_plain_and_gz(tmp_path):
    plain, gz = tmp_path / "plain", tmp_path / "gz" / "fashion-mnist"
    plain.mkdir()
    gz.mkdir(parents=True)
    data = _write_idx_set(plain)
    ds = load_dataset("fashion-mnist", root=plain, split="test")
    assert ds.images.shape == (5, 1, 28, 28)
    assert np.array_equal(ds.images[:, 0].numpy(), data["test"][0])
    assert ds.labels.tolist() == data["test"][1].tolist()
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"

    gdata = _write_idx_set(gz, gz=True, seed=1)
    # gz files carry official md5s: synthetic ones are refused unless the check is off
    with pytest.raises(ValueError, match="checksum mismatch.*train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", root=tmp_path / "gz")
    ds = load_dataset("fashion-mnist", root=tmp_path / "gz", verify_md5=False, image_size=32, channels=3)
    assert ds.images.shape == (12, 3, 32, 32) and ds.labels.tolist() == gdata["train"][1].tolist()


def test_idx_parser_errors_name_the_file(tmp_path):
    good = _idx_bytes(np.zeros((3, 28, 28)))
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(good[:-10])
    with pytest.raises(ValueError, match=r"x-idx3-ubyte is truncated"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x0d\x03" + good[4:])
    with pytest.raises(ValueError, match=r"x-idx3-ubyte is not an unsigned-byte IDX file: bad magic"):
        read_idx(p)
    p.write_bytes(good[:7])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)
    p.write_bytes(good)
    with pytest.raises(ValueError, match="3 dimensions, expected 1"):
        read_idx(p, expected_ndim=1)
    g = tmp_path / "y.gz"
    g.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(ValueError, match=r"y\.gz"):
        read_idx(g)
    assert read_idx(p).shape == (3, 28, 28)


def test_mismatched_counts_and_missing_files(tmp_path):
    _write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4)))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        load_dataset("mnist", root=tmp_path, split="test")
    with pytest.raises(ValueError, match="not found.*download=True"):
        load_dataset("mnist", root=tmp_path / "nowhere")
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match="missing file train-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path)


def test_download_file_mirrors_md5_and_atomicity(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello difflab")
    md5 = md5sum(src)
    dest = tmp_path / "out" / "file.bin"
    # the first mirror is missing, the second works
    got = download_file([(tmp_path / "missing.bin").as_uri(), src.as_uri()], dest, md5)
    assert got == dest and dest.read_bytes() == b"hello difflab"
    dest.unlink()
    with pytest.raises(ValueError, match="could not download file.bin") as e:
        download_file(src.as_uri(), dest, "0" * 32)
    assert "expected " + "0" * 32 in str(e.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file left behind


def test_download_never_touches_network_when_file_present(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(urllib.request, "urlopen", boom)
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    assert download_file("https://example.invalid/a.bin", f, md5sum(f)) == f


@needs_mnist
def test_load_with_download_from_mirror(tmp_path):
    local = dataclasses.replace(MNIST, mirrors=(MNIST_DIR.as_uri() + "/",))
    x, y = load_idx_split(local, tmp_path, "test", download=True)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(MNIST.md5)


def test_fashion_md5_table_is_complete():
    assert set(FASHION_MNIST.md5) == set(MNIST.md5)
    assert all(len(v) == 32 for v in FASHION_MNIST.md5.values())
