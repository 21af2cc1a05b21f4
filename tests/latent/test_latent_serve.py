"""The sampling page on latent runs: text-to-image and super-resolution give the pixels of ``difflab sample``;
uploaded pictures become low-resolution inputs."""

import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main
from difflab.data import load_dataset
from difflab.generate import load_test_images
from difflab.serve.jobs import DONE, Job, RunCache
from difflab.serve.request import UPLOAD, Form, InputError, parse_form, upload_images
from difflab.serve.runs import CLASS, SUPER_RESOLUTION, TEXT, find_runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli_helpers import LATENT, TEXT as TEXT_FLAGS, png  # noqa: E402


@pytest.fixture(scope="module")
def latent_runs(ae_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-latent")
    assert main([str(a) for a in (*LATENT, *TEXT_FLAGS, "latent.autoencoder=" + str(ae_run), "train.class_dropout=0.5",
                                  "--steps", 2, "--out", root / "text")]) == 0
    assert main([str(a) for a in (*LATENT, "model.cond_channels=1", "cond.low_res_factor=2",
                                  "latent.autoencoder=" + str(ae_run), "--steps", 2, "--out", root / "sr")]) == 0
    assert main([str(a) for a in (*LATENT, "model.num_classes=10", "data.labels=true", "latent.autoencoder=" + str(ae_run),
                                  "--steps", 2, "--out", root / "cls")]) == 0
    entries, _ = find_runs([root])
    return {e.path.name: e for e in entries}


def _job(entry, form, folder):
    req = parse_form(entry, form)
    job = Job(RunCache("cpu").get(entry), req, folder, "cpu").start()
    job.join(60)
    assert job.state == DONE, job.error
    return req, job


@pytest.mark.parametrize("name, form", [
    ("text", Form("ddim", 2, 3, 2, eta=0.0, prompts="a handwritten three\n\nthe digit 7", guidance=2.0)),
    ("sr", Form("ddim", 2, 1, 3, eta=0.0)),
    ("cls", Form("ddim", 2, 5, 2, eta=0.0, grid_by_class=True)),   # a class grid of a latent run: 10 rows of 2
])
def test_latent_pages_draw_the_pixels_of_difflab_sample(latent_runs, tmp_path, capsys, name, form):
    entry = latent_runs[name]
    assert entry.kind == {"text": TEXT, "sr": SUPER_RESOLUTION, "cls": CLASS}[name] and entry.latent
    req, job = _job(entry, form, tmp_path / "page")
    argv = shlex.split(req.command())[1:] + ["--out", str(tmp_path / "cli.png"), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    o = job.outcome
    assert np.array_equal(png(o.grid), png(tmp_path / "cli.png"))
    assert Image.open(o.gif).n_frames == Image.open(tmp_path / "cli.gif").n_frames == 3
    if name == "cls":
        assert o.images == 20 and "-n 2 --grid-by-class" in req.command()
    elif name == "text":
        assert req.prompts == ("a handwritten three", "the digit 7") and o.images == 4
        assert "--prompt 'a handwritten three' 'the digit 7' --guidance-scale 2" in req.command()
    else:
        assert req.from_test == 3 and "--cond-from-test 3" in req.command()
        for page_file, cli_file in ((o.inputs, "cli-input.png"), (o.targets, "cli-target.png")):
            assert np.array_equal(png(page_file), png(tmp_path / cli_file))
        assert any(n.startswith("PSNR to the targets") for n in o.notes)
    # the live frames are decoded images, not latents
    x_t, x_0 = job.frame_images(job.frame)
    assert x_t.shape == x_0.shape and x_t.shape[0] >= 8


def test_uploaded_pictures_become_the_low_resolution_inputs(latent_runs, tmp_path):
    entry = latent_runs["sr"]
    test = load_dataset("digits", split="test").get_batch(range(2))[0][:, 0]      # float [2, 8, 8] in [-1, 1]
    low = ((test + 1) * 127.5).round().to(torch.uint8)
    small = np.asarray(Image.fromarray(low[0].numpy()).resize((4, 4), Image.Resampling.BICUBIC))
    Image.fromarray(small).save(tmp_path / "a.png")                          # already the low resolution (8 / 2)
    Image.fromarray(np.stack([low[1].numpy()] * 3, -1)).resize((16, 16)).save(tmp_path / "b.png")   # RGB, larger
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    run = RunCache("cpu").get(entry)
    images = upload_images(paths, run)
    assert images.shape == (2, 1, 8, 8)
    # the run's own 2x downsampling gives back exactly the uploaded 4x4 picture
    back = ((torch.nn.functional.avg_pool2d(images, 2)[0, 0] + 1) * 127.5).round().to(torch.uint8)
    assert np.array_equal(back.numpy(), small)
    req, job = _job(entry, Form("ddim", 2, 0, 8, eta=0.0, low_res_source=UPLOAD, uploads=tuple(paths)), tmp_path / "j")
    assert req.command() is None and job.outcome.images == 2 and job.outcome.targets is None
    assert job.outcome.inputs.is_file()
    (tmp_path / "c.png").write_text("not a picture")
    bad = parse_form(entry, Form("ddim", 2, 0, 8, eta=0.0, low_res_source=UPLOAD, uploads=(str(tmp_path / "c.png"),)))
    with pytest.raises(InputError, match="c.png is not an image I can read"):
        Job(run, bad, tmp_path / "k", "cpu")
    with pytest.raises(InputError, match="upload at least one image"):
        parse_form(entry, Form("ddim", 2, 0, 8, eta=0.0, low_res_source=UPLOAD))
    with pytest.raises(ValueError, match="the digits test split has 360 images; asked for 1000"):
        load_test_images(run, 1000)
    with pytest.raises(InputError, match="Prompts: write at least one prompt"):
        parse_form(latent_runs["text"], Form("ddim", 2, 0, 2, eta=0.0, prompts=" \n "))
