"""A plan's per-layer scales and predictions by the exact scale chain, for any pointwise activation.

For a chain of weight layers followed by activations that are not all Leaky ReLUs (GELU, SiLU, tanh,
ELU, ...), "exponent 0" has no per-layer meaning: the exponent depends on the scale at which a layer
operates, and for GELU-like activations that scale is an unstable fixed point. Its finite-depth
meaning (docs/theory.md, section 7) is that the **expected log-norm of every layer's pre-activation
equals the operating scale's**, ``E log r(h_l) = log s`` for ``l = 1..L``, where ``s`` is the per-unit
root-mean-square of the input (measured on an example input, or 1): then the expected log-norm after
the network's depth equals the input's. :func:`chain_inits` asks
:func:`~lightning_lyapunov.chain_theory.predict_chain` for those scales (``scheme="lyapunov"``), or
for the prediction of another scheme's scales (He, Glorot, orthogonal, fractional), and returns one
:class:`~lightning_lyapunov.init.LayerInit` per layer whose ``exponent`` is the predicted change of the
mean log-norm at that layer and whose ``variance`` the predicted growth of its variance over draws, so
that the diagnostics' line ``m_0 + sum exponents`` and band ``2 sqrt(sum variances)`` are the chain's.

Leaky ReLU layers in the same chain are exact too (the chain uses their closed forms). Results are
cached per (layers, law, scales): planning the same model twice costs nothing the second time, and the
one-step tables of :mod:`~lightning_lyapunov.chain_theory` are cached per (activation, width, law).

Example::

    >>> from lightning_lyapunov import chain_theory as ct
    >>> result = chain_inits([(16, 16, ct.activation("gelu"), 0.0)] * 5 + [(16, 1, None, 1.0)], "lyapunov")
    >>> [init.exponent for init in result.inits] == [0.0] * 6 or max(abs(i.exponent) for i in result.inits) < 1e-9
    True
    >>> result.stability[0]
    'unstable'
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from lightning_lyapunov import chain_theory
from lightning_lyapunov._checks import check_float, invalid
from lightning_lyapunov.init import LayerInit, resolve_validated

__all__ = ["ChainInits", "chain_inits", "exact_label", "unstable_at_width_8", "uses_chain"]

#: the schemes whose draw is random (a chain prediction exists); Stiefel's and ZerO's has none
RANDOM_SCHEMES: tuple[str, ...] = ("lyapunov", "fractional", "he", "glorot", "orthogonal")

Layer = tuple[int, int, "chain_theory.Activation | None", float]


@dataclass(frozen=True)
class ChainInits:
    """What :func:`chain_inits` found: ``inits`` (one per layer), the ``prediction`` they come from,
    the ``operating_scale`` and, per layer, the ``stability`` of its activation's fixed point at that
    scale (``"stable"``, ``"unstable"``, ``"neutral"``; None for a Leaky ReLU or the last layer)."""

    inits: list[LayerInit]
    prediction: chain_theory.ChainPrediction
    operating_scale: float
    stability: list[str | None]


def uses_chain(activations: Sequence[chain_theory.Activation | None]) -> bool:
    """Whether a plan needs the scale chain: some activation is not positively homogeneous (not a Leaky ReLU)."""
    return any(act is not None and not act.homogeneous for act in activations)


def exact_label(act: chain_theory.Activation, scale: float, stability: str | None) -> str:
    """The plan table's words for a layer planned by the chain: ``gelu exact at s=1 (unstable)``."""
    defaults = dict(chain_theory.activation(act.name).params) if act.name in chain_theory.ACTIVATIONS else {}
    params = ",".join(f"{value:g}" if isinstance(value, float) else str(value)
                      for key, value in act.params if defaults.get(key) != value)
    name = act.name + (f"({params})" if params else "")
    return f"{name} exact at s={scale:.3g}" + (f" ({stability})" if stability else "")


