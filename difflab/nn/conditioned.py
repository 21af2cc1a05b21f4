"""A U-Net whose cross-attention context comes from a text encoder trained with it.

``TextConditionedUNet(unet, text_encoder)(x_t, t, tokens=ids, token_mask=mask, **unet_kwargs)``
encodes the token ids ``[B, L]`` (``mask`` True = word) with the :class:`~difflab.nn.text.TextEncoder`
and calls the U-Net with ``context`` / ``context_mask``. Token ids and masks are tensors, so
``difflab.guidance.classifier_free`` concatenates the conditional and the null batch (the
empty prompt: an all-False mask) into one call. Its state dict holds ``unet.*`` and
``text_encoder.*``, so the encoder is trained, averaged (EMA) and checkpointed with the U-Net.
"""

from __future__ import annotations

import torch
from torch import nn

from .text import TextEncoder
from .unet import UNet


class TextConditionedUNet(nn.Module):
    def __init__(self, unet: UNet, text_encoder: TextEncoder):
        super().__init__()
        if unet.config.context_dim != text_encoder.dim:
            raise ValueError(f"the U-Net's context_dim={unet.config.context_dim} differs from the text encoder's "
                             f"width {text_encoder.dim}")
        self.unet = unet
        self.text_encoder = text_encoder

    @property
    def config(self):
        return self.unet.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor | None = None,
                token_mask: torch.Tensor | None = None, **unet_kwargs) -> torch.Tensor:
        if tokens is None or token_mask is None:
            raise ValueError("a text-conditioned model needs tokens and token_mask (the empty prompt: an all-False "
                             "mask)")
        context, mask = self.text_encoder(tokens, token_mask)
        return self.unet(x, t, context=context, context_mask=mask, **unet_kwargs)
