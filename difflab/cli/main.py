"""The ``difflab`` command line: argv, devices, files. The only module with side effects.

Each subcommand is a pair of functions, ``add_<name>_arguments(parser)`` and
``run_<name>(args) -> exit code``, registered in :data:`COMMANDS`; add a row to add a command.

Exit codes: 0 success, 1 runtime failure (bad data or checkpoint, non-finite loss ...),
2 usage or configuration error, 130 interrupted (a checkpoint was written first).
Errors are one line on stderr (``difflab: error: ...``); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from ..config import ConfigError
from .common import PROG, UsageError, Parser
from .evaluate import add_eval_arguments, run_eval
from .make_dataset import add_make_dataset_arguments, run_make_dataset
from .interop import (add_export_diffusers_arguments, add_import_diffusers_arguments, run_export_diffusers,
                      run_import_diffusers)
from .misc import (
    add_config_arguments,
    add_show_forward_arguments,
    add_toy_arguments,
    run_config,
    run_show_forward,
    run_toy,
)
from .sample import add_sample_arguments, run_sample
from .serve import add_serve_arguments, run_serve
from .train import add_train_arguments, run_train
from .train_autoencoder import add_train_autoencoder_arguments, run_train_autoencoder
from .train_classifier import add_train_classifier_arguments, run_train_classifier


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[Command] = [
    Command("train", "train a diffusion model (preset + config file + --set overrides)", add_train_arguments,
            run_train),
    Command("sample", "draw images from a trained run (optionally guided)", add_sample_arguments, run_sample),
    Command("serve", "a local web page to sample runs: pick settings, watch the denoising, download the grid",
            add_serve_arguments, run_serve),
    Command("train-classifier", "train a noise-aware classifier for classifier guidance",
            add_train_classifier_arguments, run_train_classifier),
    Command("train-autoencoder", "train the KL autoencoder of latent diffusion (reports held-out PSNR)",
            add_train_autoencoder_arguments, run_train_autoencoder),
    Command("eval", "evaluate a run: fd (Frechet distance, precision/recall, class accuracy), nll (bits/dim); "
                    "train-featurizer (the evaluation classifier of your own labelled images)",
            add_eval_arguments, run_eval),
    Command("show-forward", "show the forward (noising) process on real images", add_show_forward_arguments,
            run_show_forward),
    Command("config", "print the resolved run config (preset + file + overrides)", add_config_arguments, run_config),
    Command("toy", "train and sample a 2-D toy model in seconds (scatter, trajectory and loss plots)",
            add_toy_arguments, run_toy),
    Command("make-dataset", "write a test dataset as a folder of PNG files (colored-mnist)",
            add_make_dataset_arguments, run_make_dataset),
    Command("export-diffusers", "write a run as a diffusers pipeline folder (DDPMPipeline / DDIMPipeline)",
            add_export_diffusers_arguments, run_export_diffusers),
    Command("import-diffusers", "turn a diffusers UNet2DModel + scheduler folder into a difflab run",
            add_import_diffusers_arguments, run_import_diffusers),
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser = Parser(prog=PROG, description="Diffusion models: train, sample, inspect.", parents=[common])
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, parents=[common])
        cmd.add_arguments(p)
        p.set_defaults(run=cmd.run)
    return parser


def _error(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "run", None) is None:
            raise UsageError(f"choose a command: {', '.join(c.name for c in COMMANDS)} (see '{PROG} --help')")
        return args.run(args)
    except (UsageError, ConfigError) as e:
        if debug:
            raise
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        _error("interrupted")
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        if debug:
            raise
        _error(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return 1


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())
