"""What the signal statistics mean: warnings, dashboard scalars and a closing summary, without Lightning.

:class:`SignalReport` is fed the :class:`~lightning_lyapunov.diagnostics.SignalStats` of each
measured step (from :class:`~lightning_lyapunov.SignalMonitor`, in a Lightning callback or a plain
PyTorch loop) and the plan that initialized the model. It keeps what a run needs to be judged:
the first and the latest statistics, the step at which each layer's empirical variance collapsed,
and which problems were already reported. Per step, :meth:`SignalReport.update` returns at most one
warning message (a problem not reported before): NaN/Inf activations (each layer once per run),
statistics undefined on this batch (each reason once), and at the first measured step a collapsed
empirical variance, an exponent far from the plan's, or an output scale far from the input's.
Later collapses go to :meth:`SignalReport.summary`.

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
    print(report.summary())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .dashboard import StepScalars, featured_layers
from .diagnostics import SignalStats

__all__ = ["SignalReport"]

#: At least this fraction of a layer's units collapsed: the layer counts as collapsed.
COLLAPSED_LAYER = 0.5


class SignalReport:
    """The diagnosis of one run's measured steps (module docstring).

    Args:
        plan: the :class:`~lightning_lyapunov.InitPlan` whose layers are monitored (its predictions
            are what the measurements are compared with), or None.
        layers: the layers whose statistics :meth:`scalars` logs one by one (default: the first,
            middle and last planned layer).

    Attributes:
        first: the statistics of the first measured step (the signal at initialization), or None.
        last: those of the latest measured step; ``last_step``: its step.
        collapsed: ``{layer: the first step its empirical variance collapsed}``.
    """

    def __init__(self, plan: Any, layers: Sequence[str] | None = None) -> None:
        self.plan = plan
        names = plan.layer_names if plan is not None else []
        self.layers = list(layers) if layers is not None else featured_layers(names)
        self.first: SignalStats | None = None
        self.last: SignalStats | None = None
        self.last_step: int | None = None
        self.collapsed: dict[str, int] = {}
        self._reported: set[tuple[str, str]] = set()
        self._scalars: StepScalars | None = None

    # ------------------------------------------------------------------ per step

    def update(self, stats: SignalStats, step: int) -> str | None:
        """Record one measured step; return a warning message for what it finds that is new, or None."""
        first = self.first is None
        if first:
            self.first = stats
        self.last, self.last_step = stats, step
        problems = self._nonfinite(stats)
        collapsed = [n for n, v in zip(stats.names, stats.column("emp_var_collapsed"))
                     if v >= COLLAPSED_LAYER and n not in self.collapsed]
        self.collapsed.update((n, step) for n in collapsed)
        if first:
            if collapsed:
                problems.append(
                    "the empirical variance of at least half of the units collapsed (below 1e-3 of the layer's mean "
                    f"second moment) in {layer_list(collapsed)}"
                )
            problems += [p for p in (self._exponent_problem(stats), self._scale_problem(stats)) if p]
        problems += self._undefined(stats)
        if not problems:
            return None
        body = f" {problems[0]}" if len(problems) == 1 else "".join(f"\n  - {p}" for p in problems)
        return f"at step {step}:{body}"

    def scalars(self, stats: SignalStats) -> dict[str, float]:
        """The dashboard's scalars of one measured step (:mod:`lightning_lyapunov.dashboard`)."""
        if self._scalars is None or self._scalars.names != tuple(stats.names):
            self._scalars = StepScalars(self.plan, stats.names, self.layers)
        return self._scalars(stats)

    def _nonfinite(self, stats: SignalStats) -> list[str]:
        layers = [n for n, v in zip(stats.names, stats.column("nonfinite")) if v > 0 and (n, "nonfinite") not in self._reported]
        self._reported.update((n, "nonfinite") for n in layers)
        if not layers:
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
        measured, predicted = stats.exponent_estimate, plan.predicted_drift / depth
        # the least-squares slope of a random walk over L steps has variance ~ 1.2 s^2 / L
        tolerance = max(0.05, 4.0 * math.sqrt(1.2 * plan.predicted_spread**2 / depth**2))
        if math.isfinite(measured) and abs(measured - predicted) > tolerance:
            return (f"measured Lyapunov exponent {measured:+.3f} per layer is far from the predicted "
                    f"{predicted:+.3f} (tolerance {tolerance:.3f}): check the detected slopes in the plan")
        return None

    def _scale_problem(self, stats: SignalStats) -> str | None:
        """The output's scale against the input's at step 0, with what the plan predicts about it;
        nothing after a calibration, which set the output's scale (``calibrate_target``) on purpose."""
        gap = self.start_gap()
        plan = self.plan
        if gap is None or abs(gap) <= math.log(10.0) or plan.calibration is not None:
            return None
        depth = len(plan.layers)
        message = (f"the output's scale is {math.exp(gap):.3g} times the input's (mean log-norm "
                   f"{gap:+.1f} from the first layer's input to the last layer's output), so "
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
            f"random draws (L = {depth} layers). To start at the input's scale, use the calibrated mode "
            "(LyapunovInit(calibrate='output') or 'layers': rescaled on the first training batch) or keep the best of "
            "several draws (sampled=True)"
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
        """The closing summary: ``initialized`` (what was done to the weights), the measured exponent
        against the plan's at the first and last measured step, the output's scale at the first, and
        the layers whose empirical variance collapsed (and when)."""
        plan = self.plan
        lines = [f"LyapunovInit summary: {initialized}" if initialized else "signal summary:"]
        if self.first is None:
            return lines[0]
        exponents = plan.layer_log_gains if plan is not None else [None]
        predicted = signed(sum(exponents) / len(exponents)) if None not in exponents else "n/a"
        measured = f"{signed(self.first.exponent_estimate)} at the first measured step"
        if self.last is not self.first:
            measured += f", {signed(self.last.exponent_estimate)} at step {self.last_step}"
        lines.append(f"  exponent per layer: plan {predicted}; measured {measured}")
        gap = self.start_gap()
        if gap is not None:
            lines.append(f"  output scale at the first measured step: {math.exp(gap):.3g} x the input's")
        if self.collapsed:
            by_step: dict[int, list[str]] = {}
            for name, step in self.collapsed.items():
                by_step.setdefault(step, []).append(name)
            steps = "; ".join(f"step {step}: {layer_list(names)}" for step, names in sorted(by_step.items()))
            lines.append(f"  empirical variance collapsed in {len(self.collapsed)} of {len(self.first.names)} "
                         f"layers ({steps})")
        else:
            lines.append("  empirical variance: no layer collapsed")
        return "\n".join(lines)


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
