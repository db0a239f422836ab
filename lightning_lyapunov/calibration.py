"""Data calibration after the draw: rescale the planned layers on one real batch.

Theory's draw (Lyapunov: zero drift of ``E log r``) fixes the *expected* log-gain, but one network
of depth ``L`` still has ``log r(output) - log r(input) ~ N(0, L s^2)``: a width-2 net of 40 layers
may start with its output ``e^{+-7}`` times too large or too small. A calibration measures the
forward pass on an example batch and multiplies each planned layer's weight by a positive factor:

* ``"layers"`` (LSUV-style, on theory's draw instead of LSUV's unit orthogonal one): in forward
  order, layer ``l``'s output (its pre-activation) is rescaled to root-mean-square ``1``; the last
  planned layer's to ``target``. The last layer of a residual branch (``x + f(x)``, recognized in
  the pass: :func:`lightning_lyapunov.residual.find_residual_blocks`) is rescaled instead so that
  the branch, where it joins the stream, is ``alpha`` times the stream's root-mean-square, with
  ``alpha = sqrt(G^{2/B} - 1)`` for the ``B`` blocks: the stream's rms grows by ``G``
  (``stream_growth``, default ``sqrt 2``) over the whole net at any depth, where branches at rms 1
  would grow it like ``2^{B/2}`` (docs/theory.md section 9). A branch that ends in a normalization
  with an affine weight (``bn2(conv2(...))``) is scaled by that normalization's weight and bias (its
  last weight layer goes to rms 1 like the others); they are restored on error too.
  ``stream_growth=None``: every layer to rms 1, residual or not.
* ``"output"``: one factor ``c`` spread evenly, every layer times ``c^{1/L}``, so that the
  output's root-mean-square is ``target`` (the output: the last planned layer's, whatever the
  forward itself returns); a few Newton passes on ``log c`` for networks
  that are not a positively homogeneous chain (branches, norms, biases, other activations).

With zero biases and positively homogeneous activations (ReLU, Leaky ReLU), positive per-layer
factors change the function only by their product: the two calibrations differ in the output's
scale at step 0 and in how weight magnitude is spread over the layers (which matters to Adam).
Root-mean-square ``r = sqrt(mean v^2)`` over the whole batch tensor, not the standard deviation:
with few units the batch mean of a unit is part of its signal. The default ``target`` is ``1``
(:data:`DEFAULT_TARGET`). A small target (the network starts near the zero function, as
zero-initialized output layers do) trains more width-2 and width-3 deep narrow nets with Adam
(``benchmarks/results/calibration.md``, ``benchmarks/results/lookahead.md``), but a small last layer
also shrinks plain SGD's steps on every earlier layer, which Adam normalizes away.

The passes run in eval mode (no dropout) but with BatchNorm on the batch's statistics, as in the
first training step (its running statistics at init would make it the identity), under
``torch.no_grad()``; training flags, buffers, gradients and RNG states are restored, and on any
error every planned weight is restored too (all or nothing). No random numbers are drawn, and the
root-mean-squares are reduced in an order that does not depend on the number of threads
(:func:`lightning_lyapunov.log_norm.rms`), so the result is as deterministic as the draw.

Example::

    model = nn.Sequential(*[m for _ in range(40) for m in (nn.Linear(2, 2), nn.LeakyReLU(0.1))], nn.Linear(2, 1))
    plan = apply_init(model, example_input=torch.randn(256, 2), calibrate="layers",
                      generator=torch.Generator().manual_seed(0))
    plan.calibration.factors   # the factor each weight was multiplied by
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ._checks import check_choice, check_float
from ._warn import LyapunovWarning
from ._forward import FirstCall, Forward, call_forward, called, quiet, shapes_checked, stop_at
from .log_norm import log_r, rms
from .plan import InitPlan, restored_on_error
from .residual import ResidualBlock, branch_scale, find_residual_blocks
from .settings import CALIBRATIONS, DEFAULT_TARGET, STREAM_GROWTH, check_stream_growth

__all__ = ["CalibrationResult", "calibrate_"]

Calibration = Literal["layers", "output"]
_OUTPUT_PASSES = 8
_OUTPUT_TOLERANCE = 1e-4  # |log rms - log target| below which the "output" calibration stops


@dataclass
class CalibrationResult:
    """What :func:`calibrate_` did: ``factors[l]`` multiplied planned layer ``l``'s weight;
    ``log_gains[l]``: measured after calibration, ``m_l - m_{l-1}`` with ``m_l`` the batch mean of
    ``log r`` of layer ``l``'s output (its first call; ``m_{-1}``: of the first layer's input),
    ``r(v) = ||v|| / sqrt(numel per sample)``: the previous layer's activation and this layer, as
    the diagnostics measure it; they add up to the network's log-gain; ``output_rms``: the last
    planned layer's output root-mean-square after calibration; ``dead``: layers left at factor 1
    because their output (or input) is all zero on the batch; ``uncalled``: layers the forward pass
    on the batch never calls, left with theory's draw (factor 1, log-gain NaN), the others
    calibrated without them; ``branch_scale``: the ``alpha`` residual branches were calibrated to
    (None: no residual block, or not asked for), ``branches``: their last layers in forward order (a
    normalization after the last weight layer, e.g. ``bn2``, whose weight and bias were scaled),
    ``branch_ratios``: ``r(branch) / r(stream)`` measured where each joins the stream after
    calibration."""

    method: str
    target: float
    factors: list[float]
    log_gains: list[float]
    output_rms: float
    dead: list[str] = field(default_factory=list)
    uncalled: list[str] = field(default_factory=list)
    branch_scale: float | None = None
    branches: list[str] = field(default_factory=list)
    branch_ratios: list[float] = field(default_factory=list)


class _Runner:
    """Forward passes of ``model`` on ``example_input`` that end at one planned layer's first call."""

    def __init__(self, model: nn.Module, example_input: Any, forward: Forward | None) -> None:
        self.model, self.example_input, self.forward = model, example_input, forward

    def run(self) -> Any:
        if self.forward is not None:
            return self.forward(self.model, self.example_input)
        return call_forward(self.model, self.example_input)

    def first_call(self, layer: Any) -> FirstCall:
        """Layer ``layer``'s input and output on its first call."""
        call, _ = stop_at(self.run, layer.module)
        if call is None:
            raise ValueError(f"calibrate: layer {layer.name!r} was not called by the forward pass on example_input; "
                             "pass forward=lambda model, batch: ... that runs it, or exclude= the layer")
        return call

    def check_signal(self, layer: Any) -> None:
        """A clear error when the batch gives the first planned layer an all-zero input."""
        args = self.first_call(layer).args
        if args and isinstance(args[0], torch.Tensor) and rms(args[0]) == 0.0:
            raise ValueError(f"calibrate: example_input gives the first planned layer {layer.name!r} an all-zero "
                             "input; pass a batch of real inputs")