def _chain_activation(act: chain_theory.Activation | None, slope: float) -> chain_theory.Activation:
    return act if act is not None else chain_theory.activation("leaky_relu", negative_slope=slope)


def chain_inits(
    layers: Sequence[Layer],
    scheme: str,
    distribution: str = "orthogonal",
    moment: float | None = None,
    operating_scale: float = 1.0,
) -> ChainInits:
    """Per-layer :class:`~lightning_lyapunov.init.LayerInit` of a plain chain by the exact scale chain.

    ``layers``: ``(d_in, d_out, activation, slope)`` per weight layer in forward order, ``activation``
    the :class:`~lightning_lyapunov.chain_theory.Activation` after the layer or None for a Leaky ReLU of
    slope ``slope`` (1: none). ``scheme="lyapunov"`` draws ``distribution`` at the scales that keep the
    expected log-norm at ``log operating_scale`` at every depth, from an input of per-unit rms
    ``operating_scale``; the other random schemes keep their scales (:func:`~lightning_lyapunov.init.resolve_init`
    with ``slope``) and get the chain's prediction. ``exponent`` of layer ``l`` is
    ``mean[l] - mean[l-1]`` of the predicted mean log-norm (``mean[-1] = log operating_scale``),
    ``variance`` is ``std[l]^2 - std[l-1]^2`` (``std[0]^2`` for the first layer; 0 where the spread
    shrinks), so the running sums are the chain's mean and variance at every depth.

    Raises ValueError for a scheme without a random draw (``stiefel``, ``zero``), and as
    :func:`~lightning_lyapunov.chain_theory.predict_chain` does (every network dead).
    """
    if scheme not in RANDOM_SCHEMES:
        invalid("scheme", scheme, f"one of {RANDOM_SCHEMES} (the scale chain predicts random draws only)",
                error=ValueError)
    s = check_float("operating_scale", operating_scale, minimum=0.0, low_open=True,
                    allowed="a positive finite number (the input's per-unit rms)")
    chain = tuple((int(d_in), int(d_out), _chain_activation(act, slope)) for d_in, d_out, act, slope in layers)
    if scheme == "lyapunov":
        law, scales = distribution, None
    else:
        bases = [resolve_validated(scheme, d_in, d_out, slope, distribution, moment) for d_in, d_out, _, slope in layers]
        law, scales = bases[0].distribution, tuple(float(base.scale) for base in bases)
    prediction = _predict(chain, law, s, scales)
    variance = prediction.std_log_norm**2
    growth = np.maximum(np.diff(np.concatenate([[0.0], variance])), 0.0)
    inits = [LayerInit(scheme, law, float(w), float(drift), float(v))
             for w, drift, v in zip(prediction.weight_scales, prediction.drift, growth)]
    stability = [_stability(act, d_out, law, s) if i < len(chain) - 1 else None
                 for i, (_, d_out, act) in enumerate(chain)]
    return ChainInits(inits, prediction, s, stability)


@lru_cache(maxsize=64)
def _predict(chain: tuple, law: str, scale: float, scales: tuple[float, ...] | None) -> chain_theory.ChainPrediction:
    return chain_theory.predict_chain(list(chain), law, scale, weight_scales=scales, input_scale=scale)


@lru_cache(maxsize=512)
def _stability(act: chain_theory.Activation, d: int, law: str, scale: float) -> str | None:
    if act.homogeneous:
        return None
    return chain_theory.stability(act, d, d, law, scale).kind



def unstable_at_width_8(act: chain_theory.Activation, distribution: str, scale: float) -> bool:
    """Whether ``act``'s fixed point at ``scale`` is unstable at width 8 (GELU, SiLU, Mish, Hardswish at
    scale 1): narrower layers of such an activation are where three cumulants per step describe the
    chain's law only approximately (docs/theory.md, section 7, Limits)."""
    return _stability(act, 8, distribution, scale) == "unstable"
