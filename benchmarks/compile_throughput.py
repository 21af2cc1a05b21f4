"""Eager against torch.compile (TorchInductor): training and sampling throughput of difflab's U-Net.

Run:  .venv/bin/python benchmarks/compile_throughput.py --threads 1            (mnist-fast, mnist, cifar10)
      .venv/bin/python benchmarks/compile_throughput.py --presets mnist-fast --repeats 3 --no-write

For each run preset (its U-Net config, random weights, seed 0) one module is timed two ways in one
process: eager, and behind ``difflab.compile.compile_model`` (the same parameters). First the
compile itself: the first training step (forward and backward graphs) and the first sampling
forward are timed on their own, with TorchInductor's cache hits and misses. Then alternating
repeats (the order swapped every repeat, so a disturbance on the shared machine hits both alike),
medians:

* training step: forward, the loss of the preset's diffusion (``GaussianDiffusion.training_losses``
  with its prediction target and loss weighting), backward, AdamW step -> images/s;
* sampling: one network evaluation under ``torch.no_grad`` in eval mode -> images/s per network
  evaluation (a sample at N NFE costs N of them; a classifier-free guided step is 2 images' worth),
  three ways: eager, compiled, and compiled with the weights frozen into the code
  (``compile_model(freeze=True)``, what ``difflab sample --compile`` uses). Sampling runs on a copy
  of the module in eval mode, which the training steps do not change (frozen weights must not).

A fourth variant, eager on a copy of the module and inputs stored channels-last (NHWC), shows what
the memory layout alone gives: TorchInductor lays convolutions out channels-last on CPU by itself.

What compiling can win at most: TorchInductor hands convolutions to oneDNN kernels (extern calls), so
a compiled call can never take less than the time spent in them. ``torch.profiler`` measures that time
(self CPU time of every op named ``*convolution*``: forward, backward, pre-packed) in the compiled
training step and the frozen sampling call, best of three; eager seconds / those seconds is the
ratio the compiled path would reach if everything else in it cost nothing.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the eager module; "% of peak" is
the achieved FLOP rate over the fp32 peak measured in the same run: the best of a 2048^3 matmul and a
3x3 convolution (256 channels, oneDNN), each measured before, after, and once in every repeat, so
that a measurement taken while another job held the core does not set the peak. Both are reported:
on this AMD CPU torch's matmul (MKL) reaches about 100 GFLOP/s on one thread and oneDNN's
convolution about 240, so a matmul-only peak would put the U-Net above 100%.
The 1-minute load average is recorded beside the figures: above the thread count the machine was
shared and the figures are disturbed. Writes the "## Compiled vs eager" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import statistics
import sys

import torch

from _common import RESULTS, conv_peak, matmul_peak, timed, write_section  # noqa: E402  (sets sys.path)

from difflab.compile import compile_model  # noqa: E402
from difflab.config import RUN_PRESETS  # noqa: E402
from difflab.nn import UNet  # noqa: E402

SECTION = "## Compiled vs eager (torch.compile)"
PRESETS = ("mnist-fast", "mnist", "cifar10")
BATCH = {"mnist-fast": 64, "mnist": 64, "cifar10": 32}   # images per step / per network evaluation
REPEATS = {"mnist-fast": 7, "mnist": 7, "cifar10": 3}


class Bench:
    """One preset's module, its batch and its training step, eager or through a compiled function."""

    def __init__(self, preset: str, batch: int, channels_last: bool = False):
        cfg = RUN_PRESETS[preset]
        self.preset, self.batch, self.cfg = preset, batch, cfg.model
        torch.manual_seed(0)
        self.module = UNet(cfg.model)
        self.diffusion = cfg.diffusion.build()
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        m = cfg.model
        self.x = torch.randn(batch, m.in_channels, m.image_size, m.image_size, generator=g)
        self.t = torch.randint(0, self.diffusion.num_timesteps, (batch,), generator=g)
        self.noise = torch.randn(self.x.shape, generator=g)
        self.kwargs = {} if m.num_classes is None else {"y": torch.randint(0, m.num_classes, (batch,), generator=g)}
        self.params = sum(p.numel() for p in self.module.parameters())
        if channels_last:   # the same weights and inputs, stored channels-last (NHWC): oneDNN's own layout
            cl = torch.channels_last
            self.module = self.module.to(memory_format=cl)
            self.opt = torch.optim.AdamW(self.module.parameters(), lr=1e-4)
            self.x, self.noise = self.x.contiguous(memory_format=cl), self.noise.contiguous(memory_format=cl)
        self.sampler_module = copy.deepcopy(self.module).eval()   # the weights sampling sees: never trained

    def train_step(self, fn) -> None:
        self.module.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.diffusion.training_losses(fn, self.x, self.t, noise=self.noise, model_kwargs=self.kwargs)["loss"]
        loss.mean().backward()
        self.opt.step()

    @torch.no_grad()
    def forward(self, fn):
        return fn(self.x, self.t, **self.kwargs)

    def flops(self, backward: bool) -> int:
        """FLOPs of one eager forward (no_grad) or training forward + backward (dropout off)."""
        from torch.utils.flop_counter import FlopCounterMode

        self.module.eval()
        with FlopCounterMode(display=False) as fc:
            if backward:
                self.module(self.x, self.t, **self.kwargs).square().mean().backward()
            else:
                with torch.no_grad():
                    self.module(self.x, self.t, **self.kwargs)
        self.module.zero_grad(set_to_none=True)
        return fc.get_total_flops()


