"""The sampling page's request and job code (no browser, no gradio): run discovery, form checks, the same
pixels as ``difflab sample``, streaming, cancellation and failures."""

import shlex
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main
from difflab.config import resolve_config
from difflab.serve.jobs import CANCELLED, DONE, FAILED, Job, RunCache, job_folder
from difflab.serve.request import ALL_CLASSES, Form, InputError, parse_form
from difflab.serve.runs import CLASS, SUPER_RESOLUTION, TEXT, UNCONDITIONAL, find_runs, run_kind


def _entry(serve_runs, name):
    entries, _ = find_runs([serve_runs / name])
    return entries[0]


def _run_job(entry, form, folder, cache=None):
    req = parse_form(entry, form)
    job = Job((cache or RunCache("cpu")).get(entry), req, folder, "cpu").start()
    job.join(60)
    assert job.state == DONE, job.error
    return req, job


def _png(path):
    return np.asarray(Image.open(path))


def test_runs_are_found_under_a_folder_with_their_kind_and_other_runs_are_skipped(serve_runs, tmp_path):
    entries, skipped = find_runs([serve_runs])
    assert [(e.name, e.kind, e.step) for e in entries] == [("runs/cond", CLASS, 4), ("runs/plain", UNCONDITIONAL, 4)]
    assert entries[0].guidance_available and not entries[1].guidance_available
    assert "class-conditional" in entries[0].summary() and "classifier-free guidance available" in entries[0].summary()
    # an autoencoder run is listed as skipped, with the reason; a run given twice is listed once
    ae = tmp_path / "more" / "ae" / "checkpoints"
    (ae / "step_00000001").mkdir(parents=True)
    (ae / "step_00000001" / "autoencoder.yaml").write_text("{}")
    (ae / "step_00000001" / "model.safetensors").write_bytes(b"")
    (ae / "latest").write_text("step_00000001\n")
    entries, skipped = find_runs([serve_runs / "plain", tmp_path / "more", serve_runs])
    assert [e.name for e in entries] == [str(serve_runs / "plain"), "runs/cond"]
    assert len(skipped) == 1 and skipped[0].startswith("more/ae: ") and "autoencoder run" in skipped[0]
    with pytest.raises(ValueError, match="does not exist"):
        find_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no diffusion run"):
        find_runs([tmp_path / "empty"])


@pytest.mark.parametrize("preset, kind", [("tiny", UNCONDITIONAL), ("digits", CLASS),
                                          ("mnist-latent-text", TEXT), ("mnist-latent-sr", SUPER_RESOLUTION)])
def test_run_kind_of_each_preset(preset, kind):
    assert run_kind(resolve_config(preset=preset)) == kind


@pytest.mark.parametrize("values, message", [
    (dict(steps=0), "Steps must be a whole number from 1 to 100, got 0"),
    (dict(steps=101), "Steps must be a whole number from 1 to 100, got 101"),
    (dict(steps=2.5), "Steps must be a whole number from 1 to 100, got 2.5"),
    (dict(steps=None), "Steps: enter a whole number from 1 to 100"),
    (dict(seed=-1), "Seed must be a whole number from 0 to"),
    (dict(n=0), "Number of images must be a whole number from 1 to 256, got 0"),
    (dict(eta=float("nan")), "eta must be a number >= 0"),
    (dict(eta=-0.5), "eta must be a number >= 0"),
    (dict(class_choice="10"), "Class must be a whole number from 0 to 9, got 10"),
    (dict(guidance=-1.0), "Guidance weight must be a number >= 0"),
    (dict(grid_by_class=True, n=65), "Images per class must be a whole number from 1 to 64, got 65"),
    (dict(sampler="euler"), "Sampler must be one of"),
])
def test_bad_form_values_get_a_message_naming_the_field(serve_runs, values, message):
    entry = _entry(serve_runs, "cond")
    form = replace(Form(sampler="ddim", steps=3, seed=0, n=4, eta=0.0, guidance=0.0), **values)
    with pytest.raises(InputError) as e:
        parse_form(entry, form)
    assert message in str(e.value)


