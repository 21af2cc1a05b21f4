import json

import pytest
import torch

from difflab.diffusion import DiffusionConfig
from difflab.latent import (HELD_OUT_TEMPLATES, NUMBER_WORDS, TRAIN_TEMPLATES, LatentDiffusion,
                            compute_scale_factor, make_mnist_captions)
from difflab.nn.autoencoder import AutoencoderKL, get_ae_preset
from difflab.samplers import ddim_sample




def _ae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(get_ae_preset("tiny")).eval()


def _images(n: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_scale_factor_makes_latents_unit_std():
    ae, x = _ae(), _images()
    with torch.no_grad():
        raw_std = ae.encode(x).mode().std().item()
    assert abs(raw_std - 1) > 0.1                       # the test would be vacuous otherwise
    s_mode = compute_scale_factor(ae, x, batch_size=7, sample=False)
    torch.testing.assert_close(s_mode, 1 / raw_std, rtol=1e-5, atol=0)
    assert compute_scale_factor(ae, x, batch_size=64, sample=False) == pytest.approx(s_mode, rel=1e-9)
    ld = LatentDiffusion(ae, s_mode)
    assert ld.encode_to_latent(x, sample=False).std().item() == pytest.approx(1.0, rel=1e-5)
    # default: posterior samples, as when training the diffusion model
    ld = LatentDiffusion.from_data(ae, x, batch_size=16, generator=torch.Generator().manual_seed(0))
    z_0 = ld.encode_to_latent(_images(200, seed=1), torch.Generator().manual_seed(1))
    assert z_0.shape == (200, 2, 4, 4) and z_0.std().item() == pytest.approx(1.0, abs=0.05)
    assert "scale_factor" in ld.state_dict()


def test_decode_inverts_the_scaling():
    ae, x = _ae(), _images(4)
    ld = LatentDiffusion(ae, 0.37)
    with torch.no_grad():
        expected = ae.decode(ae.encode(x).mode())
        torch.testing.assert_close(ld.encode_to_latent(x, sample=False), 0.37 * ae.encode(x).mode())
    torch.testing.assert_close(ld.decode_from_latent(ld.encode_to_latent(x, sample=False)), expected)
    assert all(p.requires_grad for p in ae.parameters())     # wrapping does not freeze the caller's module
    with pytest.raises(ValueError, match="scale_factor must be a positive"):
        LatentDiffusion(ae, 0.0)


def test_save_load_keeps_scale_factor(tmp_path):
    ld = LatentDiffusion(_ae(), 0.8125)
    ld.save(tmp_path)
    assert json.loads((tmp_path / "latent.json").read_text())["scale_factor"] == 0.8125
    loaded = LatentDiffusion.load(tmp_path)
    assert float(loaded.scale_factor) == 0.8125
    x = _images(3)
    assert torch.equal(loaded.encode_to_latent(x, sample=False), ld.encode_to_latent(x, sample=False))
    with pytest.raises(ValueError, match="latent.json not found"):
        LatentDiffusion.load(tmp_path / "autoencoder")


def test_sampling_in_latent_space_and_trajectory_decoding():
    ld = LatentDiffusion(_ae(), 0.5)
    diffusion = DiffusionConfig(num_timesteps=100).build()
    seen = []

    def model(z_t, t):                  # a latent-space eps model
        seen.append(tuple(z_t.shape))
        return 0.1 * z_t

    x_T = ld.noise(3, torch.Generator().manual_seed(0))
    assert x_T.shape == (3, 2, 4, 4)
    out = ld.sample(ddim_sample, model, diffusion, x_T, steps=5, return_trajectory=True)
    assert set(seen) == {(3, 2, 4, 4)} and out.latent.nfe == 5
    assert out.images.shape == (3, 1, 8, 8) and out.images.abs().max() <= 1
    torch.testing.assert_close(out.images, ld.decode_from_latent(out.latent.sample, clamp=True))
    frames = ld.decode_trajectory(out.latent.pred_x0s, batch_size=2)
    assert len(frames) == 5 and all(f.shape == (3, 1, 8, 8) for f in frames)
    torch.testing.assert_close(frames[2], ld.decode_from_latent(out.latent.pred_x0s[2], clamp=True))
    with pytest.raises(ValueError, match="clip_denoised"):
        ld.sample(ddim_sample, model, diffusion, x_T, steps=5, clip_denoised=True)
    with pytest.raises(ValueError, match=r"x_T must be \[B, 2, 4, 4\]"):
        ld.sample(ddim_sample, model, diffusion, torch.zeros(3, 1, 8, 8), steps=5)


def test_latent_training_losses_are_per_example():
    ld = LatentDiffusion(_ae(), 0.5)
    diffusion = DiffusionConfig(num_timesteps=100).build()
    x, t = _images(4), torch.tensor([0, 10, 50, 99])
    seen = []
    terms = ld.training_losses(lambda z_t, t: (seen.append(z_t), torch.zeros_like(z_t))[1], diffusion, x, t,
                               generator=torch.Generator().manual_seed(0))
    assert terms["loss"].shape == (4,)
    # exactly: the generator first encodes z_0 = scale_factor * z, z ~ q(z | x), then draws eps; the
    # model sees z_t = sqrt(abar) z_0 + sqrt(1 - abar) eps, and an all-zero eps prediction costs mean(eps^2)
    g = torch.Generator().manual_seed(0)
    z_0 = ld.encode_to_latent(x, g)
    eps = torch.randn(z_0.shape, generator=g)
    abar = torch.as_tensor(diffusion.terms.alphas_cumprod, dtype=torch.float32)[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(seen[0], torch.sqrt(abar) * z_0 + torch.sqrt(1 - abar) * eps)
    torch.testing.assert_close(terms["loss"], (eps**2).mean(dim=(1, 2, 3)))
    # and in expectation E[eps^2] = 1: the mean of n = 4 x 2 x 4 x 4 = 128 squared normals has standard
    # deviation sqrt(2 / 128) = 0.125, so 4 of them give 0.5
    assert terms["loss"].mean().item() == pytest.approx(1.0, abs=4 * (2 / eps.numel()) ** 0.5)


def test_mnist_captions_name_the_right_digit():
    labels = torch.arange(10).repeat(20)
    g = torch.Generator().manual_seed(0)
    captions = make_mnist_captions(labels, g)
    assert len(captions) == 200
    for y, caption in zip(labels.tolist(), captions):
        words = caption.replace(",", " ").split()
        assert NUMBER_WORDS[y] in words or str(y) in words, caption
        others = [w for k, w in enumerate(NUMBER_WORDS) if k != y] + [str(k) for k in range(10) if k != y]
        assert not set(others) & set(words), caption
    assert {c for c in captions} >= {t.format(word="seven", digit=7) for t in TRAIN_TEMPLATES}
    assert make_mnist_captions(labels, torch.Generator().manual_seed(0)) == captions


def test_held_out_templates_are_disjoint_and_used():
    assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)
    train = {t.format(word=w, digit=d) for t in TRAIN_TEMPLATES for d, w in enumerate(NUMBER_WORDS)}
    held = make_mnist_captions(torch.arange(10).repeat(10), torch.Generator().manual_seed(0), held_out=True)
    assert not set(held) & train
    assert "this is a seven" in held and "a photo showing the numeral 7" in held
    with pytest.raises(ValueError, match="not both"):
        make_mnist_captions(torch.tensor([1]), templates=("{word}",), held_out=True)
    with pytest.raises(ValueError, match="0..9"):
        make_mnist_captions(torch.tensor([10]))
    assert make_mnist_captions(torch.tensor([3]), templates=("digit #{digit}",)) == ["digit #3"]
