import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli_helpers import TINY  # noqa: E402

from difflab.cli import main  # noqa: E402


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory):
    """A folder with two tiny runs trained for 4 steps through the CLI: ``plain`` (unconditional) and
    ``cond`` (class-conditional with label dropout, so guidance is offered)."""
    root = tmp_path_factory.mktemp("serve") / "runs"
    assert main(["train", *TINY, "--steps", "4", "--out", str(root / "plain"), "--set", "sample.n=4",
                 "sample.steps=3"]) == 0
    assert main(["train", *TINY, "--steps", "4", "--out", str(root / "cond"), "--set", "sample.n=10", "sample.steps=3",
                 "model.num_classes=10", "data.labels=true", "train.class_dropout=0.2"]) == 0
    return root