def _require_finite(name: str, measured: float) -> float:
    if not math.isfinite(measured):
        raise ValueError(f"calibrate: the output of {name} has root-mean-square {measured!r} on example_input "
                         "(non-finite); cannot rescale it. Check the batch for NaN/inf, or use calibrate=None")
    return measured


def _scale(module: nn.Module, factor: float) -> None:
    module.weight.mul_(factor)


def _calibrate_layers(runner: _Runner, layers: list[Any], target: float, scale: float | None = None,
                      blocks: Sequence[ResidualBlock] = ()) -> tuple[list[float], list[str]]:
    """In forward order each layer's output to rms 1 (the last to ``target``); a residual branch's
    last layer (a block of ``blocks``) so that the branch is ``scale`` times the stream where they add
    up, and a branch ending in a normalization by that normalization's weight and bias, just before
    the planned layer that follows its sum. A layer whose output or input is all zero on the batch
    (dead units: the weight does not reach the output) keeps factor 1 and is returned by name."""
    factors, dead = [], []
    names = [layer.name for layer in layers]
    branches = {b.layer for b in blocks if not b.norm}
    norms = [b for b in blocks if b.norm]
    for i, layer in enumerate(layers):
        for block in norms:
            if block.before == layer.name:
                _scale_norm(runner, names, block.layer, scale)
        goal = target if i == len(layers) - 1 else 1.0
        call = runner.first_call(layer)
        out_rms = _require_finite(f"layer {layer.name!r}", rms(call.output))
        in_rms = rms(call.args[0]) if call.args and isinstance(call.args[0], torch.Tensor) else math.nan
        if out_rms == 0.0 or in_rms == 0.0:
            factors.append(1.0)
            dead.append(layer.name)
            continue
        if scale is not None and layer.name in branches and i < len(layers) - 1:
            out_rms, goal = _branch_rms(runner, names, layer.name, scale)
        factor = goal / out_rms
        _scale(layer.module, factor)
        factors.append(factor)
    for block in norms:
        if block.before not in names:
            _scale_norm(runner, names, block.layer, scale)
    return factors, dead


def _scale_norm(runner: _Runner, names: list[str], name: str, scale: float) -> None:
    """Multiply normalization ``name``'s weight and bias so that its branch is ``scale`` times the stream."""
    branch, goal = _branch_rms(runner, names, name, scale)
    if branch > 0:
        module = runner.model.get_submodule(name)
        module.weight.mul_(goal / branch)
        if isinstance(module.bias, torch.Tensor):
            module.bias.mul_(goal / branch)


