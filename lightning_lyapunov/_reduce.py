"""The reduction kernels of the diagnostics: per-layer signal statistics of many layers at once.

:func:`signal_stats` computes, for ``L`` layer outputs side by side, the statistics of
:data:`STAT_KEYS` (formulas in :mod:`lightning_lyapunov.diagnostics`) in fp32 on the activations'
device with no host synchronization. The layers are laid out as one zero-padded
``(layers, batch, max width)`` tensor (:func:`_buckets` groups layers of similar widths so that the
padding adds at most a quarter to their units) and reduced by the same few dozen kernels whatever
``L`` (:func:`_padded_stats`); :class:`~lightning_lyapunov.SignalMonitor` keeps its captures in such
tensors, so a measured step copies nothing before reducing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

__all__ = ["BATCH_STATS", "COLLAPSE_THRESHOLD", "MAX_UNITS", "STAT_KEYS", "signal_stats"]

#: Names of the per-layer statistics, in the order of the rows of ``SignalStats.values``.
STAT_KEYS: tuple[str, ...] = (
    "log_norm_mean",
    "log_norm_std",
    "centred_log_norm_mean",
    "centred_log_norm_std",
    "log_rms",
    "input_share",
    "emp_var_mean",
    "emp_var_collapsed",
    "kurtosis_median",
    "kurtosis_pooled",
    "dead_fraction",
    "nonfinite",
)
_COLUMN = {key: i for i, key in enumerate(STAT_KEYS)}
#: The statistics over the batch that need at least two samples (undefined for a batch of one).
BATCH_STATS: tuple[str, ...] = ("log_norm_std", "centred_log_norm_mean", "centred_log_norm_std", "input_share",
                                 "emp_var_mean", "emp_var_collapsed", "kurtosis_median", "kurtosis_pooled")
#: A unit's variance is collapsed below this fraction of the layer's mean second moment.
COLLAPSE_THRESHOLD = 1e-3
# A unit counts as constant for the kurtosis when std <= _CONSTANT_RTOL * |mean| (fp32 rounding).
_CONSTANT_RTOL = 16 * torch.finfo(torch.float32).eps


#: The per-unit statistics of a layer with more units per sample than this are estimated on this many of
#: its units, spread evenly over the output (:func:`unit_sample`): a conv output of 32 channels x 32 x 32
#: has 32,768 units, a sixteenth of them are reduced (batch 128, one core, the output fresh from the conv:
#: 6.4 -> 2.2 ms per layer, of which 1.4 ms is the log-norms' pass over every unit; 3.0 ms with 4096).
#: The log-norms (``log_norm_*``, ``log_rms``) and the non-finite count use every unit.
MAX_UNITS = 2048
# the sampled units come in runs of this many neighbours (128 bytes of fp32: whole cache lines are read)
_RUN = 32

#: Layers of unequal widths are reduced together, zero-padded to the widest, while the padding adds
#: at most this fraction to their units (:func:`_buckets`).
_PAD_LIMIT = 1.25


def _buckets(widths: Sequence[int]) -> list[list[int]]:
    """Indices of the layers reduced together: widest first, a layer joins the current group while the
    group zero-padded to its widest layer has at most ``_PAD_LIMIT`` times its units; forward order
    within a group (equal widths always go together)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(widths)), key=lambda i: -widths[i]):
        if groups:
            group = groups[-1]
            units = sum(widths[j] for j in group) + widths[i]
            if widths[group[0]] * (len(group) + 1) <= _PAD_LIMIT * units:
                group.append(i)
                continue
        groups.append([i])
    return [sorted(group) for group in groups]


