"""Data calibration after the draw: rescale the planned layers on one real batch.

Theory's draw (Lyapunov: zero drift of ``E log r``) fixes the *expected* log-gain, but one network
of depth ``L`` still has ``log r(output) - log r(input) ~ N(0, L s^2)``: a width-2 net of 40 layers
may start with its output ``e^{+-7}`` times too large or too small. A calibration measures the
forward pass on an example batch and multiplies each planned layer's weight by a positive factor:

* ``"layers"`` (LSUV-style, on theory's draw instead of LSUV's unit orthogonal one): in forward
  order, layer ``l``'s output (its pre-activation) is rescaled to root-mean-square ``1``; the last
  planned layer's to ``target``.
* ``"output"``: one factor ``c`` spread evenly, every layer times ``c^{1/L}``, so that the
  output's root-mean-square is ``target`` (the output: the last planned layer's, whatever the
  forward itself returns); a few Newton passes on ``log c`` for networks
  that are not a positively homogeneous chain (branches, norms, biases, other activations).

With zero biases and positively homogeneous activations (ReLU, Leaky ReLU), positive per-layer
factors change the function only by their product: the two calibrations differ in the output's
scale at step 0 and in how weight magnitude is spread over the layers (which matters to Adam).
Root-mean-square ``r = sqrt(mean v^2)`` over the whole batch tensor, not the standard deviation:
with few units the batch mean of a unit is part of its signal.

The passes run in eval mode (no dropout, BatchNorm on its running statistics) under
``torch.no_grad()``; training flags, buffers, gradients and RNG states are restored, and on any
error every planned weight is restored too (all or nothing). No random numbers are drawn,
so the result is as deterministic as the draw.

Example::

    model = nn.Sequential(*[m for _ in range(40) for m in (nn.Linear(2, 2), nn.LeakyReLU(0.1))], nn.Linear(2, 1))
    plan = apply_init(model, example_input=torch.randn(256, 2), calibrate="layers",
                      generator=torch.Generator().manual_seed(0))
    [layer.calibration for layer in plan.layers]   # the factor each weight was multiplied by
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
from torch import nn

from ._checks import check_choice, check_float
from .observe import Forward, call_forward, preserved
from .sampling import log_r

__all__ = ["CALIBRATIONS", "Calibration", "CalibrationResult", "calibrate_", "check_calibrate"]

Calibration = Literal["layers", "output"]
CALIBRATIONS: tuple[str, ...] = ("layers", "output")
_OUTPUT_PASSES = 8
_OUTPUT_TOLERANCE = 1e-4  # |log rms - log target| below which the "output" calibration stops


@dataclass
class CalibrationResult:
    """What :func:`calibrate_` did: ``factors[l]`` multiplied planned layer ``l``'s weight;
    ``log_gains[l]``: measured after calibration, ``mean_b log r(x_{l+1}) - log r(x_l)`` with
    ``x_l`` the input of layer ``l`` (its first call) and ``x_{L+1}`` the network output, ``r(v) =
    ||v|| / sqrt(numel per sample)`` (the layer with its activation; they add up to the network's
    log-gain); ``output_rms``: the
    network output's root-mean-square after calibration."""

    method: str
    target: float
    factors: list[float]
    log_gains: list[float]
    output_rms: float


def check_calibrate(calibrate: Any, target: Any = 1.0) -> None:
    """Validate ``calibrate=`` and ``calibrate_target=`` (ValueError naming the value and the fix)."""
    if calibrate is not None:
        check_choice("calibrate", calibrate, (*CALIBRATIONS, None))
    target = check_float("calibrate_target", target, minimum=0.0, low_open=True,
                         allowed="a positive finite number (the output's root-mean-square after calibration)")
    if calibrate is None and target != 1.0:
        raise ValueError(
            f"calibrate_target={target!r} is only used with calibrate='layers' or 'output': pass calibrate= too, "
            "or drop calibrate_target="
        )


def _call(model: nn.Module, example_input: Any, forward: Forward | None) -> Any:
    return forward(model, example_input) if forward is not None else call_forward(model, example_input)


def _rms(value: torch.Tensor) -> float:
    return float(value.detach().float().pow(2).mean().sqrt())


class _Stop(Exception):
    """Raised by a hook to end the forward pass once the layer of interest has run."""


@contextmanager
def _quiet(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad; training flags, buffers, gradients and RNG states restored afterwards."""
    with preserved(model), torch.no_grad():
        model.eval()
        yield


def _layer_output(model: nn.Module, module: nn.Module, name: str, example_input: Any,
                  forward: Forward | None) -> torch.Tensor:
    """Layer ``module``'s output on its first call (the forward pass stops there)."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        captured.append(output)
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        _call(model, example_input, forward)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"calibrate: layer {name!r} was not called by the forward pass on example_input; "
                         "pass forward=lambda model, batch: ... that runs it, or exclude= the layer")
    return captured[0]


