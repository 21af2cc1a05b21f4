import pytest
import torch

from difflab.data.toy import mixture_params
from difflab.diffusion import DiffusionConfig
from difflab.exact import GaussianMixture
from difflab.toy import run_toy, sample_toy_model, train_toy


@pytest.mark.slow
def test_toy_model_learns_gaussian_mixture():
    res = train_toy("gaussian_mixture", steps=800, batch_size=256, lr=3e-3,
                    diffusion=DiffusionConfig(schedule="cosine", num_timesteps=200, prediction="v"))
    assert sum(res.losses[-50:]) < sum(res.losses[:50])
    w, m, c = mixture_params("gaussian_mixture")
    gm = GaussianMixture(m.numpy(), c.numpy(), w.numpy())
    for sampler, kw in (("ddim", dict(steps=30)), ("ddpm", dict(steps=None))):
        s = sample_toy_model(res.model, res.diffusion, 2000, sampler=sampler, **kw).sample.double()
        # each component keeps its third of the samples (exact posterior class at t = 0) ...
        owner = gm.class_log_prob(s, torch.ones(len(s), dtype=torch.float64)).argmax(1)
        shares = torch.bincount(owner, minlength=3) / len(s)
        assert torch.all((shares - 1 / 3).abs() < 0.06), (sampler, shares)
        # ... and the overall mean and covariance are those of the data
        assert torch.allclose(s.mean(0), gm.mean(), atol=0.1), sampler
        assert torch.allclose(torch.cov(s.T), gm.covariance(), atol=0.15), sampler


def test_untrained_model_fails_the_same_check():
    res = train_toy("gaussian_mixture", steps=1, diffusion=DiffusionConfig(schedule="cosine", num_timesteps=200,
                                                                           prediction="v"))
    s = sample_toy_model(res.model, res.diffusion, 500, sampler="ddim", steps=10).sample.double()
    w, m, c = mixture_params("gaussian_mixture")
    gm = GaussianMixture(m.numpy(), c.numpy(), w.numpy())
    assert not torch.allclose(torch.cov(s.T), gm.covariance(), atol=0.15)


def test_run_toy_writes_plots(tmp_path):
    paths = run_toy(tmp_path, "two_moons", steps=30, n=200, sample_steps=5, progress=False)
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 1000


def test_toy_cli(tmp_path, capsys):
    from difflab.cli import main

    assert main(["toy", "--dataset", "eight_gaussians", "--steps", "20", "-n", "100", "--sample-steps", "5",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "samples.png" in out and (tmp_path / "samples.png").is_file()
    assert main(["toy", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "difflab: error:" in capsys.readouterr().err