@functools.lru_cache(maxsize=64)
def _layout(widths: tuple[int, ...], device: torch.device, batch: int) -> tuple[torch.Tensor, ...]:
    """Per widths, device and batch size, built once (fp32 on ``device``, ``L`` layers, ``W`` the widest):

    - ``half_log_width`` (L, 1): ``log(w) / 2``, taken from the log-norms;
    - ``offsets``, ``divisors`` (4, L): ``[0, 0, 0, padding]`` and ``[B w, B w, w, w]``, which turn
      the per-layer sums of ``[s2, s4, mean^2, dead]`` into means (the padding is "dead");
    - ``padding`` (L, W): 0 for a layer's units, ``-inf`` for its padding (added to a threshold
      that no padding unit may pass);
    - ``scale`` (L, n_stats): the factor of each column of the statistics (``1 / sqrt(B - 1)``
      for the std, ``B / (B - 1)`` for the unbiased variance, ``1 / w`` for a fraction, ``B``
      for the kurtosis median, computed from ``s4 / s2^2``), applied once at the end;
    - ``zeros`` (L,)."""
    width = torch.tensor(widths, dtype=torch.float32, device=device)
    zeros = torch.zeros_like(width)
    offsets = torch.stack((zeros, zeros, zeros, max(widths) - width))
    divisors = torch.stack((width * batch, width * batch, width, width))
    padding = torch.zeros((len(widths), max(widths)), device=device)
    for row, w in zip(padding, widths):
        row[w:] = -math.inf
    scale = torch.ones((len(widths), len(STAT_KEYS)), device=device)
    if batch > 1:
        scale[:, STAT_KEYS.index("log_norm_std")] = 1 / math.sqrt(batch - 1)
        scale[:, STAT_KEYS.index("centred_log_norm_std")] = 1 / math.sqrt(batch - 1)
        scale[:, STAT_KEYS.index("emp_var_mean")] = batch / (batch - 1)
        scale[:, STAT_KEYS.index("emp_var_collapsed")] = 1 / width
        scale[:, STAT_KEYS.index("kurtosis_median")] = batch
    return width.log().mul_(0.5).unsqueeze(1), offsets, divisors, padding, scale, zeros


