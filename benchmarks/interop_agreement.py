"""Agreement of difflab and diffusers on exported and imported models (difflab.interop).

Run:  .venv/bin/python benchmarks/interop_agreement.py --checkpoint runs/digits-demo

1. Export: the run goes to a diffusers pipeline folder (``export_diffusers``); diffusers'
   ``DDIMScheduler`` loop on that folder (eta 0, ``use_clipped_model_output=True``) and
   difflab's DDIM (``sample_images``, the code behind ``difflab sample --sampler ddim --eta 0
   --spacing leading``) start from the same noise; the table gives max |difference| of the
   final samples (on the [-1, 1] scale, before clamping) for several step counts.
2. Round trip: the folder is imported back (``import_diffusers``); weights and samples are compared.
3. Import: randomly initialised ``UNet2DModel``s built with each combination of the four flags
   google/ddpm-* checkpoints set (flip_sin_to_cos, freq_shift, downsample_padding, norm_eps)
   are imported; max |difference| of the outputs on a random batch, beside what loading the
   same weights with difflab's default flags gives (the behaviour before those flags existed).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
from pathlib import Path

import torch

from _common import RESULTS, write_section  # noqa: E402  (puts the repository on sys.path)

from difflab.interop import export_diffusers, import_diffusers, state_dict_to_difflab, unet_config_from_unet2d  # noqa
from difflab.nn import UNet  # noqa: E402
from difflab.runs import load_run  # noqa: E402
from difflab.sampling import SEED_STRIDE, class_labels, sample_images  # noqa: E402

SECTION = "## diffusers interop agreement"


def diffusers_ddim(folder: Path, x_T: torch.Tensor, steps: int, labels) -> torch.Tensor:
    from diffusers import DDIMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", low_cpu_mem_usage=False).eval()
    sched = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    sched.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(x, t, class_labels=labels).sample
            x = sched.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    return x


def export_rows(checkpoint: str, n: int, step_counts: list[int], work: Path) -> tuple[list[str], str]:
    res = export_diffusers(checkpoint, work / "hf")
    run = load_run(checkpoint)
    m = run.config.model
    labels = class_labels(n, m.num_classes)
    rows = []
    for steps in step_counts:
        sc = dataclasses.replace(run.config.sample, sampler="ddim", eta=0.0, steps=steps, spacing="leading", n=n,
                                 batch_size=n)
        ours = sample_images(run.model, run.diffusion, sc, shape=(m.in_channels, m.image_size, m.image_size),
                             labels=labels).sample
        x_T = torch.stack([torch.randn(m.in_channels, m.image_size, m.image_size,
                                       generator=torch.Generator().manual_seed(sc.seed * SEED_STRIDE + i))
                           for i in range(n)])
        theirs = diffusers_ddim(work / "hf", x_T, steps, labels)
        rows.append(f"| export: diffusers DDIM vs difflab DDIM, {steps} steps, {n} images | "
                    f"{(theirs - ours).abs().max().item():.2e} |")
    import_diffusers(work / "hf", work / "back", dataset=run.config.data.dataset)
    back = load_run(work / "back")
    sa, sb = run.model.state_dict(), back.model.state_dict()
    same = all(torch.equal(sa[k], sb[k]) for k in sa) and sa.keys() == sb.keys()
    sc = dataclasses.replace(run.config.sample, sampler="ddim", eta=0.0, steps=step_counts[0], n=n, batch_size=n)
    a = sample_images(run.model, run.diffusion, sc, shape=(m.in_channels, m.image_size, m.image_size), labels=labels)
    b = sample_images(back.model, back.diffusion, sc, shape=(m.in_channels, m.image_size, m.image_size), labels=labels)
    rows.append(f"| round trip (export, import): weights identical = {same}; DDIM samples, max diff | "
                f"{(a.sample - b.sample).abs().max().item():.2e} |")
    rows.append(f"| export probe check (difflab U-Net vs UNet2DModel, one batch) | {res.max_difference:.2e} |")
    d = run.config.diffusion
    kind = f"{m.num_classes} classes" if m.num_classes is not None else "unconditional"
    return rows, (f"{run.checkpoint} (step {run.step}, {m.in_channels}x{m.image_size}x{m.image_size}, {kind}, "
                  f"{d.prediction} prediction, {d.schedule} schedule, T = {d.num_timesteps})")


def import_rows() -> list[str]:
    from diffusers import UNet2DModel

    base = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=8, attention_head_dim=16)
    rows = []
    for flip, shift, pad, eps in itertools.product([True, False], [0, 1], [1, 0], [1e-5, 1e-6]):
        torch.manual_seed(0)
        ref = UNet2DModel(**base, flip_sin_to_cos=flip, freq_shift=shift, downsample_padding=pad, norm_eps=eps).eval()
        cfg = unet_config_from_unet2d(dict(ref.config))
        x, t = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 10, 500, 999])
        with torch.no_grad():
            want = ref(x, t).sample
            diffs = []
            for c in (cfg, cfg.replace(flip_sin_to_cos=True, freq_shift=0.0, downsample_padding=1, norm_eps=1e-5)):
                net = UNet(c).eval()
                net.load_state_dict(state_dict_to_difflab(ref.state_dict(), cfg))
                diffs.append((net(x, t) - want).abs().max().item())
        rows.append(f"| import: flip_sin_to_cos={flip}, freq_shift={shift}, downsample_padding={pad}, norm_eps={eps} "
                    f"(output scale {want.abs().max().item():.2f}) | {diffs[0]:.2e} (default flags: {diffs[1]:.2g}) |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a difflab run to export")
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows, source = export_rows(args.checkpoint, args.n, args.steps, Path(tmp))
    rows += import_rows()
    import diffusers

    text = "\n".join([SECTION, "", f"`python benchmarks/interop_agreement.py --checkpoint {args.checkpoint} -n {args.n} "
                      f"--steps {' '.join(map(str, args.steps))}` (torch {torch.__version__}, diffusers "
                      f"{diffusers.__version__}, CPU float32). Exported run: {source}. Sample differences are on "
                      "the [-1, 1] scale before clamping; the DDIM rows use `--spacing leading` for difflab (see "
                      "difflab/interop/scheduler.py).", "",
                      "| what | max abs difference |", "|---|---|", *rows, ""])
    print(text)
    write_section(RESULTS, SECTION, text)


if __name__ == "__main__":
    main()
