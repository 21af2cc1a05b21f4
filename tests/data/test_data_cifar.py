import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from difflab.data import load_dataset
from difflab.data.cifar import CIFAR10_DIR, CIFAR10_TARBALL, restricted_loads

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _batch(n, seed, protocol):
    rs = np.random.RandomState(seed)
    data = rs.randint(0, 256, (n, 3072)).astype(np.uint8)
    labels = [int(v) for v in rs.randint(0, 10, n)]
    if protocol == 2:  # like the official Python 2 pickles: bytes keys
        d = {b"batch_label": b"synthetic", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * n}
    else:
        d = {"batch_label": "synthetic", "labels": labels, "data": data, "filenames": ["a.png"] * n}
    return pickle.dumps(d, protocol=protocol), data, labels


def _tarball(root, payloads):
    with tarfile.open(root / CIFAR10_TARBALL, "w:gz") as tar:
        for name, raw in payloads.items():
            info = tarfile.TarInfo(f"{CIFAR10_DIR}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


@pytest.fixture
def cifar_root(tmp_path):
    payloads, truth = {}, {}
    for i, name in enumerate(BATCHES):
        raw, data, labels = _batch(4, i, protocol=2 if i % 2 == 0 else 4)
        payloads[name], truth[name] = raw, (data, labels)
    _tarball(tmp_path, payloads)
    return tmp_path, truth


def test_cifar_synthetic_tarball(cifar_root):
    root, truth = cifar_root
    train = load_dataset("cifar10", root=root, verify_md5=False)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    expected = np.concatenate([truth[n][0] for n in BATCHES[:5]]).reshape(-1, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == sum((truth[n][1] for n in BATCHES[:5]), [])
    assert train.class_names[0] == "airplane" and train.hflip is True
    test = load_dataset("cifar10", root=root, split="test", verify_md5=False, channels=1, image_size=16)
    assert test.images.shape == (4, 1, 16, 16)


def test_cifar_md5_checked_by_default(cifar_root):
    root, _ = cifar_root
    with pytest.raises(ValueError, match=f"checksum mismatch for .*{CIFAR10_TARBALL}"):
        load_dataset("cifar10", root=root)


def test_cifar_extracted_folder(tmp_path):
    folder = tmp_path / CIFAR10_DIR
    folder.mkdir()
    raw, data, labels = _batch(3, 0, protocol=2)
    (folder / "test_batch").write_bytes(raw)
    ds = load_dataset("cifar10", root=tmp_path, split="test")
    assert ds.labels.tolist() == labels and np.array_equal(ds.images.reshape(3, -1).numpy(), data)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_in_tarball_refused(tmp_path):
    marker = tmp_path / "pwned"
    payloads = {n: _batch(2, i, 4)[0] for i, n in enumerate(BATCHES)}
    payloads["data_batch_3"] = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    _tarball(tmp_path, payloads)
    with pytest.raises(ValueError, match=r"data_batch_3: refusing to load global (posix|os|nt)\.system"):
        load_dataset("cifar10", root=tmp_path, verify_md5=False)
    assert not marker.exists()
    # the test split does not touch the bad member
    assert len(load_dataset("cifar10", root=tmp_path, split="test", verify_md5=False)) == 2


def test_restricted_unpickler_rules():
    assert restricted_loads(pickle.dumps({"a": [1, b"x", "y"]}, protocol=2)) == {"a": [1, b"x", "y"]}
    with pytest.raises(ValueError, match="builtins.eval"):
        restricted_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(ValueError, match="not a valid pickle"):
        restricted_loads(pickle.dumps({"a": 1})[:-3])


def test_cifar_bad_batch_contents(tmp_path):
    folder = tmp_path / CIFAR10_DIR
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"test_batch: 'data' must be a uint8 array \[N, 3072\]"):
        load_dataset("cifar10", root=tmp_path, split="test")
    with pytest.raises(ValueError, match="CIFAR-10 not found"):
        load_dataset("cifar10", root=tmp_path / "empty")
