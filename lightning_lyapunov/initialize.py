"""The initialization engine: plan, draw or select, write, calibrate, in one all-or-nothing scope.

:func:`initialize_` is the one place that strings the stages together; :func:`apply_init`,
:func:`sample_lyapunov_`, the :class:`~lightning_lyapunov.LyapunovInit` callback and the benchmarks
call it:

1. **plan** (:func:`~lightning_lyapunov.plan_init`): the layers, their activations (observed on
   ``example_input`` when given) and theory's scale per layer; every setting validated first
   (:class:`~lightning_lyapunov.InitSpec`);
2. **draw** (:meth:`InitPlan.draw`, on the CPU from one generator) or, with ``sampled=``, **select**
   the best of ``K`` draws on the batch (:func:`lightning_lyapunov.sampling.select_`);
3. **write** every weight and zero the planned biases;
4. **calibrate** on the batch (:func:`lightning_lyapunov.calibration.calibrate_`), when the spec
   asks for it. An ``"auto"`` calibration is optional: without a batch it is skipped, and when the
   batch cannot calibrate the draw (an all-zero input, non-finite outputs, a layer it never
   reaches) the draw is kept, with a warning that says why.

On any error (``KeyboardInterrupt`` included) every weight, every planned bias and the generator's
state are as before: one :meth:`InitPlan.restoring` scope around stages 2-4. What was applied is
recorded on the plan that is returned: ``plan.sampling`` and ``plan.calibration``;
:func:`measured_state` gives them as plain Python values (a checkpoint's callback state) and
:func:`restore_measured` puts them back on a plan of the same layers (a resumed run).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from ._checks import check_bool
from ._forward import Forward, InputShapeError
from ._warn import LyapunovWarning
from .calibration import CalibrationResult, calibrate_
from .plan import InitPlan, check_cpu_generator
from .sampling import SamplingReport, default_probe, select_
from .settings import InitSpec
from .surgery import plan_init, spec_of

__all__ = ["apply_init", "initialize_", "measured_state", "redraw_", "restore_measured", "sample_lyapunov_"]


def initialize_(
    model: nn.Module,
    spec: InitSpec,
    *,
    example_input: Any = None,
    forward: Forward | None = None,
    generator: torch.Generator | None = None,
) -> InitPlan:
    """Initialize ``model`` in place as ``spec`` says (module docstring) and return the applied plan.

    ``example_input``: a batch the model's forward takes (a tensor, a tuple of arguments, a dict of
    keyword arguments), or what ``forward(model, example_input)`` takes: observed to find each
    layer's activation, probed by sampling, and used to calibrate. ``generator``: a CPU
    ``torch.Generator`` (default: torch's default generator); the same state gives the same weights.

    Example::

        plan = initialize_(model, InitSpec(calibrate="layers"), example_input=x,
                           generator=torch.Generator().manual_seed(0))
    """
    _check_batch(spec, example_input, generator)
    plan = plan_init(model, spec, example_input=example_input, forward=forward)
    with plan.restoring(generator):
        _draw(model, plan, example_input, forward, generator)
    return plan


def redraw_(
    model: nn.Module,
    plan: InitPlan,
    *,
    example_input: Any = None,
    forward: Forward | None = None,
    generator: torch.Generator | None = None,
) -> InitPlan:
    """Apply ``plan`` (made for ``model``) again with a new draw: stages 2-4 of :func:`initialize_`
    without planning again, all or nothing. Returns a copy of ``plan`` whose ``sampling`` and
    ``calibration`` record this draw (``plan`` itself is unchanged); the look-ahead draws its
    candidates this way.

    Example::

        plan = initialize_(model, InitSpec(calibrate="layers"), example_input=x, generator=gen(0))
        other = redraw_(model, plan, example_input=x, generator=gen(1))   # a second calibrated draw
    """
    _check_batch(plan.spec, example_input, generator)
    drawn = replace(plan, warnings=list(plan.warnings), sampling=None, calibration=None)
    with drawn.restoring(generator):
        _draw(model, drawn, example_input, forward, generator)
    return drawn


def _check_batch(spec: InitSpec, example_input: Any, generator: torch.Generator | None) -> None:
    check_cpu_generator(generator)
    if spec.calibration_method is not None and not spec.calibration_optional and example_input is None:
        raise ValueError(f"calibrate={spec.calibrate!r} needs example_input= (a batch of real inputs); "
                         "pass one, or calibrate=None")


def _draw(model: nn.Module, plan: InitPlan, example_input: Any, forward: Forward | None,
          generator: torch.Generator | None) -> None:
    """Stages 2-4: draw or select, write, calibrate (inside the caller's restoring scope)."""
    spec = plan.spec
    if spec.sampling is not None:
        probe = default_probe(plan, generator) if example_input is None else example_input
        plan.sampling = select_(model, plan, probe, forward=forward, layerwise=spec.sampling == "layerwise",
                                candidates=spec.candidates, generator=generator)
    else:
        plan.write(plan.draw(generator))
    if spec.calibration_method is not None and example_input is not None:
        _calibrate(model, plan, example_input, forward)


def _calibrate(model: nn.Module, plan: InitPlan, example_input: Any, forward: Forward | None) -> None:
    """Calibrate the drawn plan; an optional (``"auto"``) calibration that the batch cannot do keeps
    the draw (``calibrate_`` has put its own writes back) and says why."""
    spec = plan.spec
    try:
        calibrate_(model, plan, example_input, spec.calibration_method, spec.calibrate_target, forward,
                   spec.stream_growth)
    except ValueError as error:
        if not spec.calibration_optional:
            raise
        message = f"calibrate='auto' skipped, theory's draw kept: {error}"
        plan.warnings.append(message)
        warnings.warn(message, LyapunovWarning, stacklevel=4)


def apply_init(
    model: nn.Module,
    spec: InitSpec | None = None,
    *,
    example_input: Any = None,
    forward: Forward | None = None,
    generator: torch.Generator | None = None,
    **settings: Any,
) -> InitPlan:
    """Initialize ``model`` in place and return the plan applied (``print(plan)`` shows a table).

    ``spec`` and ``settings``: as :func:`~lightning_lyapunov.plan_init` (``scheme=``,
    ``distribution=``, ``negative_slope=``, ``sampled=``, ``calibrate=``, ...). All-or-nothing:
    every setting is validated and every new weight drawn (on the CPU, in plan order, from
    ``generator``, or torch's default CPU generator) before any parameter is written, and what is
    written over is copied first: on any error (``KeyboardInterrupt`` included) every weight, bias
    and the generator's state are as before. The same seed or generator state gives bit-identical
    weights on every device. Biases of planned layers are set to 0.

    ``example_input``/``forward``: a real batch, observed to find each layer's activation (see
    :func:`~lightning_lyapunov.plan_init`); ``sampled=`` selects among candidate draws on it
    (standard normal inputs without one, for a first Linear layer); ``calibrate="layers"`` or
    ``"output"`` rescales the drawn weights on it: ``"layers"``: each layer's output to
    root-mean-square 1 in forward order (the last to ``calibrate_target``); ``"output"``: one
    factor ``c^{1/L}`` on every layer so that the output's root-mean-square is ``calibrate_target``
    (:mod:`lightning_lyapunov.calibration`). ``plan.calibration`` records each layer's factor and
    its log-gain measured after calibration; ``plan.sampling`` the candidates' scores.

    Formula (Lyapunov scheme, Gaussian weights): ``sigma = sqrt(d_out / d_in) exp(-1/2 E log Q_{d_out,a})``,
    the scale at which the expected log-norm ``E log(||x|| / sqrt(d))`` neither grows nor shrinks.

    Example::

        model = nn.Sequential(*[m for _ in range(50) for m in (nn.Linear(4, 4), nn.LeakyReLU(0.1))])
        plan = apply_init(model, scheme="lyapunov", generator=torch.Generator().manual_seed(0))
        plan.predicted_drift  # ~0: the log-norm neither grows nor shrinks with depth
    """
    return initialize_(model, spec_of(spec, settings), example_input=example_input, forward=forward,
                       generator=generator)


def sample_lyapunov_(
    model: nn.Module,
    probe: Any = None,
    *,
    layerwise: bool = False,
    candidates: int | None = None,
    forward: Forward | None = None,
    generator: torch.Generator | None = None,
    **settings: Any,
) -> InitPlan:
    """Sampled Lyapunov init: ``apply_init(model, sampled="network" or "layerwise", example_input=probe, ...)``.

    Keeps the best of ``candidates`` (default ``ceil(2 sqrt(L))``) draws, the one whose batch-mean
    log-gain ``mean_b (log r(output_b) - log r(input_b))`` on ``probe`` is closest to 0
    (:mod:`lightning_lyapunov.sampling`); ``probe=None``: 64 standard normal inputs (first layer
    Linear). ``plan.sampling`` holds the scores.

    Example::

        model = nn.Sequential(*[m for _ in range(40) for m in (nn.Linear(4, 4), nn.LeakyReLU(0.1))])
        plan = sample_lyapunov_(model, generator=torch.Generator().manual_seed(0))
        plan.sampling.chosen_score <= plan.sampling.median_score   # True
    """
    sampled = "layerwise" if check_bool("layerwise", layerwise) else "network"
    try:
        return apply_init(model, sampled=sampled, candidates=candidates, example_input=probe, forward=forward,
                          generator=generator, **settings)
    except InputShapeError as error:  # the batch is this function's probe=
        raise error.renamed("probe") from None


def measured_state(plan: InitPlan) -> dict[str, Any]:
    """What applying ``plan`` measured, as plain Python values (``torch.load(..., weights_only=True)``
    reads them back): the planned layers' names, ``plan.calibration`` and ``plan.sampling`` as dicts
    (None when not applied).

    Example::

        state = measured_state(apply_init(model, example_input=x, calibrate="layers"))
        state["calibration"]["factors"]   # one float per planned layer
    """
    return {
        "layers": list(plan.layer_names),
        "calibration": None if plan.calibration is None else asdict(plan.calibration),
        "sampling": None if plan.sampling is None else asdict(plan.sampling),
    }


def restore_measured(plan: InitPlan, state: dict[str, Any]) -> str | None:
    """Put what :func:`measured_state` recorded back on ``plan`` (``plan.calibration``,
    ``plan.sampling``), so that its predictions are the measured ones again. A state of other layers
    (another model) changes nothing: the returned message says why; None when restored (or when the
    state holds no measurement, as a checkpoint written before it was recorded).

    Example::

        plan = plan_init(model)                       # a resumed run: planned, not applied
        restore_measured(plan, measured_state(applied))
        plan.predicted_drift                          # the calibration's measured drift again
    """
    if "layers" not in state:
        return None
    if list(state["layers"]) != plan.layer_names:
        return (f"the checkpoint's calibration was measured on other layers ({len(state['layers'])} layers, "
                f"{len(plan.layer_names)} planned here), so it is not restored: the "
                "predictions are theory's")
    calibration, sampling = state.get("calibration"), state.get("sampling")
    plan.calibration = None if calibration is None else CalibrationResult(**calibration)
    plan.sampling = None if sampling is None else SamplingReport(**sampling)
    return None