def _branch_rms(runner: _Runner, names: list[str], layer: str, scale: float) -> tuple[float, float]:
    """``(r(branch), scale * r(stream))`` where the branch ending in ``layer`` joins the stream."""
    found = [b for b in find_residual_blocks(runner.model, names, runner.run, stop_after=layer) if b.layer == layer]
    if not found:  # the earlier layers' calibration cannot remove a sum; kept as a clear error all the same
        raise ValueError(f"calibrate: the residual sum after layer {layer!r} was not seen again; pass "
                         "stream_growth=None to calibrate every layer to rms 1")
    branch = _require_finite(f"the residual branch ending in {layer!r}", found[0].branch_rms)
    return branch, scale * found[0].stream_rms


def _calibrate_output(runner: _Runner, layers: list[Any], target: float) -> tuple[list[float], list[str]]:
    """Newton steps on ``t`` (every weight times ``e^t``) for ``log rms(output) = log target``; the
    slope ``d log rms / dt`` starts at ``L`` (a positively homogeneous chain) and is re-measured.
    An all-zero output (a dead network on this batch) leaves every factor 1 and returns the last layer."""
    def log_rms() -> float:
        measured = _require_finite("the model", rms(runner.first_call(layers[-1]).output))
        return math.log(measured) if measured > 0 else -math.inf

    t, slope, current = 0.0, float(len(layers)), log_rms()
    if current == -math.inf:
        return [1.0] * len(layers), [layers[-1].name]
    for _ in range(_OUTPUT_PASSES):
        if abs(current - math.log(target)) < _OUTPUT_TOLERANCE:
            break
        step = (math.log(target) - current) / slope
        for layer in layers:
            _scale(layer.module, math.exp(step))
        t += step
        new = log_rms()
        if new == -math.inf:
            raise ValueError("calibrate='output': the output became all zero while rescaling; use calibrate='layers'")
        if abs(new - current) > 1e-9:
            slope = min(max((new - current) / step, 0.1), 10.0 * len(layers))
        current = new
    return [math.exp(t)] * len(layers), []


