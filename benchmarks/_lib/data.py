"""The data sets of the benchmarks, read from local files (nothing is downloaded).

* MNIST-1D, generated locally (``examples.data.MNIST1D``);
* MNIST from the four idx files in ``$LYAPUNOV_MNIST_DIR`` (default ``../shared/data/mnist`` beside the
  repository), standardized with the usual mean 0.1307 and std 0.3081;
* CIFAR-10 from the python batches in ``$LYAPUNOV_CIFAR_DIR`` (default ``data/cifar10``). On the
  benchmark machine it is the JPEG q75 copy, so CIFAR results say :data:`CIFAR_NOTE`.

A missing data set raises a ``FileNotFoundError`` that says how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks._lib.package import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST1D,
    MNIST_ENV,
    MNIST_MEAN,
    MNIST_STD,
    read_cifar10,
    read_mnist,
)

Split = tuple[Tensor, Tensor]
CIFAR_ENV = "LYAPUNOV_CIFAR_DIR"
CIFAR_NOTE = "CIFAR-10, JPEG q75 copy"
DEFAULT_CIFAR = "data/cifar10"
_DEFAULT_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def mnist1d(num_samples: int = 5000, seed: int = 0) -> dict[str, Split]:
    """MNIST-1D generated locally (already standardized): ``{"train", "val", "test"}`` (3500 / 500 /
    1000 for 5000 samples)."""
    data = MNIST1D(num_samples=num_samples, val_size=num_samples // 10, seed=seed)
    data.setup()
    assert data.splits is not None
    return dict(data.splits)


def mnist_dir() -> str | None:
    """``$LYAPUNOV_MNIST_DIR``, else the shared copy beside the repository if it exists."""
    return os.environ.get(MNIST_ENV) or (str(_DEFAULT_MNIST) if _DEFAULT_MNIST.is_dir() else None)


def mnist(n_train: int | None = None, seed: int = 0, n_test: int | None = None) -> dict[str, Split]:
    """MNIST ``{"train", "test"}`` as float32 ``(N, 1, 28, 28)``, standardized; ``n_train`` / ``n_test``:
    random subsets of the training / test images (drawn with ``seed``)."""
    arrays = read_mnist(mnist_dir())
    out = {k: ((x.float().unsqueeze(1) / 255 - MNIST_MEAN) / MNIST_STD, y) for k, (x, y) in arrays.items()}
    return subsample(out, n_train, seed, n_test)


def cifar10(n_train: int | None = None, n_test: int | None = None, pool: int = 1, seed: int = 0,
            standardize: str = "cifar") -> dict[str, Split]:
    """CIFAR-10 ``{"train", "test"}`` float32 ``(N, 3, 32 / pool, 32 / pool)``. ``standardize="cifar"``:
    the usual channel mean/std constants; ``"train"``: the channel mean/std of the (subsampled) training
    images. ``pool``: average pooling ``pool x pool``. Random subsets of ``n_train`` / ``n_test`` images."""
    arrays = read_cifar10(os.environ.get(CIFAR_ENV, DEFAULT_CIFAR))
    out = subsample({k: (x.float() / 255, y) for k, (x, y) in arrays.items()}, n_train, seed, n_test)
    if standardize == "cifar":
        mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    else:
        x = out["train"][0]
        mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    out = {k: ((x - mean) / std, y) for k, (x, y) in out.items()}
    if pool > 1:
        out = {k: (F.avg_pool2d(x, pool), y) for k, (x, y) in out.items()}
    return out


def subsample(data: dict[str, Split], n_train: int | None, seed: int, n_test: int | None = None) -> dict[str, Split]:
    """Random subsets of ``n_train`` training and ``n_test`` test rows (one generator seeded ``seed``;
    a size at or above the split's keeps it whole)."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(data)
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = data[split]
        if n is not None and n < len(x):
            idx = torch.randperm(len(x), generator=gen)[:n]
            out[split] = (x[idx], y[idx])
    return out
