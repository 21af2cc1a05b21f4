"""The two diffusers peers of benchmarks/quality_vs_time.py: training (stopped by training time, weights
saved every few minutes) and sampling. ``diffusers``: the "Train a diffusion model" tutorial's loop;
``diffusers-best``: mnist-fast's recipe assembled from diffusers' own parts. quality_vs_time.py's
docstring says what each is given."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch

DIFFUSERS_BATCH = 64


# ----------------------------------------------------------------------------- the diffusers recipe
def diffusers_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def train_diffusers(out: Path, data_root: str, minutes: float, every: float, seed: int) -> None:
    """diffusers' tutorial loop, stopped by training time; weights saved every ``every`` minutes."""
    from diffusers import DDPMScheduler

    from difflab.data import load_dataset

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    images = load_dataset("mnist", root=data_root, split="train").to_float()
    model = diffusers_unet()
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed)

    def step_once(lr: float) -> float:
        idx = torch.randint(0, len(images), (DIFFUSERS_BATCH,), generator=gen)
        x_0 = images[idx]
        noise = torch.randn(x_0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (DIFFUSERS_BATCH,), generator=gen)
        noisy = sched.add_noise(x_0, noise, t)
        loss = torch.nn.functional.mse_loss(model(noisy, t, return_dict=False)[0], noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        return loss.item()

    # The tutorial warms up for 500 steps, then decays the lr on a half cosine to 0 at the end of
    # training (get_cosine_schedule_with_warmup); with a time budget, "the end" is the budget.
    warm_end = {}

    def lr_at(step: int, train_s: float) -> float:
        if step < 500:
            return 1e-4 * (step + 1) / 500
        t0 = warm_end.setdefault("s", train_s)
        progress = min(1.0, (train_s - t0) / max(1e-9, minutes * 60 - t0))
        return 1e-4 * 0.5 * (1.0 + math.cos(math.pi * progress))

    print(f"diffusers recipe: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    model.train()
    run_for_minutes("diffusers recipe", out, minutes, every, lambda step, train_s: step_once(lr_at(step, train_s)),
                    lambda path: torch.save(model.state_dict(), path))


def run_for_minutes(name: str, out: Path, minutes: float, every: float, step_once: Callable[[int, float], float],
                    save: Callable[[Path], None]) -> None:
    """``step_once(step, training seconds so far) -> loss`` until ``minutes`` of its own time; every
    ``every`` minutes (and at the end) ``save(out / min_MMM.M.pt)`` and a json of the step and loss
    (the time spent saving is not counted)."""
    train_s, step, mark, losses = 0.0, 0, every * 60, []
    while train_s < minutes * 60:
        t0 = time.perf_counter()
        losses.append(step_once(step, train_s))
        train_s += time.perf_counter() - t0
        step += 1
        if train_s >= mark or train_s >= minutes * 60:
            m = round(min(train_s, minutes * 60) / 60 / every) * every
            save(out / f"min_{m:05.1f}.pt")
            (out / f"min_{m:05.1f}.json").write_text(json.dumps(
                {"minutes": m, "step": step, "train_seconds": train_s, "loss": sum(losses[-50:]) / len(losses[-50:]),
                 "images_per_s": step * DIFFUSERS_BATCH / train_s}))
            print(f"{name}: {train_s / 60:.2f} min, step {step}, loss {losses[-1]:.4f}", flush=True)
            mark += every * 60


@torch.no_grad()
def sample_diffusers(state_path: Path, n: int, seed: int, batch: int, steps: int = 50) -> torch.Tensor:
    from diffusers import DDIMScheduler, DDPMScheduler

    from difflab.rng import per_sample_generators, randn

    model = diffusers_unet()
    model.load_state_dict(torch.load(state_path, weights_only=True))
    model.eval()
    ddim = DDIMScheduler.from_config(DDPMScheduler(num_train_timesteps=1000).config)
    outs = []
    for start in range(0, n, batch):
        gens = per_sample_generators([seed * 2**20 + i for i in range(start, min(start + batch, n))])
        x = randn((len(gens), 1, 28, 28), gens)
        ddim.set_timesteps(steps)
        for t in ddim.timesteps:
            x = ddim.step(model(x, t, return_dict=False)[0], t, x, eta=0.0).prev_sample
        outs.append(x)
    return torch.cat(outs).clamp(-1, 1)


# ----------------------------------------------------------------------------- diffusers at its best
NULL_CLASS, BEST_W, BEST_STEPS = 10, 0.25, 25


def diffusers_best_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64, 64), norm_num_groups=8, add_attention=False, dropout=0.0,
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                       num_class_embeds=NULL_CLASS + 1)


