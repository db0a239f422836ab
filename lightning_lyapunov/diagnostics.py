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
                              (``SignalStats.log_norms``) for histograms.
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

Cost: small outputs (fewer than ``defer_below`` elements) are copied by the hook, side by side,
into one fp32 buffer per batch size (reused from one logging step to the next) and reduced
together in :meth:`~SignalMonitor.compute`: a few kernels for all layers instead of ~40 tiny
ones per layer. Larger outputs are reduced in the hook (no copy is held). See
``benchmarks/diagnostics_overhead.py`` for the measured cost.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_lyapunov._checks import check_bool, check_int, check_module, invalid

__all__ = ["STAT_KEYS", "BATCH_STATS", "COLLAPSE_THRESHOLD", "SignalMonitor", "SignalStats", "signal_stats"]

#: Names of the per-layer statistics, in the order of the rows of ``SignalStats.values``.
STAT_KEYS: tuple[str, ...] = (
    "log_norm_mean",
    "log_norm_std",
    "emp_var_mean",
    "emp_var_collapsed",
    "kurtosis_median",
    "kurtosis_pooled",
    "dead_fraction",
    "nonfinite",
)
#: The statistics over the batch that need at least two samples (undefined for a batch of one).
BATCH_STATS: tuple[str, ...] = ("log_norm_std", "emp_var_mean", "emp_var_collapsed", "kurtosis_median", "kurtosis_pooled")
#: Why a statistic is undefined (:meth:`SignalStats.undefined`).
NOT_CALLED = "layer not called in the measured step"
_BATCH_STAT_COLUMNS = np.isin(STAT_KEYS, BATCH_STATS)
SINGLE_SAMPLE = "batch of 1 sample: statistics over the batch need 2 or more"
DEGENERATE = "0/0 from finite activations: units constant over the batch, or an all-zero output"
FEW_LAYERS = "fewer than 2 measured layers: the slope over depth needs 2 or more"
ZERO_OUTPUT = "a measured layer's output is exactly zero (log 0)"
#: A unit's variance is collapsed below this fraction of the layer's mean second moment.
COLLAPSE_THRESHOLD = 1e-3
# A unit counts as constant for the kurtosis when std <= _CONSTANT_RTOL * |mean| (fp32 rounding).
_CONSTANT_RTOL = 16 * torch.finfo(torch.float32).eps


