"""The ``difflab`` command line (see :mod:`difflab.cli.main`); one module per group of subcommands."""

from .common import PROG, UsageError
from .main import COMMANDS, Command, build_parser, main

__all__ = ["COMMANDS", "Command", "PROG", "UsageError", "build_parser", "main"]
