"""diffusers pipelines in and out: :func:`export_diffusers` and :func:`import_diffusers`.

- ``export_diffusers(RUN, OUT)`` writes a ``DDPMPipeline`` folder (``model_index.json``,
  ``unet/``, ``scheduler/``) that ``DDPMPipeline.from_pretrained(OUT)`` and
  ``DDIMPipeline.from_pretrained(OUT)`` load offline. It needs diffusers (the ``diffusers``
  extra): the folder is written by diffusers itself, and before anything is written the
  exported ``UNet2DModel`` and difflab's U-Net are run on the same probe batch and must agree.
- ``import_diffusers(DIR, OUT)`` turns a ``UNet2DModel`` + scheduler folder into a difflab run
  folder (``config.yaml``, ``checkpoints/step_00000000``) that ``difflab sample`` and
  ``difflab eval`` use. It reads the JSON configs and the weights itself (no diffusers
  needed); when diffusers is installed, the imported network is checked against diffusers'
  own on a probe batch.

Whatever one side cannot represent is refused with an :class:`InteropError` naming the field
and its value (``difflab.interop.unet2d`` / ``.scheduler`` hold the mappings).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig, RunConfig, SampleConfig, save_config
from ..data import list_datasets
from ..nn.io import check_state_dict
from ..nn.unet import UNet, UNetConfig
from ..runs import (CONFIG_NAME, EMA_NAME, MODEL_NAME, STATE_NAME, RunLock, load_checkpoint_config, load_run,
                    resolve_checkpoint, save_checkpoint_files, weights_writer)
from .scheduler import diffusion_from_scheduler, scheduler_config
from .unet2d import InteropError, state_dict_to_difflab, state_dict_to_unet2d, unet2d_config, unet_config_from_unet2d

INSTALL_HINT = "pip install 'difflab[diffusers]'"
UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULER_CONFIG = "scheduler_config.json"
PROBE_SEED = 0
PROBE_RTOL = 1e-4       # |ours - theirs| <= PROBE_RTOL * max(1, max |theirs|) on the probe batch


def require_diffusers(what: str):
    """The ``diffusers`` module, or an ImportError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise ImportError(f"{what} needs the diffusers package: {INSTALL_HINT}") from None
    return diffusers


