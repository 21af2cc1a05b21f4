"""The first stage of latent diffusion: a KL-regularised convolutional autoencoder
(Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
section 3 and Appendix G), its PatchGAN discriminator and its losses.

Notation
--------
x            image ``[B, C, H, W]`` in [-1, 1]
z            latent ``[B, latent_channels, H / f, W / f]``, ``f = 2 ** (len(channel_mult) - 1)``
posterior    q(z | x) = N(mean, diag(exp(logvar)))  (:class:`DiagonalGaussian`)
x_rec        decoder output D(z)
kl           KL(q(z | x) || N(0, I)), summed over the latent dimensions, per example
rec          reconstruction error ``|x - x_rec|`` (l1) or ``(x - x_rec)^2`` (l2), summed over
             pixels and channels, per example
g_loss       generator's adversarial loss ``-D(x_rec)`` averaged over patches, per example
d_weight     adaptive weight ||grad rec|| / ||grad g_loss|| at the decoder's last layer
             (Esser et al. 2021, "Taming Transformers", eq. 7)

Loss scale follows latent-diffusion's ``LPIPSWithDiscriminator`` without the perceptual term
(LPIPS needs downloaded VGG weights): ``rec`` is *summed* over pixels, and ``kl_weight`` (1e-6
by default) is relative to that sum; so ``loss = rec + kl_weight * kl + d_weight * g_loss``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from .attention import SelfAttention2d
from .base import ConfigMixin, check_int

RECON_LOSSES = ("l1", "l2")
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0      # clamp of log sigma^2, as in latent-diffusion


@dataclass(frozen=True)
class AutoencoderConfig(ConfigMixin):
    """Architecture and loss settings of an :class:`AutoencoderKL` (validated on construction).

    The encoder has one level per ``channel_mult`` entry (``base_channels * mult`` channels,
    ``num_res_blocks`` ResNet blocks each) and halves the resolution between levels, so the
    downsampling factor is ``f = 2 ** (len(channel_mult) - 1)`` and ``image_size`` must be
    divisible by it. ``mid_attention`` puts one self-attention layer in the bottleneck of
    the encoder and of the decoder. The discriminator fields size the :class:`PatchDiscriminator`
    (``disc_layers`` stride-2 convolutions; ``disc_weight = 0`` turns the adversarial term off).
    """

    in_channels: int = 3
    image_size: int = 32
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    latent_channels: int = 4
    mid_attention: bool = True
    norm_groups: int = 32
    kl_weight: float = 1e-6
    recon_loss: str = "l1"
    disc_start: int = 10_000
    disc_weight: float = 0.5
    disc_channels: int = 64
    disc_layers: int = 3

    def __post_init__(self):
        for name in ("in_channels", "image_size", "base_channels", "num_res_blocks", "latent_channels",
                     "norm_groups", "disc_channels", "disc_layers"):
            check_int(name, getattr(self, name), 1)
        check_int("disc_start", self.disc_start, 0)
        if not isinstance(self.channel_mult, tuple) or not self.channel_mult:
            raise ValueError(f"channel_mult must be a non-empty tuple of ints, got {self.channel_mult!r}")
        for m in self.channel_mult:
            check_int("each channel_mult entry", m, 1)
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size={self.image_size} is not divisible by the downsampling factor "
                             f"f={self.downsample_factor} (channel_mult={self.channel_mult})")
        for m in (1,) + self.channel_mult:
            if (self.base_channels * m) % self.norm_groups:
                raise ValueError(f"channel width {self.base_channels * m} is not divisible by "
                                 f"norm_groups={self.norm_groups}")
        if not isinstance(self.mid_attention, bool):
            raise ValueError(f"mid_attention must be a bool, got {self.mid_attention!r}")
        if self.recon_loss not in RECON_LOSSES:
            raise ValueError(f"unknown recon_loss {self.recon_loss!r}; allowed: {', '.join(RECON_LOSSES)}")
        for name in ("kl_weight", "disc_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        out = self.image_size // 2 ** self.disc_layers - 2     # two stride-1 4x4 convolutions follow
        if out < 1:
            raise ValueError(f"disc_layers={self.disc_layers} leaves no patch on a {self.image_size}px image "
                             "(image_size // 2**disc_layers must be >= 3); use fewer disc_layers")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(latent_channels, h, w)`` of one latent."""
        return (self.latent_channels, self.latent_size, self.latent_size)


# ----------------------------------------------------------------------------------------
# The posterior


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), ``logvar`` clamped to [-30, 20]."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "DiagonalGaussian":
        """Split ``[B, 2c, h, w]`` on the channel axis into (mean, logvar)."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    def sample(self, generator: rng.Generator = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """z = mean + std * eps (reparametrised, differentiable in mean and logvar); ``noise``: eps given."""
        eps = noise if noise is not None else rng.randn(self.mean.shape, generator, device=self.mean.device,
                                                        dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example: 0.5 * sum(mean^2 + var - 1 - logvar) over latent dims."""
        dims = tuple(range(1, self.mean.ndim))
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=dims)


