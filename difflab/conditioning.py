"""What a run feeds the U-Net besides x_t and t, and the space x_t lives in.

:class:`RunConditioning` implements three options of a :class:`~difflab.config.RunConfig`
(a run with none of them has no RunConditioning and takes the plain path of the loop):

``latent.autoencoder``   latent diffusion (Rombach et al. 2022). The training images are encoded
                         once into the posterior moments of q(z | x); each batch draws
                         ``z = mean + std * eps`` from the run's generator and trains on
                         ``z_0 = scale_factor * z``, with ``scale_factor = 1 / std(z)`` over the
                         training set (LDM Appendix G), computed at the start of a fresh run and
                         then read back from the checkpoint. Samples are decoded at the end.
``cond.text``            prompts through cross-attention. Captions are the dataset's own or, for
                         digit labels, :func:`~difflab.latent.make_mnist_captions` drawn per batch;
                         each is replaced by the empty prompt with probability
                         ``train.class_dropout``, the null condition of classifier-free guidance.
                         ``trainable``: a word-level TextEncoder trained jointly
                         (:class:`~difflab.nn.conditioned.TextConditionedUNet`); ``pretrained``:
                         frozen all-MiniLM-L6-v2 token states, each unique caption encoded once.
``cond.low_res_factor``  super-resolution by concatenation: ``cond`` = the image downsampled by the
                         factor and resized to the network's resolution
                         (:func:`~difflab.data.transforms.low_res_condition`). With an f4
                         autoencoder and factor 4 the low-resolution image is exactly the latent's
                         size and is concatenated to z_t as is (as in LDM's super-resolution models).

Extra checkpoint files: ``latent/`` (:meth:`LatentDiffusion.save`: the autoencoder and
``latent.json`` with the scale factor) and ``text_encoder.json`` (the trainable encoder's config,
vocabulary included; its weights are in the model's state dict).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

from .config import ConfigError, RunConfig
from .data.transforms import low_res_condition, uint8_to_float
from .files import write_text_atomic
from .latent import NUMBER_WORDS, TRAIN_TEMPLATES, LatentDiffusion, make_mnist_captions, scale_factor_from_latents
from .nn.autoencoder import AutoencoderKL, DiagonalGaussian
from .nn.conditioned import TextConditionedUNet
from .nn.text import UNK, PretrainedTextEncoder, TextEncoder, TextEncoderConfig, WordTokenizer, empty_prompt_uncond, \
    split_words
from .sampling import sample_images, with_default_guidance
from .viz import save_grid

LATENT_DIR = "latent"
TEXT_ENCODER_JSON = "text_encoder.json"
DEFAULT_TEMPLATE = TRAIN_TEMPLATES[0]       # "a handwritten {word}": the prompts of grids drawn during training
ENCODE_BATCH = 256


def conditioning_needed(config: RunConfig) -> bool:
    return config.latent.autoencoder is not None or config.cond.text != "none" or config.cond.low_res_factor > 0


class Prompts:
    """Prompts -> model kwargs (tensors, one row per prompt) and the empty prompt's kwargs.

    ``trainable``: ``tokens`` / ``token_mask`` for a :class:`TextConditionedUNet` (the empty prompt
    has no tokens); ``pretrained``: ``context`` / ``context_mask`` from the frozen encoder."""

    def __init__(self, tokenizer: WordTokenizer | None = None, encoder: PretrainedTextEncoder | None = None):
        assert (tokenizer is None) != (encoder is None)
        self.tokenizer, self.encoder = tokenizer, encoder
        self.uncond: Callable[[dict], dict] = self._no_tokens if tokenizer is not None else empty_prompt_uncond(encoder)

    def kwargs(self, prompts: list[str], device=None) -> dict[str, torch.Tensor]:
        if self.tokenizer is not None:
            ids, mask = self.tokenizer(prompts)
            return {"tokens": ids.to(device), "token_mask": mask.to(device)}
        context, mask = self.encoder.encode(prompts)
        return {"context": context.to(device), "context_mask": mask.to(device)}

    @staticmethod
    def _no_tokens(kwargs: dict) -> dict:
        if "tokens" not in kwargs:
            raise ValueError("classifier-free guidance needs 'tokens' in model_kwargs")
        return {**kwargs, "tokens": torch.zeros_like(kwargs["tokens"]),
                "token_mask": torch.zeros_like(kwargs["token_mask"])}

    def unknown_words(self, prompts: list[str]) -> list[str]:
        """Words the trainable encoder never saw (read as <unk>); none for the pretrained one."""
        if self.tokenizer is None:
            return []
        return sorted({w for p in prompts for w in split_words(p) if w not in self.tokenizer.ids} - {UNK})


class RunConditioning:
    """Latent space, prompts and low-resolution conditions of one run (see the module docstring)."""

    def __init__(self, config: RunConfig, latent: LatentDiffusion | None, text_config: TextEncoderConfig | None,
                 prompts: Prompts | None, captions_from_labels: bool = True):
        self.config, self.latent, self.text_config, self.prompts = config, latent, text_config, prompts
        self.captions_from_labels = captions_from_labels
        self._ae = None                                 # an autoencoder whose scale factor is still to compute
        self._mean = self._logvar = self._images = self._labels = self._captions = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_training(cls, config: RunConfig, ds, device, log, *, latent: LatentDiffusion | None = None,
                     text_config: TextEncoderConfig | None = None, autoencoder: AutoencoderKL | None = None
                     ) -> "RunConditioning | None":
        """For a run about to train on ``ds``; None for plain runs. A fresh latent run passes the first
        stage's ``autoencoder`` (its scale factor is computed in :meth:`prepare`); a resumed run passes
        what its checkpoint holds (``latent``, ``text_config``: ``difflab.runs.read_conditioning``)."""
        if not conditioning_needed(config):
            return None
        c, m = config.cond, config.model
        ae = autoencoder if latent is None else None
        if config.latent.autoencoder is not None:
            if ae is None and latent is None:
                raise ValueError("a latent run needs its autoencoder or the latent space of its checkpoint")
            latent_shape = (ae or latent.autoencoder).config.latent_shape
            if (m.in_channels, m.image_size, m.image_size) != latent_shape:
                c, h, w = latent_shape
                raise ConfigError(f"the autoencoder's latents are {c}x{h}x{w} but the model takes {m.in_channels}x"
                                  f"{m.image_size}x{m.image_size}: set model.in_channels={c} model.image_size={h}")
        saved_text = text_config
        text_config, prompts, from_labels = None, None, ds.captions is None
        if c.text != "none":
            if from_labels and (ds.labels is None or ds.num_classes > len(NUMBER_WORDS)):
                raise ConfigError(f"cond.text needs captions, but {ds.name} has none and no digit labels (0..9) to "
                                  "make MNIST-style captions from")
            all_captions = sorted(set(ds.captions)) if not from_labels else \
                [tpl.format(word=w, digit=d) for tpl in TRAIN_TEMPLATES for d, w in enumerate(NUMBER_WORDS)]
            if c.text == "trainable":
                text_config = saved_text if saved_text is not None else TextEncoderConfig(
                    vocab=TextEncoder.from_captions(all_captions).config.vocab, dim=c.text_dim, depth=c.text_depth,
                    heads=c.text_heads, max_length=c.max_length)
                prompts = Prompts(tokenizer=WordTokenizer(text_config.vocab, text_config.max_length))
            else:
                prompts = Prompts(encoder=_pretrained(config, device))
            try:
                prompts.kwargs(all_captions + [""])      # checks lengths; fills the pretrained cache
            except ValueError as e:
                raise ConfigError(f"cond.max_length={c.max_length} is too short for the training captions: {e}") from None
        self = cls(config, latent, text_config, prompts, from_labels)
        self._ae = ae
        image_size = (ae or (latent and latent.autoencoder)).config.image_size if config.latent.autoencoder else \
            m.image_size
        if c.low_res_factor and image_size % c.low_res_factor:
            raise ConfigError(f"cond.low_res_factor={c.low_res_factor} must divide the image size {image_size}")
        if c.low_res_factor and m.cond_channels != ds.channels:
            raise ConfigError(f"model.cond_channels={m.cond_channels} must equal the image channels ({ds.channels}) "
                              "for super-resolution")
        return self

    @classmethod
    def for_sampling(cls, config: RunConfig, latent: LatentDiffusion | None, text_config: TextEncoderConfig | None,
                     device) -> "RunConditioning | None":
        """For sampling a trained run, from what its checkpoint holds (``difflab.runs.read_conditioning``)."""
        if not conditioning_needed(config):
            return None
        prompts = None
        if config.cond.text == "trainable":
            prompts = Prompts(tokenizer=WordTokenizer(text_config.vocab, text_config.max_length))
        elif config.cond.text == "pretrained":
            prompts = Prompts(encoder=_pretrained(config, device))
        return cls(config, latent, text_config if config.cond.text == "trainable" else None, prompts)

    # ------------------------------------------------------------------ training
    @property
    def image_spec(self):
        """What the images must fit (``image_size``, ``in_channels``, ``num_classes``)."""
        m = self.config.model
        if self.config.latent.autoencoder is None:
            return m
        ae_cfg = (self._ae or self.latent.autoencoder).config
        return SimpleNamespace(image_size=ae_cfg.image_size, in_channels=ae_cfg.in_channels, num_classes=m.num_classes)

    def network(self, unet: torch.nn.Module) -> torch.nn.Module:
        """The trained module: ``unet``, or ``unet`` with a jointly trained text encoder."""
        if self.text_config is None:
            return unet
        return TextConditionedUNet(unet, TextEncoder(self.text_config))

    @torch.no_grad()
    def prepare(self, ds, images: torch.Tensor, seed: int, log) -> None:
        """Keep the training data; for a latent run encode it once (and, fresh, compute the scale factor)."""
        self._images = images
        self._labels = ds.labels
        self._captions = ds.captions
        if self.config.latent.autoencoder is None:
            return
        if self.config.data.hflip or (self.config.data.hflip is None and ds.hflip):
            raise ConfigError("latent runs encode the images once, so random flips are not available: "
                              "set data.hflip=false")
        ae = self._ae or self.latent.autoencoder
        log(f"encoding {len(images)} images into {'x'.join(map(str, ae.config.latent_shape))} latents")
        moments = [ae.encode(uint8_to_float(images[i:i + ENCODE_BATCH])) for i in range(0, len(images), ENCODE_BATCH)]
        self._mean = torch.cat([p.mean for p in moments])
        self._logvar = torch.cat([p.logvar for p in moments])
        if self.latent is None:
            gen = torch.Generator().manual_seed(seed)
            scale = scale_factor_from_latents(self._posterior(slice(i, i + ENCODE_BATCH)).sample(gen)
                                              for i in range(0, len(images), ENCODE_BATCH))
            self.latent, self._ae = LatentDiffusion(ae, scale).to(images.device), None
            log(f"latent scale factor 1/std(z) = {scale:.5f} (computed from the training data)")
            warning = unclipped_eps_warning(self.config)
            if warning:
                log(warning)
        else:
            log(f"latent scale factor {float(self.latent.scale_factor):.5f} (from the checkpoint)")

    def _posterior(self, idx) -> DiagonalGaussian:
        return DiagonalGaussian(self._mean[idx], self._logvar[idx])

    @property
    def x_0_fn(self) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
        """``(indices, generator) -> z_0`` for a latent run (None: x_0 are the images)."""
        if self.latent is None:
            return None
        return lambda idx, gen: self.latent.scale(self._posterior(idx.to(self._mean.device)).sample(gen))

    def train_kwargs(self, b, gen: torch.Generator, shard: slice) -> dict[str, torch.Tensor]:
        """Model kwargs of batch ``b`` (``b.idx``: the global batch's indices; ``b.x_0``: this process's x_0)."""
        kwargs: dict[str, torch.Tensor] = {}
        device = b.x_0.device
        if self.prompts is not None:
            idx = b.idx.cpu()
            captions = (make_mnist_captions(self._labels[idx], gen) if self._captions is None
                        else [self._captions[i] for i in idx.tolist()])
            drop = torch.rand(len(captions), generator=gen) < self.config.train.class_dropout
            captions = ["" if d else cap for cap, d in zip(captions, drop.tolist())]   # CFG's null condition
            kwargs.update(self.prompts.kwargs(captions[shard], device))
        if self.config.cond.low_res_factor:
            x = b.x_0 if self.latent is None else uint8_to_float(self._images[b.idx[shard].to(self._images.device)])
            kwargs["cond"] = self.low_res(x).to(device)
        return kwargs

    def low_res(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated condition of images ``x`` in [-1, 1]."""
        return low_res_condition(x, self.config.cond.low_res_factor, self.config.model.image_size)

    def checkpoint_files(self) -> dict[str, Callable[[Path], Any]]:
        files: dict[str, Callable[[Path], Any]] = {}
        if self.latent is not None:
            files[LATENT_DIR] = self.latent.save
        if self.text_config is not None:
            text = json.dumps(self.text_config.to_dict(), indent=1) + "\n"
            files[TEXT_ENCODER_JSON] = lambda path: write_text_atomic(path, text)
        return files

    # ------------------------------------------------------------------ sampling
    def default_prompts(self) -> list[str]:
        """One prompt per digit ("a handwritten zero" ...) for runs captioned from labels."""
        if not self.captions_from_labels:
            raise ValueError("this model was trained on its dataset's own captions: give prompts (--prompt)")
        return [DEFAULT_TEMPLATE.format(word=w, digit=d) for d, w in enumerate(NUMBER_WORDS)]

    def model_kwargs(self, prompts: list[str] | None = None, cond_images: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
        """Per-sample kwargs (CPU) for ``sample_images``: prompts and / or high-resolution images
        (float, [-1, 1]) whose low-resolution versions condition the samples."""
        kwargs: dict[str, torch.Tensor] = {}
        if (prompts is not None) != (self.prompts is not None):
            raise ValueError("this model is not text-conditioned: it takes no prompt" if prompts is not None
                             else "this model is text-conditioned: give prompts")
        if prompts is not None:
            kwargs.update(self.prompts.kwargs(prompts, "cpu"))
        if (cond_images is not None) != bool(self.config.cond.low_res_factor):
            raise ValueError("this model takes no low-resolution input" if cond_images is not None
                             else "this super-resolution model needs low-resolution inputs")
        if cond_images is not None:
            kwargs["cond"] = self.low_res(cond_images.float())
        return kwargs

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from sampler outputs (latents are decoded)."""
        if self.latent is None:
            return x
        return self.latent.decode_trajectory([x])[0]

    def decode_frames(self, frames: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        if frames is None or self.latent is None:
            return frames
        return self.latent.decode_trajectory(frames)

    def sample(self, model, diffusion, sample_cfg, *, prompts=None, cond_images=None, n: int | None = None,
               device="cpu", **options):
        """``(images [n, C, H, W] in [-1, 1] on the CPU, the sampler's output)``; ``options`` go to
        :func:`~difflab.sampling.sample_images` (labels, seed_indices, return_trajectory ...)."""
        m = self.config.model
        kwargs = self.model_kwargs(prompts, cond_images)
        if kwargs:
            n = len(next(iter(kwargs.values())))
        res = sample_images(model, diffusion, sample_cfg, shape=(m.in_channels, m.image_size, m.image_size), n=n,
                            device=device, model_kwargs=kwargs, **options)
        return self.decode(res.sample.float()).cpu(), res

    def sample_grid(self, model, diffusion, device, path: Path) -> Path:
        """The grid written during training: the default prompts (one row each), or low-resolution
        inputs (top) and samples from the first training images."""
        sc = self.config.sample
        prompts, cond_images, nrow = None, None, None
        if self.prompts is not None and self.captions_from_labels:
            base = self.default_prompts()
            nrow = max(1, sc.n // len(base))
            prompts = [p for p in base for _ in range(nrow)]
            options = {"seed_indices": [j for _ in base for j in range(nrow)]}
        elif self.prompts is not None:
            prompts, options = [""] * sc.n, {}
        else:
            options = {}
        if self.config.cond.low_res_factor:
            k = min(sc.n, len(self._images))
            cond_images = uint8_to_float(self._images[:k].cpu())
            prompts = prompts[:k] if prompts is not None else None
        images, _ = self.sample(with_default_guidance(model, self.config, self.prompts), diffusion, sc,
                                prompts=prompts, cond_images=cond_images, device=device,
                                num_classes=self.config.model.num_classes, **options)
        if cond_images is not None:
            size = cond_images.shape[-1]
            low = low_res_condition(cond_images, self.config.cond.low_res_factor, size)
            return save_grid(torch.cat([low, images]), path, nrow=len(images))
        return save_grid(images, path, nrow=nrow)


def unclipped_eps_warning(config: RunConfig) -> str | None:
    """A warning when eps is predicted without clipping x_0 (latents) on a schedule whose last
    alphas_cumprod is tiny: the first sampling step divides the eps error by sqrt(alphas_cumprod[T-1])."""
    d = config.diffusion
    if d.prediction != "eps" or config.sample.clip_denoised:
        return None
    abar_T = float(d.build().terms.alphas_cumprod[-1])
    if abar_T >= 1e-4:
        return None
    return (f"warning: eps prediction without clipping on a schedule with alphas_cumprod[T-1] = {abar_T:.2g}: the "
            f"first sampling step multiplies the eps error by {1 / abar_T ** 0.5:.2g} and the samples can diverge; "
            "use diffusion.prediction=v (the latent presets do)")


def _pretrained(config: RunConfig, device) -> PretrainedTextEncoder:
    encoder = PretrainedTextEncoder(max_length=config.cond.max_length, device=device)
    if encoder.dim != config.model.context_dim:
        raise ConfigError(f"the pretrained text encoder is {encoder.dim} wide: set model.context_dim={encoder.dim}")
    return encoder