def signal_stats(h: torch.Tensor, widths: Sequence[int] | None = None, *,
                 max_units: int | None = MAX_UNITS) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics of ``L`` layer outputs side by side, in fp32, on ``h``'s device, no host sync.

    ``h`` has shape ``(B, D)``: batch ``B``, the flattened outputs of layer ``l`` in the next
    ``widths[l]`` columns (``sum(widths) == D``; default: one layer). Returns ``(stats, log_norms)``:
    ``stats`` of shape ``(L, len(STAT_KEYS))`` (columns in the order of :data:`STAT_KEYS`, formulas
    in the module docstring) and the per-sample ``log_norms = log(||h_b|| / sqrt(d))`` of shape
    ``(L, B)``. A non-finite value stays inside its own layer.

    One layer (``widths`` None or of length 1) with more than ``max_units`` units per sample has
    its per-unit statistics (``centred_*``, ``input_share``, ``emp_var_*``, ``kurtosis_*``,
    ``dead_fraction``) estimated on ``max_units`` of them (:func:`unit_sample`); its log-norms,
    ``log_rms`` and ``nonfinite`` use every unit. ``max_units=None``: every unit, always.

    Cost: the layers are laid out as a ``(L, B, max width)`` tensor, zero-padded (a copy, unless all
    widths are equal), and reduced by the same few dozen kernels whatever ``L``: nine passes over
    the data, the rest on per-unit and per-layer vectors. On the CPU the non-finite entries are
    counted (three more passes) only when a layer's mean log-norm is not finite (a NaN/Inf entry
    makes its sample's norm NaN/Inf; no sync to avoid there); on other devices always (no host
    synchronization).

    Example::

        stats, log_norms = signal_stats(torch.randn(4096, 8 + 3), widths=[8, 3])  # kurtosis ~ 3
    """
    with torch.no_grad():
        batch, total = h.shape
        widths = (total,) if widths is None else tuple(int(w) for w in widths)
        if sum(widths) != total:
            raise ValueError(f"widths={list(widths)} must sum to the number of columns of h, {total}")
        if min(widths) < 1:
            raise ValueError(f"widths={list(widths)} must be positive: each layer has at least one unit")
        if max_units is not None and max_units < 1:
            raise ValueError(f"max_units={max_units!r} must be a positive number of units, or None (every unit)")
        if max_units is not None and len(widths) == 1 and total > max_units:
            return _sampled_stats(h, max_units)
        if len(set(widths)) == 1:
            return _padded_stats(h.float().reshape(batch, len(widths), widths[0]).transpose(0, 1), widths, overwrite=False)
        padded = h.new_zeros((len(widths), batch, max(widths)), dtype=torch.float32)
        for layer, block in zip(padded, torch.split(h, widths, 1)):
            layer[:, : block.shape[1]] = block
        return _padded_stats(padded, widths, overwrite=True)


def unit_sample(h: torch.Tensor, max_units: int) -> torch.Tensor:
    """An fp32 copy ``(B, n)`` of ``n <= max_units`` of the ``d`` columns (units) of ``h`` ``(B, d)``,
    spread evenly: runs of up to ``_RUN`` neighbouring units, one in the middle of each of ``n / run``
    equal stretches of the ``d`` units (a conv's channels and positions all represented; the middle,
    so that a stretch's first row of an image, at its border, is not over-represented)."""
    batch, units = h.shape
    run = min(_RUN, max_units)
    runs = max_units // run
    stretch = units // runs
    middle = (stretch - run) // 2 * h.stride(1)
    picked = h.as_strided((batch, runs, run), (h.stride(0), stretch * h.stride(1), h.stride(1)),
                          h.storage_offset() + middle)
    sample = h.new_empty((batch, runs * run), dtype=torch.float32)
    sample.view(batch, runs, run).copy_(picked)
    return sample


def _sampled_stats(h: torch.Tensor, max_units: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`signal_stats` of one layer ``h`` ``(B, d)``, ``d > max_units``: the per-unit statistics
    of :func:`unit_sample`'s units, the log-norms (and ``log_rms``, ``nonfinite``) of all of ``h``."""
    batch, units = h.shape
    sample = unit_sample(h, max_units)
    stats, _ = _padded_stats(sample.unsqueeze(0), (sample.shape[1],), overwrite=True)
    norm = torch.linalg.vector_norm(h, dim=-1, dtype=torch.float32)
    mean_square = norm.square().mean().div_(units)
    log_norms = norm.log_().sub_(0.5 * math.log(units)).unsqueeze(0)  # (1, B)
    log_mean = log_norms.mean(1)
    stats[:, _COLUMN["log_norm_mean"]] = log_mean
    if batch > 1:
        spread = torch.linalg.vector_norm(log_norms - log_mean.unsqueeze(1), dim=1)
        stats[:, _COLUMN["log_norm_std"]] = spread.div_(math.sqrt(batch - 1))
    stats[:, _COLUMN["log_rms"]] = mean_square.log_().mul_(0.5)
    if h.device.type != "cpu" or not math.isfinite(float(log_mean)):  # on the CPU: only where a NaN/Inf must be
        stats[:, _COLUMN["nonfinite"]] = torch.mul(h, 0).nan_to_num_(1.0).sum(dtype=torch.float32)
    return stats, log_norms


#: Outputs of more than ``_SWEPT_ABOVE`` elements (2 MB of fp32, more than a core's cache) are swept in
#: blocks of units of about ``_BLOCK_ELEMENTS`` (512 KB: a block and its scratch stay in the cache while
#: its passes run, so memory is read once instead of nine times; a 128 x 32 x 32 x 32 conv output, every
#: unit: 15 ms -> 6.8 ms on one core; its 128 x 2048 sample: about 0.5 ms). Smaller ones are one block:
#: more blocks would only add kernel launches.
_BLOCK_ELEMENTS = 1 << 17
_SWEPT_ABOVE = 1 << 19


def _sweep(h: torch.Tensor, central: bool, overwrite: bool) -> tuple[torch.Tensor, ...]:
    """The passes over the data of :func:`_padded_stats`, block of units by block of units (one
    block when ``h`` is small): per sample the norm ``||h_b||`` (L, B) and, with ``central``, the
    centred ``sum_j (h_bj - mean_j)^2`` (L, B); per unit the maximum over the batch (L, W) and, with
    ``central``, the mean (L, 1, W), ``s2 = sum_b c^2`` and ``s4 = sum_b c^4`` (L, W), ``c = h - mean``;
    per layer the count of non-finite entries (on the CPU only counted in a block whose norms are
    not all finite, where a NaN/Inf must be: no sync to avoid there; elsewhere always). With
    ``overwrite`` and one block, ``h`` itself is the scratch space."""
    layers, batch, width = h.shape
    step = width if h.numel() <= _SWEPT_ABOVE else max(1, _BLOCK_ELEMENTS // (layers * batch))
    scratch = h if overwrite and step == width else h.new_empty((layers, batch, min(step, width)))
    norms, peaks, nonfinite, means, s2, s4 = [], [], [], [], [], []
    centred = None
    for start in range(0, width, step):
        x = h[:, :, start : start + step] if step < width else h
        norm = torch.linalg.vector_norm(x, dim=-1)
        norms.append(norm)
        peaks.append(x.amax(1))
        if h.device.type != "cpu" or not math.isfinite(float(norm.sum())):
            # x * 0 is 0 where x is finite and NaN elsewhere: a float-only count (bool ops are slow on CPU)
            nonfinite.append(torch.mul(x, 0).nan_to_num_(1.0).sum((1, 2)))
        if central:
            mean = x.mean(1, keepdim=True)
            # in place when h is the scratch (one block): out= onto its own input takes twice as long
            c2 = (x.sub_(mean) if scratch is h else torch.sub(x, mean, out=scratch[:, :, : x.shape[2]])).square_()
            part = c2.sum(-1)  # the padding adds 0
            centred = part if centred is None else centred.add_(part)
            means.append(mean)
            s2.append(c2.sum(1))
            s4.append(c2.square_().sum(1))
    norm = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms), dim=0)
    count = sum(nonfinite[1:], nonfinite[0]) if nonfinite else None
    joined = [parts[0] if len(parts) == 1 else torch.cat(parts, -1) for parts in (peaks, means, s2, s4) if parts]
    return norm, centred, count, *joined


def _padded_stats(h: torch.Tensor, widths: tuple[int, ...], overwrite: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`signal_stats` of ``h`` of shape ``(L, B, W)`` (fp32): layer ``l``'s units in
    ``h[l, :, :widths[l]]``, zeros after them (the padding adds 0 to every sum; its "dead" units
    are subtracted, its -inf threshold keeps it out of the collapsed count and its NaN kurtosis out
    of the median). With ``overwrite`` (a tensor the caller discards) ``h`` itself is the scratch
    space: in-place passes, no full-size temporary, and the padding stays zero. The passes over the
    data are :func:`_sweep`'s; the rest works on per-unit and per-layer vectors."""
    with torch.no_grad():
        batch = h.shape[1]
        half_log_width, offsets, divisors, padding, scale, zeros = _layout(widths, h.device, batch)
        norm, centred, nonfinite, peak, *moments = _sweep(h, batch > 1, overwrite)
        log_norms = norm.log_().sub_(half_log_width)  # (L, B)
        log_mean = log_norms.mean(1)
        dead = peak.le_(0)  # (L, W): 1.0 / 0.0
        nonfinite = zeros if nonfinite is None else nonfinite
        if batch > 1:
            mean, s2, s4 = moments  # s2: B x the biased variance per unit (L, W); s4: B x the 4th central moment
            # per sample, log(||h_b - mean_b h|| / sqrt(d)): the input-dependent part
            centred = centred.log_().mul_(0.5).sub_(half_log_width)  # (L, B)
            centred_mean = centred.mean(1)
            mean_sq = mean.squeeze(1).square_()
            # per layer: mean over units of m2, m4, mean^2; fraction of dead units
            m2_mean, m4_mean, mean_sq_mean, dead_fraction = (
                torch.stack((s2, s4, mean_sq, dead)).sum(-1).sub_(offsets).div_(divisors).unbind()
            )
            mean_square = m2_mean + mean_sq_mean  # mean_bj h_bj^2 = mean_j (m2_j + mean_j^2)
            # collapsed: v_j = s2_j / (B - 1) <= 1e-3 * mean_bj h_bj^2; the padding's threshold is -inf
            # (never passed), a NaN threshold is passed by nothing
            threshold = torch.add(padding, mean_square.unsqueeze(-1), alpha=COLLAPSE_THRESHOLD * (batch - 1))
            collapsed = torch.le(s2, threshold).sum(-1, dtype=torch.float32)
            # kurtosis m4 / m2^2 = B s4 / s2^2 (B applied by scale); NaN (left out of the median)
            # for (numerically) constant units, the padding included
            constant = torch.le(s2, mean_sq.mul_(batch * _CONSTANT_RTOL**2))
            kurt = s4.div_(s2.square_()).masked_fill_(constant, math.nan)
            columns = [
                log_mean,
                torch.linalg.vector_norm(log_norms - log_mean.unsqueeze(1), dim=1),
                centred_mean,
                torch.linalg.vector_norm(centred.sub_(centred_mean.unsqueeze(1)), dim=1),
                mean_square.log().mul_(0.5),
                torch.div(m2_mean, mean_square).sqrt_(),
                m2_mean,
                collapsed,
                kurt.nanmedian(-1).values,
                m4_mean.div_(m2_mean.square()),
                dead_fraction,
                nonfinite,
            ]
            return torch.stack(columns, dim=1).mul_(scale), log_norms
        nan = torch.full_like(zeros, math.nan)
        dead_fraction = dead.sum(-1).sub_(offsets[-1]).div_(divisors[-1])
        # one sample: its root-mean-square is its r; nothing over the batch is defined
        columns = [log_mean, zeros, nan, nan, log_mean, nan, nan, nan, nan, nan, dead_fraction, nonfinite]
        return torch.stack(columns, dim=1), log_norms
