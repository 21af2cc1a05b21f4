import json

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from difflab.nn.autoencoder import (AE_PRESETS, AutoencoderConfig, AutoencoderKL, DiagonalGaussian,
                                    PatchDiscriminator, adaptive_weight, autoencoder_loss, discriminator_loss,
                                    get_ae_preset)
from difflab.nn.io import load_pretrained, save_pretrained




@pytest.mark.parametrize("name", sorted(AE_PRESETS))
def test_preset_shapes(name):
    cfg = AE_PRESETS[name]
    torch.manual_seed(0)
    ae = AutoencoderKL(cfg).eval()
    x = torch.rand(2, cfg.in_channels, cfg.image_size, cfg.image_size) * 2 - 1
    with torch.no_grad():
        posterior = ae.encode(x)
        f = cfg.downsample_factor
        assert posterior.mean.shape == (2, cfg.latent_channels, cfg.image_size // f, cfg.image_size // f)
        assert posterior.logvar.shape == posterior.mean.shape
        assert ae.decode(posterior.mode()).shape == x.shape
        logits = PatchDiscriminator.from_config(cfg)(x)
    assert logits.shape[:2] == (2, 1) and min(logits.shape[2:]) >= 1


def test_mnist_f4_is_28_to_7x7():
    cfg = AE_PRESETS["mnist-f4"]
    assert (cfg.in_channels, cfg.image_size) == (1, 28)
    assert cfg.latent_shape == (4, 7, 7) and cfg.downsample_factor == 4


def test_kl_matches_torch_distributions_float64():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    ours = DiagonalGaussian(mean, logvar).kl()
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # Closed form: N(0, I) has zero KL to itself.
    assert DiagonalGaussian(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)).kl().abs().max() == 0


def test_posterior_clamps_logvar_and_samples_reproducibly():
    mean = torch.zeros(2, 1, 2, 2)
    logvar = torch.tensor([-100.0, 100.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    q = DiagonalGaussian(mean, logvar)
    assert q.logvar[0].eq(-30.0).all() and q.logvar[1].eq(20.0).all()
    q = DiagonalGaussian(torch.randn(4, 2, 3, 3), torch.full((4, 2, 3, 3), -2.0))
    a = q.sample(torch.Generator().manual_seed(1))
    b = q.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, q.mode())
    # z = mean + std * eps with std = exp(-1)
    eps = torch.randn(q.mean.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, q.mean + torch.exp(torch.tensor(-1.0)) * eps)


def test_short_overfit_reduces_reconstruction():
    torch.manual_seed(0)
    cfg = get_ae_preset("tiny", disc_weight=0.0)
    ae = AutoencoderKL(cfg)
    g = torch.Generator().manual_seed(0)
    # 8 tiny images: blurred random blobs in [-1, 1].
    x = F.avg_pool2d(torch.rand(8, 1, 10, 10, generator=g), 3, stride=1).mul(2).sub(1).clamp(-1, 1)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    with torch.no_grad():
        first = autoencoder_loss(ae, x, step=0, generator=torch.Generator().manual_seed(0))["rec"].mean().item()
    for step in range(60):
        terms = autoencoder_loss(ae, x, step=step, generator=g)
        opt.zero_grad()
        terms["loss"].mean().backward()
        opt.step()
    with torch.no_grad():
        last = autoencoder_loss(ae, x, step=0, sample_posterior=False)["rec"].mean().item()
    assert last < 0.35 * first, (first, last)
    # and it reconstructs the individual images, not just their average
    mean_image_error = (x - x.mean(0)).abs().flatten(1).sum(1).mean().item()
    assert last < 0.6 * mean_image_error, (last, mean_image_error)


def test_adaptive_weight_and_gan_terms():
    torch.manual_seed(0)
    cfg = get_ae_preset("tiny", disc_start=5, disc_weight=0.5)
    ae, disc = AutoencoderKL(cfg), PatchDiscriminator.from_config(cfg)
    x = torch.rand(3, 1, 8, 8) * 2 - 1

    before = autoencoder_loss(ae, x, step=4, discriminator=disc, sample_posterior=False)
    assert before["g_loss"].eq(0).all() and before["d_weight"].eq(0).all()
    torch.testing.assert_close(before["loss"], before["rec"] + cfg.kl_weight * before["kl"])

    after = autoencoder_loss(ae, x, step=5, discriminator=disc, sample_posterior=False)
    x_rec = ae(x, sample_posterior=False)[0]
    g_loss = -disc(x_rec).flatten(1).mean(1)
    torch.testing.assert_close(after["g_loss"], g_loss)
    # taming eq. 7 by hand at the decoder's last layer
    rec = (x - x_rec).abs().flatten(1).sum(1).mean()
    gr, = torch.autograd.grad(rec, ae.decoder.conv_out.weight, retain_graph=True)
    gg, = torch.autograd.grad(g_loss.mean(), ae.decoder.conv_out.weight, retain_graph=True)
    expected = 0.5 * gr.norm() / (gg.norm() + 1e-4)
    torch.testing.assert_close(after["d_weight"], expected.expand(3), rtol=1e-5, atol=0)
    torch.testing.assert_close(after["loss"], after["rec"] + cfg.kl_weight * after["kl"]
                               + after["d_weight"] * after["g_loss"])
    # without gradients (evaluation) the adaptive weight is 0
    with torch.no_grad():
        assert autoencoder_loss(ae, x, step=5, discriminator=disc)["d_weight"].eq(0).all()
    assert adaptive_weight(rec, g_loss.mean(), ae.last_layer, 0.0) == 0


class _FixedLogits(torch.nn.Module):
    """Logit = the image's first pixel, repeated over a 2x2 patch grid."""

    def forward(self, x):
        return x[:, :1, :1, :1].expand(-1, 1, 2, 2)


def test_discriminator_hinge_loss_closed_form():
    cfg = get_ae_preset("tiny", disc_start=10)
    real = torch.zeros(2, 1, 8, 8)
    fake = torch.zeros(2, 1, 8, 8)
    real[:, 0, 0, 0] = torch.tensor([2.0, 0.5])     # D(real) = 2 (beyond margin), 0.5
    fake[:, 0, 0, 0] = torch.tensor([-3.0, 0.25])   # D(fake) = -3 (beyond margin), 0.25
    out = discriminator_loss(_FixedLogits(), real, fake, step=10, config=cfg)
    expected = 0.5 * torch.tensor([0.0 + 0.0, 0.5 + 1.25])
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["logits_real"], torch.tensor([2.0, 0.5]))
    assert discriminator_loss(_FixedLogits(), real, fake, step=9, config=cfg)["loss"].eq(0).all()