def _measure(runner: _Runner, layers: list[Any]) -> tuple[list[float], float]:
    """Per planned layer ``l``, ``m_l - m_{l-1}`` with ``m_l`` the batch mean of ``log r`` of layer
    ``l``'s output on its first call (what the diagnostics measure at that layer; samples whose
    signal is zero left out) and ``m_{-1}`` that of the first layer's input, so the log-gains add up
    to the network's and ``m_0 + sum_{k=1..l} gain_k`` is the log-norm the diagnostics see at layer
    ``l`` on this batch; and the last layer's output root-mean-square."""
    means: dict[int, float] = {}

    def make_hook(i: int):
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if i not in means and isinstance(output, torch.Tensor):
                means[i] = _alive_mean(log_r(output))
                if i == 0 and args and isinstance(args[0], torch.Tensor):
                    means[-1] = _alive_mean(log_r(args[0]))
        return hook

    handles = [layer.module.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        output = runner.first_call(layers[-1]).output
    finally:
        for handle in handles:
            handle.remove()
    logs = [means.get(i, math.nan) for i in range(-1, len(layers))]
    return [b - a for a, b in zip(logs[:-1], logs[1:])], rms(output)


def _alive_mean(values: torch.Tensor) -> float:
    """Batch mean over the samples whose signal is alive (a ReLU layer zeroes a whole sample with
    probability ``2^-d``: the exponent is taken conditionally on a nonzero signal)."""
    alive = values[torch.isfinite(values)]
    return float(alive.mean()) if alive.numel() else math.nan


def _uncalled_warning(method: str, uncalled: list[str]) -> str:
    shown = ", ".join(repr(name) for name in uncalled[:6]) + (f" and {len(uncalled) - 6} more" if len(uncalled) > 6
                                                              else "")
    return (f"calibrate={method!r}: {len(uncalled)} planned layer{'s' if len(uncalled) > 1 else ''} ({shown}) "
            "not called by the forward pass on example_input: they keep theory's draw (factor 1) and the layers "
            "that ran are calibrated without them; pass forward= that runs them, or exclude= them")


def _dead_warning(method: str, dead: list[str]) -> str:
    where = repr(dead[0]) + (f" and {len(dead) - 1} layer(s) after it" if len(dead) > 1 else "")
    return (f"calibrate={method!r}: the output of layer {where} is all zero on example_input (dead units: the "
            "network's output does not depend on its input there), so these layers keep theory's scale "
            "(factor 1). A wider net, Leaky ReLU instead of ReLU, or another batch avoids it")


def _branch_warnings(result: CalibrationResult) -> list[str]:
    """A warning naming the branches whose scale is not the one asked for (a normalization without a
    weight after their last layer, or a nonlinear map, undoes its weight's scale)."""
    if result.branch_scale is None:
        return []
    off = [name for name, ratio in zip(result.branches, result.branch_ratios)
           if not (ratio > 0 and abs(math.log(ratio / result.branch_scale)) < 0.1)]
    if not off:
        return []
    shown = ", ".join(repr(name) for name in off[:4]) + (f" and {len(off) - 4} more" if len(off) > 4 else "")
    return [f"calibrate='layers': the residual branches ending in {shown} are not at branch scale "
            f"{result.branch_scale:.4g} after calibration (something after that layer, e.g. a normalization without "
            "an affine weight, undoes its weight's scale): the stream may grow with depth; scale the branch's output "
            "yourself (or zero its last layer), or pass stream_growth=None"]


def calibrate_(
    model: nn.Module,
    plan: InitPlan,
    example_input: Any,
    method: Calibration = "layers",
    target: float = DEFAULT_TARGET,
    forward: Forward | None = None,
    stream_growth: float | None = STREAM_GROWTH,
) -> CalibrationResult:
    """Rescale the weights of ``plan``'s layers (forward order) on ``example_input`` by ``method``
    (module docstring); return each layer's factor and measured log-gain, also recorded as
    ``plan.calibration`` (what was applied). ``example_input``:
    what the model's forward takes (a tensor, a tuple of positional arguments, a dict of keyword
    arguments), or anything ``forward(model, example_input)`` takes. All or nothing: on any error
    every tensor the plan writes is restored and the error re-raised. Layers whose output is all
    zero on the batch (dead ReLU units) keep factor 1, with a warning; so do the layers the forward
    pass never calls (``result.uncalled``: an auxiliary head, a branch this batch does not take),
    and the layers that ran are calibrated as if they were the whole plan. ValueError when the pass
    calls no planned layer. ``stream_growth``: with ``method="layers"``, the growth ``G`` of the
    residual stream's rms over all recognized residual blocks (module docstring; None: none).

    Example::

        plan = apply_init(model, generator=torch.Generator().manual_seed(0))
        result = calibrate_(model, plan, x, method="output")   # output rms 1
    """
    check_choice("method", method, CALIBRATIONS)
    target = check_float("target", target, minimum=0.0, low_open=True,
                         allowed="a positive finite number (the output's root-mean-square after calibration)")
    runner = _Runner(model, example_input, forward)
    with plan.restoring(), quiet(model), shapes_checked(model):
        ran = [plan.layers[i] for i in called(runner.run, [layer.module for layer in plan.layers])]
        if not ran:
            raise ValueError("calibrate: no planned layer was called by the forward pass on example_input; pass "
                             "forward=lambda model, batch: ... that runs the network")
        runner.check_signal(ran[0])
        names = [layer.name for layer in ran]
        blocks: list[ResidualBlock] = []
        if method == "layers" and stream_growth is not None:
            stream_growth = check_stream_growth(stream_growth)
            blocks = [b for b in find_residual_blocks(model, names, runner.run) if b.layer != names[-1]]
        branches = [b.layer for b in blocks]
        scale = branch_scale(len(blocks), stream_growth) if blocks else None
        norms = [model.get_submodule(b.layer) for b in blocks if b.norm]
        with restored_on_error([t for norm in norms for t in (norm.weight, norm.bias) if isinstance(t, torch.Tensor)]):
            if method == "layers":
                factors, dead = _calibrate_layers(runner, ran, target, scale, blocks)
            else:
                factors, dead = _calibrate_output(runner, ran, target)
            log_gains, output_rms = _measure(runner, ran)
            ratios = {b.layer: b.ratio for b in find_residual_blocks(model, names, runner.run)} if blocks else {}
    measured = {id(layer): (factor, gain) for layer, factor, gain in zip(ran, factors, log_gains)}
    per_layer = [measured.get(id(layer), (1.0, math.nan)) for layer in plan.layers]
    uncalled = [layer.name for layer in plan.layers if id(layer) not in measured]
    plan.calibration = CalibrationResult(method, target, [f for f, _ in per_layer], [g for _, g in per_layer],
                                         output_rms, dead, uncalled, scale, branches,
                                         [ratios.get(name, math.nan) for name in branches])
    for message in ([_uncalled_warning(method, uncalled)] if uncalled else []) + (
            [_dead_warning(method, dead)] if dead else []) + _branch_warnings(plan.calibration):
        plan.warnings.append(message)
        warnings.warn(message, LyapunovWarning, stacklevel=2)
    return plan.calibration