def run_preset(preset: str, batch: int, repeats: int) -> dict:
    b = Bench(preset, batch)
    fl_fwd, fl_train = b.flops(backward=False), b.flops(backward=True)
    print(f"[{preset}] {b.params:,} parameters, batch {batch}; forward {fl_fwd / batch / 1e9:.2f} GFLOP/image, "
          f"train step {fl_train / batch / 1e9:.2f} GFLOP/image", flush=True)
    # compile: the first training step compiles the forward and backward graphs (no output check under
    # autograd), the first no_grad eval forward the inference graph (checked against eager; no speed probe:
    # the repeats below measure speed). Two wrappers of the one module: the parameters are shared.
    messages = []
    log = lambda msg: messages.append(msg)  # noqa: E731
    frozen_module = copy.deepcopy(b.sampler_module)   # the same weights; its own copy to fold
    cm_train, cm_infer = compile_model(b.module, log=log), compile_model(b.sampler_module, probe_calls=0, log=log)
    cm_frozen = compile_model(frozen_module, probe_calls=0, freeze=True, log=log)
    b.train_step(b.module)                 # eager warm-up (oneDNN primitive caches)
    compile_train_s = timed(lambda: b.train_step(cm_train))
    b.forward(b.sampler_module)
    compile_infer_s = timed(lambda: b.forward(cm_infer))
    compile_frozen_s = timed(lambda: b.forward(cm_frozen))
    ok = all(cm.report.status == "compiled" for cm in (cm_train, cm_infer, cm_frozen))
    print(f"[{preset}] compile: first training step {compile_train_s:.1f} s, first sampling forward "
          f"{compile_infer_s:.1f} s, frozen {compile_frozen_s:.1f} s; " + " | ".join(messages), flush=True)
    cache = [(r.cache_hits or 0, r.cache_misses or 0) for r in (cm_train.report, cm_infer.report, cm_frozen.report)]
    # (training step, sampling call) per variant; the frozen variant samples only. "channels-last": eager
    # again, on a copy of the module and inputs stored channels-last (no compiling)
    bc = Bench(preset, batch, channels_last=True)
    bc.train_step(bc.module)
    fns = {"eager": (lambda: b.train_step(b.module), lambda: b.forward(b.sampler_module)),
           "compiled": (lambda: b.train_step(cm_train), lambda: b.forward(cm_infer)) if ok else None,
           "frozen": (None, lambda: b.forward(cm_frozen)) if ok else None,
           "channels-last": (lambda: bc.train_step(bc.module), lambda: bc.forward(bc.sampler_module))}
    train = {k: [] for k in fns}
    infer = {k: [] for k in fns}
    loads, peaks = [os.getloadavg()[0]], []
    order = list(fns)
    for r in range(repeats):
        for k in (order if r % 2 == 0 else order[::-1]):
            if fns[k] is None:
                continue
            f_train, f_infer = fns[k]
            if f_train is not None:
                train[k].append(batch / timed(f_train))
            infer[k].append(batch / timed(f_infer))
        peaks.append((matmul_peak(repeats=3)[0], conv_peak(repeats=3)[0]))
        loads.append(os.getloadavg()[0])
        print(f"[{preset}] repeat {r + 1}/{repeats}: " + ", ".join(
            f"{k} " + (f"train {train[k][-1]:.1f} img/s " if train[k] else "") + f"sample {infer[k][-1]:.1f} img/s"
            for k in fns if infer[k]), flush=True)
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    # the bound: eager seconds per call over the compiled call's seconds inside convolution kernels
    conv_train = conv_infer = float("nan")
    if ok:
        conv_train = convolution_seconds(lambda: b.train_step(cm_train))
        conv_infer = convolution_seconds(lambda: b.forward(cm_frozen))
    return dict(preset=preset, conv_train_s=conv_train, conv_infer_s=conv_infer, batch=batch, params=b.params,
                fl_fwd=fl_fwd, fl_train=fl_train, repeats=repeats,
                compile_train_s=compile_train_s, compile_infer_s=compile_infer_s, compile_frozen_s=compile_frozen_s,
                ok=ok, max_diff=cm_infer.report.max_abs_diff, max_diff_frozen=cm_frozen.report.max_abs_diff,
                cache=cache, messages=messages,
                train={k: med(v) for k, v in train.items()},
                infer={k: med(v) for k, v in infer.items()}, load=(min(loads), statistics.median(loads), max(loads)),
                peaks=peaks)


