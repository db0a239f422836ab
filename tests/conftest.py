"""Test fixtures; shared helpers are in tests/helpers.py."""

import pytest
import torch

from helpers import DeepNarrow

# The tests use tiny tensors: one intra-op thread. With two OpenMP threads spinning on two shared
# cores, a 4x4 QR or a 2x2 matmul was measured up to ~1000x slower than single-threaded.
torch.set_num_threads(1)


@pytest.fixture
def deep_narrow():
    torch.manual_seed(0)
    return DeepNarrow()
