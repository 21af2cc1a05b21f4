"""The runs a page offers: run folders given on the command line or found under a folder, and what kind of
model each holds (which decides the controls the page shows for it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..runs import CheckpointError, load_checkpoint_config, resolve_checkpoint

UNCONDITIONAL, CLASS, TEXT, SUPER_RESOLUTION = "unconditional", "class-conditional", "text-to-image", \
    "super-resolution"
KINDS = (UNCONDITIONAL, CLASS, TEXT, SUPER_RESOLUTION)
MAX_DEPTH = 4        # how deep below a folder runs are searched for


def run_kind(config: RunConfig) -> str:
    """One of :data:`KINDS`: what a sample of this run is conditioned on."""
    if config.cond.low_res_factor:
        return SUPER_RESOLUTION
    if config.cond.text != "none":
        return TEXT
    if config.model.num_classes is not None:
        return CLASS
    return UNCONDITIONAL


@dataclass(frozen=True)
class RunEntry:
    """One samplable run: ``name`` as the page lists it, the ``path`` to give ``difflab sample --checkpoint``,
    its latest ``checkpoint`` folder and its ``config``."""

    name: str
    path: Path
    checkpoint: Path
    config: RunConfig

    @property
    def kind(self) -> str:
        return run_kind(self.config)

    @property
    def latent(self) -> bool:
        return self.config.latent.autoencoder is not None

    @property
    def step(self) -> int | None:
        head, _, digits = self.checkpoint.name.partition("step_")
        return int(digits) if not head and digits.isdigit() else None

    @property
    def guidance_available(self) -> bool:
        """Classifier-free guidance needs a class or prompt model trained with the null condition (dropout)."""
        return self.kind in (CLASS, TEXT) and self.config.train.class_dropout > 0

    def summary(self) -> str:
        """A few lines (Markdown) saying what this run is."""
        c = self.config
        d, m, diff = c.data, c.model, c.diffusion
        shape = f"{m.in_channels}x{m.image_size}x{m.image_size}"
        lines = [f"**{self.kind}**" + (" latent diffusion" if self.latent else "") + f" model of {d.dataset}"
                 + (f" ({m.num_classes} classes)" if self.kind == CLASS else ""),
                 f"trained {self.step if self.step is not None else '?'} steps; "
                 + (f"diffuses {shape} latents of a KL autoencoder" if self.latent else f"images {shape}"),
                 f"{diff.schedule} schedule, T = {diff.num_timesteps}, predicts {diff.prediction}"]
        if self.kind == SUPER_RESOLUTION:
            lines.append(f"{c.cond.low_res_factor}x super-resolution: each sample is conditioned on a "
                         "low-resolution image")
        if self.kind in (CLASS, TEXT):
            lines.append("classifier-free guidance available (trained with "
                         f"{c.train.class_dropout:g} {'label' if self.kind == CLASS else 'caption'} dropout)"
                         if self.guidance_available else "no classifier-free guidance (trained without dropout)")
        return "  \n".join(lines)


def _entry(name: str, path: Path) -> RunEntry:
    ckpt = resolve_checkpoint(path)
    return RunEntry(name, path, ckpt, load_checkpoint_config(ckpt))


def _looks_like_run(folder: Path) -> bool:
    return (folder / "checkpoints").is_dir()


def find_runs(paths: list[str | os.PathLike]) -> tuple[list[RunEntry], list[str]]:
    """The diffusion runs among ``paths`` (run folders, checkpoint folders, or folders searched up to
    :data:`MAX_DEPTH` levels down for run folders), in the order given, and one line per run folder found
    but skipped (an autoencoder or classifier run, no finished checkpoint, an unreadable config).

    Raises ValueError when a path does not exist, or when a path holds no run at all.
    """
    entries: list[RunEntry] = []
    skipped: list[str] = []
    seen: set[Path] = set()
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise ValueError(f"{root} does not exist (give run folders, or a folder that holds them)")
        try:
            candidates = [(str(root), root)] if not root.is_dir() or _looks_like_run(root) or \
                (root / "model.safetensors").is_file() else None
        except OSError as e:
            raise ValueError(f"{root} cannot be read ({e})") from None
        if candidates is None:
            candidates = [(str(f.relative_to(root.parent)), f) for f in _search(root)]
        found, skipped_before = 0, len(skipped)
        for name, folder in candidates:
            key = folder.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                entries.append(_entry(name, folder))
                found += 1
            except CheckpointError as e:
                skipped.append(f"{name}: {str(e).splitlines()[0]}")
        if not found and len(skipped) == skipped_before:
            raise ValueError(f"{root} holds no diffusion run (a run folder has a checkpoints/ folder; train one "
                             "with: difflab train --out RUN_DIR)")
    return entries, skipped


def _search(root: Path) -> list[Path]:
    """Run folders below ``root`` (sorted; not looking inside a run folder or hidden folders)."""
    found, level = [], [root]
    for _ in range(MAX_DEPTH):
        below = []
        for folder in level:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            for child in children:
                (found if _looks_like_run(child) else below).append(child)
        level = below
    return sorted(found)
