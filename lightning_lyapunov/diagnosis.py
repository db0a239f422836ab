"""What the signal statistics mean: a verdict, warnings, dashboard scalars and a closing summary, without Lightning.

:func:`verdict` judges one measured step (:class:`~lightning_lyapunov.diagnostics.SignalStats`) in
the words of :data:`~lightning_lyapunov.dashboard.VERDICTS`, checked in this order:

- ``NaN/Inf``: a layer's activations hold NaN/Inf;
- ``collapsed``: from some layer to the last one the input-dependent part is below
  :data:`~lightning_lyapunov.diagnostics.COLLAPSED_SHARE` of the root-mean-square
  (``SignalStats.collapsed_from``): the output no longer depends on the input, the batch mean
  (what the biases carry) is all that is left;
- ``vanishing`` / ``exploding``: the input-dependent part shrinks / grows by more than a factor
  :data:`DRIFT_LIMIT` from the first layer to the last (the centred exponent times the layers it spans);
- ``dead units``: at least half of the units of a layer followed by a ReLU-like activation (slope 0)
  are dead (``<= 0`` for the whole batch);
- ``healthy`` otherwise.

:class:`SignalReport` is fed the statistics of each measured step (from
:class:`~lightning_lyapunov.SignalMonitor`, in a Lightning callback or a plain PyTorch loop) and the
plan that initialized the model. It keeps what a run needs to be judged: the first and the latest
statistics, each step's verdict where it changed, the step at which each layer collapsed, and which
problems were already reported. Per step, :meth:`SignalReport.update` returns at most one warning
message (the problems not reported before): a verdict other than ``healthy`` (each kind once per
run), NaN/Inf activations (each layer once), statistics undefined on this batch (each reason once),
and at the first measured step an exponent far from the plan's or an output scale far from the
input's. :meth:`SignalReport.summary` closes the run.

Example::

    monitor, report = SignalMonitor(model, plan.layer_names, measure_input=True), SignalReport(plan)
    for step, (x, y) in enumerate(loader):
        monitor.active = step % 50 == 0
        loss = loss_fn(model(x), y); loss.backward(); optimizer.step(); optimizer.zero_grad()
        if monitor.active:
            message = report.update(monitor.compute(), step)
            if message:
                warnings.warn(message, LyapunovWarning)
            monitor.reset()
    print(report.summary())      # report.verdict: the latest step's verdict
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .dashboard import VERDICTS, StepScalars, featured_layers, plan_exponent
from .diagnostics import COLLAPSED_SHARE, SignalStats

__all__ = ["SignalReport", "Verdict", "verdict"]

#: The input-dependent part shrinking or growing by more than this factor over the depth is vanishing /
#: exploding: far enough outside what a trainable net shows (calibrated nets: within e^+-2) to read at a glance.
DRIFT_LIMIT = 100.0
#: At least this fraction of a ReLU layer's units dead: the verdict says dead units.
DEAD_LAYER = 0.5
#: A typical sample below this fraction of the root-mean-square: a few samples carry the signal.
HEAVY_TAIL = 0.1


@dataclass(frozen=True)
class Verdict:
    """One measured step's verdict: ``label`` (one of :data:`~lightning_lyapunov.dashboard.VERDICTS`),
    where it starts (``layer``, ``index`` in the plan's layers, for ``collapsed``, ``NaN/Inf`` and
    ``dead units``) and ``detail``, one sentence saying why. ``str(verdict)``: ``collapsed from layer
    'net.24' (#12)``; ``code``: its number in ``lyapunov/verdict`` (0 healthy ... 5 NaN/Inf)."""

    label: str
    detail: str = ""
    layer: str | None = None
    index: int | None = None

    @property
    def code(self) -> int:
        return VERDICTS.index(self.label)

    def __str__(self) -> str:
        return self.label if self.layer is None else f"{self.label} from layer {self.layer!r} (#{self.index})"


def verdict(stats: SignalStats, slopes: Sequence[float] | None = None) -> Verdict:
    """The verdict of one measured step (module docstring). ``slopes``: the activation slope after each
    layer (the plan's); a layer can have dead units only where it is 0 (None: no layer, since a unit
    that is negative for the whole batch before a Leaky ReLU still passes its signal)."""
    names = stats.names
    nonfinite = [i for i, v in enumerate(stats.column("nonfinite")) if v > 0]
    if nonfinite:
        i = nonfinite[0]
        return Verdict("NaN/Inf", "NaN/Inf activations: lower the learning rate or check the inputs", names[i], i)
    start = stats.collapsed_from
    if start is not None:
        return Verdict("collapsed", f"down to the output the input-dependent part is below {COLLAPSED_SHARE:g} of the "
                       "root-mean-square: the output no longer depends on the input, the batch mean (what the biases "
                       "carry) is all that is left", names[start], start)
    exponent, what = stats.centred_exponent, "input-dependent part (centred log-norm)"
    if not math.isfinite(exponent):  # a batch of one sample: no centred part; the log-norm of h
        exponent, what = stats.exponent_estimate, "log-norm of h"
    drift = exponent * (len(names) - 1) if math.isfinite(exponent) else math.nan
    spanned = f"over {len(names)} layers ({signed(exponent)} per layer)"
    if drift < -math.log(DRIFT_LIMIT):
        return Verdict("vanishing", f"the {what} shrinks by e^{drift:+.1f} {spanned}")
    if drift > math.log(DRIFT_LIMIT):
        return Verdict("exploding", f"the {what} grows by e^{drift:+.1f} {spanned}")
    can_die = slopes if slopes is not None and len(slopes) == len(names) else [1.0] * len(names)
    dead = [i for i, (v, a) in enumerate(zip(stats.column("dead_fraction"), can_die)) if a == 0.0 and v >= DEAD_LAYER]
    if dead:
        return Verdict("dead units", f"at least half of the units are dead (<= 0 for the whole batch) in "
                       f"{layer_list([names[i] for i in dead])}", names[dead[0]], dead[0])
    changes = f", changes by e^{drift:+.1f} {spanned}" if math.isfinite(drift) else ""
    return Verdict("healthy", f"the {what} reaches the output{changes}")


#: how to start at the input's scale, the advice of a large or small output at step 0
RESCALE_FIX = ("To start at the input's scale, use the calibrated mode (LyapunovInit(calibrate='output') or 'layers': "
               "rescaled on the first training batch) or keep the best of several draws (sampled=True)")


class SignalReport:
    """The diagnosis of one run's measured steps (module docstring).

    Args:
        plan: the :class:`~lightning_lyapunov.InitPlan` whose layers are monitored (its predictions
            are what the measurements are compared with, its slopes say where units can die), or None.
        layers: the layers whose statistics :meth:`scalars` logs one by one (default: the first,
            middle and last planned layer).
        rescale_fix: the advice when the output starts far from the input's scale (default
            :data:`RESCALE_FIX`: calibrate, or sample among draws).

    Attributes:
        first: the statistics of the first measured step (the signal at initialization), or None.
        last: those of the latest measured step; ``last_step``: its step.
        verdict: the latest measured step's :class:`Verdict` (None before the first).
        verdicts: ``[(step, verdict)]`` at the first measured step and wherever the verdict's label changed
            (``collapsed`` from one layer, then from another, is one entry).
        collapsed: ``{layer: the first step it was in the collapsed tail}`` (its input-dependent part
            below ``COLLAPSED_SHARE`` of the root-mean-square, down to the output).
    """

    def __init__(self, plan: Any, layers: Sequence[str] | None = None, rescale_fix: str | None = None) -> None:
        self.plan = plan
        self.rescale_fix = rescale_fix or RESCALE_FIX
        names = plan.layer_names if plan is not None else []
        self.layers = list(layers) if layers is not None else featured_layers(names)
        self.first: SignalStats | None = None
        self.last: SignalStats | None = None
        self.last_step: int | None = None
        self.verdict: Verdict | None = None
        self.verdicts: list[tuple[int, Verdict]] = []
        self.collapsed: dict[str, int] = {}
        self._slopes = [layer.negative_slope for layer in plan.layers] if plan is not None else None
        self._reported: set[tuple[str, str]] = set()
        self._scalars: StepScalars | None = None

    # ------------------------------------------------------------------ per step

    def judge(self, stats: SignalStats) -> Verdict:
        """:func:`verdict` with the plan's slopes."""
        return verdict(stats, self._slopes)

    def update(self, stats: SignalStats, step: int) -> str | None:
        """Record one measured step; return a warning message for what it finds that is new, or None."""
        first = self.first is None
        if first:
            self.first = stats
        self.last, self.last_step = stats, step
        self.verdict = found = self.judge(stats)
        if not self.verdicts or self.verdicts[-1][1].label != found.label:
            self.verdicts.append((step, found))
        if found.label == "collapsed":
            for name in stats.names[found.index:]:
                self.collapsed.setdefault(name, step)
        problems = []
        if found.label != "healthy" and ("verdict", found.label) not in self._reported:
            self._reported.add(("verdict", found.label))
            problems.append(f"{found}: {found.detail}")
        problems += self._nonfinite(stats, reported=found.label == "NaN/Inf")
        if first:
            problems += [p for p in (self._exponent_problem(stats), self._scale_problem(stats)) if p]
        problems += self._undefined(stats)
        if not problems:
            return None
        body = f" {problems[0]}" if len(problems) == 1 else "".join(f"\n  - {p}" for p in problems)
        return f"at step {step}:{body}"

    def scalars(self, stats: SignalStats) -> dict[str, float]:
        """The dashboard's scalars of one measured step (:mod:`lightning_lyapunov.dashboard`), with
        its verdict's code (``lyapunov/verdict``)."""
        if self._scalars is None or self._scalars.names != tuple(stats.names):
            self._scalars = StepScalars(self.plan, stats.names, self.layers)
        scalars = self._scalars(stats)
        found = self.verdict if stats is self.last and self.verdict is not None else self.judge(stats)
        scalars["lyapunov/verdict"] = float(found.code)
        return scalars

    def _nonfinite(self, stats: SignalStats, reported: bool) -> list[str]:
        """NaN/Inf in layers not named before (``reported``: the verdict names the first of them)."""
        layers = [n for n, v in zip(stats.names, stats.column("nonfinite")) if v > 0 and (n, "nonfinite") not in self._reported]
        self._reported.update((n, "nonfinite") for n in layers)
        if not layers or reported and len(layers) == 1:
            return []
        return [f"NaN/Inf activations in {layer_list(layers)}: lower the learning rate or check the inputs"]

    def _undefined(self, stats: SignalStats) -> list[str]:
        """The reasons not given before why some statistics are not logged (one item for all)."""
        by_reason: dict[str, set[str]] = {}
        for key, reason in stats.undefined().items():
            by_reason.setdefault(reason, set()).add(key.split("/")[0])
        new = {reason: keys for reason, keys in by_reason.items() if ("undefined", reason) not in self._reported}
        if not new:
            return []
        self._reported.update(("undefined", reason) for reason in new)
        listed = "; ".join(f"{', '.join(sorted(keys))} ({reason})" for reason, keys in new.items())
        return [f"not logging statistics that are undefined here, rather than NaN: {listed}"]

    def _exponent_problem(self, stats: SignalStats) -> str | None:
        plan = self.plan
        if plan is None or plan.predicted_drift is None or len(plan.layers) < 4:
            return None
        depth = len(plan.layers)
        measured, predicted = stats.exponent_estimate, plan_exponent(plan)
        # the least-squares slope of a random walk over L steps has variance ~ 1.2 s^2 / L
        tolerance = max(0.05, 4.0 * math.sqrt(1.2 * plan.predicted_spread**2 / depth**2))
        if math.isfinite(measured) and abs(measured - predicted) > tolerance:
            return (f"the measured exponent per layer (slope of the log-norm's typical sample over depth) "
                    f"{measured:+.3f} is far from the plan's {predicted:+.4f} (tolerance {tolerance:.3f}): check the "
                    "detected slopes in the plan")
        return None

    def _scale_problem(self, stats: SignalStats) -> str | None:
        """The output's scale against the input's at step 0, with what the plan predicts about it;
        nothing after a calibration, which set the output's scale (``calibrate_target``) on purpose."""
        gap = self.start_gap()
        plan = self.plan
        if gap is None or abs(gap) <= math.log(10.0) or plan.calibration is not None:
            return None
        depth = len(plan.layers)
        message = (f"the output's typical sample is {math.exp(gap):.3g} times the input's (batch mean of the "
                   f"log-norm {gap:+.1f} from the first layer's input to the last layer's output), so "
                   f"{'the loss and its gradients start large' if gap > 0 else 'the output starts near 0'}. ")
        drift, spread = plan.predicted_drift, plan.predicted_spread
        if drift is not None and abs(drift) > math.log(10.0):
            return message + (f"The plan predicts this: scheme={plan.scheme!r} drifts by {drift:+.1f} over "
                              f"{depth} layers; scheme='lyapunov' keeps the log-norm's drift at 0")
        if spread is None:
            return message.rstrip()
        return message + (
            "The median log-norm is preserved, not the scale of one draw: the plan predicts that the output's scale "
            f"varies by a factor of e^(+-2 sqrt(L) s) = e^(+-{2 * spread:.1f}) ~ {math.exp(2 * spread):.0e} between "
            f"random draws (L = {depth} layers). {self.rescale_fix}"
        )

    def start_gap(self) -> float | None:
        """The first measured step's mean log-norm at the last layer's output less that of the first
        layer's input (None when either was not measured)."""
        stats = self.first
        if stats is None or self.plan is None or not stats.names:
            return None
        gap = stats.column("log_norm_mean")[-1] - stats.input_log_norm
        return gap if math.isfinite(gap) else None

    # ------------------------------------------------------------------ end of run

    def summary(self, initialized: str = "") -> str:
        """The closing summary: ``initialized`` (what was done to the weights), the verdict at the last
        measured step (and where it changed before), the exponents per layer at the first and last
        measured step against the plan's, the output at the first, and the layers that collapsed."""
        lines = [f"LyapunovInit summary: {initialized}" if initialized else "signal summary:"]
        first, last = self.first, self.last
        if first is None or self.verdict is None:
            return lines[0]
        lines.append(f"  verdict at step {self.last_step} (the last measured): {self.verdict}: {self.verdict.detail}")
        if len(self.verdicts) > 1:
            lines.append("  verdict before: " + "; ".join(f"step {step}: {found}" for step, found in self.verdicts[:-1]))
        steps = [(first, "the first measured step")] + ([(last, f"step {self.last_step}")] if last is not first else [])
        when = " / ".join(name for _, name in steps)
        centred = " / ".join(signed(stats.centred_exponent) for stats, _ in steps)
        raw = " / ".join(signed(stats.exponent_estimate) for stats, _ in steps)
        predicted = plan_exponent(self.plan)
        plan = f"; plan {predicted:+.4f} (its drift / {len(self.plan.layers)} layers)" if predicted is not None else ""
        lines.append(f"  exponent per layer, slope over depth of the typical sample's log-norm, at {when}: "
                     f"input-dependent part {centred}; h with its biases {raw}{plan}")
        lines += self._output_lines()
        if self.collapsed:
            by_step: dict[int, list[str]] = {}
            for name, step in self.collapsed.items():
                by_step.setdefault(step, []).append(name)
            steps_text = "; ".join(f"step {step}: {layer_list(names)}" for step, names in sorted(by_step.items()))
            lines.append(f"  collapsed (input-dependent part below {COLLAPSED_SHARE:g} of the root-mean-square, down "
                         f"to the output): {len(self.collapsed)} of {len(first.names)} layers ({steps_text})")
        return "\n".join(lines)

    def _output_lines(self) -> list[str]:
        """The output at the first measured step: its root-mean-square, its typical sample against the
        input's, and, when its typical sample is far below its root-mean-square, that finding."""
        stats, plan = self.first, self.plan
        log_rms, typical = stats.column("log_rms")[-1], stats.column("log_norm_mean")[-1]
        if not math.isfinite(log_rms):
            return []
        calibration = getattr(plan, "calibration", None)
        target = f" (calibrated to {calibration.target:g})" if calibration is not None else ""
        line = f"  output at the first measured step: root-mean-square {math.exp(log_rms):.3g}{target}"
        gap = self.start_gap()
        if gap is not None:
            line += f"; typical sample {math.exp(gap):.3g} x the input's typical sample"
        lines = [line]
        if math.isfinite(typical) and typical - log_rms < math.log(HEAVY_TAIL):
            lines.append(f"  finding: the output's typical sample is {math.exp(typical - log_rms):.3g} x its "
                         "root-mean-square: a few samples carry the output's signal (heavy-tailed per-sample norms)"
                         + (", which a calibration of the root-mean-square leaves as it is" if calibration else ""))
        return lines


def layer_list(names: list[str], shown: int = 5) -> str:
    """``layers 'a', 'b' and 3 more``."""
    listed = ", ".join(repr(name) for name in names[:shown])
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"layer{'s' if len(names) > 1 else ''} {listed}{more}"


def signed(value: float) -> str:
    """``+0.012``; ``+0.000`` rather than ``-0.000``; ``n/a`` for NaN (e.g. a one-layer model)."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f}" if abs(value) >= 5e-4 else "+0.000"
