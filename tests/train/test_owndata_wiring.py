"""`difflab train --data PATH --minutes M`: the chosen settings reach the run's config, the held-out split
never enters training, evaluation during training survives resume, budget warnings, the heartbeat line."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from _cli_helpers import run_cli
from difflab.config import resolve_config
from difflab.data import SPLIT_FILE, read_split, split_files
from difflab.recipe import auto_recipe, StepRate, probe_network
from difflab.train import Callback, train
from difflab.train import auto as auto_module
from difflab.train.auto import BudgetCheck, auto_config, budget_warnings, data_section, inspect_data
from difflab.train.heartbeat import Heartbeat
from difflab.train.metrics import read_metrics

README = Path(__file__).resolve().parents[2] / "README.md"
QUICK = ["train.num_threads=1", "sample.n=2", "sample.steps=2", "train.eval_n=8"]


def write_folder(root: Path, n: int, *, side: int = 8, rgb: bool = True, classes=("a", "b"), start: int = 0) -> None:
    """n images whose first pixel's red and green values spell their index (every image recognisable)."""
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        folder = root / classes[i % len(classes)] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        px = rng.integers(0, 256, (side, side, 3) if rgb else (side, side), dtype=np.uint8)
        px.reshape(-1)[:2] = (i // 256, i % 256)
        Image.fromarray(px).save(folder / f"{i:03d}.png")


def fixed_rate(sps):
    calls = []

    def measure(model, batch, device, seconds):
        calls.append((model, batch, str(device), seconds))
        return sps
    measure.calls = calls
    return measure


@pytest.mark.parametrize("rgb,classes,minutes,sps", [(True, ("a", "b"), 0.5, 40.0), (False, None, 30.0, 0.5)])
def test_auto_recipe_choices_reach_the_config(tmp_path, rgb, classes, minutes, sps):
    root = tmp_path / "imgs"
    write_folder(root, 60, side=12, rgb=rgb, classes=classes)
    data = data_section(str(root))
    measure = fixed_rate(sps)
    plan = auto_config(data, minutes, ["train.num_threads=1", "train.device=cpu"], measure=measure, text_encoder=False)
    facts = inspect_data(data)
    assert facts.count == len(split_files([p.relative_to(root).as_posix() for p in root.rglob("*.png")]).train)
    probe, batch = probe_network(facts, "cpu")
    assert measure.calls == [(probe, batch, "cpu", auto_module.PROBE_SECONDS)]
    expected = auto_recipe(facts, minutes, StepRate(probe, batch, sps), "cpu", text_encoder=False)
    cfg = plan.config.to_dict()
    for key, value in expected.overrides.items():
        section, name = key.split(".", 1)
        got = cfg[section][name]
        assert (list(got) if isinstance(got, tuple) else got) == (list(value) if isinstance(value, tuple) else value), key
    assert plan.config.data.dataset == "folder" and plan.config.data.holdout_fraction == 0.1
    assert plan.config.train.max_minutes == minutes and plan.config.train.eval_every_minutes > 0
    assert plan.config.data.channels == (3 if rgb else 1)
    assert plan.config.data.labels == (classes is not None)
    assert plan.config.train.choose_guidance == (classes is not None)   # chosen by measurement after training
    # a longer budget at the same rate never chooses a narrower network
    longer = auto_config(data, minutes * 8, ["train.num_threads=1"], measure=fixed_rate(sps), text_encoder=False)
    assert longer.config.model.model_channels >= plan.config.model.model_channels
    assert longer.config.train.ema_decay >= plan.config.train.ema_decay


def test_the_real_step_rate_measurement_feeds_the_recipe(tmp_path):
    root = tmp_path / "imgs"
    write_folder(root, 40, side=8)
    plan = auto_config(data_section(str(root)), 1.0, ["train.num_threads=1"], probe_seconds=0.2, text_encoder=False)
    assert plan.rate.steps_per_second > 0 and plan.rate.model.image_size == 8
    assert plan.config.model.image_size == 8 and plan.config.model.in_channels == 3
    assert "steps/s" in plan.describe()


def test_data_cli_writes_the_chosen_settings_and_set_wins_and_resume_keeps_them(tmp_path, capsys, monkeypatch):
    root, out = tmp_path / "imgs", tmp_path / "run"
    write_folder(root, 60)
    monkeypatch.setattr(auto_module, "measure_steps_per_second", fixed_rate(20.0))
    cache = f"train.eval_cache_dir={tmp_path / 'cache'}"
    code, stdout, err = run_cli(capsys, "train", "--data", root, "--minutes", 2, "--out", out, "--steps", 2,
                                "--no-progress", "--set", *QUICK, cache, "train.lr=0.0005")
    assert code == 0, err
    assert "recipe: ~" in stdout and "chosen (after your --set)" in stdout and "train.lr=0.0005" in stdout
    saved = yaml.safe_load((out / "config.yaml").read_text())
    plan = auto_config(data_section(str(root)), 2, [*QUICK, cache, "train.lr=0.0005", "train.steps=2"],
                       measure=fixed_rate(20.0))
    planned = yaml.safe_load(yaml.safe_dump(plan.config.to_dict()))
    # exactly the plan, --set included, but for the guidance weight chosen after training (train.choose_guidance)
    chosen = json.loads((out / "guidance.json").read_text())
    assert chosen["configured"] == planned["sample"]["guidance_scale"]
    planned["sample"]["guidance_scale"] = chosen["chosen"]
    assert saved == planned
    assert saved["train"]["lr"] == 0.0005 and saved["train"]["max_minutes"] == 2
    split = read_split(out / SPLIT_FILE)
    assert split == split_files([p.relative_to(root).as_posix() for p in root.rglob("*.png")], 0.1, 0)
    # resume: the saved config rules (no re-measuring, no --data), and the split is kept
    monkeypatch.setattr(auto_module, "measure_steps_per_second", None)     # would fail if called
    code, stdout, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", 3, "--no-progress")
    assert code == 0, err
    assert read_split(out / SPLIT_FILE) == split
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == saved["model"]
    code, _, err = run_cli(capsys, "train", "--data", root, "--out", out, "--resume")
    assert code == 2 and "drop --preset/--config/--data" in err


class Spy(Callback):
    def on_start(self, run):
        self.images = run.task.images.clone()
        self.callbacks = list(run.callbacks)


def _tiny_folder_config(root, *extra):
    return resolve_config("tiny", overrides=[
        "data.dataset=folder", f"data.root={root}", "data.holdout_fraction=0.25", "data.channels=3",
        "model.in_channels=3", "data.labels=true", "model.num_classes=2", "train.num_threads=1", "sample.steps=2",
        "sample.n=2", "train.batch_size=8", *extra])


def test_held_out_images_never_reach_the_training_data_and_stay_out_on_resume(tmp_path):
    root = tmp_path / "imgs"
    write_folder(root, 48)
    spy = Spy()
    train(_tiny_folder_config(root, "train.steps=2"), tmp_path / "run", progress=False, callbacks=[spy])
    split = read_split(tmp_path / "run" / SPLIT_FILE)
    assert len(split.heldout) > 0 and set(split.train) | set(split.heldout) == {
        p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    served = image_ids(spy.images)
    assert len(spy.images) == len(split.train) and served == {int(Path(p).stem) for p in split.train}
    assert not served & {int(Path(p).stem) for p in split.heldout}
    # resume after adding images: the held-out ones stay out, new ones follow the rule
    write_folder(root, 8, classes=("a",), start=100)
    spy2 = Spy()
    train(_tiny_folder_config(root, "train.steps=3"), tmp_path / "run", resume=True, progress=False, callbacks=[spy2])
    resumed = read_split(tmp_path / "run" / SPLIT_FILE)
    assert set(split.heldout) <= set(resumed.heldout) and set(resumed.train) >= set(split.train)
    assert len(resumed.train) + len(resumed.heldout) == 56
    served = image_ids(spy2.images)
    assert served == {int(Path(p).stem) for p in resumed.train}
    assert not served & {int(Path(p).stem) for p in resumed.heldout}


def test_a_classifier_for_a_folder_run_never_trains_on_the_runs_held_out_images(tmp_path, capsys):
    """``train-classifier --diffusion-from RUN`` holds out the images RUN held out (the classifier guides
    RUN's samples, and its held-out accuracy is only honest on images neither network saw)."""
    from difflab.train import train_classifier
    from difflab.train.classifier import ACCURACY_JSON

    root = tmp_path / "imgs"
    write_folder(root, 48)
    train(_tiny_folder_config(root, "train.steps=1"), tmp_path / "run", progress=False)
    run_split = read_split(tmp_path / "run" / SPLIT_FILE)
    code, out, err = run_cli(capsys, "train-classifier", "--preset", "tiny", "--diffusion-from", tmp_path / "run",
                             "--out", tmp_path / "clf", "--steps", 1, "--no-progress", "--set", "train.num_threads=1",
                             "train.batch_size=8", "train.eval_n=100")
    assert code == 0, err
    assert read_split(tmp_path / "clf" / SPLIT_FILE) == run_split
    assert f"{len(run_split.train)} images" in err
    acc = json.loads((tmp_path / "clf" / ACCURACY_JSON).read_text())
    assert acc["split"] == "held-out" and acc["n"] == len(run_split.heldout)
    # what the classifier task trains on: the training side only (and it stays so on resume)
    spy = Spy()
    cfg = yaml.safe_load((tmp_path / "clf" / "classifier.yaml").read_text())
    from difflab.config import ClassifierRunConfig
    clf_cfg = ClassifierRunConfig.from_dict({**cfg, "train": {**cfg["train"], "steps": 2}})
    train_classifier(clf_cfg, tmp_path / "clf", resume=True, progress=False, log=lambda m: None, callbacks=[spy])
    served = image_ids(spy.images.cpu())
    assert served == {int(Path(p).stem) for p in run_split.train}
    assert not served & {int(Path(p).stem) for p in run_split.heldout}


def image_ids(images: torch.Tensor) -> set[int]:
    """The indices write_folder spelled into the images a task holds ([N, 3, H, W] uint8)."""
    return {int(img[0, 0, 0]) * 256 + int(img[1, 0, 0]) for img in images}


def _eval_rows(run_dir):
    return [r for r in read_metrics(run_dir) if "heldout_loss" in r]


def test_evaluation_during_training_logs_rows_a_figure_and_survives_resume(tmp_path):
    root = tmp_path / "imgs"
    write_folder(root, 48)
    every_step = ["train.eval_every_minutes=1e-9", "train.eval_max_share=1e9", "train.eval_n=8",
                  f"train.eval_cache_dir={tmp_path / 'cache'}", "train.checkpoint_every=2"]
    train(_tiny_folder_config(root, "train.steps=4", *every_step), tmp_path / "a", progress=False)
    whole = _eval_rows(tmp_path / "a")
    assert [r["step"] for r in whole] == [1, 2, 3, 4]
    for r in whole:
        assert {"fd", "fd_floor", "fd_over_floor", "precision", "recall", "precision_floor", "recall_floor",
                "eval_n", "eval_s"} <= set(r) and r["fd_floor"] > 0 and r["eval_n"] == 8
    assert (tmp_path / "a" / "eval.png").is_file()
    # the same run in two parts: the rows are the same, none repeated or lost
    train(_tiny_folder_config(root, "train.steps=2", *every_step), tmp_path / "b", progress=False)
    train(_tiny_folder_config(root, "train.steps=4", *every_step), tmp_path / "b", resume=True, progress=False)
    parts = _eval_rows(tmp_path / "b")
    assert [r["step"] for r in parts] == [1, 2, 3, 4]
    for a, b in zip(whole, parts):
        for key in ("fd", "precision", "recall", "heldout_loss", "fd_floor"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


def test_unlabelled_data_without_a_featurizer_says_so_and_logs_the_heldout_loss(tmp_path):
    root = tmp_path / "imgs"
    write_folder(root, 40, classes=None)
    lines = []
    cfg = _tiny_folder_config(root, "train.steps=2", "data.labels=false", "model.num_classes=null",
                              "train.eval_every_minutes=10", f"train.eval_cache_dir={tmp_path / 'cache'}")
    train(cfg, tmp_path / "run", progress=False, log=lines.append)
    assert any("no featurizer for Frechet distance" in ln for ln in lines)
    rows = _eval_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [2] and "fd" not in rows[0] and rows[0]["heldout_loss"] > 0


def test_budget_warnings_are_printed_before_training(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(capsys, "train", "--preset", "tiny", "--out", tmp_path / "run", "--steps", 2,
                           "--no-progress", "--set", "train.num_threads=1", "sample.n=2", "sample.steps=2")
    assert code == 0
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert "warning: train.warmup_steps=5 is longer than the 2 steps of train.steps: the learning rate ends at 40% of " \
           "train.lr; e.g. --set train.warmup_steps=1" in warn, err
    # through the API: logged before the first step
    lines = []

    class Steps(Callback):
        def on_step_end(self, run):
            lines.append(f"STEP {run.step}")

    train(resolve_config("tiny", overrides=["train.steps=2", "train.num_threads=1", "sample.n=2", "sample.steps=2"]),
          tmp_path / "api", progress=False, log=lines.append, callbacks=[BudgetCheck(), Steps()])
    assert lines.index("warning: " + warn[0][len("warning: "):]) < lines.index("STEP 1")
    # with a time budget the network is timed first: an EMA longer than the run
    monkeypatch.setattr(auto_module, "measure_steps_per_second", fixed_rate(2.0))
    cfg = resolve_config("tiny", overrides=["train.max_minutes=5", "train.steps=100000", "train.ema_decay=0.9999",
                                            "train.ema_warmup=false", "train.warmup_steps=10"])
    found = budget_warnings(cfg)
    assert len(found) == 1 and found[0].startswith("train.ema_decay=0.9999 averages over ~10000 steps, longer than "
                                                   "the ~600 steps that 5 minutes allow at 2 steps/s")


def test_heartbeat_logs_a_line_every_period_of_its_clock(tmp_path):
    ticks = iter(range(0, 10_000, 25))
    beat = Heartbeat(period_s=60, clock=lambda: next(ticks))
    lines, spy = [], Spy()
    train(resolve_config("tiny", overrides=["train.steps=6", "train.num_threads=1", "sample.n=2", "sample.steps=2"]),
          tmp_path / "run", progress=False, log=lines.append, callbacks=[beat, spy])
    assert [re.match(r"step (\d+)/6 \| loss [0-9.e-]+ \(mean of (\d+) steps\)", ln).groups() for ln in beat.lines] == \
        [("3", "3"), ("6", "3")]
    assert all(ln in lines for ln in beat.lines)
    assert sum(isinstance(cb, Heartbeat) for cb in spy.callbacks) == 1       # the engine adds none of its own
    # without a bar and without one given, the engine adds its own
    spy = Spy()
    train(resolve_config("tiny", overrides=["train.steps=1", "train.num_threads=1", "sample.n=2", "sample.steps=2"]),
          tmp_path / "run2", progress=False, callbacks=[spy])
    assert sum(isinstance(cb, Heartbeat) for cb in spy.callbacks) == 1


def test_readme_data_command_trains_and_eval_fd_uses_the_held_out_split(tmp_path, capsys, monkeypatch):
    text = re.sub(r"\\\n\s*", " ", README.read_text(encoding="utf-8"))
    command = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("difflab train --data"))
    argv = shlex.split(command)[1:]
    assert "--minutes" in argv
    root, out = tmp_path / "photos", tmp_path / "run"
    write_folder(root, 60)
    argv = [str(root) if a.startswith("/path/to/") else a for a in argv]
    monkeypatch.setattr(auto_module, "measure_steps_per_second", fixed_rate(20.0))
    code, stdout, err = run_cli(capsys, *argv, "--out", out, "--steps", 2, "--no-progress", "--set", *QUICK,
                                f"train.eval_cache_dir={tmp_path / 'cache'}")
    assert code == 0, err
    assert (out / SPLIT_FILE).is_file() and (out / "eval.png").is_file()
    code, stdout, err = run_cli(capsys, "eval", "fd", "--checkpoint", out, "-n", 8, "--cache-dir", tmp_path / "cache",
                                "--no-progress", "--steps", 2)
    assert code == 0, err
    split = read_split(out / SPLIT_FILE)
    assert f"the run's {len(split.heldout)} held-out images" in stdout
    assert f"heldout (n={len(split.heldout)})" in stdout
    assert json.loads(json.dumps(yaml.safe_load((out / "config.yaml").read_text())))["data"]["holdout_fraction"] == 0.1


def test_evaluation_samples_ask_for_the_classes_in_the_datas_proportions():
    """Not a random draw of labels: the class mix of the samples moves FD in a classifier's feature space
    (a multinomial draw of 500 MNIST labels turned one model's FD of 27.6 into 43.3)."""
    from difflab.train.evaluation import proportional_labels

    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    assert torch.bincount(proportional_labels(labels, 7)).tolist() == [4, 2, 1]      # 3.5, 2.1, 1.4: largest rest
    assert torch.bincount(proportional_labels(labels, 10)).tolist() == [5, 3, 2]
    many = proportional_labels(torch.arange(60000) % 10, 500)
    assert torch.bincount(many).tolist() == [50] * 10 and many[:10].tolist() == list(range(10))  # mixed from the start
    skewed = proportional_labels(torch.tensor([3] * 9 + [1]), 100)
    assert torch.bincount(skewed, minlength=4).tolist() == [0, 10, 0, 90]


def test_eval_fd_asks_for_the_classes_in_the_training_images_proportions(tmp_path, capsys):
    """As the evaluation during training does; --labels cycle keeps the classes in turn."""
    root = tmp_path / "imgs"
    write_folder(root, 40, classes=("a",))
    write_folder(root, 10, classes=("b",), start=40)
    every = ["train.steps=1", f"train.eval_cache_dir={tmp_path / 'cache'}"]
    train(_tiny_folder_config(root, *every), tmp_path / "run", progress=False)
    split = read_split(tmp_path / "run" / SPLIT_FILE)
    counts = [sum(p.startswith(c + "/") for p in split.train) for c in "ab"]
    common = ["eval", "fd", "--checkpoint", tmp_path / "run", "-n", 10, "--cache-dir", tmp_path / "cache",
              "--no-progress", "--steps", 1]
    code, out, err = run_cli(capsys, *common, "--out", tmp_path / "p.json")
    assert code == 0, err
    expected = torch.bincount(torch.tensor([0] * counts[0] + [1] * counts[1])).double() * 10 / sum(counts)
    got = json.loads((tmp_path / "p.json").read_text())["classes"]
    assert got != [5, 5] and all(abs(g - e) < 1 for g, e in zip(got, expected.tolist()))
    assert "in the training images' proportions" in out
    code, out, err = run_cli(capsys, *common, "--labels", "cycle", "--out", tmp_path / "c.json")
    assert code == 0, err
    assert json.loads((tmp_path / "c.json").read_text())["classes"] == [5, 5]

