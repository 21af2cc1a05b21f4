"""Running a network through ``torch.compile`` (TorchInductor) with a safe way back to eager.

:func:`compile_model` wraps a module in a :class:`CompiledModel`, a model function with the
module's own call signature. Compilation is lazy, as torch.compile's is: it happens on the first
call, with that call's real inputs (any shapes, any conditioning kwargs). That call is timed
(the compile time goes into :attr:`CompiledModel.report`), and then:

- if compiling raises (no C++ compiler, an unsupported op, a backend bug), the error is
  reported in one line and the model runs eager from then on;
- outside autograd (sampling), the first output is compared with the eager module's on the same
  inputs, and a difference beyond ``atol + rtol * |eager|`` falls back to eager, with a message;
- outside autograd, the next ``probe_calls`` calls time the compiled and the eager module on the
  same inputs (alternating); if the compiled one is not faster, the model runs eager, with a message.

Calls under autograd (training) get the failure fallback only. The backward graph compiles lazily,
on the first backward pass, so the first call also runs one trial forward and backward
(``torch.autograd.grad`` of the outputs' sum with respect to the module's parameters: nothing
accumulates in ``.grad``) to surface a backward compile failure there rather than in the training
loop. The trial runs inside ``torch.random.fork_rng``, so the random draws of the call that counts
(dropout) are the ones it would have made without the trial; it is skipped under
DistributedDataParallel, whose gradient hooks allow one backward per forward. Dropout draws
differ between the two paths and a forward-only timing would leave the backward out, so there is
no output check or speed probe under autograd; the training benchmark
(benchmarks/compile_throughput.py) measures whole steps instead.

``freeze=True`` (sampling a loaded run: ``difflab sample --compile``) compiles the inference graphs
with TorchInductor's *freezing*: the parameters become constants of the compiled code, so it can
fold them and, on CPU, hand oneDNN its convolution weights already in the layout its kernels use
(eager reorders them on every call); on the 2-core CPU of benchmarks/RESULTS.md that was no
faster than unfrozen compiling, which lays the activations out channels-last already. Freezing is
only valid while the parameters do not change: their version counters are recorded at the first
call, and a later call that finds one changed (an optimizer step, ``load_state_dict``, any
in-place write) runs eager from then on, with a message. Graphs compiled under autograd are
never frozen.

Caching between runs is TorchInductor's own on-disk cache (compiled graphs keyed by graph,
inputs and torch version), on by default: a second process compiling the same network skips
code generation and the C++ build. It lives in ``$TORCHINDUCTOR_CACHE_DIR`` (torch's default:
a ``torchinductor_<user>`` folder in the temp directory); :func:`inductor_cache_dir` says where,
and the report counts the cache hits and misses of the first compile.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

BACKENDS = ("inductor", "aot_eager", "eager")   # the last two: for debugging a backend problem
SLOWER_MARGIN = 0.0   # compiled must be at least this much faster (fraction) to be kept


@dataclass
class CompileReport:
    """What happened when a :class:`CompiledModel` was first called (seconds, per call)."""

    status: str = "pending"                 # pending | probing | compiled | eager
    compile_seconds: float | None = None    # the first compiled call, compilation included
    eager_seconds: list[float] = field(default_factory=list)      # timed eager calls (checks, probes)
    compiled_seconds: list[float] = field(default_factory=list)   # timed compiled calls after the first
    max_abs_diff: float | None = None       # compiled vs eager on the first call's inputs
    cache_hits: int | None = None           # TorchInductor FX-graph cache, during the first compile
    cache_misses: int | None = None
    message: str = ""                       # one line for the user

    @property
    def speedup(self) -> float | None:
        """min eager / min compiled seconds per call over the probe calls (None before them)."""
        if not self.eager_seconds or not self.compiled_seconds:
            return None
        return min(self.eager_seconds) / min(self.compiled_seconds)


def inductor_cache_dir() -> str:
    """The folder of TorchInductor's on-disk cache ($TORCHINDUCTOR_CACHE_DIR or torch's default)."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env:
        return env
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        return default_cache_dir()
    except ImportError:   # torch moved it: say what is known
        return "torch's default inductor cache folder"


