"""``python -m difflab``: the command line (see difflab.cli)."""

import sys

from .cli import main

sys.exit(main())
