"""What a U-Net costs: multiply-accumulates and activations per image (closed forms over the
architecture), a cost model of a training step, and the measured rate of training steps.

:func:`unet_macs` counts the products of every convolution, linear layer and attention
(``Q K^T`` and ``A V``) in one forward pass of one image; :func:`unet_activations` the output
elements of those layers, which the memory-bound work (normalisation, activation functions,
additions, copies) grows with. :func:`training_cost` weighs the two: on a CPU, a narrow network
spends a larger share of its time on the memory-bound work than a wide one, so MACs alone
overstate how much faster it trains. :func:`measure_steps_per_second` times a network for real.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .levels import resolution_levels
from .unet import UNet, UNetConfig

FF_MULT = 4   # the GEGLU feed-forward's inner width (difflab.nn.attention.FeedForward)
# MAC-equivalents of one activation element in a training step, fitted (least squares on relative time)
# to six networks of the recipe's ladder (16..64 channels, 32x32 RGB, batch 64, one thread, best of three
# 6-second timings on the shared 2-core CPU, torch 2.13): the fit predicts every step time within 8%,
# MACs alone within 30%
ACTIVATION_COST = 234


def unet_macs(cfg: UNetConfig, context_len: int = 16) -> int:
    """Multiply-accumulates of ``UNet(cfg)``'s forward pass for one image (``context_len`` context
    tokens for cross-attention)."""
    return _count(cfg, context_len)[0]


def unet_activations(cfg: UNetConfig, context_len: int = 16) -> int:
    """Output elements of every convolution and linear layer in the forward pass of one image: what the
    memory-bound work (normalisation, activation functions, additions, copies) grows with."""
    return _count(cfg, context_len)[1]


def training_cost(cfg: UNetConfig, context_len: int = 16) -> float:
    """A training step's cost per image in MAC-equivalents, ``MACs + ACTIVATION_COST * activations``:
    the step times of two networks on one machine are in about this ratio (times their batch sizes)."""
    macs, acts = _count(cfg, context_len)
    return macs + ACTIVATION_COST * acts


def _count(cfg: UNetConfig, context_len: int) -> tuple[int, int]:
    levels, mc = len(cfg.channel_mult), cfg.model_channels
    emb = 4 * mc
    self_levels = resolution_levels(cfg.attention_resolutions, cfg.image_size, levels)
    cross_levels = (resolution_levels(cfg.cross_attention_resolutions, cfg.image_size, levels)
                    if cfg.context_dim is not None else ())
    macs = acts = 0

    def linear(tokens, c_in, c_out):      # also a convolution: tokens = pixels, c_in = fan-in
        nonlocal macs, acts
        macs += tokens * c_in * c_out
        acts += tokens * c_out

    def conv(r, c_in, c_out, k=3):
        linear(r * r, k * k * c_in, c_out)

    def res_block(r, c_in, c_out, updown=None):     # r: the block's input resolution
        r = r // 2 if updown == "down" else (2 * r if updown == "up" else r)
        conv(r, c_in, c_out)
        linear(1, emb, 2 * c_out if cfg.use_scale_shift_norm else c_out)
        conv(r, c_out, c_out)
        if c_in != c_out:
            conv(r, c_in, c_out, 1)

    def attention_products(n, m, ch):                # Q K^T and A V: n queries, m keys, ch channels
        nonlocal macs
        macs += 2 * n * m * ch

    def self_attention(r, ch):
        n = r * r
        linear(n, ch, 3 * ch)
        attention_products(n, n, ch)
        linear(n, ch, ch)

    def transformer(r, ch):
        n = r * r
        linear(n, ch, ch)                                                          # proj_in
        for _ in range(cfg.transformer_depth):
            linear(n, ch, ch), linear(n, ch, 2 * ch), attention_products(n, n, ch), linear(n, ch, ch)
            linear(n, ch, ch), linear(context_len, cfg.context_dim, 2 * ch)        # cross-attention
            attention_products(n, context_len, ch), linear(n, ch, ch)
            linear(n, ch, 2 * FF_MULT * ch), linear(n, FF_MULT * ch, ch)          # GEGLU feed-forward
        linear(n, ch, ch)                                                          # proj_out

    def attention(r, ch, level):
        if level in self_levels:
            self_attention(r, ch)
        if level in cross_levels:
            transformer(r, ch)

    linear(1, mc, emb), linear(1, emb, emb)                                         # time embedding MLP
    r, ch = cfg.image_size, mc
    conv(r, cfg.in_channels + cfg.cond_channels, ch)
    skips = [ch]
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            res_block(r, ch, mc * mult)
            ch = mc * mult
            attention(r, ch, level)
            skips.append(ch)
        if level != levels - 1:
            res_block(r, ch, ch, "down") if cfg.resblock_updown else conv(r // 2, ch, ch)
            r //= 2
            skips.append(ch)
    res_block(r, ch, ch)
    if cfg.mid_attention:
        self_attention(r, ch)
    if cfg.context_dim is not None:
        transformer(r, ch)
    res_block(r, ch, ch)
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            res_block(r, ch + skips.pop(), mc * mult)
            ch = mc * mult
            attention(r, ch, level)
            if level and i == cfg.num_res_blocks:
                res_block(r, ch, ch, "up") if cfg.resblock_updown else conv(2 * r, ch, ch)
                r *= 2
    conv(r, ch, cfg.resolved_out_channels)
    return macs, acts


def measure_steps_per_second(cfg: UNetConfig, batch_size: int, device: str | torch.device = "cpu",
                             seconds: float = 3.0, min_steps: int = 3, context_len: int = 16) -> float:
    """Training steps per second of ``UNet(cfg)`` at ``batch_size`` on ``device``: forward, an MSE loss,
    backward and an AdamW update on random data (what a diffusion step spends its time on), timed after
    one untimed step, for at least ``seconds`` and ``min_steps`` steps. The global RNG is left as it was."""
    if batch_size < 1 or seconds <= 0 or min_steps < 1:
        raise ValueError(f"need batch_size >= 1, seconds > 0 and min_steps >= 1; got {batch_size}, {seconds}, "
                         f"{min_steps}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = UNet(cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        s = cfg.image_size
        x = torch.randn(batch_size, cfg.in_channels, s, s, device=device)
        kwargs = {"t": torch.randint(0, 1000, (batch_size,), device=device)}
        if cfg.num_classes is not None:
            kwargs["y"] = torch.randint(0, cfg.num_classes + 1, (batch_size,), device=device)
        if cfg.context_dim is not None:
            kwargs["context"] = torch.randn(batch_size, context_len, cfg.context_dim, device=device)
        if cfg.cond_channels:
            kwargs["cond"] = torch.randn(batch_size, cfg.cond_channels, s, s, device=device)
        target = torch.randn(batch_size, cfg.resolved_out_channels, s, s, device=device)

        def step():
            loss = F.mse_loss(model(x, **kwargs), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        step()
        sync()
        steps, t0 = 0, time.perf_counter()
        while steps < min_steps or time.perf_counter() - t0 < seconds:
            step()
            steps += 1
            sync() if steps % 8 == 0 else None
        sync()
        return steps / (time.perf_counter() - t0)
