"""Tests of lightning_lyapunov._reduce: the batched reduction kernels (many layers side by side, zero-padded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_lyapunov._reduce import _PAD_LIMIT, STAT_KEYS, _buckets, _padded_stats, signal_stats

# the statistics run on the activations' device: the tests that take `device` also run on CUDA when there is one
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]



@pytest.mark.parametrize("device", DEVICES)
def test_signal_stats_of_layers_side_by_side_equal_separate_calls(device):
    g = torch.Generator().manual_seed(3)
    parts = [torch.randn(50, 7, generator=g), torch.rand(50, 2, generator=g) - 0.7, torch.randn(50, 5, generator=g)]
    parts = [part.to(device) for part in parts]
    parts[2][4, 1] = math.nan  # stays inside its own layer
    stats, log_norms = signal_stats(torch.cat(parts, 1), widths=[7, 2, 5])
    assert stats.shape == (3, len(STAT_KEYS)) and log_norms.shape == (3, 50)
    for i, part in enumerate(parts):
        single, single_log_norms = signal_stats(part)
        torch.testing.assert_close(stats[i], single[0], equal_nan=True)
        torch.testing.assert_close(log_norms[i], single_log_norms[0], equal_nan=True)
    assert stats[2, STAT_KEYS.index("nonfinite")] == 1 and torch.isfinite(stats[:2]).all()
    with pytest.raises(ValueError, match="widths"):
        signal_stats(torch.randn(4, 5), widths=[2, 2])
    with pytest.raises(ValueError, match="positive"):
        signal_stats(torch.randn(4, 5), widths=[3, 0, 2])


def test_signal_stats_leaves_its_input_alone_and_overwrite_gives_the_same_result():

    g = torch.Generator().manual_seed(4)
    for widths in ([6, 4, 3], [5, 5]):  # padded (a copy) and equal widths (a view of h)
        h = torch.randn(20, sum(widths), generator=g)
        h[:, 3] = 0.5  # a constant unit
        kept = h.clone()
        stats, log_norms = signal_stats(h, widths=widths)
        assert torch.equal(h, kept)
        scratch = torch.zeros(len(widths), 20, max(widths))
        for layer, block in zip(scratch, torch.split(h, widths, 1)):
            layer[:, : block.shape[1]] = block
        again, again_log_norms = _padded_stats(scratch, tuple(widths), overwrite=True)
        torch.testing.assert_close(again, stats, equal_nan=True)
        torch.testing.assert_close(again_log_norms, log_norms)
        assert not torch.equal(scratch[0, :, : widths[0]], kept[:, : widths[0]])  # used as scratch space
        for layer, w in zip(scratch, widths):
            assert torch.count_nonzero(layer[:, w:]) == 0  # the padding stays zero


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 24])
def test_a_large_output_swept_in_blocks_of_units_gives_the_one_pass_statistics(monkeypatch, device, batch):
    """Blocks of 7 units (and a last one of 3): what is summed over the units is summed block by
    block, the rest per unit; NaN counted in its block only; the padding stays out."""
    from lightning_lyapunov import _reduce

    g = torch.Generator().manual_seed(5)
    widths = [59, 52]
    h = torch.randn(batch, sum(widths), generator=g).to(device)
    h[:, 2] = 0.5  # a constant unit
    h[:, 60:63] = -h[:, 60:63].abs()  # dead units (a ReLU after the layer outputs 0)
    h[0, 70] = math.nan
    whole, whole_log_norms = signal_stats(h, widths=widths)
    monkeypatch.setattr(_reduce, "_BLOCK_ELEMENTS", 7 * 2 * batch)  # 2 layers x batch x 7 units per block
    monkeypatch.setattr(_reduce, "_SWEPT_ABOVE", 0)
    blocked, blocked_log_norms = signal_stats(h, widths=widths)
    torch.testing.assert_close(blocked, whole, equal_nan=True, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(blocked_log_norms, whole_log_norms, equal_nan=True)
    assert blocked[1, STAT_KEYS.index("nonfinite")] == 1 and blocked[0, STAT_KEYS.index("nonfinite")] == 0
    if batch > 1:  # one sample: about half the units are <= 0
        assert blocked[1, STAT_KEYS.index("dead_fraction")] == pytest.approx(3 / 52)


def test_layers_are_grouped_so_that_zero_padding_adds_at_most_a_quarter():

    assert _buckets([144, 7, 7, 3]) == [[0], [1, 2, 3]]  # 3 units padded to 7: 21 for 17
    assert _buckets([64] * 31 + [10]) == [list(range(32))]  # an MLP and its head: one group
    assert _buckets([2, 8, 8, 2]) == [[1, 2], [0, 3]]  # forward order inside a group
    g = np.random.default_rng(0)
    for _ in range(200):
        widths = g.integers(1, 300, size=g.integers(1, 12)).tolist()
        groups = _buckets(widths)
        assert sorted(i for group in groups for i in group) == list(range(len(widths)))
        for group in groups:
            units = sum(widths[i] for i in group)
            assert max(widths[i] for i in group) * len(group) <= _PAD_LIMIT * units
            assert group == sorted(group)