def _runs(widths: Sequence[int]) -> list[tuple[int, int, int]]:
    """Consecutive layers of equal width as (first column, number of layers, width)."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for w in widths:
        if runs and runs[-1][2] == w:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, w)
        else:
            runs.append((start, 1, w))
        start += w
    return runs


@functools.lru_cache(maxsize=64)
def _layout(widths: tuple[int, ...], device: torch.device) -> tuple[list[tuple[int, int, int]], torch.Tensor, torch.Tensor]:
    """Per widths and device, built once: the runs of equal widths, the widths as a float tensor and
    each unit's layer index (the logging step then issues only the statistics' kernels)."""
    width = torch.tensor(widths, dtype=torch.float32, device=device)
    unit_layer = torch.repeat_interleave(torch.arange(len(widths), device=device), torch.tensor(widths, device=device))
    return _runs(widths), width, unit_layer


def signal_stats(h: torch.Tensor, widths: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics of ``L`` layer outputs side by side, in fp32, on ``h``'s device, no host sync.

    ``h`` has shape ``(B, D)``: batch ``B``, the flattened outputs of layer ``l`` in the next
    ``widths[l]`` columns (``sum(widths) == D``; default: one layer). The per-unit moments of all
    layers are computed by the same few kernels; only the sums over each layer's units are taken
    per run of consecutive equal widths (a non-finite value stays inside its own layer). Returns
    ``(stats, log_norms)``: ``stats`` of shape ``(L, len(STAT_KEYS))`` (columns in the order of
    :data:`STAT_KEYS`, formulas in the module docstring) and the per-sample
    ``log_norms = log(||h_b|| / sqrt(d))`` of shape ``(L, B)``.

    Cost: about ten passes over ``h`` and some thirty small kernels on the per-unit vectors, whatever
    ``L``. On the CPU the non-finite entries are counted only when a unit's sum is not finite (no
    sync to avoid there); on other devices always (no host synchronization).

    Example::

        stats, log_norms = signal_stats(torch.randn(4096, 8 + 3), widths=[8, 3])  # kurtosis ~ 3
    """
    with torch.no_grad():
        h = h.float()
        batch, total = h.shape
        widths = (total,) if widths is None else tuple(int(w) for w in widths)
        if sum(widths) != total:
            raise ValueError(f"widths={list(widths)} must sum to the number of columns of h, {total}")
        runs, width, unit_layer = _layout(widths, h.device)

        def per_layer(x: torch.Tensor, reduce: Any = torch.mean) -> torch.Tensor:
            """(..., D) -> (..., L): ``reduce`` over the units of each layer."""
            parts = [reduce(x[..., s : s + n * w].unflatten(-1, (n, w)), -1) for s, n, w in runs]
            return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

        def norm(x: torch.Tensor, dim: int) -> torch.Tensor:
            return torch.linalg.vector_norm(x, dim=dim)

        log_norms = per_layer(h, norm).log_().sub_(width.log().mul_(0.5))  # (B, L)
        work = torch.empty_like(h)  # the one full-size temporary
        mean = h.mean(0)
        if h.device.type != "cpu" or not torch.isfinite(mean).all():
            # h * 0 is 0 where h is finite and NaN elsewhere: a float-only count (bool ops are slow on CPU)
            nonfinite = torch.mul(h, 0, out=work).nan_to_num_(1.0).sum(0)
        else:  # every unit's sum is finite, so is every entry
            nonfinite = torch.zeros_like(mean)
        dead = (h.amax(0) <= 0).float()
        if batch > 1:
            log_std, log_mean = torch.std_mean(log_norms, 0)
            c2 = torch.sub(h, mean, out=work).square_()
            m2 = c2.mean(0)  # biased variance per unit
            m4 = c2.square_().mean(0)
            var = m2 * (batch / (batch - 1))
            # mean_bj h_bj^2 = mean_j (m2_j + mean_j^2); the layers' sums of counts = means * widths
            means = per_layer(torch.stack((m2 + mean.square(), var, m2, m4, dead, nonfinite)))
            second_moment, var_mean, m2_mean, m4_mean, dead, nonfinite = means
            varying = m2 > (_CONSTANT_RTOL * mean).square_()
            kurt = torch.where(varying, m4 / m2.square(), math.nan)
            columns = (
                log_mean,
                log_std,
                var_mean,
                per_layer((var <= COLLAPSE_THRESHOLD * second_moment[unit_layer]).float()),
                per_layer(kurt, lambda x, dim: x.nanmedian(dim).values),
                m4_mean / m2_mean.square(),
            )
            nonfinite = nonfinite.mul_(width).round_()
        else:
            dead, nonfinite = per_layer(torch.stack((dead, nonfinite)))
            nonfinite = nonfinite.mul_(width).round_()
            nan = torch.full_like(width, math.nan)
            columns = (log_norms[0], torch.zeros_like(nan), nan, nan, nan, nan)
        stats = torch.stack((*columns, dead, nonfinite), dim=1)
    return stats, log_norms.T


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
def _scalar_keys(prefix: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """The logger keys ``<prefix>/<stat>/<layer>``, statistic-major, built once per monitor (not per step)."""
    return tuple(f"{prefix}/{key}/{name}" for key in STAT_KEYS for name in names)


@dataclass(frozen=True)
class SignalStats:
    """Per-layer signal statistics of one forward pass, on the host.

    ``names`` are the monitored layers in the order given to the monitor (forward order);
    ``values[i, k]`` is statistic ``STAT_KEYS[k]`` of layer ``names[i]`` (NaN for a layer that was
    not called while the monitor was active); ``log_norms[name]`` holds the per-sample
    ``log(||h_b|| / sqrt(d))`` (empty for a layer that was not called).

    Example::

        stats.layer("0")["kurtosis_median"]; stats.as_dict()["log_norm_mean"]; stats.to_scalars()
    """

    names: tuple[str, ...]
    values: np.ndarray
    log_norms: Mapping[str, np.ndarray] = field(repr=False)

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

    @property
    def exponent_estimate(self) -> float:
        """Least-squares slope of ``log_norm_mean`` over the layer index (estimated Lyapunov exponent).

        ``slope = sum_i (i - mean i)(y_i - mean y) / sum_i (i - mean i)^2`` over the layers that
        were captured (``i`` = position in ``names``). NaN with fewer than 2 captured layers or
        when a captured mean log-norm is not finite (a dead or overflowing signal).
        """
        y = self.values[:, STAT_KEYS.index("log_norm_mean")]
        index = np.array([i for i, name in enumerate(self.names) if self.log_norms[name].size])
        if index.size < 2 or not np.all(np.isfinite(y[index])):
            return math.nan
        x = index - index.mean()
        return float(np.dot(x, y[index] - y[index].mean()) / np.dot(x, x))

    def undefined(self) -> dict[str, str]:
        """``{"<stat>/<layer>" or "exponent_estimate": why}`` for the statistics that this measurement
        cannot define (NaN, or 0 for ``log_norm_std`` of one sample, by construction rather than by
        the signal): a layer not called, a batch of one sample (:data:`BATCH_STATS` need two), 0/0
        from finite activations (constant units, an all-zero output), and for ``exponent_estimate``
        fewer than 2 measured layers or an all-zero layer output. A NaN of a layer with NaN/Inf
        activations (``nonfinite > 0``) is not listed: it is what the network computed.

        Example::

            SignalStats(("0",), np.zeros((1, len(STAT_KEYS))), {"0": np.zeros(1)}).undefined()
            # {"log_norm_std/0": SINGLE_SAMPLE, ..., "exponent_estimate": FEW_LAYERS}
        """
        return dict(self._undefined)  # computed once per measurement: the callback asks twice per step

    @functools.cached_property
    def _undefined(self) -> dict[str, str]:
        samples = np.array([self.log_norms[name].size for name in self.names])
        clean = self.values[:, STAT_KEYS.index("nonfinite")] == 0
        single = (samples == 1)[:, None] & _BATCH_STAT_COLUMNS[None, :]
        degenerate = np.isnan(self.values) & clean[:, None]
        reasons: dict[str, str] = {}
        for i, k in zip(*np.nonzero((samples == 0)[:, None] | single | degenerate)):
            why = NOT_CALLED if samples[i] == 0 else SINGLE_SAMPLE if single[i, k] else DEGENERATE
            reasons[f"{STAT_KEYS[k]}/{self.names[i]}"] = why
        means = self.values[samples > 0, STAT_KEYS.index("log_norm_mean")]
        if means.size < 2:
            reasons["exponent_estimate"] = FEW_LAYERS
        elif np.any(np.isneginf(means) & clean[samples > 0]):
            reasons["exponent_estimate"] = ZERO_OUTPUT
        return reasons

    def to_scalars(self, prefix: str = "lyapunov", *, defined_only: bool = False) -> dict[str, float]:
        """Flat ``{"<prefix>/<stat>/<layer>": value}`` plus ``"<prefix>/exponent_estimate"``.

        These are the documented logger keys; layer names keep their dots. ``defined_only`` leaves
        out the statistics listed by :meth:`undefined` (log nothing rather than NaN).
        """
        scalars = dict(zip(_scalar_keys(prefix, self.names), self.values.T.ravel().tolist()))
        scalars[f"{prefix}/exponent_estimate"] = self.exponent_estimate
        if defined_only:
            for key in self.undefined():
                del scalars[f"{prefix}/{key}"]
        return scalars


class SignalMonitor:
    """Forward hooks that measure the signal (docs/theory.md, section 6) in the named modules' outputs.

    Args:
        model: the module whose submodules are monitored (plain PyTorch; Lightning not needed).
        layer_names: qualified names (``model.named_modules()``) in forward order.
        training_only: skip modules in eval mode (validation, sanity check, inference).
        defer_below: outputs with fewer elements are copied (fp32) by the hook into a buffer
            shared by all layers with the same batch size and reduced together in
            :meth:`compute`; larger outputs are reduced in the hook itself. The buffers are
            reused from one logging step to the next and freed by :meth:`remove`.
        persistent: register the hooks once, here, and gate them by :attr:`active` (what
            ``torch.compile`` needs: attaching hooks changes the graph). With ``False`` the hooks
            are attached when ``active`` turns True and removed when it turns False, so steps
            that are not measured pay nothing at all; in eager mode a registered hook, even an
            idle one, moves every call of its module to PyTorch's slower hook path.

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
        persistent: bool = True,
    ) -> None:
        check_module("model", model)
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
        self.names = names
        self.training_only = check_bool("training_only", training_only)
        self.defer_below = check_int("defer_below", defer_below, minimum=0,
                                     allowed="an integer >= 0 (a number of elements)")
        self.persistent = check_bool("persistent", persistent)
        self._active = False
        self._removed = False
        # deferred captures: per (batch size, device) key a buffer (B, columns) holding the layers'
        # flattened outputs side by side, their slots {layer: (first column, width)} and the
        # number of columns in use; a layer called again with another width gets a new slot
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._slots: dict[tuple, dict[str, tuple[int, int]]] = {}
        self._used: dict[tuple, int] = {}
        self._pending_key: dict[str, tuple] = {}
        # reduced groups (names, stats (G, n_stats), log_norms (G, B)) and name -> (group, row)
        self._groups: list[tuple[list[str], torch.Tensor, torch.Tensor]] = []
        self._where: dict[str, tuple[int, int]] = {}
        self._modules = [modules[name] for name in names]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        if self.persistent:
            self._attach()

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

    def _hook_for(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._active or (self.training_only and not module.training):
                return
            h = output if isinstance(output, torch.Tensor) else _first_tensor(output)
            if h is not None and h.dim() > 0 and h.numel() > 0:
                self._capture(name, h.detach())

        return hook

    def _capture(self, name: str, h: torch.Tensor) -> None:
        """Keep (a copy of, or the statistics of) layer ``name``'s output ``h`` (detached)."""
        self._where.pop(name, None)
        batch = h.shape[0]
        width = h.numel() // batch if batch else 0
        key = (batch, h.device)
        slot = self._slots.get(key, {}).get(name)
        if slot is None or slot[1] != width or h.numel() >= self.defer_below:
            old_key = self._pending_key.pop(name, None)
            if old_key is not None:
                del self._slots[old_key][name]
            if h.numel() >= self.defer_below:
                stats, log_norms = signal_stats(h.reshape(batch, width))
                self._where[name] = (len(self._groups), 0)
                self._groups.append(([name], stats, log_norms))
                return
            slot = self._new_slot(key, name, width, h)
        start, width = slot
        self._buffers[key][:, start : start + width].copy_(h.reshape(batch, width))  # no autograd: h is detached

    def _new_slot(self, key: tuple, name: str, width: int, h: torch.Tensor) -> tuple[int, int]:
        """Reserve ``width`` columns for layer ``name`` in the buffer of ``key`` (grown if needed)."""
        start = self._used.get(key, 0)
        self._used[key] = start + width
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape[1] < start + width:
            grown = h.new_empty((key[0], max(2 * (start + width), 64)), dtype=torch.float32)
            if buffer is not None:
                grown[:, : buffer.shape[1]].copy_(buffer)
            self._buffers[key] = grown
        self._slots.setdefault(key, {})[name] = slot = (start, width)
        self._pending_key[name] = key
        return slot

    @property
    def captured(self) -> tuple[str, ...]:
        """Names of the layers measured since the last :meth:`reset`, in forward order."""
        return tuple(n for n in self.names if n in self._where or n in self._pending_key)

    def _reduce_pending(self) -> None:
        """Reduce the deferred copies: one :func:`signal_stats` call per (batch size, device)."""
        for key, slots in self._slots.items():
            if not slots:
                continue
            names = sorted(slots, key=lambda n: slots[n][0])
            widths = [slots[n][1] for n in names]
            buffer, used = self._buffers[key], self._used[key]
            if sum(widths) == used:  # no stale columns
                h = buffer[:, :used]
            else:
                h = torch.cat([buffer[:, slots[n][0] : sum(slots[n])] for n in names], 1)
            stats, log_norms = signal_stats(h, widths)
            for j, name in enumerate(names):
                self._where[name] = (len(self._groups), j)
            self._groups.append((names, stats, log_norms))
            if buffer.shape[1] != sum(widths):  # next time the same layers fill it exactly
                buffer = buffer.new_empty((key[0], sum(widths)))
            self._buffers[key] = buffer
        # keep only the buffers in use (variable batch sizes must not pile up)
        self._buffers = {key: self._buffers[key] for key, slots in self._slots.items() if slots}
        self._clear_pending()

    def _clear_pending(self) -> None:
        self._slots.clear()
        self._used.clear()
        self._pending_key.clear()

    def compute(self) -> SignalStats:
        """Move the statistics of the captured layers to the host: one transfer per device.

        Raises RuntimeError if no layer was captured since the last :meth:`reset` (set
        ``monitor.active = True`` and run a forward pass in training mode first; :attr:`captured`
        tells which layers were measured). Layers not captured get NaN statistics.
        """
        self._reduce_pending()
        if not self._where:
            raise RuntimeError(
                "SignalMonitor.compute(): no layer was captured since the last reset(); set "
                "monitor.active = True and run a forward pass (in training mode when training_only)"
            )
        used = sorted({group for group, _ in self._where.values()})
        per_device: dict[torch.device, list[int]] = {}
        for group in used:
            per_device.setdefault(self._groups[group][1].device, []).append(group)
        offsets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for groups in per_device.values():
            parts = [t.flatten() for g in groups for t in self._groups[g][1:]]
            host = torch.cat(parts).cpu().double().numpy()  # the one transfer (per device)
            start = 0
            for g in groups:
                _, stats, log_norms = self._groups[g]
                middle = start + stats.numel()
                offsets[g] = (
                    host[start:middle].reshape(stats.shape),
                    host[middle : middle + log_norms.numel()].reshape(log_norms.shape),
                )
                start = middle + log_norms.numel()
        values = np.full((len(self.names), len(STAT_KEYS)), math.nan)
        log_norms_by_name = {name: np.zeros(0) for name in self.names}
        for i, name in enumerate(self.names):
            if name in self._where:
                group, row = self._where[name]
                values[i] = offsets[group][0][row]
                log_norms_by_name[name] = offsets[group][1][row]
        return SignalStats(self.names, values, log_norms_by_name)

    def reset(self) -> None:
        """Forget everything captured (the deferred-copy buffers are kept for reuse)."""
        self._clear_pending()
        self._groups.clear()
        self._where.clear()

    def remove(self) -> None:
        """Remove the hooks (idempotent), deactivate and free the buffers.

        What was captured stays available to :meth:`compute` until :meth:`reset`.
        """
        self._active = False
        self._removed = True
        self._detach()
        self._reduce_pending()
        self._buffers.clear()

    def __enter__(self) -> SignalMonitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
