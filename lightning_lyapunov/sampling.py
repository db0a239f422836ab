"""Sampled Lyapunov initialization: keep the draw whose typical gain on a probe batch is closest to 1.

Even at exponent 0 the log-norm of one network spreads like ``N(0, L s^2)`` over ``L`` layers
(docs/theory.md, section 5). Selection removes most of that spread. Both variants draw at the scheme's
scale (Lyapunov by default) and score a draw on a probe batch by

    score = | mean_b ( log r(output_b) - log r(input_b) ) |,   r(v) = ||v|| / sqrt(numel per sample),

where ``input`` is what the first planned layer receives (the probe itself for a plain network)
and ``output`` the last planned layer's output (the network's output, whatever the forward returns:
a loss, a dict, a head after the last weight layer). First and last among the planned layers that
the forward calls on the probe: a layer it never calls (an auxiliary head) is drawn but does not
change the score, so it keeps its first draw.

* network-level (``sampled="network"``): ``K`` complete candidate networks, keep the best score.
* layer-wise (``sampled="layerwise"``): layer by layer in forward order, ``K`` candidates for that
  layer (earlier layers fixed at their chosen draws), keep the one whose running log-gain is closest
  to 0: from the input to the layer's activated output, read by a forward pre-hook as the input of
  the next planned layer (the last planned layer's output for the last layer). Not the
  pre-activation: a square orthogonal layer scales every norm by exactly its gain, so only the
  activation reveals which draw is better. The forward pass stops there, so a layer-wise pass costs
  about ``K * L / 2`` full forward passes.

``K`` defaults to ``ceil(2 sqrt(L))``. :func:`select_` is one stage of the initialization engine
(:func:`lightning_lyapunov.apply_init` with ``sampled=``; ``sample_lyapunov_`` is a shortcut): it
probes as calibration does (``_forward.quiet``: eval mode but BatchNorm on the batch's statistics,
``torch.no_grad()``, every flag, buffer and RNG state restored), and the engine's
:meth:`InitPlan.restoring` scope puts every weight, bias and the generator back on any error.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ._checks import describe
from ._forward import Forward, call_forward, called, quiet, shapes_checked, stop_at
from .log_norm import log_gain
from .plan import InitPlan, LayerPlan

__all__ = ["SamplingReport", "select_", "default_probe"]


@dataclass
class SamplingReport:
    """What sampling chose.

    ``mode``: ``"network"`` or ``"layerwise"``; ``scores``: each candidate's score (layer-wise: the
    last layer's candidates, earlier layers fixed); ``chosen``: the index kept among them;
    ``chosen_score``: the score of the network left in the model; ``median_score``: the median of
    ``scores``. Layer-wise also fills ``layer_scores`` (per layer that the probe's forward calls,
    each candidate's ``|running log-gain|``) and ``layer_chosen``.
    """

    mode: str
    scores: list[float]
    chosen: int
    chosen_score: float
    median_score: float
    layer_scores: list[list[float]] = field(default_factory=list, repr=False)
    layer_chosen: list[int] = field(default_factory=list)

    @property
    def layerwise(self) -> bool:
        return self.mode == "layerwise"

    def summary(self) -> str:
        """One line: ``sampled ('network'): kept candidate 3 of 13, |log-gain| 0.12 on the probe batch (...)``."""
        return (f"sampled ({self.mode!r}): kept candidate {self.chosen + 1} of {len(self.scores)}, |log-gain| "
                f"{self.chosen_score:.2f} on the probe batch (median of the candidates {self.median_score:.2f})")


def _score(gain: float) -> float:
    return abs(gain) if math.isfinite(gain) else math.inf


class _Probe:
    """Runs ``forward(model, batch)``; records the first planned layer's input and the last's output,
    of the planned layers that it calls (:attr:`ran`, in the order of their first call)."""

    def __init__(self, model: nn.Module, plan: InitPlan, batch: Any, forward: Forward) -> None:
        self.model, self.batch, self.forward = model, batch, forward
        try:
            order = called(self._run, [layer.module for layer in plan.layers])
        except Exception as error:
            _note(error, batch)
            raise
        self.ran = [plan.layers[i] for i in order] or plan.layers  # none: the check in gain() says so
        self.first, self.last = self.ran[0].module, self.ran[-1].module
        self.inputs: torch.Tensor | None = None
        self.outputs: Any = None

    def _run(self) -> Any:
        return self.forward(self.model, self.batch)

    def _record_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.inputs is None:
            self.inputs = args[0]

    def _record_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.outputs = output

    def gain(self, stop_before: nn.Module | None = None) -> float:
        """Log-gain input -> the last planned layer's output, or input -> what ``stop_before``
        receives (its first call)."""
        self.inputs = self.outputs = None
        handles = [self.first.register_forward_pre_hook(self._record_input),
                   self.last.register_forward_hook(self._record_output)]
        try:
            call, _ = stop_at(self._run, stop_before, before=True) if stop_before is not None else (None, self._run())
        except Exception as error:
            _note(error, self.batch)
            raise
        finally:
            for handle in handles:
                handle.remove()
        output = call.args[0] if call is not None else self.outputs
        if self.inputs is None or not isinstance(output, torch.Tensor):
            raise ValueError(f"the planned layers {self.first!r} ... {self.last!r} were not called by "
                             "forward(model, probe): pass forward= that runs them")
        return log_gain(self.inputs, output)


def _note(error: Exception, batch: Any) -> None:
    error.add_note(f"while sampling ran forward(model, probe) with probe={describe(batch)}: pass a probe the model "
                   "takes (and forward= if model(probe) is not the call)")


def default_probe(plan: InitPlan, generator: torch.Generator | None) -> torch.Tensor:
    """64 standard normal inputs for a model whose first planned layer is Linear (drawn from ``generator``)."""
    first = plan.layers[0]
    if not isinstance(first.module, nn.Linear):
        raise ValueError(
            f"sampling without a probe batch needs a model whose first planned layer is Linear, got {first.kind} "
            f"{first.name!r}; pass a batch of real inputs (example_input=, or probe= to sample_lyapunov_)"
        )
    weight = first.module.weight
    return torch.randn(64, first.module.in_features, generator=generator).to(weight.device, weight.dtype)


def select_(
    model: nn.Module,
    plan: InitPlan,
    probe: Any,
    *,
    forward: Forward | None = None,
    layerwise: bool = False,
    candidates: int | None = None,
    generator: torch.Generator | None = None,
) -> SamplingReport:
    """Draw ``candidates`` (default ``ceil(2 sqrt(L))``) candidates through ``plan`` from ``generator``,
    score them on ``probe`` (module docstring) and leave the best one written in ``model``.

    Not all-or-nothing on its own: the engine calls it inside :meth:`InitPlan.restoring`.
    """
    count = candidates if candidates is not None else math.ceil(2 * math.sqrt(len(plan.layers)))
    with quiet(model), shapes_checked(model):
        runner = _Probe(model, plan, probe, forward or call_forward)
        if layerwise:
            return _layerwise(plan, runner, count, generator)
        scores = _keep_best(count, lambda: plan.draw(generator), plan.write, lambda: _score(runner.gain()))
    chosen = _argmin(scores)
    return SamplingReport("network", scores, chosen, scores[chosen], statistics.median(scores))


def _keep_best(
    count: int, draw: Callable[[], Any], write: Callable[[Any], None], score: Callable[[], float]
) -> list[float]:
    """Draw, write and score ``count`` candidates; leave the first best one written; return the scores."""
    scores, best = [], None
    for _ in range(count):
        candidate = draw()
        write(candidate)
        scores.append(score())
        if best is None or scores[-1] < min(scores[:-1]):
            best = candidate
    write(best)
    return scores


def _argmin(scores: list[float]) -> int:
    return min(range(len(scores)), key=scores.__getitem__)


def _drawer(layer: LayerPlan, generator: torch.Generator | None) -> Callable[[], torch.Tensor]:
    return lambda: layer.draw(generator)


def _layerwise(plan: InitPlan, runner: _Probe, count: int, generator: torch.Generator | None) -> SamplingReport:
    plan.write(plan.draw(generator))  # later layers need weights for the final check
    layer_scores, layer_chosen = [], []
    ran = runner.ran  # a layer the probe's forward never calls keeps this first draw
    following: list[nn.Module | None] = [layer.module for layer in ran[1:]] + [None]
    for layer, stop_before in zip(ran, following):
        scores = _keep_best(count, _drawer(layer, generator), layer.write, lambda: _score(runner.gain(stop_before)))
        layer_scores.append(scores)
        layer_chosen.append(_argmin(scores))
    scores = layer_scores[-1]
    return SamplingReport("layerwise", scores, layer_chosen[-1], _score(runner.gain()), statistics.median(scores),
                          layer_scores, layer_chosen)