def keep_group_norm_in_aten() -> None:
    """An experiment (``--groupnorm-fallback``): TorchInductor compiles GroupNorm and its backward from their
    decomposition into its own loops; this makes it call eager's aten kernels for them instead, leaving the
    rest of the graph compiled. Private TorchInductor names, checked on torch 2.13 only."""
    from torch._inductor import compile_fx, decomposition, lowering

    aten = torch.ops.aten
    ops = (aten.native_group_norm.default, aten.native_group_norm_backward.default)
    table = decomposition.select_decomp_table

    def without_group_norm():
        return {k: v for k, v in table().items() if k not in ops}

    decomposition.select_decomp_table = compile_fx.select_decomp_table = without_group_norm
    for op in (aten.native_group_norm, aten.native_group_norm_backward):
        lowering.make_fallback(op)


def convolution_seconds(step, calls: int = 3) -> float:
    """Seconds one ``step()`` spends inside convolution kernels (profiler self CPU time), best of ``calls``."""
    from torch.profiler import profile

    best = float("inf")
    for _ in range(calls):
        with profile() as prof:
            step()
        best = min(best, sum(e.self_cpu_time_total for e in prof.key_averages() if "convolution" in e.key) / 1e6)
    return best


def break_even_minutes(compile_s: float, eager: float, compiled: float) -> float:
    """Minutes of eager training after which the compiled run (compile time + faster steps) has caught up:
    C + N / c = N / e  =>  N / e = C / (1 - e / c)."""
    if not compiled > eager:
        return float("inf")
    return compile_s / (1 - eager / compiled) / 60


