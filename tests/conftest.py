import os

import pytest
import torch

# Keep the suite predictable on small machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
MNIST_DIR = os.path.abspath(os.path.join(SHARED, "data", "mnist"))


@pytest.fixture
def mnist_dir():
    if not os.path.isdir(MNIST_DIR):
        pytest.skip("MNIST files not found beside the repository (../shared/data/mnist)")
    return MNIST_DIR
