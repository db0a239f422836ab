"""The log-norm of the signal, the quantity the whole package is about: one definition.

``log r(v) = log(||v|| / sqrt(d))`` per sample (dim 0 is the batch, ``d`` the number of values per
sample): the signal's size per unit. Sampling scores a draw by the batch-mean change of it from a
network's input to its output (:func:`log_gain`), calibration records it per layer, and the
diagnostics measure it at every planned layer (their batched kernel computes the same quantity).

Example::

    >>> import torch
    >>> round(log_gain(torch.ones(8, 4), 2 * torch.ones(8, 9)), 4)   # log 2
    0.6931
"""

from __future__ import annotations

import math

import torch

__all__ = ["log_gain", "log_r"]


def log_r(value: torch.Tensor) -> torch.Tensor:
    """Per sample (dim 0) ``log r = log(||v|| / sqrt(numel per sample))``, in float32, detached.

    A sample that is exactly zero gives ``-inf``; a 1-d tensor is a batch of scalars.

    Example::

        >>> log_r(torch.full((2, 4), 3.0)).tolist()   # ||v|| / sqrt(4) = 3
        [1.0986123085021973, 1.0986123085021973]
    """
    flat = value.detach().reshape(value.shape[0], -1).float()
    return flat.norm(dim=1).log() - 0.5 * math.log(flat.shape[1])


def log_gain(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """``mean_b (log r(outputs_b) - log r(inputs_b))``: the batch-mean change of the log-norm.

    Computed in float32 on the tensors' device. Non-finite results (a dead network, log 0) come back
    as ``-inf``/``nan``.

    Example::

        >>> round(log_gain(torch.ones(8, 4), torch.full((8, 1), 0.5)), 4)   # log 0.5
        -0.6931
    """
    return float((log_r(outputs) - log_r(inputs)).mean())
