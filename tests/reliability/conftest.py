import pytest

from difflab.config import resolve_config
from difflab.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained for 2 steps (one per test module)."""
    run = tmp_path_factory.mktemp("run") / "run"
    cfg = resolve_config("tiny", overrides=["train.num_threads=1", "train.steps=2", "sample.n=2", "sample.steps=2"])
    train(cfg, run, progress=False, log=lambda m: None)
    return run
