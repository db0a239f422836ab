"""Tests of lightning_lyapunov.log_norm: the one definition of the log-norm per unit."""

import math

import pytest
import torch

from lightning_lyapunov.log_norm import log_gain, log_r


def test_log_r_is_the_log_of_the_norm_per_unit() -> None:
    x = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = [math.log(float(v.norm()) / math.sqrt(12)) for v in x]
    assert log_r(x).tolist() == pytest.approx(expected, rel=1e-6)
    assert log_r(torch.zeros(2, 3)).tolist() == [-math.inf, -math.inf]
    assert log_r(torch.tensor([2.0, -3.0])).tolist() == pytest.approx([math.log(2), math.log(3)])  # batch of scalars
    assert not log_r(torch.ones(2, 2, requires_grad=True)).requires_grad


def test_log_gain_formula() -> None:
    assert log_gain(torch.ones(8, 4), 2 * torch.ones(8, 3, 3)) == pytest.approx(math.log(2))