def _checked(name: str, measured: float) -> float:
    if not (math.isfinite(measured) and measured > 0):
        raise ValueError(f"calibrate: the output of {name} has root-mean-square {measured!r} on example_input "
                         "(dead or non-finite); cannot rescale it. Use calibrate=None or another batch")
    return measured


def _scale(module: nn.Module, factor: float) -> None:
    module.weight.mul_(factor)


def _calibrate_layers(model, layers, example_input, forward, target) -> list[float]:
    factors = []
    for i, layer in enumerate(layers):
        goal = target if i == len(layers) - 1 else 1.0
        output = _layer_output(model, layer.module, layer.name, example_input, forward)
        factor = goal / _checked(f"layer {layer.name!r}", _rms(output))
        _scale(layer.module, factor)
        factors.append(factor)
    return factors


def _output(model, layers, example_input, forward) -> torch.Tensor:
    """The output of the last planned layer on its first call (the network's output for a chain,
    whatever the forward returns: logits, a dict, a loss from ``training_step``)."""
    last = layers[-1]
    return _layer_output(model, last.module, last.name, example_input, forward)


def _calibrate_output(model, layers, example_input, forward, target) -> list[float]:
    """Newton steps on ``t`` (every weight times ``e^t``) for ``log rms(output) = log target``; the
    slope ``d log rms / dt`` starts at ``L`` (a positively homogeneous chain) and is re-measured."""
    t, slope = 0.0, float(len(layers))
    log_rms = math.log(_checked("the model", _rms(_output(model, layers, example_input, forward))))
    for _ in range(_OUTPUT_PASSES):
        if abs(log_rms - math.log(target)) < _OUTPUT_TOLERANCE:
            break
        step = (math.log(target) - log_rms) / slope
        for layer in layers:
            _scale(layer.module, math.exp(step))
        t += step
        new = math.log(_checked("the model", _rms(_output(model, layers, example_input, forward))))
        if abs(new - log_rms) > 1e-9:
            slope = min(max((new - log_rms) / step, 0.1), 10.0 * len(layers))
        log_rms = new
    return [math.exp(t)] * len(layers)


def _measure(model, layers, example_input, forward) -> tuple[list[float], float]:
    """Per planned layer ``l``, ``mean_b log r(x_{l+1}) - log r(x_l)`` with ``x_l`` what layer ``l``
    receives on its first call (``x_{L+1}``: the network output, so the log-gains add up to the
    network's); and the output's root-mean-square."""
    inputs: dict[int, torch.Tensor] = {}

    def make_hook(i: int):
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if i not in inputs and args and isinstance(args[0], torch.Tensor):
                inputs[i] = log_r(args[0])
        return hook

    handles = [layer.module.register_forward_pre_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        output = _output(model, layers, example_input, forward)
    finally:
        for handle in handles:
            handle.remove()
    logs = [inputs.get(i) for i in range(len(layers))] + [log_r(output)]
    gains = [math.nan if a is None or b is None or a.shape != b.shape else float((b - a).mean())
             for a, b in zip(logs[:-1], logs[1:])]
    return gains, _rms(output)


def calibrate_(
    model: nn.Module,
    layers: list[Any],
    example_input: Any,
    method: Calibration = "layers",
    target: float = 1.0,
    forward: Forward | None = None,
) -> CalibrationResult:
    """Rescale the weights of ``layers`` (an :class:`~lightning_lyapunov.InitPlan`'s layers, forward
    order) on ``example_input`` by ``method`` (module docstring); return the factors and the measured
    log-gains. ``example_input``: what the model's forward takes (a tensor, a tuple of positional
    arguments, a dict of keyword arguments), or anything ``forward(model, example_input)`` takes.
    All or nothing: on any error every weight of ``layers`` is restored and the error re-raised.

    Example::

        plan = apply_init(model, generator=torch.Generator().manual_seed(0))
        result = calibrate_(model, plan.layers, x, method="output")   # output rms 1
    """
    check_calibrate(method, target)
    saved = [layer.module.weight.detach().clone() for layer in layers]
    try:
        with _quiet(model):
            run = _calibrate_layers if method == "layers" else _calibrate_output
            factors = run(model, layers, example_input, forward, float(target))
            log_gains, output_rms = _measure(model, layers, example_input, forward)
    except BaseException:
        with torch.no_grad():
            for layer, weight in zip(layers, saved):
                layer.module.weight.copy_(weight)
        raise
    return CalibrationResult(method, float(target), factors, log_gains, output_rms)
