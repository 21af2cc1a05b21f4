"""Guidance and evaluation from the command line and the Python API: train-classifier, sample with
classifier-free / classifier guidance, class grids, eval fd / nll, and the documented errors."""

import json
import math

import numpy as np
import pytest
import torch

from difflab.cli import main
from difflab.config import SampleConfig
from difflab.nn.classifier import EncoderClassifier
from difflab.train import GuidanceOptions, build_guided_model, load_classifier, load_run, sample_images
from difflab.runs import LoadedClassifier, save_classifier_checkpoint
from difflab.train.classifier import resolve_classifier_config

from _cli_helpers import TINY, png, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class-conditional run, an unconditional one, and a classifier trained for the first."""
    root = tmp_path_factory.mktemp("guided")
    cond, uncond, clf = root / "cond", root / "uncond", root / "clf"
    assert main(["train", *TINY, "model.num_classes=10", "data.labels=true", "--steps", "3", "--out", str(cond),
                 "--set", "sample.n=2", "sample.steps=2"]) == 0
    assert main(["train", *TINY, "--steps", "1", "--out", str(uncond), "--set", "sample.n=2", "sample.steps=2"]) == 0
    assert main(["train-classifier", "--preset", "tiny", "--diffusion-from", str(cond), "--steps", "3",
                 "--out", str(clf), "--no-progress", "--set", "train.num_threads=1", "train.eval_n=32"]) == 0
    return {"cond": cond, "uncond": uncond, "clf": clf, "root": root}


def fake_classifier(tmp_path, name, *overrides):
    """An untrained classifier checkpoint with the given config overrides (for the mismatch errors)."""
    cfg = resolve_classifier_config("tiny", overrides=list(overrides))
    save_classifier_checkpoint(tmp_path / name, 0, model_state=EncoderClassifier(cfg.model).state_dict(),
                               training_state={"step": 0}, config=cfg)
    return tmp_path / name


# ----------------------------------------------------------------------------- train-classifier
def test_train_classifier_cli_uses_the_runs_diffusion_and_reports_accuracy(runs, capsys):
    clf = load_classifier(runs["clf"])
    assert clf.config.diffusion == load_run(runs["cond"]).config.diffusion
    doc = json.loads((runs["clf"] / "accuracy.json").read_text())
    assert [b["t_min"] for b in doc["buckets"]] == [0, 10, 30, 50, 70, 90] and doc["n"] == 32
    code, out, err = run_cli(capsys, "train-classifier", "--out", runs["clf"], "--resume", "--steps", 4,
                             "--no-progress")
    assert code == 0, err
    assert "done: 4 steps" in out and "| [90, 100) |" in out and "accuracy.json" in out


# ----------------------------------------------------------------------------- Python API
def test_cfg_wrapper_of_a_run_is_eq_6_with_the_null_class(runs):
    run = load_run(runs["cond"], use_ema=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # a briefly trained net barely uses its labels: randomise it so the check bites
        for p in run.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    sc = SampleConfig(sampler="ddim", steps=2, n=2)
    x, t, y = torch.randn(2, 1, 8, 8, generator=g), torch.tensor([10, 80]), torch.tensor([3, 7])
    null = torch.full_like(y, 10)
    c, u = run.model(x, t, y=y), run.model(x, t, y=null)
    assert (c - u).abs().max() > 1e-3
    w = build_guided_model(run, sc, GuidanceOptions(guidance_scale=2.0))
    torch.testing.assert_close(w.model(x, t, y=y), 3 * c - 2 * u, rtol=1e-4, atol=1e-6)
    s = build_guided_model(run, sc, GuidanceOptions(guidance_scale=3.0, convention="scale"))
    torch.testing.assert_close(s.model(x, t, y=y), 3 * c - 2 * u, rtol=1e-4, atol=1e-6)
    assert w.diffusion is run.diffusion and w.num_classes == 10 and "w=2" in w.description


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_classifier_guidance_moves_samples_towards_the_requested_class(runs, sampler):
    """A classifier whose logit k is (k - 4.5) * mean brightness: guiding to class 9 brightens, to class 0 darkens."""
    run = load_run(runs["cond"])
    real = load_classifier(runs["clf"])

    class Brightness(torch.nn.Module):
        def forward(self, x, t):
            return x.mean(dim=(1, 2, 3))[:, None] * (torch.arange(10.0) - 4.5)

    clf = LoadedClassifier(real.config, Brightness(), real.diffusion, real.checkpoint, real.step)
    sc = SampleConfig(sampler=sampler, steps=5, n=8, seed=0)
    gm = build_guided_model(run, sc, GuidanceOptions(classifier_scale=10.0), clf)
    if sampler == "ddpm":   # mean shift on the respaced chain that is sampled as it is
        assert gm.sampler_options == {"steps": None} and gm.diffusion.num_timesteps == 5
        assert "mean_shift" in gm.description
    else:
        assert gm.diffusion is run.diffusion and "eps rule" in gm.description

    def brightness(label, model, diffusion, options):
        labels = torch.full((8,), label)
        out = sample_images(model, diffusion, sc, shape=(1, 8, 8), n=8, labels=labels, sampler_options=options)
        return float(out.sample.mean())

    plain = brightness(9, run.model, run.diffusion, {})
    up = brightness(9, gm.model, gm.diffusion, gm.sampler_options)
    down = brightness(0, gm.model, gm.diffusion, gm.sampler_options)
    assert down + 0.05 < plain < up - 0.05


# ----------------------------------------------------------------------------- sample
def test_sample_with_guidance_scale_writes_a_grid_and_w0_is_the_conditional_model(runs, tmp_path, capsys):
    code, out, err = run_cli(capsys, "sample", "--checkpoint", runs["cond"], "--guidance-scale", 3,
                             "--guidance-rescale", 0.5, "--dynamic-threshold", 0.99, "-n", 4, "--steps", 2,
                             "--out", tmp_path / "cfg.png", "--no-progress")
    assert code == 0, err
    assert "classifier-free guidance w=3, rescale 0.5, dynamic thresholding p=0.99" in out
    assert "4 network evaluations per sample" in out   # 2 guided steps: conditional + unconditional each
    assert png(tmp_path / "cfg.png").shape == (70, 70)            # 2 x 2 grid of 8x8 images shown 4x
    for name, extra in (("w0", ["--guidance-scale", 0]), ("plain", [])):
        assert main(["sample", "--checkpoint", str(runs["cond"]), "--class-label", "3", "-n", "2", "--steps", "2",
                     "--no-ema", "--out", str(tmp_path / f"{name}.png"), "--no-progress", *extra]) == 0
    diff = np.abs(png(tmp_path / "w0.png").astype(int) - png(tmp_path / "plain.png").astype(int))
    assert diff.max() <= 1     # identical up to float round-off of the doubled batch


def test_the_runs_default_guidance_scale_is_used_unless_the_flag_overrides_it(tmp_path, capsys):
    run = tmp_path / "guided-default"
    code, out, err = run_cli(capsys, "train", *TINY, "model.num_classes=10", "data.labels=true",
                             "sample.guidance_scale=2", "sample.n=10", "sample.steps=2", "--steps", "1",
                             "--out", run)
    assert code == 0, err
    assert png(run / "samples.png").shape == (34 + 2, 10 * 34 + 2)    # the training grid: one row of 10 classes
    for extra, expected in (([], "classifier-free guidance w=2"), (["--guidance-scale", 0.5],
                                                                 "classifier-free guidance w=0.5")):
        code, out, err = run_cli(capsys, "sample", "--checkpoint", run, "-n", 2, "--steps", 2, "--no-progress",
                                 "--out", tmp_path / "s.png", *extra)
        assert code == 0, err
        assert expected in out
    code, out, err = run_cli(capsys, "sample", "--checkpoint", run, "-n", 2, "--steps", 2, "--no-progress",
                             "--out", tmp_path / "s.png", "--no-guidance")
    assert code == 0, err
    assert "; guidance:" not in out and "classifier-free" not in out
    assert "2 network evaluations per sample" in out
    code, out, err = run_cli(capsys, "sample", "--checkpoint", run, "--no-guidance", "--guidance-scale", 1,
                             "--out", tmp_path / "s.png", "--no-progress")
    assert code == 2 and "contradict" in err


@pytest.mark.parametrize("overrides, message", [
    ([], "needs a class- or text-conditional model"),
    (["model.num_classes=10", "data.labels=true", "train.class_dropout=0"], "needs train.class_dropout > 0"),
    (["model.num_classes=10", "data.labels=true", "train.class_dropout=0.1", "sample.guidance_scale=-1"],
     "sample.guidance_scale must be null or a finite number >= 0"),
])
def test_a_default_guidance_scale_the_model_cannot_use_is_refused(tmp_path, capsys, overrides, message):
    code, out, err = run_cli(capsys, "train", *TINY, "sample.guidance_scale=1", *overrides, "--steps", "1",
                             "--out", tmp_path / "run")
    assert code != 0 and message in err, err


def test_sample_images_reports_the_network_evaluations_of_one_sample_over_several_batches(runs):
    run = load_run(runs["uncond"])
    sc = SampleConfig(sampler="ddim", steps=3, batch_size=2)
    out = sample_images(run.model, run.diffusion, sc, shape=(1, 8, 8), n=5)
    assert out.sample.shape == (5, 1, 8, 8) and out.nfe == 3


def test_grid_by_class_has_one_row_per_class(runs, tmp_path, capsys):
    code, out, err = run_cli(capsys, "sample", "--checkpoint", runs["cond"], "--guidance-scale", 1, "--grid-by-class",
                             "-n", 3, "--steps", 2, "--out", tmp_path / "grid.png", "--save-individual",
                             "--no-progress")
    assert code == 0, err
    assert "sampling 30 images" in out
    assert png(tmp_path / "grid.png").shape == (10 * 34 + 2, 3 * 34 + 2)   # 10 rows, 3 columns
    tiles = [png(tmp_path / "grid" / f"sample_{i:05d}.png") for i in range(30)]
    assert len(tiles) == 30 and tiles[0].shape == (8, 8)


@pytest.mark.parametrize("sampler, rule", [("ddpm", "mean_shift"), ("ddim", "eps")])
def test_classifier_guidance_from_the_cli(runs, tmp_path, capsys, sampler, rule):
    for run in ("cond", "uncond"):
        code, out, err = run_cli(capsys, "sample", "--checkpoint", runs[run], "--classifier", runs["clf"],
                                 "--classifier-scale", 2, "--sampler", sampler, "--steps", 3, "-n", 2,
                                 "--class-label", 4, "--out", tmp_path / f"{run}.png", "--no-progress")
        assert code == 0, err
        assert f"classifier guidance s=2 ({rule} rule)" in out and (tmp_path / f"{run}.png").is_file()


@pytest.mark.parametrize("case, flags, message", [
    ("uncond", ["--guidance-scale", 1], "needs a class-conditional model"),
    ("uncond", ["--grid-by-class"], "--grid-by-class needs a class-conditional model or a --classifier"),
    ("cond", ["--guidance-scale", 1, "--class-label", 10], "--class-label: class label must be in 0..9"),
    ("cond", ["--class-label", 11], "--class-label must be in 0..9"),
    ("uncond", ["--classifier", "CLF", "--class-label", 12], "class label must be in 0..9"),
    ("cond", ["--classifier-scale", 2], "--classifier-scale needs --classifier"),
    ("cond", ["--guidance-rescale", 0.5], "--guidance-rescale needs --guidance-scale"),
    ("cond", ["--guidance-scale", -1], "guidance scale must be >= 0"),
    ("cond", ["--dynamic-threshold", 1.5], "percentile must lie in (0, 1]"),
    ("cond", ["--classifier", "T50"], "T=50 but the model has T=100"),
    ("cond", ["--classifier", "K5"], "has 5 classes but the model has 10"),
    ("uncond", ["--classifier", "S16"], "takes 1x16x16 images but the model makes 1x8x8"),
    ("cond", ["--classifier", "COSINE"], "cosine schedule but the model on the linear schedule"),
])
def test_guidance_errors_are_one_line_with_exit_code_2(runs, tmp_path, capsys, case, flags, message):
    fakes = {"CLF": runs["clf"],
             "T50": lambda: fake_classifier(tmp_path, "t50", "diffusion.num_timesteps=50"),
             "K5": lambda: fake_classifier(tmp_path, "k5", "model.num_classes=5"),
             "S16": lambda: fake_classifier(tmp_path, "s16", "model.image_size=16", "model.attention_resolutions=[8]"),
             "COSINE": lambda: fake_classifier(tmp_path, "cos", "diffusion.schedule=cosine")}
    flags = [(fakes[f]() if callable(fakes[f]) else fakes[f]) if f in fakes else f for f in flags]
    code, out, err = run_cli(capsys, "sample", "--checkpoint", runs[case], "-n", 2, "--steps", 2, *flags,
                             "--out", tmp_path / "x.png", "--no-progress")
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- eval
def test_eval_fd_names_featurizer_and_reference_and_caches(runs, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["eval", "fd", "--checkpoint", runs["cond"], "-n", 20, "--steps", 2, "--cache-dir", cache,
            "--eval-classifier-epochs", 1, "--no-progress"]
    code, out, err = run_cli(capsys, *args, "--floor", "--out", tmp_path / "fd.json")
    assert code == 0, err
    assert "training the evaluation classifier on digits train" in out
    doc = json.loads((tmp_path / "fd.json").read_text())
    assert math.isfinite(doc["fd"]) and doc["fd"] > 0 and doc["n"] == 20
    assert doc["featurizer"].startswith("eval-classifier-digits-") and doc["featurizer"] in out
    assert doc["reference"] == "digits/test (n=360)" and "reference digits/test (n=360)" in out
    assert 0 <= doc["class_accuracy"] <= 1 and "class accuracy" in out
    assert doc["floor"]["n"] == 20 and doc["floor"]["fd"] < doc["fd"]   # real images beat a 3-step model
    # second call: cached classifier and statistics, same seeds -> the same figure
    code, out, err = run_cli(capsys, *args, "--out", tmp_path / "again.json")
    assert code == 0 and "training the evaluation classifier" not in out
    assert json.loads((tmp_path / "again.json").read_text())["fd"] == pytest.approx(doc["fd"], rel=1e-9)


def test_eval_fd_of_the_reference_images_themselves_is_zero(tmp_path, capsys):
    from difflab.data import load_dataset
    from difflab.eval import EvalClassifierConfig, save_eval_classifier, train_eval_classifier

    test = load_dataset("digits", split="test")
    np.savez(tmp_path / "test.npz", images=test.images.permute(0, 2, 3, 1).numpy(), labels=test.labels.numpy())
    clf = train_eval_classifier(test.to_float()[:64], test.labels[:64], epochs=1, batch_size=64,
                                config=EvalClassifierConfig(image_size=8, widths=(4, 8), feature_dim=8))
    save_eval_classifier(clf, tmp_path / "feat", metadata={"dataset": "digits"})
    code, out, err = run_cli(capsys, "eval", "fd", "--images", tmp_path / "test.npz", "--dataset", "digits",
                             "--featurizer-dir", tmp_path / "feat", "--cache-dir", tmp_path / "cache",
                             "--out", tmp_path / "fd.json", "--no-progress")
    assert code == 0, err
    doc = json.loads((tmp_path / "fd.json").read_text())
    assert abs(doc["fd"]) < 1e-6 and doc["precision"] == 1.0 and doc["recall"] == 1.0 and doc["n"] == 360
    code, _, err = run_cli(capsys, "eval", "fd", "--images", tmp_path / "test.npz", "--featurizer-dir",
                           tmp_path / "feat")
    assert code == 2 and "--images needs --dataset" in err


def test_eval_nll_writes_json_and_plot(runs, tmp_path, capsys):
    code, out, err = run_cli(capsys, "eval", "nll", "--checkpoint", runs["cond"], "--dataset", "digits", "-n", 2,
                             "--batch-size", 2, "--out", tmp_path / "nll", "--no-progress")
    assert code == 0, err
    doc = json.loads((tmp_path / "nll" / "nll.json").read_text())
    assert doc["n"] == 2 and math.isfinite(doc["bpd"]) and doc["bpd"] > 0 and len(doc["terms_bpd"]) == 100
    assert doc["bpd"] == pytest.approx(sum(doc["terms_bpd"]) + doc["prior_bpd"], rel=1e-6)
    assert doc["conditioning"].startswith("true labels") and f"{doc['bpd']:.4f} +- " in out
    assert (tmp_path / "nll" / "nll_terms.png").stat().st_size > 1000
    assert doc["clip_denoised"] is False and "predicted x_0 not clipped" in out
    code, out, err = run_cli(capsys, "eval", "nll", "--checkpoint", runs["cond"], "--dataset", "digits", "-n", 2,
                             "--batch-size", 2, "--out", tmp_path / "clip", "--no-progress", "--clip")
    assert code == 0, err
    clipped = json.loads((tmp_path / "clip" / "nll.json").read_text())
    assert clipped["clip_denoised"] is True and "predicted x_0 clipped to [-1, 1]" in out
    # the same images and noise: L_0 at t = 0 differs only through the clamp, and so does the total
    assert clipped["bpd"] != doc["bpd"] and math.isfinite(clipped["bpd"])
    assert clipped["prior_bpd"] == doc["prior_bpd"]
    # --cdf approx: the tanh CDF of the DDPM / improved-diffusion code changes L_0 and nothing else
    assert doc["cdf"] == clipped["cdf"] == "exact" and "exact normal CDF in L_0" in out     # the default
    code, out, err = run_cli(capsys, "eval", "nll", "--checkpoint", runs["cond"], "--dataset", "digits", "-n", 2,
                             "--batch-size", 2, "--out", tmp_path / "approx", "--no-progress", "--cdf", "approx")
    assert code == 0, err
    approx = json.loads((tmp_path / "approx" / "nll.json").read_text())
    assert approx["cdf"] == "approx" and "approx normal CDF in L_0" in out
    assert approx["terms_bpd"][1:] == doc["terms_bpd"][1:] and approx["prior_bpd"] == doc["prior_bpd"]
    assert approx["decoder_bpd"] != doc["decoder_bpd"] and approx["decoder_bpd"] == approx["terms_bpd"][0]
    code, _, err = run_cli(capsys, "eval", "nll", "--checkpoint", runs["cond"], "--cdf", "erf")
    assert code == 2 and "invalid choice: 'erf'" in err


def test_a_large_last_term_of_the_unclipped_bound_gets_a_note():
    from types import SimpleNamespace

    from difflab.cli.evaluate import last_term_note
    from difflab.diffusion import GaussianDiffusion
    from difflab.schedules import make_betas

    cosine = GaussianDiffusion(make_betas("cosine", 1000))
    terms = np.full(1000, 1e-3)
    terms[-1] = 0.7
    note = last_term_note(SimpleNamespace(terms=terms, bpd=float(terms.sum())), cosine)
    assert "L_999 alone is 0.700 bits/dim" in note and "2e+04" in note and "--clip" in note
    terms[-1] = 1e-3
    assert last_term_note(SimpleNamespace(terms=terms, bpd=float(terms.sum())), cosine) is None


def test_eval_without_a_metric_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "eval")
    assert code == 2 and "choose a metric: fd, nll" in err


def test_with_default_guidance_mixes_the_conditional_and_null_outputs_by_the_runs_weight():
    from types import SimpleNamespace

    from difflab.sampling import with_default_guidance

    def net(x, t, y=None, context=None):   # a "network" whose output reveals its condition
        if context is not None:
            return x * 0 + context.float().mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return x * 0 + y.float().view(-1, 1, 1, 1)

    def config(w, num_classes=10):
        return SimpleNamespace(sample=SimpleNamespace(guidance_scale=w), model=SimpleNamespace(num_classes=num_classes))

    x, t, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), torch.tensor([3, 7])
    assert with_default_guidance(net, config(None)) is net
    assert with_default_guidance(net, config(2.0, num_classes=None)) is net
    guided = with_default_guidance(net, config(2.0))
    expected = (1 + 2.0) * y.float() - 2.0 * 10      # the null class is label 10
    assert torch.allclose(guided(x, t, y=y)[:, 0, 0, 0], expected)
    prompts = SimpleNamespace(uncond=lambda kw: {**kw, "context": torch.zeros_like(kw["context"])})
    ctx = torch.full((2, 3, 4), 5.0)
    guided = with_default_guidance(net, config(0.5, num_classes=None), prompts)
    assert torch.allclose(guided(x, t, context=ctx)[:, 0, 0, 0], torch.full((2,), 1.5 * 5.0))
