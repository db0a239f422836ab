"""The log-norm of the signal, the quantity the whole package is about: one definition.

``log r(v) = log(||v|| / sqrt(d))`` per sample (dim 0 is the batch, ``d`` the number of values per
sample): the signal's size per unit. Sampling scores a draw by the batch-mean change of it from a
network's input to its output (:func:`log_gain`), calibration records it per layer, and the
diagnostics measure it at every planned layer (their batched kernel computes the same quantity).
Calibration scales each layer by the root-mean-square of its output (:func:`rms`).

Same bits whatever the number of threads: torch splits a reduction to a single value over its
threads (each sums a share, then the shares are added), so ``v.pow(2).mean()`` of a 1024 x 96
batch changes in the last bits between 1 and 2 threads. A reduction with several outputs gives each
output to one thread whole, and one under torch's grain (32768 elements) is not split at all. So
:func:`rms` sums fixed chunks of :data:`CHUNK` elements in float64 and adds the chunks' sums on the
host with ``math.fsum`` (exact, hence in any order). :func:`log_r`'s per-sample norms (and
``torch.norm`` of a single sample) were measured to give the same bits on 1, 2 and 3 threads.

Example::

    >>> import torch
    >>> round(log_gain(torch.ones(8, 4), 2 * torch.ones(8, 9)), 4)   # log 2
    0.6931
"""

from __future__ import annotations

import math

import torch

__all__ = ["CHUNK", "log_gain", "log_r", "rms"]

#: Elements per partial sum of :func:`rms`: under torch's parallel grain, so no chunk is split over threads.
CHUNK = 4096


def log_r(value: torch.Tensor) -> torch.Tensor:
    """Per sample (dim 0) ``log r = log(||v|| / sqrt(numel per sample))``, in float32, detached.

    A sample that is exactly zero gives ``-inf``; a 1-d tensor is a batch of scalars.

    Example::

        >>> log_r(torch.full((2, 4), 3.0)).tolist()   # ||v|| / sqrt(4) = 3
        [1.0986123085021973, 1.0986123085021973]
    """
    flat = value.detach().reshape(value.shape[0], -1).float()
    return flat.norm(dim=1).log() - 0.5 * math.log(flat.shape[1])


def rms(value: torch.Tensor) -> float:
    """The root-mean-square ``sqrt(mean v^2)`` over every element of ``value``, accumulated in
    float64, with the same bits whatever the number of threads (module docstring).

    Example::

        >>> rms(torch.full((3, 5), -2.0))
        2.0
    """
    flat = value.detach().reshape(-1)
    if not flat.is_floating_point():
        flat = flat.float()
    whole = flat.numel() // CHUNK * CHUNK
    rows = flat[:whole].reshape(-1, CHUNK).square().sum(1, dtype=torch.float64)  # one thread per row
    tail = flat[whole:].square().sum(dtype=torch.float64)  # fewer than CHUNK elements: not split
    return math.sqrt(math.fsum([*rows.tolist(), float(tail)]) / max(flat.numel(), 1))


def log_gain(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """``mean_b (log r(outputs_b) - log r(inputs_b))``: the batch-mean change of the log-norm.

    Computed in float32 on the tensors' device. Non-finite results (a dead network, log 0) come back
    as ``-inf``/``nan``.

    Example::

        >>> round(log_gain(torch.ones(8, 4), torch.full((8, 1), 0.5)), 4)   # log 0.5
        -0.6931
    """
    return float((log_r(outputs) - log_r(inputs)).mean())