def best_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")


def train_diffusers_best(out: Path, data_root: str, minutes: float, every: float, seed: int) -> None:
    """mnist-fast's recipe from diffusers' parts (module docstring), stopped by training time; the EMA
    weights saved every ``every`` minutes."""
    from diffusers.training_utils import EMAModel, compute_snr

    from difflab.data import load_dataset

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist", root=data_root, split="train")
    images, labels = data.to_float(), data.labels
    model, sched = diffusers_best_unet(), best_scheduler()
    ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)

    def step_once(step: int) -> float:
        idx = torch.randint(0, len(images), (DIFFUSERS_BATCH,), generator=gen)
        x_0, y = images[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < 0.1] = NULL_CLASS
        noise = torch.randn(x_0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (DIFFUSERS_BATCH,), generator=gen)
        pred = model(sched.add_noise(x_0, noise, t), t, class_labels=y, return_dict=False)[0]
        snr = compute_snr(sched, t)
        weight = torch.clamp(snr, max=5.0) / (snr + 1)
        loss = (weight * ((pred - sched.get_velocity(x_0, noise, t)) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:      # get_constant_schedule_with_warmup(100)
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 100)
        opt.step()
        ema.step(model.parameters())
        return loss.item()

    def save(path: Path) -> None:        # the EMA weights
        shadow = diffusers_best_unet()
        ema.copy_to(shadow.parameters())
        torch.save(shadow.state_dict(), path)

    print(f"diffusers-best recipe: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    model.train()
    run_for_minutes("diffusers-best recipe", out, minutes, every, lambda step, _: step_once(step), save)


@torch.no_grad()
def sample_diffusers_best(state_path: Path, n: int, seed: int, batch: int, w: float = BEST_W) -> torch.Tensor:
    """Classes 0..9 in turn, classifier-free guidance w on the v output (w = 0: the conditional output
    alone, one network evaluation per step), DDIM eta 1 on a trailing grid."""
    from diffusers import DDIMScheduler

    from difflab.rng import per_sample_generators, randn

    model = diffusers_best_unet()
    model.load_state_dict(torch.load(state_path, weights_only=True))
    model.eval()
    ddim = DDIMScheduler.from_config(best_scheduler().config, timestep_spacing="trailing")
    outs = []
    for start in range(0, n, batch):
        ids = list(range(start, min(start + batch, n)))
        x = randn((len(ids), 1, 28, 28), per_sample_generators([seed * 2**20 + i for i in ids]))
        y = torch.tensor([i % 10 for i in ids])
        both = torch.cat([y, torch.full_like(y, NULL_CLASS)])
        noise_gen = torch.Generator().manual_seed(seed * 2**20 + start)
        ddim.set_timesteps(BEST_STEPS)
        for t in ddim.timesteps:
            if w:
                v_c, v_u = model(torch.cat([x, x]), t, class_labels=both, return_dict=False)[0].chunk(2)
                v = (1 + w) * v_c - w * v_u
            else:
                v = model(x, t, class_labels=y, return_dict=False)[0]
            x = ddim.step(v, t, x, eta=1.0, generator=noise_gen).prev_sample
        outs.append(x)
    return torch.cat(outs).clamp(-1, 1)
