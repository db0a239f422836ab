"""Sampled Lyapunov initialization: keep the draw whose typical gain on a probe batch is closest to 1.

Even at exponent 0 the log-norm of one network spreads like ``N(0, L s^2)`` over ``L`` layers
(docs/theory.md, section 5). Selection removes most of that spread. Both variants draw at the scheme's
scale (Lyapunov by default) and score a draw on a probe batch by

    score = | mean_b ( log r(output_b) - log r(input_b) ) |,   r(v) = ||v|| / sqrt(numel per sample),

where ``input`` is what the first planned layer receives (the probe itself for a plain network)
and ``output`` what ``forward(model, probe)`` returns.

* network-level (``layerwise=False``): ``K`` complete candidate networks, keep the best score.
* layer-wise (``layerwise=True``): layer by layer in forward order, ``K`` candidates for that layer
  (earlier layers fixed at their chosen draws), keep the one whose running log-gain is closest to 0:
  from the input to the layer's activated output, read by a forward pre-hook as the input of the
  next planned layer (the network output for the last layer). Not the pre-activation: a square
  orthogonal layer scales every norm by exactly its gain, so only the activation reveals which
  draw is better. The forward pass stops there, so a layer-wise pass costs about ``K * L / 2``
  full forward passes.

``K`` defaults to ``ceil(2 sqrt(L))``. Probing runs as calibration does (``_forward.quiet``): eval
mode (no dropout) but BatchNorm on the batch's statistics, as the first training step sees the
network, under ``torch.no_grad()``; training flags, buffers and RNG states are restored. Candidates are
drawn and written through the plan (:meth:`InitPlan.draw`, :meth:`InitPlan.write`) inside
:meth:`InitPlan.restoring`: an error in a probe pass (a probe of the wrong shape, a ``forward``
that raises, an interrupt) leaves every weight, bias and the generator as they were.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ._checks import check_bool, check_int, check_module, describe, invalid
from ._forward import Forward, call_forward, quiet, stop_at
from .log_norm import log_gain
from .surgery import InitPlan, LayerPlan, check_generator, plan_init

__all__ = ["SamplingReport", "sample_lyapunov_"]


@dataclass
class SamplingReport:
    """Outcome of :func:`sample_lyapunov_`.

    ``scores``: each candidate's score (layer-wise: the last layer's candidates, earlier layers
    fixed); ``chosen``: the index kept among them; ``chosen_score``: the score of the network left
    in the model; ``median_score``: the median of ``scores``. Layer-wise also fills
    ``layer_scores`` (per layer, each candidate's ``|running log-gain|``) and ``layer_chosen``.
    """

    scores: list[float]
    chosen: int
    chosen_score: float
    median_score: float
    layerwise: bool
    plan: InitPlan = field(repr=False)
    layer_scores: list[list[float]] = field(default_factory=list, repr=False)
    layer_chosen: list[int] = field(default_factory=list)


def _score(gain: float) -> float:
    return abs(gain) if math.isfinite(gain) else math.inf


class _Probe:
    """Runs ``forward(model, batch)`` and records the first planned layer's input."""

    def __init__(self, model: nn.Module, plan: InitPlan, batch: Any, forward: Forward) -> None:
        self.model, self.batch, self.forward = model, batch, forward
        self.first = plan.layers[0].module
        self.inputs: torch.Tensor | None = None

    def _record_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.inputs is None:
            self.inputs = args[0]

    def gain(self, stop_before: nn.Module | None = None) -> float:
        """Log-gain input -> model output, or input -> what ``stop_before`` receives (first call)."""
        self.inputs = None
        handle = self.first.register_forward_pre_hook(self._record_input)
        try:
            run = lambda: self.forward(self.model, self.batch)  # noqa: E731
            call, output = stop_at(run, stop_before, before=True) if stop_before is not None else (None, run())
        except Exception as error:
            error.add_note(f"while sample_lyapunov_ ran forward(model, probe) with probe={describe(self.batch)}: pass "
                           "probe= a batch the model takes (and forward= if model(probe) is not the call)")
            raise
        finally:
            handle.remove()
        if call is not None:
            output = call.args[0]
        if not isinstance(output, torch.Tensor):
            raise ValueError(
                f"forward(model, probe) returned {type(output).__name__}, not a tensor; pass forward= returning "
                "the network output, e.g. forward=lambda model, batch: model(batch[0])['logits']"
            )
        if self.inputs is None:
            raise ValueError(f"the first planned layer {self.first!r} was not called by forward(model, probe)")
        return log_gain(self.inputs, output)


def _default_probe(plan: InitPlan, generator: torch.Generator | None) -> torch.Tensor:
    first = plan.layers[0]
    if not isinstance(first.module, nn.Linear):
        raise ValueError(
            f"probe=None needs a model whose first planned layer is Linear, got {first.kind} {first.name!r}; "
            "pass probe= a batch of real inputs (and forward= if model(probe) is not the call)"
        )
    weight = first.module.weight
    return torch.randn(64, first.module.in_features, generator=generator).to(weight.device, weight.dtype)


def sample_lyapunov_(
    model: nn.Module,
    probe: Any = None,
    *,
    candidates: int | None = None,
    layerwise: bool = False,
    forward: Forward | None = None,
    generator: torch.Generator | None = None,
    **plan_kwargs: Any,
) -> SamplingReport:
    """Initialize ``model`` in place with the best of ``K`` draws on a probe batch (module docstring).

    ``probe``: a batch for ``forward(model, probe)`` (default ``model(probe)``; a tuple or dict is
    unpacked when the forward's signature takes it), or None for 64 standard normal inputs when the
    first planned layer is Linear. A probe is also observed to find each layer's activation
    (``plan_init(example_input=probe)``). ``candidates``: ``K``, default
    ``ceil(2 sqrt(L))`` for ``L`` planned layers. ``plan_kwargs`` go to :func:`plan_init`
    (``scheme`` defaults to ``"lyapunov"``). Draws come from ``generator`` (CPU), else from torch's
    default generator: the same seed gives the same choice.

    Example::

        model = nn.Sequential(*[m for _ in range(40) for m in (nn.Linear(4, 4), nn.LeakyReLU(0.1))])
        report = sample_lyapunov_(model, generator=torch.Generator().manual_seed(0))
        report.chosen_score <= report.median_score   # True
    """
    plan_kwargs.setdefault("scheme", "lyapunov")
    check_module("model", model)
    check_int("candidates", candidates, minimum=1, allow_none=True,
              allowed="an integer >= 1 or None (None: ceil(2 sqrt(layers)))")
    check_bool("layerwise", layerwise)
    if forward is not None and not callable(forward):
        invalid("forward", forward, "None or a callable forward(model, probe) -> tensor")
    check_generator(generator)
    forward = forward or call_forward
    if probe is not None:  # a real batch: observe it to find each layer's activation
        plan_kwargs.setdefault("example_input", probe)
        plan_kwargs.setdefault("forward", forward)
    plan = plan_init(model, **plan_kwargs)
    count = candidates if candidates is not None else math.ceil(2 * math.sqrt(len(plan.layers)))
    with plan.restoring(generator), quiet(model):
        batch = _default_probe(plan, generator) if probe is None else probe
        runner = _Probe(model, plan, batch, forward)
        if layerwise:
            return _layerwise(plan, runner, count, generator)
        scores = _keep_best(count, lambda: plan.draw(generator), plan.write, lambda: _score(runner.gain()))
    chosen = _argmin(scores)
    return SamplingReport(scores, chosen, scores[chosen], statistics.median(scores), False, plan)


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
    following: list[nn.Module | None] = [layer.module for layer in plan.layers[1:]] + [None]
    for layer, stop_before in zip(plan.layers, following):
        scores = _keep_best(count, _drawer(layer, generator), layer.write, lambda: _score(runner.gain(stop_before)))
        layer_scores.append(scores)
        layer_chosen.append(_argmin(scores))
    scores = layer_scores[-1]
    return SamplingReport(scores, layer_chosen[-1], _score(runner.gain()), statistics.median(scores), True, plan,
                          layer_scores, layer_chosen)
