"""Latent against pixel diffusion on MNIST: time per training step and per sample, side by side.

Contenders (each with its preset's own diffusion settings; weights are freshly initialised,
since wall time does not depend on their values):

(a) latent  the `mnist-latent-text` U-Net on the 7x7x4 latents of the `mnist-f4` autoencoder,
            with its jointly trained text encoder: captions drawn per batch from the labels,
            10% dropped to the empty prompt, tokenised every step. Sampling encodes the prompts and
            decodes the latents with the autoencoder's decoder (both timed). A second sampling row
            uses classifier-free guidance (w = 3): two network evaluations per step.
(b) pixel   the `mnist-fast-uncond` U-Net at 28x28 (unconditional).
(c) pixel   the `mnist` U-Net preset at 28x28, whose parameter count is within a few percent of (a)'s
            (equal network size, as the latent-diffusion paper compares).

A training step is what the diffusion task of ``difflab.train`` does per step: draw x_0 (latent: z = mean + std * eps
from cached posterior moments, times the scale factor), t and noise, ``diffusion.training_losses``,
backward, gradient clipping, AdamW, EMA update. Sampling is ``difflab.sampling.sample_images``
(DDIM, 50 steps, one batch of 100), as ``difflab sample`` runs it.

Timing on a shared machine: one warm-up step / a 2-step sampling run per contender is excluded;
training repeats alternate between the contenders (a, b, c, a, b, c, ...) so that load from other
jobs hits them alike, and medians are reported. A full 50-step sampling run takes up to a minute at
28x28, so each contender's run is timed once (contenders alternate when --sample-repeats > 1); the
median DDIM step inside that run (50 steps, read through the sampler's callback) gives a
load-robust estimate as well.

    .venv/bin/python benchmarks/latent_speed.py --threads 1

Writes the "### Latent vs pixel speed" subsection of the "## Latent diffusion" section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from _common import RESULTS  # noqa: E402  (puts the repository on sys.path)
from difflab.config import RUN_PRESETS  # noqa: E402
from difflab.data.transforms import uint8_to_float  # noqa: E402
from difflab.guidance import classifier_free  # noqa: E402
from difflab.latent import NUMBER_WORDS, TRAIN_TEMPLATES, LatentDiffusion, make_mnist_captions  # noqa: E402
from difflab.nn.autoencoder import AutoencoderKL, DiagonalGaussian, get_ae_preset  # noqa: E402
from difflab.nn.conditioned import TextConditionedUNet  # noqa: E402
from difflab.nn.text import TextEncoder, TextEncoderConfig, WordTokenizer  # noqa: E402
from difflab.nn.unet import UNet  # noqa: E402
from difflab.conditioning import Prompts  # noqa: E402
from difflab.train.ema import EMA  # noqa: E402
from difflab.sampling import sample_images  # noqa: E402

PARENT = "## Latent diffusion"
HEADING = "### Latent vs pixel speed"
POOL = 1024          # cached training examples to draw batches from (the data's values do not affect timing)
GUIDANCE = 3.0


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class Contender:
    name: str
    description: str
    params: int                          # the trained network (U-Net, plus the text encoder for (a))
    train_step: Callable[[], None]
    sample: Callable[..., torch.Tensor]  # (steps, callback) -> images in [-1, 1]


def _optimise(model, diffusion, tc, draw) -> Callable[[], None]:
    """One step of the training engine (difflab.train) on batches from ``draw() -> (x_0, model_kwargs)``."""
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)
    ema = EMA(model, tc.ema_decay, tc.ema_warmup)
    gen = torch.Generator().manual_seed(1)
    model.train()

    def step() -> None:
        x_0, kwargs = draw(gen)
        t = torch.randint(diffusion.num_timesteps, (x_0.shape[0],), generator=gen)
        noise = torch.randn(x_0.shape, generator=gen)
        loss = diffusion.training_losses(model, x_0, t, noise=noise, model_kwargs=kwargs)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        ema.update(model)

    return step


def latent_contender(batch: int, n: int, guidance: float | None) -> Contender:
    cfg = RUN_PRESETS["mnist-latent-text"]
    torch.manual_seed(0)
    ae = AutoencoderKL(get_ae_preset("mnist-f4")).eval()
    c, h, w = ae.config.latent_shape
    latent = LatentDiffusion(ae, 1.0)        # the scale factor's value does not change the cost
    captions = [tpl.format(word=wd, digit=d) for tpl in TRAIN_TEMPLATES for d, wd in enumerate(NUMBER_WORDS)]
    text_cfg = TextEncoderConfig(vocab=TextEncoder.from_captions(captions).config.vocab, dim=cfg.cond.text_dim,
                                 depth=cfg.cond.text_depth, heads=cfg.cond.text_heads, max_length=cfg.cond.max_length)
    model = TextConditionedUNet(UNet(cfg.model), TextEncoder(text_cfg))
    prompts = Prompts(tokenizer=WordTokenizer(text_cfg.vocab, text_cfg.max_length))
    diffusion = cfg.diffusion.build()
    mean, logvar = torch.randn(POOL, c, h, w), torch.randn(POOL, c, h, w) - 4.0
    labels = torch.randint(10, (POOL,), generator=torch.Generator().manual_seed(0))

    def draw(gen):
        idx = torch.randint(POOL, (batch,), generator=gen)
        z_0 = latent.scale(DiagonalGaussian(mean[idx], logvar[idx]).sample(gen))
        caps = make_mnist_captions(labels[idx], gen)
        drop = torch.rand(batch, generator=gen) < cfg.train.class_dropout
        return z_0, prompts.kwargs(["" if d else s for s, d in zip(caps, drop.tolist())])

    net = model if guidance is None else classifier_free(model, guidance, uncond=prompts.uncond)
    sc = replace(cfg.sample, n=n, batch_size=n)

    @torch.no_grad()
    def sample(steps: int, callback=None) -> torch.Tensor:
        model.eval()
        base = [f"a handwritten {NUMBER_WORDS[i % 10]}" for i in range(n)]
        res = sample_images(net, diffusion, replace(sc, steps=steps), shape=(c, h, w), n=n,
                            model_kwargs=prompts.kwargs(base), sampler_options={"callback": callback})
        return latent.decode_from_latent(res.sample, clamp=True)

    name = "(a) latent 7x7x4, text" + ("" if guidance is None else f", CFG w={guidance:g}")
    desc = (f"`mnist-latent-text` U-Net + text encoder; DDIM eta={sc.eta:g}"
            + ("" if guidance is None else f", 2 network evaluations per step (one batch of {2 * n})")
            + f"; decoder {n_params(ae.decoder) / 1e6:.2f}M params (timed in sampling)")
    return Contender(name, desc, n_params(model), _optimise(model, diffusion, cfg.train, draw), sample)


def pixel_contender(preset_unet: str, batch: int, n: int) -> Contender:
    from difflab.nn.presets import get_unet_preset

    cfg = RUN_PRESETS["mnist-fast-uncond"]
    unet_cfg = cfg.model if preset_unet == "mnist-fast" else get_unet_preset(preset_unet)
    torch.manual_seed(0)
    model = UNet(unet_cfg)
    diffusion = cfg.diffusion.build()
    pool = torch.randint(256, (POOL, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def draw(gen):
        return uint8_to_float(pool[torch.randint(POOL, (batch,), generator=gen)]), {}

    sc = replace(cfg.sample, n=n, batch_size=n)

    @torch.no_grad()
    def sample(steps: int, callback=None) -> torch.Tensor:
        model.eval()
        res = sample_images(model, diffusion, replace(sc, steps=steps), shape=(1, 28, 28), n=n,
                            sampler_options={"callback": callback})
        return res.sample

    attn = f"self-attention at {list(unet_cfg.attention_resolutions)}" if unet_cfg.attention_resolutions else \
        "no attention"
    name = "(b) pixel 28x28, mnist-fast" if preset_unet == "mnist-fast" else f"(c) pixel 28x28, `{preset_unet}` U-Net"
    desc = (f"widths {[unet_cfg.model_channels * m for m in unet_cfg.channel_mult]}, {unet_cfg.num_res_blocks} res "
            f"block(s)/level, {attn}, dropout {unet_cfg.dropout:g}; `mnist-fast` diffusion (v, min-SNR), "
            f"DDIM eta={sc.eta:g}")
    return Contender(name, desc, n_params(model), _optimise(model, diffusion, cfg.train, draw), sample)


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def sample_timing(contender: Contender, steps: int) -> tuple[float, float]:
    """(wall seconds of one sampling run, median seconds between consecutive DDIM steps)."""
    stamps: list[float] = []
    wall = timed(contender.sample, steps, callback=lambda *_: stamps.append(time.perf_counter()))
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return wall, statistics.median(gaps) if gaps else float("nan")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64, help="training batch")
    p.add_argument("--n", type=int, default=100, help="samples per sampling run (one batch)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--train-repeats", type=int, default=5)
    p.add_argument("--sample-repeats", type=int, default=1)
    p.add_argument("--no-write", action="store_true", help="print the table without writing RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    a = latent_contender(args.batch, args.n, None)
    a_cfg = latent_contender(args.batch, args.n, GUIDANCE)
    b = pixel_contender("mnist-fast", args.batch, args.n)
    c = pixel_contender("mnist", args.batch, args.n)
    trainers, samplers = [a, b, c], [a, a_cfg, b, c]

    train_s: dict[str, list[float]] = {x.name: [] for x in trainers}
    for x in trainers:
        x.train_step()                                   # warm-up, excluded
    for _ in range(args.train_repeats):
        for x in trainers:
            train_s[x.name].append(timed(x.train_step))
        print("train step (s): " + ", ".join(f"{k.split()[0]} {v[-1]:.3f}" for k, v in train_s.items()), flush=True)

    sample_wall: dict[str, list[float]] = {x.name: [] for x in samplers}
    sample_step: dict[str, list[float]] = {x.name: [] for x in samplers}
    for x in samplers:
        x.sample(2)                                      # warm-up, excluded
    for _ in range(args.sample_repeats):
        for x in samplers:
            wall, step = sample_timing(x, args.steps)
            sample_wall[x.name].append(wall)
            sample_step[x.name].append(step)
            print(f"{x.name}: sampling {wall:.2f} s, median DDIM step {step * 1e3:.1f} ms", flush=True)

    med = statistics.median
    rows = [f"| model | params | train step, batch {args.batch} (s) | train img/s | sample, {args.n} x DDIM-{args.steps} "
            "(s) | per sample (ms) | median DDIM step (ms) |", "|---|---|---|---|---|---|---|"]
    for x in samplers:
        tr = train_s.get(x.name)
        tr_txt = (f"{med(tr):.3f} [{min(tr):.3f}-{max(tr):.3f}] | {args.batch / med(tr):.0f}" if tr else "(as above) | ")
        sw, ss = med(sample_wall[x.name]), med(sample_step[x.name])
        rows.append(f"| {x.name} | {x.params:,} | {tr_txt} | {sw:.2f} | {sw / args.n * 1e3:.1f} | {ss * 1e3:.1f} |")

    def ratio(other: Contender) -> str:
        t = med(train_s[other.name]) / med(train_s[a.name])
        s = med(sample_wall[other.name]) / med(sample_wall[a.name])
        s_cfg = med(sample_wall[other.name]) / med(sample_wall[a_cfg.name])
        return (f"| {other.name.split(',')[0]} / (a) | {other.params / a.params:.2f}x | **{t:.1f}x** | | "
                f"**{s:.1f}x** (with CFG: {s_cfg:.1f}x) | | "
                f"{med(sample_step[other.name]) / med(sample_step[a.name]):.1f}x |")

    rows += [ratio(b), ratio(c)]
    took = time.perf_counter() - t_start
    command = "python benchmarks/latent_speed.py" + (f" --threads {args.threads}" if args.threads else "")
    for flag, default in (("batch", 64), ("n", 100), ("steps", 50), ("train_repeats", 5), ("sample_repeats", 1)):
        if getattr(args, flag) != default:
            command += f" --{flag.replace('_', '-')} {getattr(args, flag)}"
    lines = [HEADING, "", f"Command: `{command}` ({took:.0f} s in all).", "",
             f"CPU ({platform.machine()}), torch {torch.__version__}, {args.threads} thread(s). The machine was shared "
             "with other jobs, so every time is an upper bound; training repeats alternate between the models so "
             "that the load hits them alike (medians over "
             f"{args.train_repeats} steps of batch {args.batch}, range in brackets, one warm-up step excluded). "
             f"Sampling: {args.n} images in one batch, DDIM {args.steps} steps, timed "
             f"{'once' if args.sample_repeats == 1 else f'{args.sample_repeats} times (median)'} per model after a "
             "2-step warm-up run; the last column is the median time between consecutive DDIM steps inside that run "
             "(robust to load spikes). The latent rows include prompt encoding and the autoencoder's decoder; the "
             "latent training step, like `difflab train`, draws z from posterior moments encoded once before "
             "training (the encoder is not part of a step). "
             "Weights are freshly initialised (timing does not depend on them). Ratios: how much longer the pixel "
             "model takes than the latent one.", "", *rows, ""]
    for x in samplers:
        lines.append(f"- {x.name}: {x.description}.")

    def r(kind: dict, other: Contender, base: Contender = a) -> str:
        return f"{med(kind[other.name]) / med(kind[base.name]):.1f}x"

    lines += ["", f"Reading: at equal network size ((c) against (a)), a training step takes {r(train_s, c)} as long "
              f"in pixel space and a sampling run {r(sample_wall, c)}; the smaller `mnist-fast` U-Net (b) takes "
              f"{r(train_s, b)} and {r(sample_wall, b)}. Classifier-free guidance doubles the latent model's network "
              f"batch, so guided latent sampling takes {r(sample_wall, a_cfg)} as long as unguided, and unguided "
              f"pixel sampling (b) / (c) takes {r(sample_wall, b, a_cfg)} / {r(sample_wall, c, a_cfg)} as long as "
              "guided latent sampling. "
              "This compares equal network size, not equal sample quality: the latent model here is far from "
              "converged (see the accuracy table above)."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_subsection(RESULTS, PARENT, HEADING, text)
        print(f"wrote {RESULTS}")


def write_subsection(path: Path, parent: str, heading: str, text: str) -> None:
    """Replace the subsection ``heading`` (up to the next ``##``/``###`` heading), or append it at
    the end of the section ``parent`` (which must exist)."""
    lines = path.read_text().splitlines()
    try:
        top = next(i for i, line in enumerate(lines) if line.strip() == parent)
    except StopIteration:
        raise SystemExit(f"{path} has no {parent!r} section to put {heading!r} in") from None
    end = next((j for j in range(top + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
    start = next((i for i in range(top + 1, end) if lines[i].strip() == heading), None)
    if start is None:
        while end > top + 1 and not lines[end - 1].strip():
            end -= 1
        new = lines[:end] + [""] + text.splitlines() + [""] + lines[end:]
    else:
        stop = next((j for j in range(start + 1, end) if lines[j].startswith(("## ", "### "))), end)
        new = lines[:start] + text.splitlines() + [""] + lines[stop:]
    path.write_text("\n".join(new).rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
