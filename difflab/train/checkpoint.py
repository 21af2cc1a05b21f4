"""Training checkpoints: one folder per checkpoint, written atomically.

Layout of a run folder::

    RUN_DIR/config.yaml                      the resolved RunConfig
    RUN_DIR/checkpoints/latest               text file naming the newest complete checkpoint
    RUN_DIR/checkpoints/step_00001000/
        model.safetensors                    the trained weights
        ema.safetensors                      their exponential moving average (sampling default)
        training_state.pt                    optimiser, RNG states, step, data position
                                             (plain tensors / numbers; read with weights_only=True)
        config.yaml                          the RunConfig that produced it

A checkpoint is written into ``checkpoints/.tmp-...`` and renamed into place, and only then
is ``latest`` replaced (write-to-temp + ``os.replace``), so a crash at any moment leaves the
previous checkpoint and pointer intact. Older checkpoints beyond ``keep`` are then removed
(each renamed to ``.del-...`` first, so a crash while deleting never leaves a half-deleted
``step_*`` folder). If a crash falls between the rename and the pointer update, ``latest`` is
missing or names the previous checkpoint; :func:`resolve_checkpoint` then uses the newest
``step_*`` folder, which is complete because it only appears by that final rename.

A failed write (full disk, unwritable folder) raises :class:`CheckpointWriteError` naming the
checkpoint and the cause, and leaves the previous checkpoint and ``latest`` untouched.

Only ``training_state.pt`` goes through ``torch.load``, always with ``weights_only=True``
(no code in a pickle can run); weights are read with ``safetensors`` and configs with
``yaml.safe_load``.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import ConfigError, RunConfig, load_config, save_config

CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest"
MODEL_NAME = "model.safetensors"
EMA_NAME = "ema.safetensors"
STATE_NAME = "training_state.pt"
CONFIG_NAME = "config.yaml"
CHECKPOINT_FILES = (MODEL_NAME, EMA_NAME, STATE_NAME, CONFIG_NAME)
_STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (full disk, unwritable folder ...); the previous one is intact.

    ``errno`` is that of the underlying ``OSError``; the message names the checkpoint and the cause.
    """


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_path(path: Path) -> None:
    """fsync a file, or a folder a writer made (e.g. a saved autoencoder) with everything in it."""
    if not path.is_dir():
        _fsync_file(path)
        return
    for p in sorted(path.rglob("*")):
        _fsync_file(p) if p.is_file() else _fsync_dir(p)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_config_yaml(cfg, path: str | os.PathLike) -> Path:
    """Write a config dataclass (anything with ``to_dict``) as YAML, atomically; returns the path."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete-looking checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, model_state: dict[str, torch.Tensor],
                    ema_state: dict[str, torch.Tensor], training_state: dict[str, Any], config: RunConfig,
                    keep: int = 3, extra_files: dict[str, Callable[[Path], Any]] | None = None) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune to ``keep``; return its folder.
    ``extra_files``: more ``name -> writer(path)`` entries (e.g. a latent run's autoencoder).

    Raises :class:`CheckpointWriteError` when the disk is full or the folder unwritable; the
    previous checkpoint and the ``latest`` pointer are then unchanged."""
    from safetensors.torch import save_file

    meta = {"step": str(step)}
    return save_checkpoint_files(run_dir, step, {
        MODEL_NAME: lambda path: save_file(_cpu(model_state), str(path), metadata=meta),
        EMA_NAME: lambda path: save_file(_cpu(ema_state), str(path), metadata=meta),
        STATE_NAME: lambda path: torch.save(training_state, path),
        CONFIG_NAME: lambda path: save_config(config, path),
        **(extra_files or {}),
    }, keep=keep)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint_files(run_dir: str | os.PathLike, step: int, writers: dict[str, Callable[[Path], None]], *,
                          keep: int) -> Path:
    """The one atomic checkpoint writer: ``writers[name](path)`` writes each file of the folder.

    The files go into a temporary folder, are fsynced, and the folder is renamed into place
    before ``latest`` points at it, so a crash at any moment leaves the last complete checkpoint.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    try:
        _write_checkpoint(root, final, writers)
    except OSError as e:
        try:
            previous = read_latest(run_dir)
        except (CheckpointError, OSError):
            previous = None
        kept = (f"; the previous checkpoint {previous} is intact" if previous is not None and previous.is_dir()
                else "; no earlier checkpoint exists")
        cause = e.strerror or str(e) or type(e).__name__
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        err = CheckpointWriteError(f"could not write checkpoint {final.name} in {root}: {cause}{where}{kept}")
        err.errno = e.errno
        raise err from e
    prune_checkpoints(run_dir, keep)
    return final


def _write_checkpoint(root: Path, final: Path, writers: dict[str, Callable[[Path], None]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, write in writers.items():
            write(tmp / name)
        for name in writers:
            _fsync_path(tmp / name)
        _fsync_dir(tmp)
        if final.exists():   # re-saving a step (e.g. after a resume): move the old copy aside first
            _repoint_latest_away_from(root, final)   # so no crash leaves `latest` naming a missing folder
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(root / LATEST_NAME, final.name + "\n")
    _fsync_dir(root)


def _repoint_latest_away_from(root: Path, final: Path) -> None:
    """If ``latest`` names ``final`` (about to be replaced), point it at the newest other checkpoint."""
    pointer = root / LATEST_NAME
    try:
        if not pointer.is_file() or pointer.read_text(encoding="utf-8").strip() != final.name:
            return
    except (OSError, UnicodeDecodeError):
        return
    others = [p for p in list_checkpoints(root.parent) if p != final]
    if others:
        _write_text_atomic(pointer, others[-1].name + "\n")
    else:
        pointer.unlink()   # no other checkpoint: better none than one naming a missing folder
    _fsync_dir(root)


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (never the one ``latest`` names) and stale temp folders."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    latest = read_latest(run_dir)
    ckpts = [p for p in list_checkpoints(run_dir) if p != latest]
    excess = len(ckpts) + (latest is not None) - max(1, keep)
    for p in ckpts[:max(0, excess)]:
        doomed = root / f".del-{p.name}-{os.getpid()}"
        try:
            os.replace(p, doomed)   # atomic: a crash mid-delete leaves no half-deleted step_* folder
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
    # leftovers of a crashed writer (another process id): temp folders, set-aside and doomed copies
    for pattern in (".tmp-*", ".old-*", ".del-*"):
        for p in root.glob(pattern):
            if not p.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f".{LATEST_NAME}.tmp*"):
        if p.name != f".{LATEST_NAME}.tmp{os.getpid()}":
            p.unlink(missing_ok=True)


def read_latest(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder ``checkpoints/latest`` names, or None when there is none yet."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_NAME
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    if not _STEP_RE.match(name):
        raise CheckpointError(f"{pointer} is corrupt (it should name a step_NNNNNNNN folder, got {name[:40]!r})")
    return root / name


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from a run folder (its latest checkpoint), a checkpoints/ folder, or itself."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist (expected a run folder or a checkpoint folder)")
    if (p / STATE_NAME).exists() or (p / MODEL_NAME).exists():
        return p
    run_dir = p.parent if p.name == CHECKPOINTS_DIR and (p / LATEST_NAME).exists() else p
    if (run_dir / CHECKPOINTS_DIR).is_dir():
        latest = read_latest(run_dir)
        if latest is None and list_checkpoints(run_dir):
            # a crash between renaming a checkpoint into place and writing the pointer: step_*
            # folders only appear by that final rename, so the newest one is complete
            return list_checkpoints(run_dir)[-1]
        if latest is None:
            raise CheckpointError(f"{run_dir} has no finished checkpoint yet ({run_dir / CHECKPOINTS_DIR / LATEST_NAME} "
                                  "is missing)")
        if not latest.is_dir():
            raise CheckpointError(f"{run_dir / CHECKPOINTS_DIR / LATEST_NAME} names {latest.name}, which does not exist"
                                  + _earlier_hint(run_dir, latest))
        return latest
    if (p / CONFIG_NAME).is_file():   # a run folder whose first checkpoint was never finished
        raise CheckpointError(f"{p} has no finished checkpoint yet (no {CHECKPOINTS_DIR}/step_* folder); "
                              "start the run again without --resume")
    raise CheckpointError(f"{p} is neither a run folder (with {CHECKPOINTS_DIR}/) nor a checkpoint folder "
                          f"(with {MODEL_NAME})")


def _earlier_hint(run_dir: Path, bad: Path) -> str:
    others = [c for c in list_checkpoints(run_dir) if c != bad]
    return f"; an earlier checkpoint is {others[-1]} (pass that path to --resume / --checkpoint)" if others else ""


def _corrupt(ckpt: Path, what: str, err: BaseException | str) -> CheckpointError:
    run_dir = ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS_DIR else None
    hint = _earlier_hint(run_dir, ckpt) if run_dir is not None else ""
    detail = err if isinstance(err, str) else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return CheckpointError(f"checkpoint {ckpt} is corrupt or incomplete: {what} ({detail}){hint}")


def load_weights(ckpt: Path, name: str = EMA_NAME) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = ckpt / name
    if not path.is_file():
        raise _corrupt(ckpt, f"{name} is missing", "file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _corrupt(ckpt, f"{name} could not be read", e) from None


def load_training_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / STATE_NAME
    if not path.is_file():
        raise _corrupt(ckpt, f"{STATE_NAME} is missing", "file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch.load raises many types (pickle, zip, EOF) for damaged files
        raise _corrupt(ckpt, f"{STATE_NAME} could not be read", e) from None
    if not isinstance(state, dict) or "step" not in state:
        raise _corrupt(ckpt, f"{STATE_NAME} has no 'step'", "not a difflab training state")
    return state


def load_checkpoint_config(ckpt: Path) -> RunConfig:
    path = ckpt / CONFIG_NAME
    for other, kind in (("autoencoder.yaml", "an autoencoder"), ("classifier.yaml", "a classifier")):
        if not path.is_file() and (ckpt / other).is_file():
            raise CheckpointError(f"{ckpt} belongs to {kind} run, not to a diffusion run")
    if not path.is_file():
        raise _corrupt(ckpt, f"{CONFIG_NAME} is missing", "file not found")
    try:
        return load_config(path)
    except ConfigError as e:
        raise _corrupt(ckpt, f"{CONFIG_NAME} is not a valid run config", str(e)) from None


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], ckpt: Path, name: str) -> None:
    from ..nn.io import check_state_dict

    try:
        check_state_dict(module, tensors, source=str(ckpt / name))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    module.load_state_dict(tensors)


@dataclass
class LoadedRun:
    """A trained network ready to sample: its config, the module (eval mode), the diffusion."""

    config: RunConfig
    model: torch.nn.Module
    diffusion: Any
    checkpoint: Path
    step: int
    weights: str        # "ema" or "model"
    conditioning: Any = None   # a difflab.train.conditioning.RunConditioning (latent / text / low-res runs)


def load_run(path: str | os.PathLike, *, use_ema: bool = True, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run folder's latest checkpoint (or a given checkpoint folder) for sampling."""
    from ..nn.unet import UNet
    from .conditioning import RunConditioning

    ckpt = resolve_checkpoint(path)
    cfg = load_checkpoint_config(ckpt)
    name = EMA_NAME if use_ema else MODEL_NAME
    tensors = load_weights(ckpt, name)
    conditioning = RunConditioning.from_checkpoint(cfg, ckpt, device)
    model = UNet(cfg.model) if conditioning is None else conditioning.network(UNet(cfg.model))
    load_state_into(model, tensors, ckpt, name)
    model.eval().requires_grad_(False)
    step = int(_STEP_RE.match(ckpt.name).group(1)) if _STEP_RE.match(ckpt.name) else -1
    return LoadedRun(cfg, model.to(device), cfg.diffusion.build(), ckpt, step, "ema" if use_ema else "model",
                     conditioning)
