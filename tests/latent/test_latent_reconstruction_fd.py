"""The autoencoder trainer's held-out Frechet distance of reconstructions (reconstruction.json)."""

import json
import sys
from pathlib import Path

import pytest
import torch

import difflab.train.autoencoder as ae_train
from difflab.data import load_dataset
from difflab.eval import ClassifierFeaturizer, EvalClassifier, EvalClassifierConfig, compute_stats, \
    frechet_distance, save_eval_classifier
from difflab.nn.autoencoder import AutoencoderKL, DiagonalGaussian, get_ae_preset
from difflab.eval import reconstruction_quality
from difflab.runs import load_autoencoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli_helpers import AE, run_cli  # noqa: E402


def _classifier(directory: Path, dataset: str = "digits") -> Path:
    """A randomly initialised evaluation classifier (a fixed featurizer is all FD needs) saved to ``directory``."""
    torch.manual_seed(0)
    return save_eval_classifier(EvalClassifier(EvalClassifierConfig(image_size=16)), directory,
                                metadata={"dataset": dataset})


@pytest.fixture(scope="module")
def held_out():
    return load_dataset("digits", split="test").to_float()[:64]


class _PerfectAutoencoder(torch.nn.Module):
    """D(E(x).mode()) = x."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def encode(self, x):
        return DiagonalGaussian(x, torch.zeros_like(x))

    def decode(self, z):
        return z


def test_fd_is_that_of_the_reconstruction_features_and_zero_when_perfect(tmp_path, held_out):
    feat = ClassifierFeaturizer.from_directory(_classifier(tmp_path / "clf"))
    torch.manual_seed(1)
    ae = AutoencoderKL(get_ae_preset("tiny")).eval()
    q = reconstruction_quality(ae, held_out, batch_size=24, featurizer=feat)   # batches of uneven size
    with torch.no_grad():
        x_rec = ae.decode(ae.encode(held_out).mode()).clamp(-1, 1)
    expected = frechet_distance(compute_stats(feat.features(x_rec)), compute_stats(feat.features(held_out)))
    assert q["fd"] == pytest.approx(expected, rel=1e-6) and q["fd"] > 0       # an untrained autoencoder is off
    assert q["fd_featurizer"] == "eval-classifier-digits" and q["n"] == 64
    perfect = reconstruction_quality(_PerfectAutoencoder(), held_out, featurizer=feat)
    assert perfect["fd"] == pytest.approx(0.0, abs=1e-6) and perfect["mean_abs_error"] == 0.0
    assert "fd" not in reconstruction_quality(ae, held_out)                   # no featurizer: PSNR only


def test_trainer_reports_fd_of_the_saved_weights_with_the_given_classifier(tmp_path, capsys, held_out):
    clf = _classifier(tmp_path / "clf")
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, *AE, f"train.eval_classifier={clf}", "--steps", 3, "--out", run)
    assert code == 0, err
    assert "Frechet distance to the originals" in out
    doc = json.loads((run / "reconstruction.json").read_text())
    ae, _, _ = load_autoencoder(run)
    q = reconstruction_quality(ae, held_out, featurizer=ClassifierFeaturizer.from_directory(clf))
    assert doc["n"] == 64 and doc["fd_classifier"] == str(clf) and doc["fd_featurizer"] == "eval-classifier-digits"
    assert doc["fd"] == pytest.approx(q["fd"], rel=1e-6) and doc["psnr_db"] == pytest.approx(q["psnr_db"], rel=1e-6)


def test_without_a_classifier_for_the_dataset_fd_is_skipped_with_a_note(tmp_path, capsys, monkeypatch):
    # 'auto' finds nothing: the only saved classifier was trained on another dataset
    other = _classifier(tmp_path / "mnist-clf", dataset="mnist")
    monkeypatch.setattr(ae_train, "eval_classifier_dirs", lambda dataset: [tmp_path / "missing", other])
    assert ae_train.find_eval_classifier("digits") is None and ae_train.find_eval_classifier("mnist") == other
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, *AE, "--steps", 2, "--out", run)
    assert code == 0, err
    assert "note: no evaluation classifier for digits" in err and "Frechet distance skipped" in out
    doc = json.loads((run / "reconstruction.json").read_text())
    assert doc["fd"] is None and "psnr_db" in doc
    assert not (tmp_path / "missing").exists()                  # nothing was trained or cached


def test_a_bad_classifier_folder_is_one_line_before_training(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, *AE, f"train.eval_classifier={tmp_path / 'nope'}", "--steps", 2, "--out", run)
    assert code != 0
    assert "train.eval_classifier=" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (run / "checkpoints").exists()


def test_a_classifier_of_another_dataset_is_used_when_named_but_noted(tmp_path, capsys):
    clf = _classifier(tmp_path / "mnist-clf", dataset="mnist")
    code, out, err = run_cli(capsys, *AE, f"train.eval_classifier={clf}", "--steps", 2, "--out", tmp_path / "run")
    assert code == 0, err
    assert "was trained on mnist, not on digits" in err
    assert json.loads((tmp_path / "run" / "reconstruction.json").read_text())["fd"] >= 0
