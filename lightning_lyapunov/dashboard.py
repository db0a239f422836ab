"""What :class:`~lightning_lyapunov.LyapunovInit` writes to its loggers: a dashboard, not 400 cards.

Scalars, to every logger, at every measured step (statistics in
:mod:`lightning_lyapunov.diagnostics`; "typical sample": the batch mean of a per-sample log-norm,
"root-mean-square": over batch and units):

- the run's **verdict** (``lyapunov/verdict``: the code of :data:`VERDICTS`, 0 healthy, 1 dead units,
  2 vanishing, 3 exploding, 4 collapsed, 5 NaN/Inf, added by :class:`~lightning_lyapunov.SignalReport`)
  and ``lyapunov/input_depth``, the number of layers the input reaches (the layers before the
  collapsed tail; all of them when none collapsed);
- the exponents per layer: ``lyapunov/centred_exponent``, the slope over depth of the centred
  log-norm (the input-dependent part ``h - mean_b h``, typical sample), what the dashboard leads
  with; ``lyapunov/exponent_estimate``, the same of ``h`` itself (biases included: once training
  moves them they carry it); ``lyapunov/predicted/exponent``, the plan's (:func:`plan_exponent`);
- the worst layers: ``lyapunov/max/emp_var_collapsed`` (fraction of units whose empirical
  variance collapsed), ``lyapunov/max/kurtosis_median``, ``lyapunov/max/dead_fraction`` (over the
  layers followed by a ReLU-like activation, slope 0: a unit can die only there) and
  ``lyapunov/total/nonfinite``; a value that is not finite (e.g. a kurtosis with batch size 1) is
  left out;
- per layer, for the first, middle and last planned layer (every layer with ``all_layers=True``):
  ``lyapunov/<stat>/<layer>`` for each statistic of
  :data:`~lightning_lyapunov.diagnostics.STAT_KEYS` (``dead_fraction`` only where a unit can die),
  and ``lyapunov/predicted/log_norm/<layer>``, the plan's log-norm line through the first layer's
  measured typical sample, ``m_0 + sum_{k=1..l} lambda_k``; a value that is not finite is left out
  (a chart cannot draw it, and one ``-inf`` blanks TensorBoard's chart for every run; the verdict
  says collapsed or NaN/Inf).

With a TensorBoard logger, also: a custom-scalars layout (TensorBoard's CUSTOM SCALARS tab) whose
summary charts hold one line per run (one tag each), each logged layer in a category of its own;
the plan as text (``lyapunov/plan``); with a look-ahead, a category of its charts (which candidate
trained at each of its steps, their losses, the cuts, the kept one: its steps are marked as such); and, at the first measured step, at the end of epochs 1, 2,
4, 8, ... and at the end of training, the per-sample log-norm histograms of the same layers
(``lyapunov/log_norm_hist/<layer>``) and the depth profile, one image per panel
(``lyapunov/depth/<panel>``, :data:`PANELS`, titled with the run, the step and the verdict,
:func:`depth_figures`): the first measured step's and the final one always, the others while they take
at most :data:`FIGURE_SHARE` of the run's time (:class:`FigureBudget`; the first one is kept until then,
at the latest until the end).

Example::

    scalars = summary_scalars(stats, plan) | layer_scalars(stats, plan, featured_layers(stats.names))
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from lightning_lyapunov.diagnostics import COLLAPSED_SHARE, STAT_KEYS, SignalStats

__all__ = ["FIGURE_SHARE", "FigureBudget", "LOOK_AHEAD_CATEGORY", "PANELS", "VERDICTS", "featured_layers", "plan_exponent",
           "predicted_band", "summary_scalars", "layer_scalars", "StepScalars", "layout", "depth_figure", "depth_figures",
           "figure_due"]

#: The verdicts, by their code in ``lyapunov/verdict`` (worse ones higher, for sorting runs).
VERDICTS: tuple[str, ...] = ("healthy", "dead units", "vanishing", "exploding", "collapsed", "NaN/Inf")

_SUMMARY = (
    ("max", "emp_var_collapsed", "worst layer: fraction of units whose empirical variance collapsed"),
    ("max", "kurtosis_median", "largest median kurtosis of a layer"),
    ("max", "dead_fraction", "worst ReLU layer: fraction of dead units"),
    ("total", "nonfinite", "NaN/Inf values, all layers"),
)
#: Per-layer charts: title, statistics (tags) and whether the plan's log-norm line joins.
_LAYER_CHARTS = (
    ("centred log-norm, typical sample: the input-dependent part h - batch mean", ("centred_log_norm_mean",)),
    ("log-norm of h, typical sample (biases included), and the plan's line", ("log_norm_mean", "predicted/log_norm")),
    ("log root-mean-square of h", ("log_rms",)),
    ("input-dependent share of the root-mean-square (0: the batch mean carries everything)", ("input_share",)),
    ("empirical variance over the batch, mean over units", ("emp_var_mean",)),
    ("kurtosis, median over units", ("kurtosis_median",)),
    ("fraction of dead units (ReLU layers)", ("dead_fraction",)),
)
_DEAD = STAT_KEYS.index("dead_fraction")


def featured_layers(names: Sequence[str]) -> list[str]:
    """The first, middle and last of ``names`` (fewer when there are fewer layers)."""
    if not names:
        return []
    picks = sorted({0, (len(names) - 1) // 2, len(names) - 1})
    return [names[i] for i in picks]


def _plan_exponents(plan: Any) -> np.ndarray | None:
    exponents = plan.layer_log_gains if plan is not None else [None]
    return None if any(e is None for e in exponents) else np.array(exponents, dtype=float)


def plan_exponent(plan: Any) -> float | None:
    """The plan's exponent per layer: its predicted drift over the number of layers,
    ``sum_l lambda_l / L`` (theory's exponents, or after a calibration the log-gains measured on the
    batch; :attr:`~lightning_lyapunov.InitPlan.layer_log_gains`), the value the plan table's drift
    line, the closing summary and ``lyapunov/predicted/exponent`` show. None without a prediction.

    Example::

        plan_exponent(plan_init(model, scheme="he"))   # -0.8170 at width 2, depth 41 (each hidden layer -0.8216)
    """
    exponents = _plan_exponents(plan)
    if exponents is None or exponents.size == 0:
        return None
    return round(float(exponents.mean()), 12) + 0.0  # theory's 0 as 0, not float noise (1e-18) nor -0.0


def summary_scalars(stats: SignalStats, plan: Any) -> dict[str, float]:
    """The handful of summary scalars of one measured step (module docstring); finite values only."""
    return StepScalars(plan, stats.names, ()).summary(stats)


def layer_scalars(stats: SignalStats, plan: Any, layers: Sequence[str]) -> dict[str, float]:
    """``lyapunov/<stat>/<layer>`` for ``layers`` (statistics the measurement defines) and the
    plan's predicted log-norm line through the first layer's measured mean,
    ``lyapunov/predicted/log_norm/<layer>``."""
    return StepScalars(plan, stats.names, layers).layers(stats)


def _can_die(plan: Any, names: Sequence[str]) -> list[bool]:
    """Per layer, whether a unit can die: the plan says it is followed by a ReLU-like activation
    (slope 0). Without a plan of these layers, every layer."""
    if plan is None or list(plan.layer_names) != list(names):
        return [True] * len(names)
    return [layer.negative_slope == 0.0 for layer in plan.layers]


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
        self._predicted_exponent = plan_exponent(plan)
        # m_0 + sum_{k=1..l} lambda_k, less m_0 (the first layer's measured mean, known per step)
        self._line = (np.concatenate([[0.0], np.cumsum(exponents[1:])])
                      if exponents is not None and len(exponents) == len(self.names) else None)
        self._can_die = _can_die(plan, self.names)
        self._dying = [i for i, mortal in enumerate(self._can_die) if mortal]
        chosen = set(layers)
        self._rows = [i for i, name in enumerate(self.names) if name in chosen]
        # statistic-major, the order of stats.to_scalars(defined_only=True); no dead units where none can die
        positions = [(k, i) for k in range(len(STAT_KEYS)) for i in self._rows if k != _DEAD or self._can_die[i]]
        self._keys = [(f"{STAT_KEYS[k]}/{self.names[i]}", f"lyapunov/{STAT_KEYS[k]}/{self.names[i]}")
                      for k, i in positions]
        self._full_keys = [key for _, key in self._keys]
        self._positions = positions
        self._line_at_rows = self._line[self._rows].tolist() if self._line is not None else None
        self._line_keys = [f"lyapunov/predicted/log_norm/{self.names[i]}" for i in self._rows]
        self._summary_keys = [f"lyapunov/{reduce}/{key}" for reduce, key, _ in _SUMMARY]

    def __call__(self, stats: SignalStats) -> dict[str, float]:
        scalars = self.summary(stats)
        scalars.update(self.layers(stats))
        return scalars

    def summary(self, stats: SignalStats) -> dict[str, float]:
        """:func:`summary_scalars`."""
        collapsed = stats.collapsed_from
        scalars = {"lyapunov/centred_exponent": stats.centred_exponent,
                   "lyapunov/exponent_estimate": stats.exponent_estimate,
                   "lyapunov/input_depth": float(len(stats.names) if collapsed is None else collapsed)}
        if self._predicted_exponent is not None:
            scalars["lyapunov/predicted/exponent"] = self._predicted_exponent
        # Python floats, not numpy calls: this runs right after the backward pass, when a dozen small
        # numpy calls cost more than reading a few hundred floats
        for summary_key, (reduce, key, _) in zip(self._summary_keys, _SUMMARY):
            column = stats.column(key)
            if key == "dead_fraction" and len(self._dying) < len(column):
                column = [column[i] for i in self._dying]
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
        if not undefined and math.isfinite(sum(values)):  # the usual step
            scalars = dict(zip(self._full_keys, values))
        else:  # leave out what is undefined, and what a chart cannot draw (-inf: a layer whose samples are all alike)
            scalars = {key: value for (short, key), value in zip(self._keys, values)
                       if short not in undefined and math.isfinite(value)}
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


#: The look-ahead's charts (:mod:`lightning_lyapunov.lookahead_fit` logs the tags): title, tag regex.
_LOOK_AHEAD_CHARTS = (
    ("look-ahead: the candidate trained at each step (its steps only; they are training steps)",
     r"^lyapunov/lookahead/candidate$"),
    ("look-ahead: each candidate's training loss at its steps (one line per candidate)",
     r"^lyapunov/lookahead/loss/\d+$"),
    ("look-ahead: each candidate's ranking loss at each cut (the better half goes on)", r"^lyapunov/lookahead/cut/\d+$"),
    ("look-ahead: the kept candidate (at the last cut)", r"^lyapunov/lookahead/kept$"),
)
LOOK_AHEAD_CATEGORY = "lyapunov: look-ahead (the first training steps: candidate draws trained in turn)"


def layout(layers: Sequence[str] | None, relu_layers: Sequence[str] | None = None,
           look_ahead: bool = False) -> dict[str, dict[str, list]]:
    """The custom-scalars layout (``SummaryWriter.add_custom_scalars``; tags are regexes). Every
    summary chart has one tag, so one line per run; each of ``layers`` gets a category of its own
    (``layers=None``: diagnostics off, no signal charts). The dead-unit charts appear for
    ``relu_layers`` only (None: for every layer). ``look_ahead``: a category for the look-ahead's
    steps (:data:`LOOK_AHEAD_CATEGORY`), after the summary.

    Example::

        >>> list(layout(None, look_ahead=True)) == [LOOK_AHEAD_CATEGORY]
        True
    """
    look = {LOOK_AHEAD_CATEGORY: {title: ["Multiline", [tag]] for title, tag in _LOOK_AHEAD_CHARTS}} if look_ahead else {}
    if layers is None:
        return look
    codes = ", ".join(f"{code} {name}" for code, name in enumerate(VERDICTS))
    summary = {
        f"verdict ({codes})": ["Multiline", [r"^lyapunov/verdict$"]],
        "layers the input reaches (all of them: nothing collapsed)": ["Multiline", [r"^lyapunov/input_depth$"]],
        "exponent per layer of the input-dependent part (slope of the centred log-norm, typical sample)":
            ["Multiline", [r"^lyapunov/centred_exponent$"]],
        "the plan's exponent per layer (its drift / layers)": ["Multiline", [r"^lyapunov/predicted/exponent$"]],
        "exponent per layer of h, biases included (slope of the log-norm, typical sample)":
            ["Multiline", [r"^lyapunov/exponent_estimate$"]],
    }
    for reduce, key, title in _SUMMARY:
        if key != "dead_fraction" or relu_layers is None or relu_layers:
            summary[title] = ["Multiline", [rf"^lyapunov/{reduce}/{key}$"]]
    categories = {"lyapunov: verdict and summary (one line per run)": summary, **look}
    for name in layers:
        escaped = _regex(name)
        charts = {}
        for title, keys in _LAYER_CHARTS:
            if keys == ("dead_fraction",) and relu_layers is not None and name not in relu_layers:
                continue
            charts[f"{title} [{name}]"] = ["Multiline", [rf"^lyapunov/{key}/{escaped}$" for key in keys]]
        categories[f"lyapunov: layer {name}"] = charts
    return categories


def _regex(name: str) -> str:
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in name)


def figure_due(epoch: int) -> bool:
    """Depth figures and histograms at the end of epochs 1, 2, 4, 8, ... (``epoch`` counts from 0)."""
    return (epoch + 1) & epoch == 0


#: The share of a run's wall time the depth figures may take (rendering the four panels takes ~0.3 s).
FIGURE_SHARE = 0.02


class FigureBudget:
    """When a depth figure may be rendered: while the seconds spent rendering them, the next one and
    the final one included (each estimated as the last one's), stay within ``share`` of the seconds
    since :meth:`start` (``share >= 1``: always). The writers always render the first measured step's
    and the final one (the first at the end if not before), so a run shorter than ~30 s shows those two; a 10-minute run one every ~15 s of training at most.
    ``clock``: seconds.

    Example::

        budget = FigureBudget(share=0.02)
        budget.start()
        if budget.allows():
            with budget.timed():
                ...  # render
    """

    def __init__(self, share: float = FIGURE_SHARE, clock: Callable[[], float] = time.perf_counter,
                 estimate: float = 0.3) -> None:
        if not share > 0:
            raise ValueError(f"share={share!r} must be > 0 (the share of the wall time figures may take)")
        self.share, self.clock, self.estimate = share, clock, estimate
        self.spent = 0.0
        self.began: float | None = None

    def start(self) -> None:
        """Start the run's clock (once: later calls change nothing)."""
        if self.began is None:
            self.began = self.clock()

    def allows(self) -> bool:
        """Whether a figure rendered now stays within the budget."""
        self.start()
        return self.share >= 1 or self.spent + 2 * self.estimate <= self.share * (self.clock() - self.began)

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Count the time of the block as spent on figures (and as the next one's estimate)."""
        self.start()
        begin = self.clock()
        try:
            yield
        finally:
            self.estimate = self.clock() - begin
            self.spent += self.estimate


#: The depth profile's panels, in order: TensorBoard's tag ``lyapunov/depth/<panel>`` for each.
PANELS = ("1_signal", "2_share", "3_variance", "4_kurtosis")


def depth_figure(stats: SignalStats, plan: Any, title: str):
    """The depth profile: four panels against the layers (named on the axis), each with its theory,
    in one 1280 x 800 figure (:func:`depth_figures` gives each panel a figure of its own).

    1. The signal: the centred log-norm (the input-dependent part, typical sample), the log-norm of
       ``h`` (biases included) and its log root-mean-square, the plan's line with its +-2 sqrt(l) s band;
       the collapsed tail shaded.
    2. The input-dependent share of the root-mean-square, with the collapse threshold.
    3. The empirical variance with theory's ``exp(2 x predicted drift)`` (a caption explains a
       calibrated net's level).
    4. The kurtosis with the recursion of the vanishing-empirical-variance paper (a note says where its
       line leaves the plot).

    Returns a matplotlib figure (not pyplot's: nothing to close), or None without matplotlib.
    """
    matplotlib = _matplotlib()
    if matplotlib is None:
        return None
    figure = _figure((16, 10), dpi=80)
    axes = figure.subplots(2, 2, sharex=True)
    figure.suptitle(title, fontsize=14)
    _draw_panels(list(axes.flat), stats, plan)
    for axis in axes[0]:
        axis.tick_params(labelbottom=False)
    figure.subplots_adjust(left=0.05, right=0.99, top=0.92, bottom=0.16, wspace=0.12, hspace=0.25)
    return figure


def depth_figures(stats: SignalStats, plan: Any, title: str) -> dict[str, Any]:
    """The panels of :func:`depth_figure`, one 800 x 560 figure each with large type, keyed by
    :data:`PANELS`: what TensorBoard shows (a card of the IMAGES tab is about 350 pixels wide, where one
    panel stays readable and four do not; the cards of one panel line the runs up side by side).
    Empty without matplotlib. :func:`png` encodes them."""
    matplotlib = _matplotlib()
    if matplotlib is None:
        return {}
    figures = {}
    with matplotlib.rc_context({"font.size": 14, "axes.titlesize": 16, "legend.fontsize": 12}):
        for panel in PANELS:
            figure = _figure((8, 5.6), dpi=100)
            figure.suptitle(title, fontsize=11)
            figures[panel] = (figure, figure.subplots())
        _draw_panels([axis for _, axis in figures.values()], stats, plan, fontsize=12, legend="best")
        for figure, _ in figures.values():
            figure.subplots_adjust(left=0.14, right=0.98, top=0.86, bottom=0.2)
    return {panel: figure for panel, (figure, _) in figures.items()}


def png(figure: Any) -> tuple[bytes, int, int]:
    """``figure`` drawn (Agg) and encoded as an RGB PNG: ``(bytes, width, height)``, the pixels
    ``SummaryWriter.add_figure`` writes, without its float copies of the image and its same-size resize."""
    from PIL import Image

    canvas = figure.canvas
    canvas.draw()
    width, height = canvas.get_width_height()
    image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    encoded = io.BytesIO()
    image.save(encoded, format="PNG", compress_level=_PNG_LEVEL)
    return encoded.getvalue(), width, height


#: zlib level of the PNGs: 1 encodes a panel in 9 ms instead of 13 (Pillow's default, 6), and these
#: plots come out no larger (82 KB).
_PNG_LEVEL = 1


def _matplotlib():
    """matplotlib, or None where it does not import (it is optional: the dev extra). Figures are made
    without pyplot (no global state, no backend switched, nothing to close)."""
    try:
        import matplotlib
        from matplotlib.backends import backend_agg  # noqa: F401 - the canvas of every figure
    except Exception:  # noqa: BLE001 - matplotlib is optional (the dev extra)
        return None
    return matplotlib


def _figure(size: tuple[float, float], dpi: int) -> Any:
    """A matplotlib ``Figure`` on an Agg canvas, outside pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _draw_panels(axes: list[Any], stats: SignalStats, plan: Any, fontsize: int = 9, legend: str = "lower left") -> None:
    """The four panels on ``axes`` (signal, share, variance, kurtosis), the layers named below each."""
    table = stats.as_dict()
    column = {key: np.array([table[key][n] for n in stats.names]) for key in STAT_KEYS}
    depth = np.arange(len(stats.names))
    _signal_panel(axes[0], depth, column, stats, plan)
    _share_panel(axes[1], depth, column, stats)
    _variance_panel(axes[2], depth, column, plan)
    _kurtosis_panel(axes[3], depth, column, stats, plan)
    ticks = _ticks(len(stats.names))
    from matplotlib.ticker import NullFormatter

    for axis in axes:
        axis.yaxis.set_minor_formatter(NullFormatter())  # log axes: no minor labels (mathtext costs the most)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=fontsize, loc=legend)
        axis.set_xticks(ticks, [stats.names[i] for i in ticks], rotation=60, ha="right", fontsize=fontsize - 1)


def predicted_band(plan: Any) -> np.ndarray:
    """Half-width of the plan's band around its line, per layer: ``2 sqrt(sum_{k=1..l} s_k^2)`` of the
    per-layer variances (0 at the first layer, where the line starts on the measured mean). For a plan
    by the scale chain (activations that are not Leaky ReLUs) the variances are the chain's growth of
    the log-norm's variance, so this is ``2 sqrt(std_l^2 - std_0^2)`` of
    :func:`~lightning_lyapunov.chain_theory.predict_chain`."""
    variances = np.array([layer.init.variance for layer in plan.layers], dtype=float)
    return 2.0 * np.sqrt(np.concatenate([[0.0], np.cumsum(variances[1:])]))


def _ticks(count: int, most: int = 15) -> list[int]:
    """At most ``most`` layer positions to name on the axis, the first and last included."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def _shade_collapse(axis: Any, stats: SignalStats) -> None:
    start = stats.collapsed_from
    if start is not None:
        axis.axvspan(start - 0.5, len(stats.names) - 0.5, color="tab:red", alpha=0.08,
                     label=f"collapsed from {stats.names[start]!r}")


def _signal_panel(axis: Any, depth: np.ndarray, column: dict[str, np.ndarray], stats: SignalStats, plan: Any) -> None:
    centred = column["centred_log_norm_mean"]
    shown = np.where(np.isfinite(centred), centred, np.nan)  # -inf: every sample alike, nothing to draw
    axis.errorbar(depth, shown, yerr=column["centred_log_norm_std"], fmt="o-", ms=4, lw=2, color="tab:blue",
                  label="centred log-norm: h - batch mean, typical sample (batch mean +- std)")
    axis.plot(depth, column["log_norm_mean"], "s-", ms=3, lw=1, color="tab:orange",
              label="log-norm of h, typical sample (biases included)")
    axis.plot(depth, column["log_rms"], ":", lw=1.5, color="tab:gray", label="log root-mean-square of h")
    line = predicted_log_norm(stats, plan)
    if line is not None:
        band = predicted_band(plan)
        calibrated = getattr(plan, "calibration", None) is not None
        axis.plot(depth, line, "k--", label="plan: log-gains measured at calibration" if calibrated
                  else "plan: sum of theory's exponents")
        if not calibrated:  # a calibration measured this draw's gains: theory's spread between draws is moot
            axis.fill_between(depth, line - band, line + band, color="k", alpha=0.1, label="plan +-2 sqrt(l) s")
    _shade_collapse(axis, stats)
    axis.set(title="signal per layer: log(||x|| / sqrt(d))", ylabel="log-norm")


def _share_panel(axis: Any, depth: np.ndarray, column: dict[str, np.ndarray], stats: SignalStats) -> None:
    share = column["input_share"]
    axis.semilogy(depth, np.where(share > 0, share, np.nan), "o-", ms=4, color="tab:blue",
                  label="input-dependent share: sqrt(empirical variance / mean square)")
    common = np.sqrt(np.clip(1.0 - share**2, 0.0, None))
    axis.semilogy(depth, np.where(common > 0, common, np.nan), "s-", ms=3, lw=1, color="tab:orange",
                  label="share of the batch mean (the part every sample shares, biases)")
    axis.axhline(COLLAPSED_SHARE, color="tab:red", ls=":", label=f"collapsed below {COLLAPSED_SHARE:g}")
    _shade_collapse(axis, stats)
    axis.set(title="what the root-mean-square of h is made of", ylabel="share", ylim=(None, 1.5))


def _variance_panel(axis: Any, depth: np.ndarray, column: dict[str, np.ndarray], plan: Any) -> None:
    variance = column["emp_var_mean"]
    positive = np.where(variance > 0, variance, np.nan)
    axis.semilogy(depth, positive, "o-", ms=4, label="measured: mean over units of the variance over the batch")
    collapsed = column["emp_var_collapsed"] >= 0.5
    if collapsed.any():
        axis.semilogy(depth[collapsed], positive[collapsed], "rx", ms=8,
                      label="half of the units below 1e-3 of the mean square")
    line = None
    if plan is not None and len(plan.layers) == len(depth) and None not in plan.layer_log_gains:
        gains = np.array(plan.layer_log_gains, dtype=float)
        line = np.concatenate([[0.0], np.cumsum(gains[1:])])
    if line is not None and np.isfinite(positive[0]):
        axis.semilogy(depth, positive[0] * np.exp(2.0 * line), "k--", label="theory: first layer x exp(2 x predicted drift)")
    if getattr(plan, "calibration", None) is not None:
        share = column["input_share"][1:]
        share = share[np.isfinite(share)]
        level = float(np.median(share**2)) if share.size else math.nan
        # a note in the legend: placed with it, away from the data
        axis.plot([], [], " ", label="calibrated: every layer's mean square is 1 = empirical variance +\n"
                  f"squared batch mean; the variance, the input-dependent part, is\na median {level:.2g} of it here "
                  "(the rest is the batch mean)")
    axis.set(title="empirical variance over the batch", ylabel="variance")


def _kurtosis_panel(axis: Any, depth: np.ndarray, column: dict[str, np.ndarray], stats: SignalStats, plan: Any) -> None:
    from lightning_lyapunov import theory

    median = column["kurtosis_median"]
    axis.semilogy(depth, median, "o-", ms=4, label="measured: median over units")
    axis.semilogy(depth, column["kurtosis_pooled"], "s-", ms=2, alpha=0.5, label="measured: pooled")
    batch = next((v.size for v in stats.log_norms.values() if v.size), 0)
    if batch > 1:
        axis.axhline(batch, color="gray", ls=":", label=f"largest measurable over a batch of {batch}")
    measured = median[np.isfinite(median)]
    top = 10.0 * max(float(measured.max()) if measured.size else 3.0, batch, 3.0)
    exact = plan is not None and any(getattr(layer, "activation", None) is not None for layer in plan.layers)
    if exact:  # the recursion is the Leaky ReLU's: say so rather than draw it for GELU, tanh, ...
        axis.plot([], [], " ", label="no kurtosis recursion for activations that are not Leaky ReLUs")
    elif plan is not None and len(plan.layers) == len(depth) and len(depth) > 1:
        start = median[0] if np.isfinite(median[0]) and median[0] >= 1 else 3.0
        widths = [layer.d_out for layer in plan.layers[:-1]]
        slopes = [layer.negative_slope for layer in plan.layers[:-1]]
        predicted = theory.kurtosis_by_depth(widths, slopes, initial_kurtosis=start)
        axis.semilogy(depth, predicted, "k--", label="theory: over random Gaussian weights (recursion)")
        above = np.flatnonzero(predicted > top)
        if above.size:  # the batch cannot show larger values: say where the line goes (a note in the legend)
            axis.plot([], [], " ", label=f"theory leaves the plot at {stats.names[above[0]]!r}, {predicted[-1]:.2g} at the\n"
                      f"output; a batch of {batch} cannot show a kurtosis above ~{batch}")
    axis.set_ylim(top=top)
    axis.set(title="kurtosis over the batch: E(h - mean)^4 / var^2", ylabel="kurtosis")
