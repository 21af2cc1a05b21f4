"""Coloured MNIST: the colouring formula, seeded colours independent of the subset, and the command
that writes the folder."""

import json

import numpy as np
import torch
from PIL import Image

from _cli_helpers import run_cli
from difflab.data import load_dataset
from difflab.data.colored import MIN_COLOUR_DISTANCE, colored_mnist, colorize, draw_colours


def _digits(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def test_colorize_blends_background_into_foreground_and_centres():
    digits = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    digits[0, 0, 10, 3] = 255
    digits[0, 0, 11, 3] = 51                                   # alpha = 0.2
    fg, bg = torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[0.0, 0.2, 1.0]])
    x = colorize(digits, fg.double(), bg.double(), size=32)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.uint8
    assert x[0, :, 0, 0].tolist() == [0, 51, 255]              # background (the 2-pixel border too)
    assert x[0, :, 12, 5].tolist() == [255, 0, 128]            # stroke, shifted by the border of 2
    assert x[0, :, 13, 5].tolist() == [51, 41, 230]            # 0.2 fg + 0.8 bg: (0.2, 0.16, 0.9) * 255
    assert colorize(digits, fg.double(), bg.double(), size=14).shape == (1, 3, 14, 14)


def test_colours_are_seeded_far_apart_and_independent_of_the_subset():
    fg, bg = draw_colours(5000, torch.Generator().manual_seed(0))
    assert ((fg - bg).norm(dim=1) >= MIN_COLOUR_DISTANCE).all()
    assert 0 <= float(fg.min()) and float(fg.max()) <= 1
    assert abs(float(fg.mean()) - 0.5) < 0.02 and abs(float(bg.mean()) - 0.5) < 0.02
    digits = _digits()
    full = colored_mnist(digits, seed=1, split="train")
    assert torch.equal(colored_mnist(digits, 1, "train", indices=torch.tensor([7, 3])), full[[7, 3]])
    assert torch.equal(colored_mnist(digits, 1, "train"), full)
    assert not torch.equal(colored_mnist(digits, 1, "test"), full)       # train and test streams differ
    assert not torch.equal(colored_mnist(digits, 2, "train"), full)


def test_make_dataset_writes_class_folders(mnist_dir, tmp_path, capsys):
    out = tmp_path / "cm"
    code, stdout, err = run_cli(capsys, "make-dataset", "colored-mnist", "--data-root", mnist_dir, "--out", out,
                                "--n", 30, "--n-test", 12, "--seed", 3, "--no-progress")
    assert code == 0, err
    assert "wrote 30 training and 12 test images (32x32 RGB)" in stdout and str(out) in stdout
    manifest = json.loads((out / "colored-mnist.json").read_text())
    assert manifest["images"] == {"train": 30, "test": 12} and manifest["seed"] == 3
    train = load_dataset("folder", root=out, split="train", labels_from_folders=True)
    test = load_dataset("folder", root=out, split="test", labels_from_folders=True)
    assert len(train) == 30 and len(test) == 12 and train.channels == 3 and train.image_size == (32, 32)
    mnist = load_dataset("mnist", root=mnist_dir, split="train")
    # file i of class c is MNIST training image i, with its label, coloured by the seeded stream
    path = sorted((out / "train").rglob("*.png"))[0]
    i = int(path.stem)
    assert int(path.parent.name) == int(mnist.labels[i])
    want = colored_mnist(mnist.images, 3, "train", indices=torch.tensor([i]))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(path)), want)
    assert not list(tmp_path.glob(".cm.partial-*"))
    # a folder that holds something is never overwritten
    code, _, err = run_cli(capsys, "make-dataset", "colored-mnist", "--data-root", mnist_dir, "--out", out,
                           "--n", 2, "--n-test", 2, "--no-progress")
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(capsys, "make-dataset", "colored-mnist", "--data-root", mnist_dir, "--out",
                           tmp_path / "x", "--n-test", 20_000, "--no-progress")
    assert code == 2 and "more than the 10000 images" in err and not (tmp_path / "x").exists()