# ----------------------------------------------------------------------------------------
# Blocks


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a (1x1 when widths differ) skip; no timestep input."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class _Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _middle(ch: int, cfg: AutoencoderConfig) -> nn.Sequential:
    layers = [ResnetBlock(ch, ch, cfg.norm_groups)]
    if cfg.mid_attention:
        layers.append(SelfAttention2d(ch, num_heads=1, norm_groups=cfg.norm_groups))
    layers.append(ResnetBlock(ch, ch, cfg.norm_groups))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x ``[B, C, H, W]`` -> moments ``[B, 2 * latent_channels, H/f, W/f]`` (mean; logvar)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.base_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 3, padding=1)]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(ch, cfg.base_channels * mult, cfg.norm_groups))
                ch = cfg.base_channels * mult
            if level != len(cfg.channel_mult) - 1:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        self.mid = _middle(ch, cfg)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.mid(self.down(x)))))


class Decoder(nn.Module):
    """z ``[B, latent_channels, h, w]`` -> x_rec ``[B, C, h * f, w * f]``; mirrors the encoder
    with ``num_res_blocks + 1`` blocks per level. ``conv_out`` is the "last layer" of the
    adaptive adversarial weight."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.base_channels * cfg.channel_mult[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch, 3, padding=1)
        self.mid = _middle(ch, cfg)
        layers: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResnetBlock(ch, cfg.base_channels * mult, cfg.norm_groups))
                ch = cfg.base_channels * mult
            if level != 0:
                layers.append(_Upsample(ch))
        self.up = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.up(self.mid(self.conv_in(z))))))


class AutoencoderKL(nn.Module):
    """``encode(x) -> DiagonalGaussian``, ``decode(z) -> x_rec``; ``forward(x, generator,
    sample_posterior=True) -> (x_rec, posterior)``."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise ValueError(f"AutoencoderKL expects an AutoencoderConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must be [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        return DiagonalGaussian.from_moments(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        expected = self.config.latent_shape
        if z.ndim != 4 or tuple(z.shape[1:]) != expected:
            raise ValueError(f"z must be [B, {', '.join(map(str, expected))}], got {tuple(z.shape)}")
        return self.decoder(z)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output convolution (for the adaptive adversarial weight)."""
        return self.decoder.conv_out.weight

    def forward(self, x: torch.Tensor, generator: rng.Generator = None, sample_posterior: bool = True,
                noise: torch.Tensor | None = None):
        posterior = self.encode(x)
        z = posterior.sample(generator, noise) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


# ----------------------------------------------------------------------------------------
# Discriminator and losses


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017, pix2pix; taming's ``NLayerDiscriminator``):
    ``n_layers`` stride-2 4x4 convolutions, a stride-1 one, and a 1-channel 4x4 output, giving
    one logit per overlapping patch ``[B, 1, h', w']``.

    Norm layers are GroupNorm rather than taming's BatchNorm, so a logit depends on its own
    image only and per-example losses do not depend on what else is in the batch.
    """

    def __init__(self, in_channels: int, channels: int = 64, n_layers: int = 3):
        super().__init__()
        check_int("n_layers", n_layers, 1)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, n_layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(math.gcd(32, out), out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():                      # taming's weights_init: N(0, 0.02)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    @classmethod
    def from_config(cls, config: AutoencoderConfig) -> "PatchDiscriminator":
        return cls(config.in_channels, config.disc_channels, config.disc_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _flat_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Per-example 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))  (Lim & Ye 2017)."""
    return 0.5 * (_flat_mean(F.relu(1.0 - logits_real)) + _flat_mean(F.relu(1.0 + logits_fake)))


def reconstruction_error(x: torch.Tensor, x_rec: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example ``|x - x_rec|`` (l1) or ``(x - x_rec)^2`` (l2), summed over C, H, W."""
    if kind not in RECON_LOSSES:
        raise ValueError(f"unknown recon_loss {kind!r}; allowed: {', '.join(RECON_LOSSES)}")
    diff = x - x_rec
    err = diff.abs() if kind == "l1" else diff.pow(2)
    return err.flatten(1).sum(dim=1)


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """lambda = ||grad_L rec|| / (||grad_L g|| + 1e-4), clamped to [0, 1e4], times ``disc_weight``
    (taming eq. 7; L = the decoder's last layer). Detached: it scales, it is not trained."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


def autoencoder_loss(ae: AutoencoderKL, x: torch.Tensor, *, step: int, discriminator: nn.Module | None = None,
                     generator: rng.Generator = None, sample_posterior: bool = True,
                     noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The autoencoder's (generator's) training terms, per example (every value has ``B`` rows).

    Keys: ``loss`` (minimise its mean), ``rec``, ``kl``, ``g_loss`` and ``d_weight`` (zeros before
    ``config.disc_start``, without a discriminator or with ``disc_weight = 0``), and ``x_rec``
    (the reconstruction, detached, ``[B, C, H, W]``, for :func:`discriminator_loss`).

    ``loss = rec + kl_weight * kl + d_weight * g_loss`` with ``d_weight`` the adaptive weight
    of the batch-mean terms (:func:`adaptive_weight`); it needs gradients, so with grad disabled
    (evaluation) it is 0. Backpropagating ``loss`` also leaves gradients in the discriminator's
    parameters: zero them before the discriminator's own step.
    """
    cfg = ae.config
    x_rec, posterior = ae(x, generator, sample_posterior, noise)
    rec = reconstruction_error(x, x_rec, cfg.recon_loss)
    kl = posterior.kl()
    loss = rec + cfg.kl_weight * kl
    zeros = torch.zeros_like(rec)
    g_loss, d_weight = zeros, zeros
    if discriminator is not None and cfg.disc_weight > 0 and step >= cfg.disc_start:
        g_loss = -_flat_mean(discriminator(x_rec))
        if torch.is_grad_enabled() and ae.last_layer.requires_grad:
            d_weight = adaptive_weight(rec.mean(), g_loss.mean(), ae.last_layer, cfg.disc_weight).expand_as(rec)
        loss = loss + d_weight * g_loss
    return {"loss": loss, "rec": rec, "kl": kl, "g_loss": g_loss, "d_weight": d_weight, "x_rec": x_rec.detach()}


def discriminator_loss(discriminator: nn.Module, x: torch.Tensor, x_rec: torch.Tensor, *, step: int,
                       config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """The discriminator's hinge loss, per example: keys ``loss`` (zeros before
    ``config.disc_start``), ``logits_real`` and ``logits_fake`` (patch means, detached).
    ``x_rec`` is detached here, so only the discriminator receives gradients."""
    logits_real = discriminator(x.detach())
    logits_fake = discriminator(x_rec.detach())
    factor = 1.0 if step >= config.disc_start else 0.0
    return {"loss": factor * hinge_d_loss(logits_real, logits_fake),
            "logits_real": _flat_mean(logits_real).detach(), "logits_fake": _flat_mean(logits_fake).detach()}


# ----------------------------------------------------------------------------------------
# Presets

AE_PRESETS: dict[str, AutoencoderConfig] = {
    # For tests: 8x8x1 -> 4x4x2 (f2), a forward takes about a millisecond.
    "tiny": AutoencoderConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                              latent_channels=2, norm_groups=4, disc_start=0, disc_channels=8, disc_layers=1),
    # MNIST 28x28x1 -> 7x7x4 (f4): 28 -> 14 -> 7, attention in the 7x7 bottleneck (49 tokens).
    "mnist-f4": AutoencoderConfig(in_channels=1, image_size=28, base_channels=32, channel_mult=(1, 2, 2),
                                  num_res_blocks=1, latent_channels=4, norm_groups=8, disc_start=2_000,
                                  disc_channels=32, disc_layers=2),
    # 32x32 images (CIFAR-10, or MNIST padded to 32) -> 8x8x4 (f4): the latent of UNET_PRESETS["latent"].
    "f4-32": AutoencoderConfig(in_channels=3, image_size=32, base_channels=64, channel_mult=(1, 2, 2),
                               num_res_blocks=1, latent_channels=4, norm_groups=32, disc_start=5_000,
                               disc_channels=64, disc_layers=2),
}


def get_ae_preset(name: str, **overrides: Any) -> AutoencoderConfig:
    """The preset ``name`` with fields overridden (``ValueError`` for unknown names or fields)."""
    if name not in AE_PRESETS:
        raise ValueError(f"unknown autoencoder preset {name!r}; available: {sorted(AE_PRESETS)}")
    cfg = AE_PRESETS[name]
    unknown = sorted(set(overrides) - set(cfg.to_dict()))
    if unknown:
        raise ValueError(f"unknown AutoencoderConfig fields in overrides: {unknown}")
    return cfg.replace(**overrides)


def _register_for_io() -> None:
    """Let ``difflab.nn.io.save_pretrained`` / ``load_pretrained`` handle ``AutoencoderKL``."""
    from .io import MODEL_CLASSES
    MODEL_CLASSES.setdefault("AutoencoderKL", (AutoencoderKL, AutoencoderConfig))


_register_for_io()
