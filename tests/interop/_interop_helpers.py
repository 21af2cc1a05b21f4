"""Shared helpers for the diffusers interop tests (not a test module).

Runs and diffusers folders are built with random weights rather than trained: every
parameter (difflab zero-initialises its output layers, diffusers does not initialise its
norms randomly) gets a seeded random offset, so every layer moves the output and a wrong
mapping cannot hide behind a zero.
"""

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from difflab.config import RUN_PRESETS, save_config
from difflab.nn import UNet
from difflab.runs import CONFIG_NAME, EMA_NAME, MODEL_NAME, STATE_NAME, save_checkpoint_files, weights_writer

TINY = RUN_PRESETS["tiny"]     # 8x8x1 U-Net (widths 8/16, attention at 4x4), linear schedule, T = 100
# A small UNet2DModel: two levels, attention at the lower one, two heads of 8 channels there.
UNET2D = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
              down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
              norm_num_groups=4, attention_head_dim=8)


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def make_run(root: Path, name: str, *, model=None, seed: int = 0, **sections) -> Path:
    """A run folder (config.yaml + one checkpoint) of the tiny preset with the given overrides
    (``model={...}``, ``diffusion={...}``, ``sample={...}``, ``latent={...}``, ``cond={...}``)."""
    model = TINY.model.replace(**(model or {}))
    data = dataclasses.replace(TINY.data, labels=model.num_classes is not None)
    cfg = TINY.replace(model=model, data=data,
                       **{k: dataclasses.replace(getattr(TINY, k), **v) for k, v in sections.items() if v})
    torch.manual_seed(seed)
    state = randomize_(UNet(cfg.model), seed).state_dict()
    run = root / name
    save_config(cfg, run / CONFIG_NAME)
    save_checkpoint_files(run, 1, {MODEL_NAME: weights_writer(state, 1), EMA_NAME: weights_writer(state, 1),
                                   STATE_NAME: lambda p: torch.save({"step": 1}, p),
                                   CONFIG_NAME: lambda p: save_config(cfg, p)}, keep=1)
    return run


def make_diffusers_folder(root: Path, name: str, *, unet=None, scheduler=None, seed: int = 0, legacy: bool = False,
                          weights: str = "safetensors"):
    """A saved-pipeline layout (unet/, scheduler/) of a random UNet2DModel; returns (folder, model).

    ``legacy``: attention weights under their old names (query/key/value/proj_attn);
    ``weights``: "safetensors" or "bin" (a torch.save'd state dict)."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    model = randomize_(UNet2DModel(**{**UNET2D, **(unet or {})}), seed).eval()
    folder = root / name
    model.save_pretrained(folder / "unet")
    DDPMScheduler(**(scheduler or {})).save_pretrained(folder / "scheduler")
    state = model.state_dict()
    if legacy:
        new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        renamed = {}
        for k, v in state.items():
            for new, old in new_to_old.items():
                if f".{new}." in k and ".attentions." in k:
                    k = k.replace(f".{new}.", f".{old}.")
            renamed[k] = v
        state = renamed
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    if weights == "bin":
        torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()},
                  str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    return folder, model


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def probe(cfg, seed: int = 1, b: int = 3, num_timesteps: int = 1000):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.randint(0, num_timesteps, (b,), generator=g)
    y = None if cfg.num_classes is None else torch.randint(0, cfg.num_classes + 1, (b,), generator=g)
    return x, t, y
