import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli_helpers import AE  # noqa: E402

from difflab.cli import main  # noqa: E402


@pytest.fixture(scope="session")
def ae_run(tmp_path_factory):
    """The tiny autoencoder trained for 4 steps through the CLI (shared by the latent-run tests)."""
    run = tmp_path_factory.mktemp("ae") / "ae"
    assert main([str(a) for a in (*AE, "--steps", 4, "--out", run)]) == 0
    return run
