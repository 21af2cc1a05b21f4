import os

import pytest
import torch

# One intra-op thread for the whole suite: the test networks are tiny, a second thread buys
# nothing, and on a busy 2-core machine spin-waiting threads made steps up to 10x slower.
torch.set_num_threads(1)

# The official MNIST files live in shared/ beside the repository (CI clones it there too).
MNIST_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist"))


@pytest.fixture
def mnist_dir():
    if not os.path.isdir(MNIST_DIR):
        pytest.skip("MNIST files not found beside the repository (../shared/data/mnist)")
    return MNIST_DIR

# Property tests draw the same examples on every run, so CI results are reproducible.
from hypothesis import settings  # noqa: E402

settings.register_profile("difflab", derandomize=True, deadline=None)
settings.load_profile("difflab")