# ----------------------------------------------------------------------------- the probe check
def probe_difference(ours: torch.nn.Module, theirs: torch.nn.Module, cfg: UNetConfig, num_timesteps: int,
                     out_channels: int | None = None) -> float:
    """max |ours - theirs| of difflab's U-Net and a ``UNet2DModel`` on one seeded batch at the
    first and last timestep (class-conditional: a class and the null class); raises
    :class:`InteropError` when it exceeds ``PROBE_RTOL`` of the output's scale."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.tensor([0, num_timesteps - 1])
    y = None if cfg.num_classes is None else torch.tensor([0, cfg.num_classes])
    with torch.no_grad():
        a = ours.eval()(x, t, y=y) if y is not None else ours.eval()(x, t)
        b = theirs.eval()(x, t, class_labels=y).sample
    if out_channels is not None:
        a = a[:, :out_channels]
    diff = float((a.float() - b.float()).abs().max())
    if not diff <= PROBE_RTOL * max(1.0, float(b.abs().max())):
        raise InteropError(f"the converted network computes something else: max |difflab - diffusers| = {diff:.3g} on "
                           "a probe batch (nothing was written; please report this model's config)")
    return diff


# ----------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    out: Path
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    notes: list[str]
    max_difference: float          # the probe check, |difflab - diffusers|
    parameters: int


def _refuse_conditioning(cfg: RunConfig) -> None:
    if cfg.latent.autoencoder is not None:
        raise InteropError(f"latent.autoencoder={cfg.latent.autoencoder!r}: a latent diffusion run needs its "
                           "autoencoder, which a DDPMPipeline folder has no place for")
    if cfg.cond.text != "none":
        raise InteropError(f"cond.text={cfg.cond.text!r}: text conditioning has no UNet2DModel equivalent")
    if cfg.cond.low_res_factor:
        raise InteropError(f"cond.low_res_factor={cfg.cond.low_res_factor}: a super-resolution run's low-resolution "
                           "input has no place in UNet2DModel")


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out`` (replacing a previous ``out``)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _check_out(out: Path, overwrite: bool, flag: str) -> None:
    if out.exists() and not out.is_dir():
        raise InteropError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InteropError(f"{out} exists and is not empty: choose a new folder{flag}")


def export_diffusers(run: str | os.PathLike, out: str | os.PathLike, *, use_ema: bool = True,
                     drop_learned_variance: bool = False, overwrite: bool = False) -> ExportResult:
    """Write run ``run`` (a run or checkpoint folder) as a diffusers ``DDPMPipeline`` folder ``out``."""
    diffusers = require_diffusers("exporting to diffusers")
    out = Path(out)
    _check_out(out, overwrite, " or replace it (--force, overwrite=True)")
    _refuse_conditioning(load_checkpoint_config(resolve_checkpoint(run)))   # before loading an autoencoder
    loaded = load_run(run, use_ema=use_ema)
    cfg = loaded.config
    m = cfg.model
    sched, notes = scheduler_config(cfg.diffusion, cfg.sample, drop_learned_variance=drop_learned_variance)
    keep = m.in_channels if m.learn_sigma else None    # learned variance: only the mean channels go
    kwargs = unet2d_config(m, out_channels=keep)
    tensors = state_dict_to_unet2d(loaded.model.state_dict(), m)
    if keep is not None:
        tensors = {k: (v[:keep] if k.startswith("conv_out.") else v) for k, v in tensors.items()}
    unet = diffusers.UNet2DModel(**kwargs)
    problems = unet.load_state_dict(tensors, strict=False)
    if problems.missing_keys or problems.unexpected_keys:
        raise InteropError(f"UNet2DModel weights do not line up: missing {problems.missing_keys[:5]}, unexpected "
                           f"{problems.unexpected_keys[:5]}")
    diff = probe_difference(loaded.model, unet, m, cfg.diffusion.num_timesteps, keep)
    pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**sched))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        parameters = sum(p.numel() for p in unet.parameters())
        (tmp / "README.md").write_text(model_card(out, loaded, sched, parameters, notes), encoding="utf-8")
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, kwargs, sched, notes, diff, parameters)


def model_card(out: Path, loaded, sched: dict, parameters: int, notes: list[str]) -> str:
    """A README.md for an exported pipeline: where it came from and how to sample it like difflab."""
    m = loaded.config.model
    schedule = sched.get("beta_schedule", "trained_betas")
    lines = [f"# {out.name}", "", f"A diffusion model trained with difflab (step {loaded.step}, {loaded.weights} "
             "weights), exported as a diffusers `DDPMPipeline`.", "",
             f"- network: `UNet2DModel`, {parameters:,} parameters, {m.in_channels} x {m.image_size} x {m.image_size}",
             f"- schedule: {schedule}, {sched['num_train_timesteps']} training steps; prediction "
             f"`{sched['prediction_type']}`; predicted x_0 clipped to [-1, 1]: {sched['clip_sample']}"]
    if m.num_classes is not None:
        lines.append(f"- class-conditional: `class_labels` 0..{m.num_classes - 1}; label {m.num_classes} is the "
                     "null class (the unconditional branch of classifier-free guidance)")
    lines += [f"- {note}" for note in notes]
    lines += ["", "difflab's DDIM recomputes eps from the clipped x_0; diffusers does the same with "
              "`use_clipped_model_output=True`:", "", "```python", "import torch",
              "from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel", ""]
    if m.num_classes is None:
        lines += [f'pipe = DDIMPipeline.from_pretrained("{out}")',
                  "images = pipe(batch_size=8, num_inference_steps=50, eta=0.0, use_clipped_model_output=True,",
                  "              generator=torch.Generator().manual_seed(0)).images"]
    else:
        lines += [f'unet = UNet2DModel.from_pretrained("{out}", subfolder="unet")',
                  f'scheduler = DDIMScheduler.from_pretrained("{out}", subfolder="scheduler")',
                  "scheduler.set_timesteps(50)", f"labels = torch.arange(8) % {m.num_classes}",
                  f"x = torch.randn(8, {m.in_channels}, {m.image_size}, {m.image_size}, "
                  "generator=torch.Generator().manual_seed(0))",
                  "with torch.no_grad():", "    for t in scheduler.timesteps:",
                  "        out = unet(x, t, class_labels=labels).sample",
                  "        x = scheduler.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample",
                  "images = (x / 2 + 0.5).clamp(0, 1)"]
    lines += ["```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- import
@dataclass
class DiffusersFolder:
    """Where a diffusers UNet2DModel and its scheduler live (a pipeline folder or a flat one)."""

    unet_dir: Path
    unet_config: dict[str, Any]
    weights: Path
    scheduler_config: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InteropError(f"{path} is not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise InteropError(f"{path} must hold a JSON object")
    return data


def find_diffusers_folder(src: str | os.PathLike) -> DiffusersFolder:
    """``src/unet/`` + ``src/scheduler/`` (a saved pipeline), or ``config.json`` and
    ``scheduler_config.json`` side by side in ``src``."""
    src = Path(src)
    if not src.is_dir():
        raise InteropError(f"{src} is not a folder (expected a diffusers pipeline folder with unet/ and scheduler/)")
    unet_dir = src / "unet" if (src / "unet" / "config.json").is_file() else src
    if not (unet_dir / "config.json").is_file():
        raise InteropError(f"{src} has no unet/config.json (nor config.json): not a diffusers UNet2DModel folder")
    sched = next((p for p in (src / "scheduler" / SCHEDULER_CONFIG, src / SCHEDULER_CONFIG) if p.is_file()), None)
    if sched is None:
        raise InteropError(f"{src} has no scheduler/{SCHEDULER_CONFIG}: difflab needs the noise schedule the model "
                           "was trained with")
    weights = next((unet_dir / n for n in UNET_WEIGHTS if (unet_dir / n).is_file()), None)
    if weights is None:
        raise InteropError(f"{unet_dir} has none of {', '.join(UNET_WEIGHTS)}")
    return DiffusersFolder(unet_dir, _read_json(unet_dir / "config.json"), weights, _read_json(sched))


def read_unet_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a ``.bin`` read with ``torch.load(weights_only=True)``
    (no code in a pickle can run); as float32."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            tensors = load_file(str(path))
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # safetensors and torch.load raise many types for a damaged file
        raise InteropError(f"{path} could not be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                           ) from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise InteropError(f"{path} does not hold a state dict of tensors")
    return {k: v.float().contiguous() for k, v in tensors.items()}


@dataclass
class ImportResult:
    run_dir: Path
    checkpoint: Path
    config: RunConfig
    notes: list[str] = field(default_factory=list)
    max_difference: float | None = None    # the probe check against diffusers; None when not run


_NATIVE_SHAPES = {(8, 1): "digits", (28, 1): "mnist", (32, 3): "cifar10"}   # (image_size, channels) -> dataset


def _data_config(model: UNetConfig, dataset: str | None, data_root: str | None) -> tuple[DataConfig, str | None]:
    note = None
    if dataset is None:
        dataset = _NATIVE_SHAPES.get((model.image_size, model.in_channels))
        if dataset is None:
            raise InteropError(f"which dataset is this {model.in_channels} x {model.image_size} x {model.image_size} "
                               "model for? give dataset= (--dataset NAME, e.g. folder with --data-root DIR): "
                               "difflab eval compares against it")
        note = f"data.dataset={dataset!r} (the dataset of this image size; set another with --dataset)"
    if dataset not in list_datasets():
        raise InteropError(f"unknown dataset {dataset!r}; allowed: {', '.join(list_datasets())}")
    try:
        data = DataConfig(dataset=dataset, root=data_root, image_size=model.image_size, channels=model.in_channels,
                          labels=model.num_classes is not None)
    except ValueError as e:
        raise InteropError(str(e)) from None
    return data, note


def import_diffusers(src: str | os.PathLike, out: str | os.PathLike, *, dataset: str | None = None,
                     data_root: str | None = None, image_size: int | None = None, check: bool = True) -> ImportResult:
    """Turn diffusers folder ``src`` into difflab run folder ``out`` (see the module docstring)."""
    folder = find_diffusers_folder(src)
    out = Path(out)
    _check_out(out, False, "")
    model = unet_config_from_unet2d(folder.unet_config, image_size=image_size)
    learned = folder.scheduler_config.get("variance_type") in ("learned", "learned_range")
    if model.resolved_out_channels == 2 * model.in_channels and learned:
        model = model.replace(out_channels=None, learn_sigma=True)
    elif model.resolved_out_channels != model.in_channels:
        raise InteropError(f"UNet2DModel out_channels={model.resolved_out_channels} with in_channels="
                           f"{model.in_channels}: difflab's models output as many channels as they read (twice as "
                           "many with a learned variance, variance_type='learned_range')")
    else:
        model = model.replace(out_channels=None)
    diffusion, sample_fields, notes = diffusion_from_scheduler(folder.scheduler_config, learn_sigma=model.learn_sigma)
    data, data_note = _data_config(model, dataset, data_root)
    notes += [data_note] if data_note else []
    try:
        cfg = RunConfig(model=model, diffusion=diffusion, data=data, sample=SampleConfig(**sample_fields))
    except ValueError as e:
        raise InteropError(f"the imported run config is invalid: {e}") from None
    tensors = state_dict_to_difflab(read_unet_weights(folder.weights), model)
    unet = UNet(model)
    try:
        check_state_dict(unet, tensors, source=str(folder.weights))
    except ValueError as e:
        raise InteropError(str(e)) from None
    unet.load_state_dict(tensors)
    difference = None
    if check:
        try:
            diffusers = require_diffusers("checking the import")
        except ImportError:
            notes.append(f"not cross-checked against diffusers (not installed: {INSTALL_HINT})")
        else:
            try:
                theirs = diffusers.UNet2DModel.from_pretrained(str(folder.unet_dir), local_files_only=True,
                                                              low_cpu_mem_usage=False)
            except Exception as e:   # diffusers raises many types; the conversion itself stands on its own
                notes.append(f"not cross-checked: diffusers could not load {folder.unet_dir} ({type(e).__name__})")
            else:
                difference = probe_difference(unet, theirs, model, diffusion.num_timesteps)
    state = {"step": 0, "imported_from": str(Path(src).resolve())}
    with RunLock(out):                  # the run-folder format of difflab.runs, written by its one writer
        save_config(cfg, out / CONFIG_NAME)
        writers = {MODEL_NAME: weights_writer(tensors, 0), EMA_NAME: weights_writer(tensors, 0),
                   STATE_NAME: lambda path: torch.save(state, path), CONFIG_NAME: lambda path: save_config(cfg, path)}
        ckpt = save_checkpoint_files(out, 0, writers, keep=1)
    return ImportResult(out, ckpt, cfg, notes, difference)