def render(results: list[dict], peaks: tuple[float, float], threads: int, command: str, note: str) -> str:
    peak = max(peaks)
    lines = [SECTION, "", f"Command: `{command}`", "",
             f"CPU, {threads} torch thread(s), torch {torch.__version__}. One module per preset (random weights, "
             "seed 0), timed eager and behind `difflab.compile.compile_model` (TorchInductor, the same parameters), "
             "alternating repeats, medians. Training: forward, the preset's diffusion loss, backward, AdamW. "
             "Sampling: one network evaluation (no_grad, eval mode) per image; a sample at N NFE costs N of them; "
             "compiled as in training, and compiled with the weights frozen into the code (`freeze=True`, what "
             "`difflab sample --compile` uses). "
             f"fp32 peak measured in the same run: best matmul {peaks[0]:.0f} GFLOP/s, best 3x3 convolution "
             f"{peaks[1]:.0f} GFLOP/s; % of peak = achieved FLOP/s (FlopCounterMode) / {peak:.0f} GFLOP/s (the "
             "larger; torch's matmul library is not tuned for this CPU). Compile: the first training "
             "step (forward + backward graphs) and the first sampling forward (unfrozen / frozen), timed on their "
             "own.", ""]
    if note:
        lines += [note, ""]
    lines += ["| preset | batch | params | train img/s eager | compiled | ratio | train % peak eager / compiled "
              "| sample img/s eager | compiled | ratio | frozen | ratio | sample % peak eager / compiled / frozen "
              "| compile s (train / sample / frozen) | break-even (train min) | bound: train / sample "
              "| load avg (min-max) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        te, tc = r["train"]["eager"], r["train"]["compiled"]
        ie, ic, iz = r["infer"]["eager"], r["infer"]["compiled"], r["infer"]["frozen"]
        pct = lambda fl, rate: 100 * fl / r["batch"] * rate / 1e9 / peak  # noqa: E731
        be = break_even_minutes(r["compile_train_s"], te, tc)
        lines.append(f"| {r['preset']} | {r['batch']} | {r['params']:,} | {te:.1f} | {tc:.1f} | **{tc / te:.2f}x** | "
                     f"{pct(r['fl_train'], te):.0f}% / {pct(r['fl_train'], tc):.0f}% | {ie:.1f} | {ic:.1f} | "
                     f"**{ic / ie:.2f}x** | {iz:.1f} | **{iz / ie:.2f}x** | {pct(r['fl_fwd'], ie):.0f}% / "
                     f"{pct(r['fl_fwd'], ic):.0f}% / {pct(r['fl_fwd'], iz):.0f}% | "
                     f"{r['compile_train_s']:.0f} / {r['compile_infer_s']:.0f} / {r['compile_frozen_s']:.0f} | "
                     f"{'never' if be == float('inf') else f'{be:.1f}'} | "
                     f"{r['batch'] / te / r['conv_train_s']:.2f}x / {r['batch'] / ie / r['conv_infer_s']:.2f}x | "
                     f"{r['load'][0]:.1f}-{r['load'][2]:.1f} |")
    lines += ["", "Channels-last, eager (no compiling): the same module and inputs stored channels-last (NHWC), the "
              "layout oneDNN's convolutions use, timed in the same alternating repeats:", "",
              "| preset | train img/s eager | channels-last | ratio | sample img/s eager | channels-last | ratio |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        te, tl = r["train"]["eager"], r["train"]["channels-last"]
        ie, il = r["infer"]["eager"], r["infer"]["channels-last"]
        lines.append(f"| {r['preset']} | {te:.1f} | {tl:.1f} | **{tl / te:.2f}x** | {ie:.1f} | {il:.1f} | "
                     f"**{il / ie:.2f}x** |")
    lines.append("")
    for r in results:
        (hit_t, miss_t), (hit_i, miss_i), (hit_z, miss_z) = r["cache"]
        diff = lambda d: "n/a" if d is None else f"{d:.1e}"  # noqa: E731
        lines.append(f"- `{r['preset']}`: forward {r['fl_fwd'] / r['batch'] / 1e9:.2f} GFLOP/image, training step "
                     f"{r['fl_train'] / r['batch'] / 1e9:.2f} GFLOP/image; {r['repeats']} repeats; sampling output "
                     f"vs eager: max |diff| {diff(r['max_diff'])} compiled, {diff(r['max_diff_frozen'])} frozen; "
                     f"inductor cache hits / misses: training compile {hit_t} / {miss_t}, sampling compile "
                     f"{hit_i} / {miss_i}, frozen {hit_z} / {miss_z}"
                     + ("" if r["ok"] else "; COMPILE FELL BACK TO EAGER: " + " | ".join(r["messages"])) + ".")
    lines += ["", "Bound: the eager step's (call's) seconds over the seconds the compiled training step (frozen "
              "sampling call) spends in convolution kernels (torch.profiler, best of 3): the ratio compiling would "
              "reach if all the rest cost nothing.",
              "", "Break-even: the eager training time after which a compiled run, having paid its compile time, "
              "has done as many steps (compile s / (1 - eager / compiled rate)); a 25-minute budget gains from "
              "compiling only when this is well below 25."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated, from {', '.join(PRESETS)}")
    ap.add_argument("--repeats", type=int, default=None, help="alternating repeats per preset (default: 7, cifar10 3)")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: 64, cifar10 32)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="", help="a sentence written above the table (e.g. the machine's state)")
    ap.add_argument("--no-write", action="store_true", help="print the table, do not touch RESULTS.md")
    ap.add_argument("--groupnorm-fallback", action="store_true",
                    help="experiment: compiled graphs call eager's GroupNorm kernels (implies --no-write)")
    args = ap.parse_args()
    presets = [p for p in args.presets.split(",") if p]
    bad = [p for p in presets if p not in PRESETS]
    if bad:
        sys.exit(f"error: unknown presets {bad}; choose from {', '.join(PRESETS)}")
    if args.repeats is not None and args.repeats < 1:
        sys.exit("error: --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    if args.groupnorm_fallback:
        keep_group_norm_in_aten()
        # compile afresh, not from graphs cached by ordinary runs (the environment variable is read at import)
        from torch._inductor import config as inductor_config
        inductor_config.fx_graph_cache = False
        args.no_write = True
    before = (matmul_peak()[0], conv_peak()[0])
    results = [run_preset(p, args.batch or BATCH[p], args.repeats or REPEATS[p]) for p in presets]
    after = (matmul_peak()[0], conv_peak()[0])
    every = [before, after, *(p for r in results for p in r["peaks"])]
    peak = (max(m for m, _ in every), max(c for _, c in every))
    command = "python " + shlex.join(["benchmarks/compile_throughput.py"] + sys.argv[1:])
    text = render(results, peak, args.threads, command, args.note)
    print(text)
    if not args.no_write:
        write_section(RESULTS, SECTION, text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
