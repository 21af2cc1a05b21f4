"""How well the recipe's cost model predicts training speed: step times of the recipe's network ladder
against MACs alone and against MACs + ACTIVATION_COST x activations, and the least-squares fit of
that constant (difflab.nn.cost).

    python benchmarks/step_cost.py [--side 32] [--channels 3] [--batch 64] [--seconds 6] [--repeats 3]

One thread; the rungs are timed in turn, ``--repeats`` rounds, and each rung's fastest round is kept
(the least disturbed by other work on the machine). Writes the "Step cost model" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from _common import RESULTS, write_section  # noqa: E402  (puts the repository on sys.path)

from difflab.nn.cost import ACTIVATION_COST, measure_steps_per_second, unet_activations, unet_macs  # noqa: E402
from difflab.recipe import LADDER, network  # noqa: E402

HEADING = "## Step cost model"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rungs", type=int, default=6, help="the first N rungs of the ladder")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rungs = LADDER[:args.rungs]
    nets = [network(args.side, args.channels, r) for r in rungs]
    best = [0.0] * len(nets)
    for rep in range(args.repeats):
        for i, cfg in enumerate(nets):
            sps = measure_steps_per_second(cfg, args.batch, seconds=args.seconds)
            best[i] = max(best[i], sps)
            print(f"round {rep + 1}: {rungs[i]} {sps:.3f} steps/s", flush=True)
    macs = np.array([unet_macs(c) for c in nets], float)
    acts = np.array([unet_activations(c) for c in nets], float)
    t = 1.0 / np.array(best)
    a = np.stack([macs, acts], 1) / t[:, None]                  # least squares on relative time
    coef = np.linalg.lstsq(a, np.ones_like(t), rcond=None)[0]
    fitted = coef[1] / coef[0]
    ref = 2                                                     # mnist-fast's width: the recipe's probe
    rows = ["| network (channels, blocks, attention) | MMACs | activations (k) | step time (s) | "
            f"time / probe's | MACs only | MACs + {ACTIVATION_COST} x act. | error: MACs only | error: cost model |",
            "|---|---|---|---|---|---|---|---|---|"]
    cost = macs + ACTIVATION_COST * acts
    err_m, err_c = [], []
    for i, r in enumerate(rungs):
        meas = t[i] / t[ref]
        pm, pc = macs[i] / macs[ref], cost[i] / cost[ref]
        err_m.append(abs(pm / meas - 1))
        err_c.append(abs(pc / meas - 1))
        rows.append(f"| {r} | {macs[i] / 1e6:.0f} | {acts[i] / 1e3:.0f} | {t[i]:.3f} | {meas:.2f} | {pm:.2f} | "
                    f"{pc:.2f} | {err_m[-1]:.0%} | {err_c[-1]:.0%} |")
    text = "\n".join([
        HEADING, "",
        f"`python benchmarks/step_cost.py --side {args.side} --channels {args.channels} --batch {args.batch} "
        f"--seconds {args.seconds:g} --repeats {args.repeats}`: training steps of the recipe's network ladder "
        f"({args.side}x{args.side}x{args.channels}, batch {args.batch}, one thread, fastest of {args.repeats} "
        "rounds), as a ratio to the probe network (32 channels). The recipe predicts other networks' speed "
        "from the probe's by `training_cost` = MACs + ACTIVATION_COST x activations (difflab.nn.cost).", "",
        *rows, "",
        f"Worst error: MACs only {max(err_m):.0%}, cost model {max(err_c):.0%}. The least-squares constant of this "
        f"run is {fitted:.0f} MAC-equivalents per activation element (the code uses {ACTIVATION_COST}). "
        "Measured on the shared 2-core machine while other jobs ran; ratios between rungs timed in the same "
        "rounds are steadier than the absolute times.",
    ])
    print(text)
    if not args.no_write:
        write_section(RESULTS, HEADING, text)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
