"""Live signal diagnostics: per-layer statistics of the activations, computed by forward hooks.

:class:`SignalMonitor` registers one forward hook on each named module: once (``persistent=True``,
the default, what ``torch.compile`` needs) or only while it is active. The hooks see each
module's *output*; for weight layers (Linear, ConvNd) these are the **pre-activations**, the
quantities studied by the vanishing-empirical-variance paper (Grzejdziak-Zdziarski, Tax, Loog) and
by the kurtosis recursion of docs/theory.md, section 6. Hooks do nothing unless ``monitor.active`` is True
(and, with ``training_only``, the module is in training mode), so nothing is computed on steps
that do not log. Statistics are computed in fp32 on the activations' device, with no host
synchronization; :meth:`SignalMonitor.compute` moves everything to the host in one transfer.

For a hooked output ``h`` of shape ``(B, ...)`` the features of each sample are flattened
(``d`` = features per sample; for a conv every channel x position is a unit) and, per layer:

============================  =====================================================================
``log_norm_mean``/``_std``    mean / std (``B - 1`` denominator; 0 when ``B = 1``) over the batch of
                              ``log r_b = log(||h_b|| / sqrt(d))``; the per-sample values are kept
                              (``SignalStats.log_norms``) for histograms. The typical sample, all
                              of ``h``: once training moves the biases they carry it.
``centred_log_norm_mean``/    the same of the **input-dependent part** ``h_b - mean_b h`` (what is
``centred_log_norm_std``      left when the batch mean, the part every sample shares, is taken
                              away): ``log(||h_b - mean_b h|| / sqrt(d))``, typical sample.
``log_rms``                   ``log sqrt(mean_bj h_bj^2)``: the log of the layer's root-mean-square
                              over batch and units (what ``calibrate=`` sets to 1).
``input_share``               ``sqrt(mean_j m2_j / mean_bj h_bj^2)`` in [0, 1] (``m2_j`` the biased
                              variance over the batch): the share of the root-mean-square that
                              depends on the input; 1 for a zero-mean signal, 0 when every sample
                              gives the same output (the batch mean carries the rest).
``emp_var_mean``              mean over units of the unbiased variance over the batch,
                              ``v_j = sum_b (h_bj - mean_j)^2 / (B - 1)``.
``emp_var_collapsed``         fraction of units with ``v_j <= 1e-3 * mean_bj h_bj^2`` (the layer's
                              mean second moment).
``kurtosis_median``           median over units of ``k_j = m4_j / m2_j^2`` with the biased central
                              moments ``m_p,j = mean_b (h_bj - mean_j)^p`` (3 for a Gaussian, 1.8
                              for a uniform). Units with (numerically) zero variance are ignored;
                              NaN if every unit is constant. The median of an even number of
                              values is the lower middle one (``torch.median`` convention).
``kurtosis_pooled``           ``mean_j m4_j / (mean_j m2_j)^2``: the kurtosis of all centred
                              values pooled (biased ``m2`` for consistency with ``m4``); it also
                              grows when the units' variances differ from one another.
``dead_fraction``             fraction of units with ``h_bj <= 0`` for every ``b`` (a ReLU after
                              the layer outputs exactly 0 for the whole batch).
``nonfinite``                 number of NaN/Inf entries of ``h``.
============================  =====================================================================

Non-finite values never raise: they are counted in ``nonfinite`` and propagate (every statistic
that depends on a non-finite entry is NaN or infinite; units with a non-finite variance are left
out of the kurtosis median and are not dead). With ``B = 1`` the statistics over the batch that
need two samples (``emp_var_*``, ``kurtosis_*``) are NaN; :meth:`SignalStats.undefined` lists such
statistics (and why), and ``to_scalars(defined_only=True)`` leaves them out. A sample whose output is exactly zero
has ``log r = -inf``. If a module is called several times in one forward (weight sharing), the
last call is kept.

Cost: small outputs (fewer than ``defer_below`` elements) are copied by the hook (fp32) into one
tensor kept from one measured step to the next, ``(layers, B, max width)``, zero-padded: layers of
one batch size and similar widths (the padding adds at most a quarter) side by side, each a block
of its own. :meth:`~SignalMonitor.compute` reduces that tensor in place, in nine passes and a
few dozen small kernels for all its layers instead of ~40 tiny ones per layer. Larger outputs are
reduced in the hook (no copy is held). An output with more than ``max_units`` (2048) units per sample
(a conv's channels x positions) has its per-unit statistics (the centred log-norm, input share,
empirical variance, kurtosis, dead units) estimated on 2048 of its units, in runs of 32 neighbours
spread evenly over the output; its log-norms, ``log_rms`` and non-finite count use every unit. The
centred log-norm's spread over the batch then includes the sample's own noise. See
``benchmarks/overhead/`` (``python -m benchmarks overhead``) for the measured cost.

Example::

    monitor = SignalMonitor(model, ["0", "2", "4"])
    with monitor:
        monitor.active = True
        model(x)
        monitor.active = False
    stats = monitor.compute()          # SignalStats
    stats.to_scalars()                 # {"lyapunov/log_norm_mean/0": ..., ...}
"""