def _cache_counts() -> tuple[int, int] | None:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    c = counters["inductor"]
    return int(c["fxgraph_cache_hit"]), int(c["fxgraph_cache_miss"])


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _sync(out) -> None:
    for t in _tensors(out):
        if t.is_cuda:
            torch.cuda.synchronize(t.device)
            return


def _timed(fn: Callable, args, kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    _sync(out)
    return out, time.perf_counter() - t0


def _trial_step(module, fn, args, kwargs) -> None:
    """One forward and backward of ``fn`` (compiling both), leaving no ``.grad`` and no random draw behind."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(module, DistributedDataParallel) or not isinstance(module, torch.nn.Module):
        return
    params = [p for p in module.parameters() if p.requires_grad]
    cuda = sorted({t.device.index or 0 for t in _tensors(list(args) + list(kwargs.values())) + params if t.is_cuda})
    with torch.random.fork_rng(devices=cuda):
        outs = [t for t in _tensors(fn(*args, **kwargs)) if t.requires_grad]
        if params and outs:
            torch.autograd.grad(sum(t.float().sum() for t in outs), params, allow_unused=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def max_abs_diff(a, b) -> float:
    """Largest |a - b| over the tensors of two outputs of the same structure (inf if they differ)."""
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return float("inf")
    return max((float((x.detach().double() - y.detach().double()).abs().max()) for x, y in zip(ta, tb)
                if x.numel()), default=0.0)


def outputs_close(a, b, rtol: float, atol: float) -> bool:
    """|a - b| <= atol + rtol |b| elementwise, for every tensor of the two outputs."""
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return False
    return all(bool(((x.detach().double() - y.detach().double()).abs()
                     <= atol + rtol * y.detach().double().abs()).all()) for x, y in zip(ta, tb))


def _with_freezing(compiled: Callable) -> Callable:
    """``compiled`` called with TorchInductor's freezing on, so that the graphs it compiles (lazily, on
    the calls that need them) are frozen. torch.compile's ``options={"freezing": True}`` alone does not
    reach the check that turns freezing on (torch 2.13), so the global setting is patched around each call."""
    from torch._inductor import config as inductor_config

    def call(*args, **kwargs):
        with inductor_config.patch(freezing=True):
            return compiled(*args, **kwargs)
    return call


class CompiledModel:
    """A model function running ``torch.compile(module)``, checked against and falling back to ``module``.

    Call it like the module. ``module`` stays the eager module (its parameters are shared, so
    training, EMA and checkpoints see no difference); :attr:`report` says what happened, and
    ``log`` (e.g. ``print``) receives the one-line messages as they arise.
    """

    def __init__(self, module: Callable, *, backend: str = "inductor", mode: str | None = None,
                 dynamic: bool | None = None, check: bool = True, rtol: float = 1e-3, atol: float = 1e-4,
                 probe_calls: int = 2, freeze: bool = False, log: Callable[[str], None] | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown torch.compile backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        if probe_calls < 0:
            raise ValueError(f"probe_calls must be >= 0, got {probe_calls}")
        if freeze and backend != "inductor":
            raise ValueError(f"freeze=True is TorchInductor's freezing; the {backend!r} backend has none")
        if freeze and mode is not None:
            raise ValueError("freeze=True cannot be combined with a mode (torch.compile takes a mode or options)")
        self.module = module
        self.backend, self.check, self.rtol, self.atol = backend, check, rtol, atol
        self.probe_calls = probe_calls
        self.freeze = freeze
        self.log = log
        self.report = CompileReport()
        self._versions: list[int] | None = None   # the parameters' version counters when frozen
        # options: a frozen and an unfrozen compile of the same network get distinct entries in dynamo's cache
        compiled = torch.compile(module, backend=backend, mode=mode, dynamic=dynamic,
                                 options={"freezing": True} if freeze else None)
        self.compiled = _with_freezing(compiled) if freeze else compiled

    # ------------------------------------------------------------------ dispatch
    def __call__(self, *args, **kwargs):
        state = self.report.status
        if state == "eager":
            return self.module(*args, **kwargs)
        if self._versions is not None and self._versions != self._current_versions():
            self._fall_back("the parameters changed after they were frozen into the compiled code")
            return self.module(*args, **kwargs)
        if state == "compiled" or (state == "probing" and torch.is_grad_enabled()):
            return self.compiled(*args, **kwargs)
        if state == "pending":
            return self._first_call(args, kwargs)
        return self._probe_call(args, kwargs)

    def _say(self, message: str) -> None:
        self.report.message = message
        if self.log is not None:
            self.log(message)

    def _fall_back(self, message: str) -> None:
        self.report.status = "eager"
        self._say(message + "; running eager")

    def _current_versions(self) -> list[int]:
        tensors = list(self.module.parameters()) + list(self.module.buffers()) \
            if isinstance(self.module, torch.nn.Module) else []
        return [t._version for t in tensors]

    def _first_call(self, args, kwargs):
        before = _cache_counts()
        if self.freeze:
            self._versions = self._current_versions()
        try:
            t0 = time.perf_counter()
            if torch.is_grad_enabled():
                _trial_step(self.module, self.compiled, args, kwargs)
            out = self.compiled(*args, **kwargs)
            _sync(out)
            seconds = time.perf_counter() - t0
        except Exception as e:   # dynamo, inductor, the C++ toolchain: any failure means eager
            self._fall_back(f"torch.compile ({self.backend}) failed ({_first_line(e)})")
            return self.module(*args, **kwargs)
        r = self.report
        r.compile_seconds = seconds
        after = _cache_counts()
        if before is not None and after is not None:
            r.cache_hits, r.cache_misses = after[0] - before[0], after[1] - before[1]
        if not self.check or torch.is_grad_enabled():
            r.status = "compiled"
            what = " (forward and backward)" if torch.is_grad_enabled() else ""
            self._say(f"compiled with torch.compile ({self.backend}) in {seconds:.1f} s{what}{self._cache_note()}")
            return out
        ref, eager_s = _timed(self.module, args, kwargs)
        r.eager_seconds.append(eager_s)
        r.max_abs_diff = max_abs_diff(out, ref)
        if not outputs_close(out, ref, self.rtol, self.atol):
            self._fall_back(f"the compiled model's output differs from eager by up to {r.max_abs_diff:.3g} "
                            f"(allowed: {self.atol:g} + {self.rtol:g} |eager|)")
            return ref
        r.status = "probing" if self.probe_calls else "compiled"
        if r.status == "compiled":
            self._say(f"compiled with torch.compile ({self.backend}) in {seconds:.1f} s; output matches eager "
                      f"(max |diff| {r.max_abs_diff:.2g}){self._cache_note()}")
        return out

    def _probe_call(self, args, kwargs):
        r = self.report
        k = len(r.compiled_seconds)
        if k % 2:   # alternate which one runs first
            ref, eager_s = _timed(self.module, args, kwargs)
            out, comp_s = _timed(self.compiled, args, kwargs)
        else:
            out, comp_s = _timed(self.compiled, args, kwargs)
            ref, eager_s = _timed(self.module, args, kwargs)
        r.eager_seconds.append(eager_s)
        r.compiled_seconds.append(comp_s)
        if len(r.compiled_seconds) < self.probe_calls:
            return out
        eager, comp = min(r.eager_seconds), min(r.compiled_seconds)
        if comp * (1 + SLOWER_MARGIN) >= eager:
            self._fall_back(f"the compiled model is not faster than eager ({comp:.3g} s vs {eager:.3g} s per call, "
                            f"best of {len(r.compiled_seconds)} / {len(r.eager_seconds)})")
            return ref
        r.status = "compiled"
        self._say(f"compiled with torch.compile ({self.backend}) in {r.compile_seconds:.1f} s; output matches eager "
                  f"(max |diff| {r.max_abs_diff:.2g}); {comp:.3g} s per call vs {eager:.3g} s eager "
                  f"({eager / comp:.2f}x){self._cache_note()}")
        return out

    def _cache_note(self) -> str:
        r = self.report
        if r.cache_hits is None:
            return ""
        return f"; inductor cache: {r.cache_hits} hits, {r.cache_misses} misses ({inductor_cache_dir()})"


def compile_model(module: Callable, **options) -> CompiledModel:
    """``module`` compiled with torch.compile (TorchInductor by default) behind the checks of
    :class:`CompiledModel` (options: backend, mode, dynamic, check, rtol, atol, probe_calls, freeze, log)."""
    return CompiledModel(module, **options)
