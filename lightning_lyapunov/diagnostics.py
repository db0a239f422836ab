"""Live signal diagnostics: per-layer statistics of the activations, computed by forward hooks.

:class:`SignalMonitor` registers one forward hook on each named module, once. The hooks see each
module's *output*; for weight layers (Linear, ConvNd) these are the **pre-activations**, the
quantities studied by the vanishing-empirical-variance paper (Grzejdziak-Zdziarski, Tax, Loog) and
by the kurtosis recursion of DESIGN section 6. Hooks do nothing unless ``monitor.active`` is True
(and, with ``training_only``, the module is in training mode), so the monitor costs nothing on
steps that do not log. Statistics are computed in fp32 on the activations' device, with no host
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
need two samples (``emp_var_*``, ``kurtosis_*``) are NaN. A sample whose output is exactly zero
has ``log r = -inf``. If a module is called several times in one forward (weight sharing), the
last call is kept.

Cost: small outputs (fewer than ``defer_below`` elements) are copied in the hook and reduced
together in :meth:`~SignalMonitor.compute`, a few large kernels instead of ~25 tiny ones per
layer; larger outputs are reduced in the hook, so at most one fp32 copy of a small layer is held.

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
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["STAT_KEYS", "COLLAPSE_THRESHOLD", "SignalMonitor", "SignalStats", "signal_stats"]

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
#: A unit's variance is collapsed below this fraction of the layer's mean second moment.
COLLAPSE_THRESHOLD = 1e-3
# A unit counts as constant for the kurtosis when std <= _CONSTANT_RTOL * |mean| (fp32 rounding).
_CONSTANT_RTOL = 16 * torch.finfo(torch.float32).eps


def signal_stats(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics of a stack of ``G`` layer outputs with equal shapes, in fp32, on ``h``'s device.

    ``h`` has shape ``(G, B, d)`` (``G`` layers, batch ``B``, ``d`` features per sample). Returns
    ``(stats, log_norms)``: ``stats`` of shape ``(G, len(STAT_KEYS))`` (columns in the order of
    :data:`STAT_KEYS`, formulas in the module docstring) and the per-sample
    ``log_norms = log(||h_b|| / sqrt(d))`` of shape ``(G, B)``. No host synchronization.

    Example::

        stats, log_norms = signal_stats(torch.randn(1, 4096, 8))   # kurtosis_median ~ 3
    """
    with torch.no_grad():
        h = h.float()
        _, batch, d = h.shape
        nan = torch.full_like(h[:, 0, 0], math.nan)
        norm = torch.linalg.vector_norm(h, dim=2)  # (G, B)
        log_norms = norm.log().sub_(0.5 * math.log(d))
        c2 = torch.empty_like(h)  # the one full-size temporary
        if batch > 1:
            mean = h.mean(1, keepdim=True)  # (G, 1, d)
            c2 = torch.sub(h, mean, out=c2).square_()
            m2 = c2.mean(1)  # biased variance per unit (G, d)
            m4 = c2.square_().mean(1)
            var = m2 * (batch / (batch - 1))
            second_moment = norm.square().sum(1, keepdim=True) / (batch * d)
            collapsed = (var <= COLLAPSE_THRESHOLD * second_moment).float().mean(1)
            varying = m2 > (_CONSTANT_RTOL * mean.squeeze(1)).square_()
            kurt = torch.where(varying, m4 / m2.square(), nan[:, None])
            columns = (log_norms.std(1), var.mean(1), collapsed, kurt.nanmedian(1).values)
            kurt_pooled = m4.mean(1) / m2.mean(1).square_()
        else:
            columns = (torch.zeros_like(nan), nan, nan, nan)
            kurt_pooled = nan
        dead = (h.amax(1) <= 0).float().mean(1)
        # h * 0 is 0 where h is finite and NaN elsewhere: a float-only count (bool ops are slow on CPU)
        nonfinite = torch.mul(h, 0, out=c2).nan_to_num_(1.0).sum((1, 2))
        stats = torch.stack((log_norms.mean(1), *columns, kurt_pooled, dead, nonfinite), dim=1)
    return stats, log_norms


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The module output itself, or the first tensor of a tuple/list output (e.g. ``nn.LSTM``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


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

    def to_scalars(self, prefix: str = "lyapunov") -> dict[str, float]:
        """Flat ``{"<prefix>/<stat>/<layer>": value}`` plus ``"<prefix>/exponent_estimate"``.

        These are the documented logger keys; layer names keep their dots.
        """
        scalars = {
            f"{prefix}/{key}/{name}": value
            for key, per_layer in self.as_dict().items()
            for name, value in per_layer.items()
        }
        scalars[f"{prefix}/exponent_estimate"] = self.exponent_estimate
        return scalars


class SignalMonitor:
    """Forward hooks that measure the signal (DESIGN section 6) in the named modules' outputs.

    Args:
        model: the module whose submodules are monitored (plain PyTorch; Lightning not needed).
        layer_names: qualified names (``model.named_modules()``) in forward order.
        training_only: skip modules in eval mode (validation, sanity check, inference).
        defer_below: outputs with fewer elements are copied (fp32) by the hook into a buffer
            shared by the layers of equal shape and reduced together in :meth:`compute` (a few
            large kernels instead of ~25 tiny ones per layer); larger outputs are reduced in the
            hook itself. The buffers are reused from one logging step to the next.

    Hooks are registered once, here; they return immediately unless :attr:`active` is True.
    Set ``active`` only around the forward passes you want to measure; the last call of each
    layer while active is kept until :meth:`reset`.

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
    ) -> None:
        if isinstance(layer_names, str):
            raise ValueError(
                f"layer_names must be a sequence of module names, got the string {layer_names!r}; "
                f"wrap it in a list: [{layer_names!r}]"
            )
        names = tuple(layer_names)
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
        self.training_only = training_only
        self.defer_below = int(defer_below)
        self.active = False
        # deferred captures: per (shape, device) a buffer (capacity, B, d) and the layer of each
        # row (None: superseded by a later call with another shape)
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._pending: dict[tuple, list[str | None]] = {}
        self._pending_key: dict[str, tuple] = {}
        # reduced groups (names, stats (G, n_stats), log_norms (G, B)) and name -> (group, row)
        self._groups: list[tuple[list[str], torch.Tensor, torch.Tensor]] = []
        self._where: dict[str, tuple[int, int]] = {}
        self._handles = [modules[name].register_forward_hook(self._hook_for(name)) for name in names]

    def _hook_for(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self.active or (self.training_only and not module.training):
                return
            h = _first_tensor(output)
            if h is not None and h.dim() > 0:
                self._capture(name, h.detach().reshape(h.shape[0], -1))

        return hook

    def _capture(self, name: str, h: torch.Tensor) -> None:
        """Keep (a copy of, or the statistics of) layer ``name``'s flattened output ``h``."""
        self._where.pop(name, None)
        old_key = self._pending_key.pop(name, None)
        if old_key is not None:
            rows = self._pending[old_key]
            rows[rows.index(name)] = None
        if h.numel() >= self.defer_below:
            stats, log_norms = signal_stats(h[None])
            self._where[name] = (len(self._groups), 0)
            self._groups.append(([name], stats, log_norms))
            return
        key = (tuple(h.shape), h.device)
        rows = self._pending.setdefault(key, [])
        row = rows.index(None) if None in rows else len(rows)
        rows[row:row + 1] = [name]
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape[0] <= row:
            grown = h.new_empty((max(2 * len(rows), 4), *h.shape), dtype=torch.float32)
            if buffer is not None:
                grown[: buffer.shape[0]].copy_(buffer)
            self._buffers[key] = buffer = grown
        with torch.no_grad():
            buffer[row].copy_(h)
        self._pending_key[name] = key

    @property
    def captured(self) -> tuple[str, ...]:
        """Names of the layers measured since the last :meth:`reset`, in forward order."""
        return tuple(n for n in self.names if n in self._where or n in self._pending_key)

    def _reduce_pending(self) -> None:
        """Reduce the deferred copies: one :func:`signal_stats` call per (shape, device)."""
        for key, rows in self._pending.items():
            index = [i for i, name in enumerate(rows) if name is not None]
            if not index:
                continue
            buffer = self._buffers[key]
            h = buffer[: len(rows)] if len(index) == len(rows) else buffer[index]
            stats, log_norms = signal_stats(h)
            members = [rows[i] for i in index]
            for j, name in enumerate(members):
                self._where[name] = (len(self._groups), j)
            self._groups.append((members, stats, log_norms))
        # keep only the buffers of the shapes in use (variable shapes must not pile up)
        self._buffers = {key: self._buffers[key] for key in self._pending}
        self._pending.clear()
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
        self._pending.clear()
        self._pending_key.clear()
        self._groups.clear()
        self._where.clear()

    def remove(self) -> None:
        """Remove the hooks (idempotent), deactivate and free the buffers.

        What was captured stays available to :meth:`compute` until :meth:`reset`.
        """
        self.active = False
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._reduce_pending()
        self._buffers.clear()

    def __enter__(self) -> SignalMonitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