from __future__ import annotations

import difflib
import functools
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from lightning_lyapunov._checks import check_bool, check_int, check_module, invalid
from lightning_lyapunov._reduce import (BATCH_STATS, COLLAPSE_THRESHOLD, MAX_UNITS, STAT_KEYS, _buckets, _padded_stats,
                                        signal_stats)
from lightning_lyapunov.log_norm import log_r

__all__ = ["STAT_KEYS", "BATCH_STATS", "COLLAPSE_THRESHOLD", "COLLAPSED_SHARE", "SignalMonitor", "SignalStats",
           "signal_stats"]

#: Why a statistic is undefined (:meth:`SignalStats.undefined`).
NOT_CALLED = "layer not called in the measured step"
_BATCH_STAT_COLUMNS = np.isin(STAT_KEYS, BATCH_STATS)
_NO_SAMPLES = np.zeros(0)  # the log-norms of a layer not called
_NO_SAMPLES.flags.writeable = False
_LOG_NORM_MEAN, _NONFINITE = STAT_KEYS.index("log_norm_mean"), STAT_KEYS.index("nonfinite")
_CENTRED_MEAN, _SHARE = STAT_KEYS.index("centred_log_norm_mean"), STAT_KEYS.index("input_share")
#: A layer whose input-dependent part is below this share of its root-mean-square (``input_share``)
#: has collapsed: a thousandth, i.e. an empirical variance below 1e-6 of the layer's mean square.
COLLAPSED_SHARE = 1e-3
SINGLE_SAMPLE = "batch of 1 sample: statistics over the batch need 2 or more"
DEGENERATE = "0/0 from finite activations: units constant over the batch, or an all-zero output"
FEW_LAYERS = "fewer than 2 measured layers: the slope over depth needs 2 or more"
ZERO_OUTPUT = "a measured layer's output is exactly zero (log 0)"
CONSTANT = "every sample gives the same output in all but one measured layer (no input-dependent part)"


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The module output itself, or the first tensor of a tuple/list output (e.g. ``nn.LSTM``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


@functools.lru_cache(maxsize=16)
def _centered_index(length: int) -> tuple[tuple[float, ...], float]:
    """``x = i - mean i`` for ``i = 0 .. length - 1`` (the regressor of the exponent's slope) and
    ``sum x^2``."""
    x = tuple(i - (length - 1) / 2 for i in range(length))
    return x, sum(v * v for v in x)


@functools.lru_cache(maxsize=16)
def _scalar_keys(prefix: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """The logger keys ``<prefix>/<stat>/<layer>``, statistic-major, built once per monitor (not per step)."""
    return tuple(f"{prefix}/{key}/{name}" for key in STAT_KEYS for name in names)


@dataclass(frozen=True)
class SignalStats:
    """Per-layer signal statistics of one forward pass, on the host.

    ``names`` are the monitored layers in the order given to the monitor (forward order);
    ``values[i, k]`` is statistic ``STAT_KEYS[k]`` of layer ``names[i]`` (NaN for a layer that was
    not called while the monitor was active); ``log_norms[name]`` holds the per-sample
    ``log(||h_b|| / sqrt(d))`` (empty for a layer that was not called); ``input_log_norm`` is the
    batch mean of ``log r`` of the first monitored layer's input (NaN unless the monitor measured it).

    Example::

        stats.layer("0")["kurtosis_median"]; stats.as_dict()["log_norm_mean"]; stats.to_scalars()
    """

    names: tuple[str, ...]
    values: np.ndarray
    log_norms: Mapping[str, np.ndarray] = field(repr=False)
    input_log_norm: float = math.nan

    def column(self, key: str) -> tuple[float, ...]:
        """The values of statistic ``key`` (one of :data:`STAT_KEYS`) over the layers, in the order
        of ``names``, as Python floats.

        Example::

            dict(zip(stats.names, stats.column("dead_fraction")))
        """
        if key not in STAT_KEYS:
            raise KeyError(f"unknown statistic {key!r}; one of {list(STAT_KEYS)}")
        return self._columns[STAT_KEYS.index(key)]

    # Per step the callback reads a few hundred values: as Python floats, taken once, that costs a
    # fraction of what a dozen numpy calls cost right after the backward pass (cold caches).
    @functools.cached_property
    def _rows(self) -> list[list[float]]:
        return self.values.tolist()

    @functools.cached_property
    def _columns(self) -> list[tuple[float, ...]]:
        return list(zip(*self._rows)) if self.names else [() for _ in STAT_KEYS]

    @functools.cached_property
    def _counts(self) -> tuple[int, ...]:
        """Per layer, the number of samples measured (0: not called)."""
        return tuple(map(len, map(self.log_norms.__getitem__, self.names)))

    @functools.cached_property
    def _fewest_samples(self) -> int:
        """The fewest samples a layer was measured on (0: some layer was not called)."""
        return min(self._counts, default=0)

    @functools.cached_property
    def _all_finite(self) -> bool:
        """Every value finite (a sum that overflows says False: only the general path is taken then)."""
        return math.isfinite(sum(map(sum, self._rows)))

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{stat: {layer: value}}`` for every statistic of :data:`STAT_KEYS`."""
        return {
            key: {name: float(self.values[i, k]) for i, name in enumerate(self.names)}
            for k, key in enumerate(STAT_KEYS)
        }

    def layer(self, name: str) -> dict[str, float]:
        """``{stat: value}`` of one layer; KeyError (with close matches) for an unknown name."""
        if name not in self.names:
            close = difflib.get_close_matches(name, self.names, n=3)
            raise KeyError(f"layer {name!r} is not monitored; close matches: {close}")
        i = self.names.index(name)
        return {key: float(self.values[i, k]) for k, key in enumerate(STAT_KEYS)}

    @functools.cached_property
    def exponent_estimate(self) -> float:
        """Least-squares slope of ``log_norm_mean`` over the layer index (estimated Lyapunov exponent of
        all of ``h``, the typical sample, biases included).

        ``slope = sum_i (i - mean i)(y_i - mean y) / sum_i (i - mean i)^2`` over the layers that
        were captured (``i`` = position in ``names``). NaN with fewer than 2 captured layers or
        when a captured mean log-norm is not finite (a dead or overflowing signal).
        """
        return self._slope(_LOG_NORM_MEAN, finite_only=False)

    @functools.cached_property
    def centred_exponent(self) -> float:
        """Least-squares slope of ``centred_log_norm_mean`` over the layer index: the exponent of the
        input-dependent part ``h - mean_b h`` (typical sample), what the dashboard leads with.

        The same formula as :attr:`exponent_estimate`, over the captured layers where the value is
        finite: a layer whose samples are all equal (``-inf``, collapsed) is left out, and
        :attr:`collapsed_from` says where that starts. NaN with fewer than 2 such layers.
        """
        return self._slope(_CENTRED_MEAN, finite_only=True)

    def _slope(self, k: int, finite_only: bool) -> float:
        """Least-squares slope of column ``k`` over the layer index (:attr:`exponent_estimate`)."""
        if self._fewest_samples > 0 and (not finite_only or self._all_finite):  # the usual case
            x, x_squared = _centered_index(len(self.names))
            y = self._columns[k]
        else:
            column = self.values[:, k]
            keep = (self._samples > 0) & (np.isfinite(column) if finite_only else True)
            index = np.flatnonzero(keep)
            if index.size < 2:
                return math.nan
            x, y = (index - index.mean()).tolist(), column[index].tolist()
            x_squared = sum(v * v for v in x)
        if len(x) < 2:
            return math.nan
        # sum_i x_i (y_i - mean y) = sum_i x_i y_i (the x_i sum to 0); not finite iff some y_i is not
        slope = sum(map(operator.mul, x, y)) / x_squared
        return slope if math.isfinite(slope) else math.nan

    @functools.cached_property
    def collapsed_from(self) -> int | None:
        """Index (in ``names``) of the first layer of the collapsed tail, or None: from that layer to
        the last measured one, every measured layer's ``input_share`` is below
        :data:`COLLAPSED_SHARE` (or its output is exactly zero), i.e. the output no longer depends
        on the input. A batch of one sample defines no share: None."""
        if self._fewest_samples > 1 and self._all_finite and self._columns[_SHARE][-1] >= COLLAPSED_SHARE:
            return None  # the usual case: the last layer depends on its input
        first = None
        for i in reversed(range(len(self.names))):
            count, share, nonfinite = self._counts[i], self.values[i, _SHARE], self.values[i, _NONFINITE]
            if count == 0:
                continue  # not called: neither breaks nor extends the tail
            if count < 2 or nonfinite > 0 or share >= COLLAPSED_SHARE:
                break
            first = i  # below the threshold, or NaN from an all-zero output
        return first

    @functools.cached_property
    def _samples(self) -> np.ndarray:
        """:attr:`_counts` as an array (the paths that find a layer not called or undefined statistics)."""
        return np.array(self._counts, dtype=np.int64)

    def undefined(self) -> dict[str, str]:
        """``{"<stat>/<layer>", "exponent_estimate" or "centred_exponent": why}`` for the statistics that this measurement
        cannot define (NaN, or 0 for ``log_norm_std`` of one sample, by construction rather than by
        the signal): a layer not called, a batch of one sample (:data:`BATCH_STATS` need two), 0/0
        from finite activations (constant units, an all-zero output), and for ``exponent_estimate``
        fewer than 2 measured layers or an all-zero layer output (for ``centred_exponent``: fewer
        than 2 layers with a finite centred log-norm). A NaN of a layer with NaN/Inf
        activations (``nonfinite > 0``) is not listed: it is what the network computed.

        Example::

            SignalStats(("0",), np.zeros((1, len(STAT_KEYS))), {"0": np.zeros(1)}).undefined()
            # {"log_norm_std/0": SINGLE_SAMPLE, ..., "exponent_estimate": FEW_LAYERS}
        """
        return dict(self._undefined)  # computed once per measurement: the callback asks twice per step

    @functools.cached_property
    def _undefined(self) -> dict[str, str]:
        if len(self.names) >= 2 and self._fewest_samples > 1 and self._all_finite:
            return {}  # the usual case: every layer measured on 2+ samples, every statistic finite
        samples = self._samples
        clean = self.values[:, _NONFINITE] == 0
        reasons: dict[str, str] = {}
        # only layers not called, of one sample or with a NaN can have undefined statistics
        suspects = (samples <= 1) | np.isnan(self.values).any(1)
        for i in np.flatnonzero(suspects).tolist() if suspects.any() else ():
            name, count = self.names[i], samples[i]
            for k, value in enumerate(self.values[i].tolist()):
                if count == 0:
                    reasons[f"{STAT_KEYS[k]}/{name}"] = NOT_CALLED
                elif count == 1 and _BATCH_STAT_COLUMNS[k]:
                    reasons[f"{STAT_KEYS[k]}/{name}"] = SINGLE_SAMPLE
                elif value != value and clean[i]:  # NaN
                    reasons[f"{STAT_KEYS[k]}/{name}"] = DEGENERATE
        called = samples > 0
        if np.count_nonzero(called) < 2:
            reasons["exponent_estimate"] = FEW_LAYERS
        elif np.any(np.isneginf(self.values[:, _LOG_NORM_MEAN]) & clean & called):
            reasons["exponent_estimate"] = ZERO_OUTPUT
        if np.count_nonzero(called & np.isfinite(self.values[:, _CENTRED_MEAN])) < 2:
            reasons["centred_exponent"] = (FEW_LAYERS if np.count_nonzero(called) < 2
                                           else SINGLE_SAMPLE if np.any(samples[called] == 1) else CONSTANT)
        return reasons

    def to_scalars(self, prefix: str = "lyapunov", *, defined_only: bool = False) -> dict[str, float]:
        """Flat ``{"<prefix>/<stat>/<layer>": value}`` plus ``"<prefix>/exponent_estimate"`` and
        ``"<prefix>/centred_exponent"``.

        These are the documented logger keys; layer names keep their dots. ``defined_only`` leaves
        out the statistics listed by :meth:`undefined` (log nothing rather than NaN).
        """
        scalars = dict(zip(_scalar_keys(prefix, self.names), self.values.T.ravel().tolist()))
        scalars[f"{prefix}/exponent_estimate"] = self.exponent_estimate
        scalars[f"{prefix}/centred_exponent"] = self.centred_exponent
        if defined_only:
            for key in self.undefined():
                del scalars[f"{prefix}/{key}"]
        return scalars


#: One group of layers reduced together: their names, the ``(layers, B, max width)`` zero-padded
#: tensor whose blocks their captures are, and their widths.
_Group = tuple[list[str], torch.Tensor, tuple[int, ...]]


class _Joint(NamedTuple):
    """The layers of one batch size and device joined into groups (:meth:`_CaptureBuffer._join`),
    as a set, and ``name -> (group, row)`` with the groups numbered from 0."""

    names: list[str]
    groups: list[_Group]
    members: frozenset[str]
    where: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, names: list[str], groups: list[_Group]) -> _Joint:
        where = {name: (g, row) for g, (group, _, _) in enumerate(groups) for row, name in enumerate(group)}
        return cls(names, groups, frozenset(names), where)


class _CaptureBuffer:
    """What :class:`SignalMonitor` keeps between a measured forward pass and :meth:`SignalMonitor.compute`.

    Small outputs (fewer than ``defer_below`` elements, at most ``max_units`` per sample) are copied (fp32) into per-layer tensors
    kept from one measured step to the next, which the first reduction turns into views of
    zero-padded ``(layers, B, max width)`` group tensors (:func:`_reduce._buckets`): from then on a
    capture is one contiguous ``copy_`` into its block and the reduction copies nothing. Larger
    outputs are reduced at once (no copy is held), a sample of their units where they have more
    than ``max_units`` per sample (:func:`_reduce.signal_stats`).
    """

    def __init__(self, names: tuple[str, ...], defer_below: int, max_units: int | None) -> None:
        self.names, self.defer_below, self.max_units = names, defer_below, max_units
        self._index = {name: i for i, name in enumerate(names)}
        # per layer an fp32 tensor shaped like its output, and the same viewed as (B, features)
        self.captures: dict[str, torch.Tensor] = {}
        self._flat: dict[str, torch.Tensor] = {}
        # the layers captured since the last reduction (insertion order; values unused)
        self.pending: dict[str, None] = {}
        # per (batch size, device): the layers joined into groups whose blocks the captures are views of
        self._joints: dict[tuple, _Joint] = {}
        # reduced groups (names, stats (G, n_stats), log_norms (G, B)) and name -> (group, row)
        self._groups: list[tuple[list[str], torch.Tensor, torch.Tensor]] = []
        self.where: dict[str, tuple[int, int]] = {}

    def keep(self, name: str, h: torch.Tensor) -> None:
        """Keep (a copy of, or the statistics of) layer ``name``'s output ``h`` (detached)."""
        self.where.pop(name, None)
        self.pending.pop(name, None)
        units = h.numel() // h.shape[0]  # no reshape here: of a non-contiguous output it is a copy
        if h.numel() >= self.defer_below or (self.max_units is not None and units > self.max_units):
            if self.captures.pop(name, None) is not None:
                self._joints.clear()
            self._flat.pop(name, None)
            stats, log_norms = signal_stats(h.reshape(h.shape[0], units), max_units=self.max_units)
            self.where[name] = (len(self._groups), 0)
            self._groups.append(([name], stats, log_norms))
            return
        kept = self.captures.get(name)
        if kept is None or kept.shape != h.shape or kept.device != h.device:
            with torch.inference_mode(False):  # a normal tensor, even in inference mode: later steps write into it
                kept = self.captures[name] = torch.empty(h.shape, dtype=torch.float32, device=h.device)
                self._flat[name] = kept.view(h.shape[0], -1)
            self._joints.clear()  # a layout changed: joined again at the next reduction
        kept.copy_(h)  # no autograd: h is detached
        self.pending[name] = None

    @property
    def captured(self) -> tuple[str, ...]:
        """Names of the layers kept since the last :meth:`reset`, in forward order."""
        if len(self.where) + len(self.pending) == len(self.names):  # every layer (the two never share one)
            return self.names
        return tuple(n for n in self.names if n in self.where or n in self.pending)

    def reduce(self) -> None:
        """Reduce the deferred copies: per (batch size, device), the layers' outputs side by side in
        zero-padded groups of similar widths, a few dozen kernels per group."""
        if not self.pending:
            return
        groups, where = self._pending_groups()  # outside inference mode: the hooks write into these tensors
        # inference mode: the statistics never enter autograd, and their ops skip the version counters
        with torch.inference_mode():
            reduced = [(group, *_padded_stats(h, widths, overwrite=True)) for group, h, widths in groups]
        if where is not None and not self._groups:
            self.where.update(where)  # the usual step: the rows of the layers are known
        else:
            for g, (group, _, _) in enumerate(reduced, len(self._groups)):
                self.where.update((name, (g, row)) for row, name in enumerate(group))
        self._groups += reduced
        self.pending.clear()

    def _pending_groups(self) -> tuple[list[_Group], dict[str, tuple[int, int]] | None]:
        """The groups holding the pending captures (joined again where the layers or a layout
        changed) and, when they are one joint's, where each layer is in them."""
        if len(self._joints) == 1:  # the usual step: the same layers as at the last reduction
            (joint,) = self._joints.values()
            if self.pending.keys() == joint.members:
                return joint.groups, joint.where  # the captures are still views of these groups
        by_key: dict[tuple, list[str]] = {}
        for name in self.names:
            if name in self.pending:
                kept = self.captures[name]
                by_key.setdefault((kept.shape[0], kept.device), []).append(name)
        groups = []
        for key, names in by_key.items():
            joint = self._joints.get(key)
            if joint is None or joint.names != names:
                joint = self._joints[key] = _Joint.of(names, self._join(names))
            groups += joint.groups
        return groups, joint.where if len(by_key) == 1 else None

    @torch.inference_mode(False)
    def _join(self, names: list[str]) -> list[_Group]:
        """Copy the captures of ``names`` (one batch size and device) into zero-padded groups
        ``(layers, B, max width)`` and make them views of their blocks (the next steps' hooks write
        there: a contiguous block for the widest layers). Normal tensors even when called in
        inference mode (a measurement under ``torch.inference_mode()`` before training)."""
        blocks = [self._flat[name] for name in names]
        joint = []
        for indices in _buckets([block.shape[1] for block in blocks]):
            group, widths = [names[i] for i in indices], tuple(blocks[i].shape[1] for i in indices)
            h = blocks[indices[0]].new_zeros((len(group), blocks[0].shape[0], max(widths)))
            for row, (name, width) in enumerate(zip(group, widths)):
                view = h[row, :, :width]
                view.copy_(self._flat[name])
                self._flat[name] = view
                self.captures[name] = view.view(self.captures[name].shape)
            joint.append((group, h, widths))
        return joint

    def to_host(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(values, log_norms)`` of :class:`SignalStats` for the layers reduced: one transfer per device."""
        if len(self._groups) == 1 and len(self._groups[0][0]) == len(self.names):  # every layer, together, in order
            _, stats, log_norms = self._groups[0]
            host = torch.cat((stats.reshape(-1), log_norms.reshape(-1))).cpu().numpy().astype(np.float64)
            values = host[: stats.numel()].reshape(stats.shape)
            return values, dict(zip(self.names, host[stats.numel() :].reshape(log_norms.shape)))
        rows: dict[int, tuple[list[int], list[int]]] = {}  # group -> (layer indices, rows of the group)
        for name, (group, row) in self.where.items():
            indices, group_rows = rows.setdefault(group, ([], []))
            indices.append(self._index[name])
            group_rows.append(row)
        per_device: dict[torch.device, list[int]] = {}
        for group in sorted(rows):
            per_device.setdefault(self._groups[group][1].device, []).append(group)
        values = np.full((len(self.names), len(STAT_KEYS)), math.nan)
        log_norms_by_name = dict.fromkeys(self.names, _NO_SAMPLES)
        for groups in per_device.values():
            parts = [t.reshape(-1) for g in groups for t in self._groups[g][1:]]
            host = torch.cat(parts).cpu().numpy().astype(np.float64)  # the one transfer (per device)
            start = 0
            for g in groups:
                names, stats, log_norms = self._groups[g]
                middle, end = start + stats.numel(), start + stats.numel() + log_norms.numel()
                indices, group_rows = rows[g]
                values[indices] = host[start:middle].reshape(stats.shape)[group_rows]
                log_norms_host = host[middle:end].reshape(log_norms.shape)
                for row in group_rows:
                    log_norms_by_name[names[row]] = log_norms_host[row]
                start = end
        return values, log_norms_by_name

    def reset(self) -> None:
        """Forget everything captured (the buffers are kept for reuse)."""
        self.pending.clear()
        self._groups.clear()
        self.where.clear()

    def free(self) -> None:
        """Reduce what is pending (it stays available to :meth:`to_host`) and free the buffers."""
        self.reduce()
        self.captures.clear()
        self._flat.clear()
        self._joints.clear()


class SignalMonitor:
    """Forward hooks that measure the signal (docs/theory.md, section 6) in the named modules' outputs.

    Args:
        model: the module whose submodules are monitored (plain PyTorch; Lightning not needed).
        layer_names: qualified names (``model.named_modules()``) in forward order.
        training_only: skip modules in eval mode (validation, sanity check, inference).
        defer_below: outputs with fewer elements are copied (fp32) by the hook and reduced
            together (the layers with the same batch size, in groups of similar widths) in
            :meth:`compute`; larger outputs are reduced in the hook itself. The copies' tensor
            is reused from one measured step to the next and freed by :meth:`remove`.
        max_units: an output with more units per sample (a conv's channels x positions) has its
            per-unit statistics (kurtosis, variance, input share, dead and collapsed units)
            estimated on this many of its units, spread evenly (a sixteenth of a 32 x 32 x 32
            output at the default); its log-norms use every unit. ``None``: every unit.
        persistent: register the hooks once, here, and gate them by :attr:`active` (what
            ``torch.compile`` needs: attaching hooks changes the graph). With ``False`` the hooks
            are attached when ``active`` turns True and removed when it turns False, so steps
            that are not measured pay nothing at all; in eager mode a registered hook, even an
            idle one, moves every call of its module to PyTorch's slower hook path.
        measure_input: also measure the batch-mean log-norm of the first monitored layer's input
            (``SignalStats.input_log_norm``) at its next call while active. Settable per step: a
            forward pre-hook is attached for that one call (never a persistent one, so a compiled
            graph is not changed), and the value costs one more host synchronization in :meth:`compute`.

    With persistent hooks they return immediately unless :attr:`active` is True. Set ``active``
    only around the forward passes you want to measure; the last call of each layer while
    active is kept until :meth:`reset`.

    Example::

        with SignalMonitor(model, ["fc1", "fc2"]) as monitor:
            monitor.active = True
            model(x)
            stats = monitor.compute()
    """

    def __init__(
        self,
        model: nn.Module,
        layer_names: Iterable[str],
        *,
        training_only: bool = True,
        defer_below: int = 1 << 18,
        max_units: int | None = MAX_UNITS,
        persistent: bool = True,
        measure_input: bool = False,
    ) -> None:
        check_module("model", model)
        names = _check_names(layer_names, model)
        modules = dict(model.named_modules())
        self.names = names
        self.training_only = check_bool("training_only", training_only)
        defer_below = check_int("defer_below", defer_below, minimum=0, allowed="an integer >= 0 (a number of elements)")
        self.persistent = check_bool("persistent", persistent)
        self._active = False
        self._removed = False
        max_units = check_int("max_units", max_units, minimum=1, allow_none=True,
                              allowed="an integer >= 1 (units per sample) or None (every unit)")
        self._buffer = _CaptureBuffer(names, defer_below, max_units)
        self._input: torch.Tensor | None = None  # batch-mean log r of the first layer's input, on its device
        self._input_handle: torch.utils.hooks.RemovableHandle | None = None
        self._modules = [modules[name] for name in names]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        if self.persistent:
            self._attach()
        self.measure_input = check_bool("measure_input", measure_input)

    @property
    def measure_input(self) -> bool:
        """Whether the next active forward pass also measures the first layer's input (see ``__init__``)."""
        return self._input_handle is not None

    @measure_input.setter
    def measure_input(self, value: bool) -> None:
        if value and self._input_handle is None and not self._removed:
            self._input_handle = self._modules[0].register_forward_pre_hook(self._input_hook)
        elif not value and self._input_handle is not None:
            self._input_handle.remove()
            self._input_handle = None

    @property
    def defer_below(self) -> int:
        return self._buffer.defer_below

    @property
    def active(self) -> bool:
        """Whether the hooks measure the forward passes (set it around the steps to measure)."""
        return self._active

    @active.setter
    def active(self, value: bool) -> None:
        self._active = bool(value) and not self._removed
        if not self.persistent:
            self._attach() if self._active else self._detach()

    def _attach(self) -> None:
        if not self._handles:
            self._handles = [
                module.register_forward_hook(self._hook_for(name))
                for name, module in zip(self.names, self._modules)
            ]

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _input_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self._active or (self.training_only and not module.training):
            return
        self.measure_input = False  # one call
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is not None and x.dim() > 0 and x.numel() > 0:
            self._input = log_r(x).mean()

    def _hook_for(self, name: str):
        buffer = self._buffer
        captures, pending, where = buffer.captures, buffer.pending, buffer.where  # mutated in place, never rebound

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._active or (self.training_only and not module.training):
                return
            kept = captures.get(name)
            if kept is not None and isinstance(output, torch.Tensor) and output.shape == kept.shape \
                    and output.device == kept.device:
                kept.copy_(output.detach())  # the shape of the previous capture: one contiguous copy
                pending[name] = None
                if where:
                    where.pop(name, None)
                return
            h = output if isinstance(output, torch.Tensor) else _first_tensor(output)
            if h is not None and h.dim() > 0 and h.numel() > 0:
                buffer.keep(name, h.detach())

        return hook

    @property
    def captured(self) -> tuple[str, ...]:
        """Names of the layers measured since the last :meth:`reset`, in forward order."""
        return self._buffer.captured

    def compute(self) -> SignalStats:
        """Move the statistics of the captured layers to the host: one transfer per device (one
        more for the input's log-norm when :attr:`measure_input` measured it).

        Raises RuntimeError if no layer was captured since the last :meth:`reset` (set
        ``monitor.active = True`` and run a forward pass in training mode first; :attr:`captured`
        tells which layers were measured). Layers not captured get NaN statistics.
        """
        self._buffer.reduce()
        if not self._buffer.where:
            raise RuntimeError(
                "SignalMonitor.compute(): no layer was captured since the last reset(); set "
                "monitor.active = True and run a forward pass (in training mode when training_only)"
            )
        values, log_norms = self._buffer.to_host()
        input_log_norm = float(self._input) if self._input is not None else math.nan
        return SignalStats(self.names, values, log_norms, input_log_norm)

    def reset(self) -> None:
        """Forget everything captured (the deferred-copy buffers are kept for reuse)."""
        self._buffer.reset()
        self._input = None

    def remove(self) -> None:
        """Remove the hooks (idempotent), deactivate and free the buffers.

        What was captured stays available to :meth:`compute` until :meth:`reset`.
        """
        self._active = False
        self.measure_input = False
        self._removed = True
        self._detach()
        self._buffer.free()

    def __enter__(self) -> SignalMonitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def _check_names(layer_names: Any, model: nn.Module) -> tuple[str, ...]:
    """The monitored layers' names as a tuple, each a module of ``model``, each once (errors name the fix)."""
    if isinstance(layer_names, str):
        raise ValueError(
            f"layer_names must be a sequence of module names, got the string {layer_names!r}; "
            f"wrap it in a list: [{layer_names!r}]"
        )
    if not isinstance(layer_names, Iterable):
        invalid("layer_names", layer_names, "a sequence of module names")
    names = tuple(layer_names)
    bad = [name for name in names if not isinstance(name, str)]
    if bad:
        invalid("layer_names", names, "a sequence of module names (str)", "use names from model.named_modules()")
    if not names:
        raise ValueError("layer_names is empty; pass at least one name from model.named_modules()")
    if len(set(names)) != len(names):
        raise ValueError(f"layer_names contains duplicates: {names}; list each layer once")
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        hints = {name: difflib.get_close_matches(name, list(modules), n=3) for name in unknown}
        raise ValueError(
            f"layer_names contains names that are not modules of the model: {hints} "
            "(unknown name: close matches); use names from model.named_modules()"
        )
    return names
