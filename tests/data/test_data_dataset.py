import pytest
import torch

from difflab.data import ImageDataset, check_batch_size, iterate_batches, random_hflip


def _ds(n=5, **kw):
    images = torch.arange(n * 1 * 2 * 3, dtype=torch.int64).reshape(n, 1, 2, 3).mul(7).remainder(256).to(torch.uint8)
    return ImageDataset(images=images, name="tiny", **kw)


def test_float_mapping_endpoints():
    images = torch.tensor([0, 255, 128], dtype=torch.uint8).reshape(3, 1, 1, 1)
    ds = ImageDataset(images=images, labels=torch.tensor([0, 1, 1]), name="x")
    x, y = ds.get_batch([0, 1, 2])
    assert x.flatten().tolist()[:2] == [-1.0, 1.0] and abs(x.flatten()[2].item() - (128 / 127.5 - 1)) < 1e-6
    assert y.tolist() == [0, 1, 1] and ds.num_classes == 2
    assert torch.equal(ds.to_float(), x)


def test_validation_of_fields():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(images=torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(images=torch.zeros(2, 1, 4, 4, dtype=torch.uint8), labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="captions"):
        ImageDataset(images=torch.zeros(2, 1, 4, 4, dtype=torch.uint8), captions=["a"])
    with pytest.raises(ValueError, match="out of range"):
        _ds().get_batch([7])


def test_check_batch_size():
    ds = _ds(5)
    assert check_batch_size(ds, 5) == 5
    with pytest.raises(ValueError, match=r"larger than dataset 'tiny'.*5 images"):
        check_batch_size(ds, 6)
    with pytest.raises(ValueError, match="positive"):
        check_batch_size(ds, 0)


def test_random_hflip_per_sample_and_pure():
    x = torch.randn(64, 1, 3, 4)
    before = x.clone()
    out = random_hflip(x, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)  # caller's tensor untouched
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    same = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert (flipped | same).all() and 10 < int(flipped.sum()) < 54
    assert torch.equal(out, random_hflip(x, torch.Generator().manual_seed(0)))


def test_iterate_batches_epoch():
    ds = _ds(7, labels=torch.arange(7) % 2)
    seen = []
    for x, y in iterate_batches(ds, 3, torch.Generator().manual_seed(0), drop_last=False, hflip=False):
        assert x.shape[1:] == (1, 2, 3) and y.shape == (x.shape[0],)
        seen.extend(((x[:, 0, 0, 0] + 1) * 127.5).round().long().tolist())
    assert sorted(seen) == sorted(ds.images[:, 0, 0, 0].long().tolist())
    assert sum(1 for _ in iterate_batches(ds, 3, torch.Generator().manual_seed(0))) == 2  # drop_last
