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


def test_conditional_toy_mlp_and_noisy_classifier():
    import pytest

    from difflab.nn.mlp import ToyMLP, ToyMLPConfig
    from difflab.toy import train_denoiser, train_noisy_classifier

    w, m, c = mixture_params("gaussian_mixture")
    gm = GaussianMixture(m.numpy(), c.numpy(), w.numpy())

    def draw(n, gen):
        x, y = gm.sample(n, gen)
        return x.float(), y

    diffusion = DiffusionConfig(schedule="cosine", num_timesteps=200, prediction="v").build()
    torch.manual_seed(0)
    net = ToyMLP(ToyMLPConfig(num_classes=3))
    assert net.null_class == 3
    with pytest.raises(ValueError, match="needs labels"):
        net(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    losses = train_denoiser(net, diffusion, draw, steps=300, batch_size=256, class_dropout=0.2)
    assert sum(losses[-30:]) < sum(losses[:30])
    # a label-conditioned sample lands in its own component
    for k in range(3):
        s = sample_toy_model(net, diffusion, 300, steps=20, model_kwargs={"y": torch.full((300,), k)}).sample
        owner = gm.class_log_prob(s.double(), torch.ones(300, dtype=torch.float64)).argmax(1)
        assert (owner == k).float().mean() > 0.8, k

    clf = ToyMLP(ToyMLPConfig(out_dim=3))
    train_noisy_classifier(clf, diffusion, draw, steps=200, batch_size=256)
    x0, y = draw(1000, torch.Generator().manual_seed(2))
    with torch.no_grad():
        acc_clean = (clf(x0, torch.zeros(1000, dtype=torch.long)).argmax(1) == y).float().mean()
        acc_noise = (clf(torch.randn(1000, 2), torch.full((1000,), 199)).argmax(1) == y).float().mean()
    assert acc_clean > 0.9 and acc_noise < 0.5
    with pytest.raises(ValueError, match="needs labels"):
        train_noisy_classifier(clf, diffusion, lambda n, g: (draw(n, g)[0], None), steps=1)
