"""One context manager that leaves the process's global random generators as they were."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["global_rng_preserved"]


@contextmanager
def global_rng_preserved() -> Iterator[None]:
    """Restore torch's CPU generator (and every CUDA device's, once CUDA is initialized), Python's
    ``random`` and NumPy's global generator on exit, whatever the block drew from them."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda_devices = range(torch.cuda.device_count()) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