@pytest.mark.parametrize("name, form", [
    ("plain", Form(sampler="ddim", steps=3, seed=7, n=5, eta=0.5)),
    ("plain", Form(sampler="ddpm", steps=4, seed=2, n=3)),
    ("cond", Form(sampler="ddim", steps=3, seed=1, n=10, eta=0.0)),
    ("cond", Form(sampler="dpm++2m", steps=3, seed=3, n=2, class_choice="4", guidance=1.5)),
    ("cond", Form(sampler="heun", steps=2, seed=0, n=3, grid_by_class=True, class_choice=ALL_CLASSES)),
])
def test_the_page_draws_the_pixels_of_the_difflab_sample_command_it_shows(serve_runs, tmp_path, capsys, name, form):
    req, job = _run_job(_entry(serve_runs, name), form, tmp_path / "page")
    cmd = req.command()
    assert cmd.startswith(f"difflab sample --checkpoint {serve_runs / name} --sampler {form.sampler}")
    argv = shlex.split(cmd)[1:] + ["--out", str(tmp_path / "cli.png"), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    o = job.outcome
    assert o.grid == tmp_path / "page" / f"{form.sampler}-{form.steps}steps-seed{form.seed}.png"
    assert np.array_equal(_png(o.grid), _png(tmp_path / "cli.png"))
    page_gif, cli_gif = Image.open(o.gif), Image.open(tmp_path / "cli.gif")
    assert page_gif.n_frames == cli_gif.n_frames == form.steps + 1
    for i in range(page_gif.n_frames):
        page_gif.seek(i), cli_gif.seek(i)
        assert np.array_equal(np.asarray(page_gif.convert("RGB")), np.asarray(cli_gif.convert("RGB")))


def test_frames_stream_while_sampling_and_show_x_t_and_pred_x0(serve_runs, tmp_path):
    entry = _entry(serve_runs, "plain")
    req = parse_form(entry, Form(sampler="ddim", steps=5, seed=0, n=4, eta=0.0))
    job = Job(RunCache("cpu").get(entry), replace(req, sample=replace(req.sample, batch_size=3)), tmp_path, "cpu")
    seen_steps, first = [], []
    original = job._step

    def record(i, t, x_t, pred_x0):
        original(i, t, x_t, pred_x0)
        seen_steps.append((job.frame.batch, job.frame.step, round(job.frame.fraction, 3)))
        first.append(first or job.frame_images(job.frame))

    job._step = record
    job.start().join(30)
    assert job.state == DONE
    # 4 images in batches of 3: two batches of 5 steps each; the fraction reaches 1 at the very end
    assert seen_steps == [(b, s, round(((b - 1) * 5 + s) / 10, 3)) for b in (1, 2) for s in range(1, 6)]
    x_t, x_0 = first[0]                  # the first step: x_T (noise) beside the first estimate of x_0
    assert x_t.dtype == np.uint8 and x_t.ndim == 2 and x_t.shape == x_0.shape   # grayscale grids
    assert not np.array_equal(x_t, x_0)


class _Slow(torch.nn.Module):
    """The run's network, 20 ms slower per call; ``calls`` counts them."""

    def __init__(self, net, fail: Exception | None = None):
        super().__init__()
        self.net, self.fail, self.calls = net, fail, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        time.sleep(0.02)
        return self.net(*args, **kwargs)


def test_cancel_stops_the_sampler_within_a_step_and_writes_nothing(serve_runs, tmp_path):
    entry = _entry(serve_runs, "plain")
    run = RunCache("cpu").get(entry)
    slow = replace(run, model=_Slow(run.model))
    job = Job(slow, parse_form(entry, Form(sampler="ddpm", steps=100, seed=0, n=2)), tmp_path / "job", "cpu")
    job.start()
    seen = job.wait(0, timeout=30)
    assert seen > 0 and job.frame is not None and not job.finished
    job.cancel()
    job.join(10)
    assert job.state == CANCELLED and job.outcome is None
    assert slow.model.calls < 100 and not (tmp_path / "job").exists()


@pytest.mark.parametrize("error, message", [
    (RuntimeError("out of memory\nmore detail"), "out of memory"),
    (KeyError("y"), "unexpected KeyError: 'y' (see the console)"),
])
def test_a_failing_job_reports_one_line(serve_runs, tmp_path, error, message, capsys):
    entry = _entry(serve_runs, "plain")
    run = RunCache("cpu").get(entry)
    job = Job(replace(run, model=_Slow(run.model, fail=error)), parse_form(entry, Form("ddim", 3, 0, 2, eta=0.0)),
              tmp_path, "cpu")
    job.start().join(30)
    assert job.state == FAILED and job.error == message


def test_requests_write_to_their_own_folders_and_the_run_cache_keeps_two_runs(serve_runs, tmp_path):
    plain, cond = _entry(serve_runs, "plain"), _entry(serve_runs, "cond")
    assert job_folder(tmp_path, 3, cond) == tmp_path / "0003-cond"
    cache = RunCache("cpu", keep=1)
    a = cache.get(plain)
    assert cache.get(plain) is a
    cache.get(cond)
    assert cache.get(plain) is not a      # evicted by the other run, loaded again


def test_jobs_run_in_parallel_threads_without_mixing_their_images(serve_runs, tmp_path):
    entry = _entry(serve_runs, "cond")
    cache = RunCache("cpu")
    forms = [Form("ddim", 3, seed, 4, eta=0.0, class_choice=str(seed)) for seed in (1, 2)]
    jobs = [Job(cache.get(entry), parse_form(entry, f), tmp_path / str(i), "cpu") for i, f in enumerate(forms)]
    threads = [threading.Thread(target=j.start) for j in jobs]
    [t.start() for t in threads]
    [t.join() for t in threads]
    [j.join(30) for j in jobs]
    solo = [_run_job(entry, f, tmp_path / f"solo{i}")[1] for i, f in enumerate(forms)]
    for j, s in zip(jobs, solo):
        assert np.array_equal(_png(j.outcome.grid), _png(s.outcome.grid))
    assert Path(jobs[0].outcome.grid).parent != Path(jobs[1].outcome.grid).parent
