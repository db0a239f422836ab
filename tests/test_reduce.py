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


def test_the_unit_sample_takes_evenly_spread_runs_of_neighbours():
    from lightning_lyapunov._reduce import _RUN, unit_sample

    h = torch.arange(3 * 8192, dtype=torch.float64).reshape(3, 8192)  # unit j of sample b holds 8192 b + j
    sample = unit_sample(h, 1024)
    assert sample.dtype == torch.float32 and sample.shape == (3, 1024)
    picked = sample[0].long().reshape(-1, _RUN)  # 32 runs of 32 neighbours, in the middle of each stretch of 256
    assert torch.equal(picked, torch.arange(32).unsqueeze(1) * 256 + 112 + torch.arange(_RUN))
    assert torch.equal(sample[2].long(), sample[0].long() + 2 * 8192)
    # a conv output (32 channels x 16 x 16): every channel is represented
    assert sorted(set((picked // 256).flatten().tolist())) == list(range(32))


@pytest.mark.parametrize("device", DEVICES)
def test_a_layer_with_more_units_than_max_units_is_measured_on_a_sample_and_its_log_norms_on_every_unit(device):
    g = torch.Generator().manual_seed(6)
    h = torch.randn(64, 32, 16, 16, generator=g) * 1.5 + 0.2  # 8192 units per sample
    h[:, :8] = -h[:, :8].abs()  # channels 0-7 dead: a quarter of the units, also of the sample's
    h = h.reshape(64, -1).to(device)
    sampled, sampled_log_norms = signal_stats(h, max_units=1024)
    exact, exact_log_norms = signal_stats(h, max_units=None)
    assert torch.equal(signal_stats(h)[0], signal_stats(h, max_units=2048)[0])  # the default
    torch.testing.assert_close(sampled_log_norms, exact_log_norms)
    column = {key: i for i, key in enumerate(STAT_KEYS)}
    for key in ("log_norm_mean", "log_norm_std", "log_rms", "nonfinite"):  # every unit
        torch.testing.assert_close(sampled[0, column[key]], exact[0, column[key]], rtol=1e-5, atol=1e-6)
    assert sampled[0, column["dead_fraction"]] == exact[0, column["dead_fraction"]] == 0.25
    # estimates from 1024 of 8192 units: within a few percent (a wrong constant would be far off)
    for key, tolerance in (("emp_var_mean", 0.04), ("input_share", 0.01), ("kurtosis_median", 0.05),
                           ("kurtosis_pooled", 0.05)):
        assert sampled[0, column[key]].item() == pytest.approx(exact[0, column[key]].item(), rel=tolerance), key
    # a log of an estimate: within 0.01 (its sampling noise; a wrong constant would be off by 0.1 or more)
    assert sampled[0, column["centred_log_norm_mean"]].item() == pytest.approx(
        exact[0, column["centred_log_norm_mean"]].item(), abs=0.01)
    with pytest.raises(ValueError, match="max_units"):
        signal_stats(h, max_units=0)


def test_a_nan_outside_the_unit_sample_is_still_counted_and_shows_in_the_log_norm():
    h = torch.randn(16, 8192)
    h[3, 100] = math.nan  # not among the first 32 units of each stretch of 256
    stats, log_norms = signal_stats(h, max_units=1024)
    assert stats[0, STAT_KEYS.index("nonfinite")] == 1
    assert math.isnan(log_norms[0, 3]) and math.isnan(stats[0, STAT_KEYS.index("log_norm_mean")])
    assert math.isfinite(stats[0, STAT_KEYS.index("kurtosis_median")])  # the sample's units are finite