def test_discriminator_step_trains_only_the_discriminator():
    torch.manual_seed(0)
    cfg = get_ae_preset("tiny")
    ae, disc = AutoencoderKL(cfg), PatchDiscriminator.from_config(cfg)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    terms = autoencoder_loss(ae, x, step=0, discriminator=disc)
    assert not terms["x_rec"].requires_grad
    discriminator_loss(disc, x, terms["x_rec"], step=0, config=cfg)["loss"].mean().backward()
    assert all(p.grad is None for p in ae.parameters())
    assert all(p.grad is not None for p in disc.parameters())


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    ae = AutoencoderKL(AE_PRESETS["tiny"]).eval()
    save_pretrained(ae, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["class_name"] == "AutoencoderKL" and meta["config"]["channel_mult"] == [1, 2]
    loaded = load_pretrained(tmp_path, expected_config=ae.config).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(x).mode()), ae.decode(ae.encode(x).mode()))


def test_config_validation():
    d = AE_PRESETS["tiny"].to_dict()
    assert AutoencoderConfig.from_dict(d) == AE_PRESETS["tiny"]
    with pytest.raises(ValueError, match="unknown AutoencoderConfig keys"):
        AutoencoderConfig.from_dict({**d, "scale_factor": 0.18})
    with pytest.raises(ValueError, match="not divisible by the downsampling factor"):
        get_ae_preset("mnist-f4", channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="recon_loss"):
        get_ae_preset("tiny", recon_loss="l3")
    with pytest.raises(ValueError, match="disc_layers"):
        get_ae_preset("tiny", disc_layers=3)
    with pytest.raises(ValueError, match="unknown autoencoder preset"):
        get_ae_preset("sd-vae")
    ae = AutoencoderKL(AE_PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"x must be \[B, 1, 8, 8\]"):
        ae.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"z must be \[B, 2, 4, 4\]"):
        ae.decode(torch.zeros(1, 4, 4, 4))
