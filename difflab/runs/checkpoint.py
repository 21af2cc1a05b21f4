"""Checkpoints: one folder per checkpoint, written atomically; the one writer and the readers
of every run kind (diffusion, classifier, autoencoder).

Layout of a (diffusion) run folder::

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
from pathlib import Path
from typing import Any, Callable

import safetensors.torch as st
import torch
from safetensors import SafetensorError

from ..files import fsync_dir, fsync_path, write_text_atomic
from ..nn.io import check_state_dict

CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest"
MODEL_NAME = "model.safetensors"
EMA_NAME = "ema.safetensors"
STATE_NAME = "training_state.pt"
CONFIG_NAME = "config.yaml"
CHECKPOINT_FILES = (MODEL_NAME, EMA_NAME, STATE_NAME, CONFIG_NAME)
CLASSIFIER_CONFIG_NAME = "classifier.yaml"
AE_CONFIG_NAME = "autoencoder.yaml"
RUN_CONFIG_NAMES = (CONFIG_NAME, CLASSIFIER_CONFIG_NAME, AE_CONFIG_NAME)   # diffusion, classifier, autoencoder
STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (full disk, unwritable folder ...); the previous one is intact.

    ``errno`` is that of the underlying ``OSError``; the message names the checkpoint and the cause.
    """


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_step(ckpt: Path) -> int:
    """The step of a ``step_NNNNNNNN`` checkpoint folder (-1 for a folder named otherwise)."""
    m = STEP_RE.match(Path(ckpt).name)
    return int(m.group(1)) if m else -1


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete-looking checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def cpu_state(module_or_state) -> dict[str, torch.Tensor]:
    """A module's (or a state dict's) tensors, detached, on the CPU and contiguous: what safetensors writes."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def weights_writer(state: dict[str, torch.Tensor], step: int) -> Callable[[Path], None]:
    """A checkpoint file writer for a state dict (safetensors, the step in its metadata)."""
    tensors = cpu_state(state)
    return lambda path: st.save_file(tensors, str(path), metadata={"step": str(step)})


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
            fsync_path(tmp / name)
        fsync_dir(tmp)
        if final.exists():   # re-saving a step (e.g. after a resume): move the old copy aside first
            _repoint_latest_away_from(root, final)   # so no crash leaves `latest` naming a missing folder
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST_NAME, final.name + "\n")
    fsync_dir(root)


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
        write_text_atomic(pointer, others[-1].name + "\n")
    else:
        pointer.unlink()   # no other checkpoint: better none than one naming a missing folder
    fsync_dir(root)


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
    for p in root.glob(f".{LATEST_NAME}.*.tmp"):   # the pointer's temporary files (difflab.files.atomic_write)
        p.unlink(missing_ok=True)


def read_latest(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder ``checkpoints/latest`` names, or None when there is none yet."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_NAME
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    if not STEP_RE.match(name):
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
                                  + earlier_hint(run_dir, latest))
        return latest
    if (p / CONFIG_NAME).is_file():   # a run folder whose first checkpoint was never finished
        raise CheckpointError(f"{p} has no finished checkpoint yet (no {CHECKPOINTS_DIR}/step_* folder); "
                              "start the run again without --resume")
    raise CheckpointError(f"{p} is neither a run folder (with {CHECKPOINTS_DIR}/) nor a checkpoint folder "
                          f"(with {MODEL_NAME})")


def checkpoint_of_kind(path: str | os.PathLike, config_name: str, not_this_kind: str) -> Path:
    """The checkpoint folder (a run's latest, or the folder given) whose config file is ``config_name``;
    ``not_this_kind`` is the message when it holds another kind of run's config instead."""
    ckpt = resolve_checkpoint(path)
    if not (ckpt / config_name).is_file():
        if any((ckpt / other).is_file() for other in RUN_CONFIG_NAMES if other != config_name):
            raise CheckpointError(f"{path} {not_this_kind}")
        raise checkpoint_error(ckpt, f"{config_name} is missing", "file not found")
    return ckpt


def earlier_hint(run_dir: Path, bad: Path) -> str:
    others = [c for c in list_checkpoints(run_dir) if c != bad]
    return f"; an earlier checkpoint is {others[-1]} (pass that path to --resume / --checkpoint)" if others else ""


def checkpoint_error(ckpt: Path, what: str, err: BaseException | str) -> CheckpointError:
    run_dir = ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS_DIR else None
    hint = earlier_hint(run_dir, ckpt) if run_dir is not None else ""
    detail = err if isinstance(err, str) else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return CheckpointError(f"checkpoint {ckpt} is corrupt or incomplete: {what} ({detail}){hint}")


def load_weights(ckpt: Path, name: str = EMA_NAME) -> dict[str, torch.Tensor]:
    path = ckpt / name
    if not path.is_file():
        raise checkpoint_error(ckpt, f"{name} is missing", "file not found")
    try:
        return st.load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise checkpoint_error(ckpt, f"{name} could not be read", e) from None


def load_training_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / STATE_NAME
    if not path.is_file():
        raise checkpoint_error(ckpt, f"{STATE_NAME} is missing", "file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch.load raises many types (pickle, zip, EOF) for damaged files
        raise checkpoint_error(ckpt, f"{STATE_NAME} could not be read", e) from None
    if not isinstance(state, dict) or "step" not in state:
        raise checkpoint_error(ckpt, f"{STATE_NAME} has no 'step'", "not a difflab training state")
    return state


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], ckpt: Path, name: str) -> None:
    """Load ``tensors`` (checkpoint file ``name``) into ``module``; a CheckpointError naming any mismatch."""
    try:
        check_state_dict(module, tensors, source=str(ckpt / name))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    module.load_state_dict(tensors)


def load_config_and_weights(ckpt: Path, config_name: str, what: str, read_config: Callable[[Path], Any],
                            build: Callable[[Any], torch.nn.Module], use_ema: bool) -> tuple[torch.nn.Module, Any]:
    """``(network, run config)`` of a checkpoint folder whose config file is ``config_name``: the
    network ``build(config.model)`` with the EMA weights when there are some (and ``use_ema``), else
    the raw ones. A damaged config or weight file is a CheckpointError naming the file."""
    import yaml

    from ..config import ConfigError

    try:
        cfg = read_config(ckpt / config_name)
    except (ConfigError, yaml.YAMLError) as e:
        raise checkpoint_error(ckpt, f"{config_name} is not a valid {what} config", str(e)) from None
    model = build(cfg.model)
    name = EMA_NAME if use_ema and (ckpt / EMA_NAME).is_file() else MODEL_NAME
    load_state_into(model, load_weights(ckpt, name), ckpt, name)
    return model, cfg
