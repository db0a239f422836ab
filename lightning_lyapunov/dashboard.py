"""What :class:`~lightning_lyapunov.LyapunovInit` writes to its loggers: a dashboard, not 400 cards.

Scalars, to every logger, at every measured step:

- the summary: ``lyapunov/exponent_estimate`` (the measured Lyapunov exponent, the slope of the
  mean log-norm over depth) next to ``lyapunov/predicted/exponent`` (the plan's mean per-layer
  exponent); ``lyapunov/max/emp_var_collapsed`` (the worst layer's fraction of units whose
  empirical variance collapsed), ``lyapunov/max/kurtosis_median`` (the largest per-layer median
  kurtosis), ``lyapunov/max/dead_fraction`` (the worst layer's fraction of dead units) and
  ``lyapunov/total/nonfinite`` (NaN/Inf values in all layers); a value that is not finite (e.g. a
  kurtosis with batch size 1) is left out;
- per layer, for the first, middle and last planned layer (every layer with ``all_layers=True``):
  ``lyapunov/<stat>/<layer>`` for each statistic of
  :data:`~lightning_lyapunov.diagnostics.STAT_KEYS`, and ``lyapunov/predicted/log_norm/<layer>``,
  the plan's log-norm line through the first layer's measured value,
  ``m_0 + sum_{k=1..l} lambda_k``.

With a TensorBoard logger, also: a custom-scalars layout (TensorBoard's CUSTOM SCALARS tab): the
summary charts first, then one chart per statistic with a line per logged layer, measured and
predicted log-norms in one chart; the plan as text (``lyapunov/plan``); and, at the first measured
step, at the end of epochs 1, 2, 4, 8, ... and at the end of training, the per-sample log-norm
histograms of the same layers (``lyapunov/log_norm_hist/<layer>``) and one depth-profile figure
(``lyapunov/depth_profile``, titled with the run and the step): the log-norm with the theory line
and its +-2 sqrt(l) s band, the empirical variance with the theory ``exp(2 x predicted drift)``,
and the kurtosis with the recursion of :func:`~lightning_lyapunov.theory.kurtosis_by_depth`.

Example::

    scalars = summary_scalars(stats, plan) | layer_scalars(stats, plan, featured_layers(stats.names))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_lyapunov.diagnostics import STAT_KEYS, SignalStats

__all__ = ["featured_layers", "summary_scalars", "layer_scalars", "StepScalars", "layout", "depth_figure", "figure_due"]

_SUMMARY = (
    ("max", "emp_var_collapsed", "worst layer: fraction of units with collapsed empirical variance"),
    ("max", "kurtosis_median", "largest median kurtosis of a layer"),
    ("max", "dead_fraction", "worst layer: fraction of dead units"),
    ("total", "nonfinite", "NaN/Inf values, all layers"),
)
_CHART_TITLES = {
    "log_norm_mean": "log-norm, batch mean (measured; predicted/ = the plan's line)",
    "log_norm_std": "log-norm, batch std",
    "centred_log_norm_mean": "centred log-norm (input-dependent part), batch mean",
    "centred_log_norm_std": "centred log-norm, batch std",
    "log_rms": "log root-mean-square",
    "input_share": "input-dependent share of the root-mean-square",
    "emp_var_mean": "empirical variance, mean over units",
    "emp_var_collapsed": "fraction of units with collapsed empirical variance",
    "kurtosis_median": "kurtosis, median over units",
    "kurtosis_pooled": "kurtosis, pooled",
    "dead_fraction": "fraction of dead units",
    "nonfinite": "NaN/Inf values",
}


def featured_layers(names: Sequence[str]) -> list[str]:
    """The first, middle and last of ``names`` (fewer when there are fewer layers)."""
    if not names:
        return []
    picks = sorted({0, (len(names) - 1) // 2, len(names) - 1})
    return [names[i] for i in picks]


def _plan_exponents(plan: Any) -> np.ndarray | None:
    exponents = plan.layer_log_gains if plan is not None else [None]
    return None if any(e is None for e in exponents) else np.array(exponents, dtype=float)


def summary_scalars(stats: SignalStats, plan: Any) -> dict[str, float]:
    """The handful of summary scalars of one measured step (module docstring); finite values only."""
    return StepScalars(plan, stats.names, ()).summary(stats)


def layer_scalars(stats: SignalStats, plan: Any, layers: Sequence[str]) -> dict[str, float]:
    """``lyapunov/<stat>/<layer>`` for ``layers`` (statistics the measurement defines) and the
    plan's predicted log-norm line through the first layer's measured mean,
    ``lyapunov/predicted/log_norm/<layer>``."""
    return StepScalars(plan, stats.names, layers).layers(stats)


class StepScalars:
    """:func:`summary_scalars` and :func:`layer_scalars` for one plan, monitored ``names`` and logged
    ``layers``, with what depends on them alone (the plan's line, the keys) built once: the callback
    calls it at every measured step.

    Example::

        scalars = StepScalars(plan, stats.names, featured_layers(stats.names))(stats)
    """

    def __init__(self, plan: Any, names: Sequence[str], layers: Sequence[str]) -> None:
        self.names = tuple(names)
        exponents = _plan_exponents(plan)
        self._predicted_exponent = None if exponents is None else float(exponents.mean())
        # m_0 + sum_{k=1..l} lambda_k, less m_0 (the first layer's measured mean, known per step)
        self._line = (np.concatenate([[0.0], np.cumsum(exponents[1:])])
                      if exponents is not None and len(exponents) == len(self.names) else None)
        chosen = set(layers)
        self._rows = [i for i, name in enumerate(self.names) if name in chosen]
        # statistic-major, the order of stats.to_scalars(defined_only=True)
        self._keys = [(f"{key}/{self.names[i]}", f"lyapunov/{key}/{self.names[i]}") for key in STAT_KEYS for i in self._rows]
        self._full_keys = [key for _, key in self._keys]
        self._positions = [(k, i) for k in range(len(STAT_KEYS)) for i in self._rows]
        self._line_at_rows = self._line[self._rows].tolist() if self._line is not None else None
        self._line_keys = [f"lyapunov/predicted/log_norm/{self.names[i]}" for i in self._rows]
        self._summary_keys = [f"lyapunov/{reduce}/{key}" for reduce, key, _ in _SUMMARY]

    def __call__(self, stats: SignalStats) -> dict[str, float]:
        scalars = self.summary(stats)
        scalars.update(self.layers(stats))
        return scalars

    def summary(self, stats: SignalStats) -> dict[str, float]:
        """:func:`summary_scalars`."""
        scalars = {"lyapunov/exponent_estimate": stats.exponent_estimate}
        if self._predicted_exponent is not None:
            scalars["lyapunov/predicted/exponent"] = self._predicted_exponent
        # Python floats, not numpy calls: this runs right after the backward pass, when a dozen small
        # numpy calls cost more than reading a few hundred floats
        for summary_key, (reduce, key, _) in zip(self._summary_keys, _SUMMARY):
            column = stats.column(key)
            finite = column if math.isfinite(sum(column)) else [v for v in column if math.isfinite(v)]
            if finite:
                scalars[summary_key] = max(finite) if reduce == "max" else sum(finite)
        return {key: value for key, value in scalars.items() if math.isfinite(value)}

    def layers(self, stats: SignalStats) -> dict[str, float]:
        """:func:`layer_scalars`."""
        self._check(stats)
        columns = [stats.column(key) for key in STAT_KEYS]
        values = [columns[k][i] for k, i in self._positions]
        undefined = stats.undefined()
        if undefined:
            scalars = {key: value for (short, key), value in zip(self._keys, values) if short not in undefined}
        else:  # the usual step
            scalars = dict(zip(self._full_keys, values))
        first = self._first_mean(stats)
        if self._line_at_rows is not None and math.isfinite(first):
            scalars.update(zip(self._line_keys, [first + value for value in self._line_at_rows]))
        return scalars

    def _check(self, stats: SignalStats) -> None:
        if tuple(stats.names) != self.names:
            raise ValueError(f"statistics of the layers {list(stats.names)} given to StepScalars built for "
                             f"{list(self.names)}; build one for these layers")

    def predicted_log_norm(self, stats: SignalStats) -> np.ndarray | None:
        """:func:`predicted_log_norm`."""
        self._check(stats)
        return self._predicted(stats)

    def _predicted(self, stats: SignalStats) -> np.ndarray | None:
        first = self._first_mean(stats)
        return None if self._line is None or not math.isfinite(first) else first + self._line

    def _first_mean(self, stats: SignalStats) -> float:
        """``m_0``: the first layer's measured mean log-norm, where the plan's line starts."""
        return stats.column("log_norm_mean")[0] if self.names else math.nan


def predicted_log_norm(stats: SignalStats, plan: Any) -> np.ndarray | None:
    """``m_0 + sum_{k=1..l} lambda_k`` per layer (``m_0``: the first layer's measured mean
    log-norm), or None when the plan has no prediction or ``m_0`` is not finite."""
    return StepScalars(plan, stats.names, ()).predicted_log_norm(stats)


def layout(layers: Sequence[str]) -> dict[str, dict[str, list]]:
    """The custom-scalars layout (``SummaryWriter.add_custom_scalars``): tags are regexes."""
    summary = {"exponent per layer: measured vs plan": [
        "Multiline", [r"^lyapunov/exponent_estimate$", r"^lyapunov/predicted/exponent$"]]}
    for reduce, key, title in _SUMMARY:
        summary[title] = ["Multiline", [rf"^lyapunov/{reduce}/{key}$"]]
    per_layer = {}
    for key in STAT_KEYS:
        tags = [rf"^lyapunov/{key}/"] + ([r"^lyapunov/predicted/log_norm/"] if key == "log_norm_mean" else [])
        per_layer[_CHART_TITLES[key]] = ["Multiline", tags]
    shown = ", ".join(layers)
    return {"lyapunov: summary": summary, f"lyapunov: per layer ({shown})": per_layer}


def figure_due(epoch: int) -> bool:
    """Depth figures and histograms at the end of epochs 1, 2, 4, 8, ... (``epoch`` counts from 0)."""
    return (epoch + 1) & epoch == 0


def depth_figure(stats: SignalStats, plan: Any, title: str):
    """Three panels against depth, each with its theory: log-norm, empirical variance, kurtosis.

    Returns a matplotlib figure (the caller closes it), or None without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - matplotlib is optional (the dev extra)
        return None
    from lightning_lyapunov import theory

    table = stats.as_dict()
    column = {key: np.array([table[key][n] for n in stats.names]) for key in STAT_KEYS}
    depth = np.arange(1, len(stats.names) + 1)
    line = predicted_log_norm(stats, plan)
    figure, (ax_norm, ax_var, ax_kurt) = plt.subplots(1, 3, figsize=(15, 4.4), dpi=80)
    figure.suptitle(title, fontsize=13)

    ax_norm.errorbar(depth, column["log_norm_mean"], yerr=column["log_norm_std"], fmt="o-", ms=3,
                     label="measured (batch mean +- std)")
    if line is not None:
        variances = np.array([layer.init.variance for layer in plan.layers], dtype=float)
        band = 2.0 * np.sqrt(np.concatenate([[0.0], np.cumsum(variances[1:])]))
        ax_norm.plot(depth, line, "k--", label="plan: log-gains measured at calibration" if getattr(plan, "calibration", None)
                     else "theory: sum of exponents")
        ax_norm.fill_between(depth, line - band, line + band, color="k", alpha=0.12, label="+-2 sqrt(l) s")
    ax_norm.set(title="log-norm  log(||h|| / sqrt(d))", xlabel="layer")

    variance = column["emp_var_mean"]
    positive = np.where(variance > 0, variance, np.nan)
    ax_var.semilogy(depth, positive, "o-", ms=3, label="measured: mean over units")
    collapsed = column["emp_var_collapsed"] >= 0.5
    if collapsed.any():
        ax_var.semilogy(depth[collapsed], positive[collapsed], "rx", ms=8, label="half of the units collapsed")
    if line is not None and np.isfinite(positive[0]):
        ax_var.semilogy(depth, positive[0] * np.exp(2.0 * (line - line[0])), "k--",
                        label="theory: exp(2 x predicted drift)")
    ax_var.set(title="empirical variance over the batch", xlabel="layer")

    ax_kurt.semilogy(depth, column["kurtosis_median"], "o-", ms=3, label="measured: median over units")
    ax_kurt.semilogy(depth, column["kurtosis_pooled"], "s-", ms=2, alpha=0.5, label="measured: pooled")
    if plan is not None and len(plan.layers) == len(stats.names) and len(depth) > 1:
        start = column["kurtosis_median"][0]
        start = start if np.isfinite(start) and start >= 1 else 3.0
        widths = [layer.d_out for layer in plan.layers[:-1]]
        slopes = [layer.negative_slope for layer in plan.layers[:-1]]
        predicted = theory.kurtosis_by_depth(widths, slopes, initial_kurtosis=start)
        ax_kurt.semilogy(depth, predicted, "k--", label="theory: over random Gaussian weights (recursion)")
    batch = next((v.size for v in stats.log_norms.values() if v.size), 0)
    if batch > 1:
        ax_kurt.axhline(batch, color="gray", ls=":", label=f"largest measurable over a batch of {batch}")
    measured = column["kurtosis_median"][np.isfinite(column["kurtosis_median"])]
    if measured.size:  # the theory line may leave the top: the batch cannot show larger values
        ax_kurt.set_ylim(top=10.0 * max(float(measured.max()), batch, 3.0))
    ax_kurt.set(title="kurtosis  E(h - mean)^4 / var^2", xlabel="layer")
    for axis in (ax_norm, ax_var, ax_kurt):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.subplots_adjust(left=0.04, right=0.99, top=0.86, bottom=0.12, wspace=0.16)  # tight_layout: 2x the cost
    return figure
