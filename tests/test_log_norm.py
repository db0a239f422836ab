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


@pytest.mark.parametrize("shape", [(1024, 96), (1, 3, 128, 128), (7,), (1, 5000)])
def test_rms_and_log_r_have_the_same_bits_whatever_the_number_of_threads(shape) -> None:
    from lightning_lyapunov.log_norm import rms

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        try:
            results.append((rms(x), log_r(x.reshape(shape[0], -1) if len(shape) > 1 else x).tolist()))
        finally:
            torch.set_num_threads(1)
    assert results[0] == results[1] == results[2]
    assert results[0][0] == pytest.approx(float(x.double().pow(2).mean().sqrt()), rel=1e-7)
    if len(shape) > 1:
        expected = [math.log(float(v.double().norm()) / math.sqrt(v.numel())) for v in x]
        assert results[0][1] == pytest.approx(expected, abs=1e-6)  # float32 log-norms
