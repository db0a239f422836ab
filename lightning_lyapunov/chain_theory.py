"""Exact finite-width signal propagation for any pointwise activation (numpy/scipy only, no torch).

A layer computes ``h = W x`` (``d_out`` units) and then ``x' = phi(h)``; the diagnostics measure the
pre-activations ``h`` by their log-norm per unit, ``log r(h)``, ``r(h) = ||h|| / sqrt(d)``.

**The scale chain.** With Gaussian weights ``W_ij ~ N(0, sigma^2)`` and any fixed input ``x``,
``h = sigma ||x|| g`` with ``g ~ N(0, I_{d_out})`` new at each layer: only the *scale*
``s = sigma ||x||`` (the per-unit standard deviation of ``h``) carries the past. So ``s`` is an exact
one-dimensional Markov chain, for any pointwise ``phi``::

    s_{l+1} = sigma_{l+1} sqrt(d_in / d_prev) ||phi(s_l g_l)||

(``d_in / d_prev = 1`` for dense chains; for a convolution the patch's per-unit norm is taken equal to
the previous layer's). With Haar orthogonal weights ``W = eta O`` the image of ``x`` is
``eta ||x|| g / ||g_D||`` (``g`` the first ``d_out`` coordinates of ``g_D ~ N(0, I_D)``,
``D = max(d_in, d_out)``): a uniform direction, with a norm that fluctuates only when ``D > d_out``.
The per-unit scale is then ``s = eta ||x|| / sqrt(D)`` and ``h = s sqrt(D) g / ||g_D||``.

Everything follows from the law of ``Y = log ||phi(h)||^2`` given ``s``. Its Laplace transform
factorizes over the units for Gaussian weights::

    E exp(-t ||phi(s g)||^2) = m_s(t)^d,     m_s(t) = E exp(-t phi(s g_1)^2)

(a one-dimensional Gaussian integral, computed by Gauss-Legendre panels graded towards the zeros and
kinks of ``phi``), and for the uniform direction ``u`` on the sphere of radius ``rho`` it obeys the
splitting ``u = (sqrt(b) u_k, sqrt(1-b) u_m)``, ``b ~ Beta(k/2, m/2)``::

    J_{k+m}(t, rho) = E_b[ J_k(t, rho sqrt(b)) J_m(t, rho sqrt(1-b)) ],   J_1(t, rho) = (f(rho) + f(-rho)) / 2,

``f(x) = exp(-t phi(x)^2)``, evaluated by the trapezoidal rule in ``log(b / (1 - b))`` and cubic
splines in ``log rho`` (``log2 d`` doublings). The log-moments then are single integrals in ``log t``
(Frullani), as in :mod:`lightning_lyapunov.theory`::

    E Y       = log a + I_0
    E (Y-c)^2 = -2 (I_1 + gamma I_0)
    E (Y-c)^3 = 3 I_2 + 6 gamma I_1 + 6 (gamma^2/2 - pi^2/12) I_0,
    I_j = int (log(t a))^j (e^{-t a} - E e^{-t ||phi(h)||^2}) dt / t,   c = log a.

**Dead outputs.** An output with ``||phi(h)||^2 < e^{-80} E||phi(h)||^2`` counts as dead (for ReLU that
is exactly ``phi(h) = 0``, probability ``2^-d``, as in :mod:`theory`); log quantities are conditional on
the output being alive. GELU, SiLU, Mish, Softplus and sigmoid are not exactly zero on the negative
side but come close at a large scale: there a layer whose units are all negative nearly kills the
signal (probability ``2^-d`` per layer), and the chain tracks that mass separately.

**Homogeneous activations** (ReLU, Leaky ReLU, PReLU, identity) give a random walk: the per-layer
quantities do not depend on ``s`` and equal :mod:`theory`'s closed forms, which are used.

**A whole network** (:func:`predict_chain`): the law of ``log s`` is propagated layer by layer on a
grid, and each layer's scale is chosen so that the expected log-norm stays at the operating scale at
every depth (docs/theory.md, section 7).

Example::

    >>> from lightning_lyapunov import chain_theory as ct
    >>> gelu = ct.activation("gelu")
    >>> round(ct.critical_scale(gelu, 64, 64, scale=1.0), 4)    # zero drift at scale 1, Gaussian weights
    0.1965
    >>> ct.stability(gelu, 64, 64).kind                          # ... but an unstable fixed point
    'unstable'
    >>> plan = ct.predict_chain([(64, 64, gelu)] * 19 + [(64, 64, None)])
    >>> bool(np.allclose(plan.mean_log_norm, 0.0, atol=1e-9))   # flat expected log-norm at every depth
    True
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from scipy import special
from scipy.interpolate import CubicSpline, PchipInterpolator

from lightning_lyapunov import theory
from lightning_lyapunov._checks import (
    MIN_SLOPE,
    check_choice,
    check_float,
    check_int,
    describe,
    invalid,
)

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "ChainPrediction",
    "Stability",
    "activation",
    "chain_scales",
    "critical_scale",
    "dead_probability",
    "expected_log_q",
    "log_norm_variance",
    "log_q_variance",
    "lyapunov_exponent",
    "predict_chain",
    "stability",
]

# ----------------------------------------------------------------------------- activations (numpy twins of torch's)

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _leaky_relu(x: np.ndarray, negative_slope: float) -> np.ndarray:
    return np.where(x > 0.0, x, negative_slope * x)


def _identity(x: np.ndarray) -> np.ndarray:
    return x + 0.0


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1.0 + special.erf(x / math.sqrt(2.0)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x * special.expit(x)


def _mish(x: np.ndarray) -> np.ndarray:
    return x * np.tanh(np.logaddexp(0.0, x))


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0.0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def _celu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0.0, x, alpha * np.expm1(np.minimum(x, 0.0) / alpha))


def _selu(x: np.ndarray) -> np.ndarray:
    return _SELU_SCALE * np.where(x > 0.0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0)))


def _softplus(x: np.ndarray, beta: float, threshold: float) -> np.ndarray:
    bx = beta * x
    return np.where(bx > threshold, x, np.logaddexp(0.0, np.minimum(bx, threshold)) / beta)


def _tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return special.expit(x)


def _hardswish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _hardsigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def _hardtanh(x: np.ndarray, min_val: float, max_val: float) -> np.ndarray:
    return np.clip(x, min_val, max_val)


def _softsign(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.abs(x))


@dataclass(frozen=True)
class Activation:
    """A pointwise activation for the theory: a vectorized numpy function and what the quadrature needs.

    ``fn(x, **params)`` maps a float64 array to an array of the same shape. ``homogeneous_slope`` is
    ``a`` in [0, 1] when ``phi(x) = x`` for ``x > 0`` and ``a x`` for ``x < 0`` (ReLU, Leaky ReLU,
    PReLU, identity): those use the closed forms of :mod:`theory`. ``breakpoints`` are the kinks of
    ``phi`` (panel boundaries of the quadrature); ``dead_below`` is ``b <= 0`` when ``phi(x) = 0`` for
    every ``x <= b`` (ReLU: 0, Hardswish: -3). Build one with :func:`activation`.

    Example::

        >>> act = activation("elu", alpha=0.5)
        >>> act, float(act(np.array([-1.0]))[0]) == 0.5 * math.expm1(-1.0)
        (Activation('elu', alpha=0.5), True)
    """

    name: str
    fn: Callable[..., np.ndarray]
    params: tuple[tuple[str, Any], ...] = ()
    homogeneous_slope: float | None = None
    breakpoints: tuple[float, ...] = ()
    dead_below: float | None = None

    def __call__(self, x: Any) -> np.ndarray:
        return np.asarray(self.fn(np.asarray(x, dtype=np.float64), **dict(self.params)), dtype=np.float64)

    @property
    def homogeneous(self) -> bool:
        """Positively homogeneous (``phi(c x) = c phi(x)``, ``c > 0``): the scale chain is a random walk."""
        return self.homogeneous_slope is not None

    def __repr__(self) -> str:
        args = "".join(f", {key}={value!r}" for key, value in self.params)
        return f"Activation({self.name!r}{args})"


def _number(name: str, value: Any, *, positive: bool = False) -> float:
    allowed = "a positive finite number" if positive else "a finite number"
    return check_float(name, value, minimum=0.0 if positive else None, low_open=positive, allowed=allowed)


def _build_leaky(name: str, negative_slope: Any) -> Activation:
    a = _number("negative_slope", negative_slope)
    # the closed forms see a**2 only; |a| > 1 (or so small that a**2 underflows) goes to the quadrature
    homogeneous = abs(a) if a == 0.0 or MIN_SLOPE <= abs(a) <= 1.0 else None
    return Activation(name, _leaky_relu, (("negative_slope", a),), homogeneous, (0.0,), 0.0 if a == 0.0 else None)


def _build_gelu(approximate: Any = "none") -> Activation:
    approximate = check_choice("approximate", approximate, ("none", "tanh"))
    return Activation("gelu", _gelu, (("approximate", approximate),))


def _build_alpha(name: str, fn: Callable[..., np.ndarray], alpha: Any) -> Activation:
    return Activation(name, fn, (("alpha", _number("alpha", alpha, positive=name == "celu")),), None, (0.0,))


def _build_softplus(beta: Any = 1.0, threshold: Any = 20.0) -> Activation:
    beta = _number("beta", beta, positive=True)
    threshold = _number("threshold", threshold)
    return Activation("softplus", _softplus, (("beta", beta), ("threshold", threshold)), None, (threshold / beta,))


def _build_hardtanh(min_val: Any = -1.0, max_val: Any = 1.0) -> Activation:
    lo, hi = _number("min_val", min_val), _number("max_val", max_val)
    if not lo < hi:
        raise ValueError(f"min_val={min_val!r}, max_val={max_val!r} is invalid: min_val must be below max_val")
    dead = lo if lo == 0.0 else None
    return Activation("hardtanh", _hardtanh, (("min_val", lo), ("max_val", hi)), None, (lo, hi), dead)


_BUILDERS: dict[str, Callable[..., Activation]] = {
    "relu": lambda: Activation("relu", _relu, (), 0.0, (0.0,), 0.0),
    "leaky_relu": lambda negative_slope=0.01: _build_leaky("leaky_relu", negative_slope),
    "prelu": lambda negative_slope=0.25: _build_leaky("prelu", negative_slope),
    "identity": lambda: Activation("identity", _identity, (), 1.0),
    "gelu": _build_gelu,
    "silu": lambda: Activation("silu", _silu),
    "mish": lambda: Activation("mish", _mish),
    "elu": lambda alpha=1.0: _build_alpha("elu", _elu, alpha),
    "celu": lambda alpha=1.0: _build_alpha("celu", _celu, alpha),
    "selu": lambda: Activation("selu", _selu, (), None, (0.0,)),
    "softplus": _build_softplus,
    "tanh": lambda: Activation("tanh", _tanh),
    "sigmoid": lambda: Activation("sigmoid", _sigmoid),
    "hardswish": lambda: Activation("hardswish", _hardswish, (), None, (-3.0, 3.0), -3.0),
    "hardsigmoid": lambda: Activation("hardsigmoid", _hardsigmoid, (), None, (-3.0, 3.0), -3.0),
    "relu6": lambda: Activation("relu6", _relu6, (), None, (0.0, 6.0), 0.0),
    "hardtanh": _build_hardtanh,
    "softsign": lambda: Activation("softsign", _softsign),
}
_ALIASES = {"linear": "identity", "none": "identity", "swish": "silu"}

#: The built-in activation names (torch's module or function names also work: "GELU", "LeakyReLU", "leaky_relu").
ACTIVATIONS: tuple[str, ...] = tuple(_BUILDERS)


def _key(name: str) -> str:
    return name.lower().replace("_", "")


_BY_KEY = {_key(name): name for name in _BUILDERS} | {_key(alias): target for alias, target in _ALIASES.items()}


def activation(
    spec: str | Activation | Callable[[np.ndarray], np.ndarray],
    *,
    name: str | None = None,
    breakpoints: Sequence[float] = (),
    dead_below: float | None = None,
    **params: Any,
) -> Activation:
    """An :class:`Activation` from a name and torch's parameters, or from your own numpy function.

    Names (case and underscores ignored, so torch's class and function names work): ``relu``,
    ``leaky_relu(negative_slope=0.01)``, ``prelu(negative_slope=0.25)`` (a PReLU at its current slope),
    ``identity``, ``gelu(approximate="none" | "tanh")``, ``silu``, ``mish``, ``elu(alpha=1)``,
    ``celu(alpha=1)``, ``selu``, ``softplus(beta=1, threshold=20)``, ``tanh``, ``sigmoid``,
    ``hardswish``, ``hardsigmoid``, ``relu6``, ``hardtanh(min_val=-1, max_val=1)``, ``softsign``.

    A callable ``spec`` must map a float64 array to a finite array of the same shape, elementwise;
    give its kinks as ``breakpoints`` and, if ``phi(x) = 0`` for all ``x <= b``, ``dead_below=b``
    (``b <= 0``) so that the quadrature resolves them. An :class:`Activation` is returned as it is.

    Example::

        >>> activation("GELU", approximate="tanh")
        Activation('gelu', approximate='tanh')
        >>> activation(np.tanh, name="my_tanh").homogeneous
        False
    """
    if isinstance(spec, Activation):
        if params or name is not None or breakpoints or dead_below is not None:
            raise ValueError(f"spec={spec!r} is already an Activation: pass no parameters with it")
        return spec
    if isinstance(spec, str):
        if name is not None or breakpoints or dead_below is not None:
            raise ValueError(
                f"name, breakpoints and dead_below are for your own function, not for the built-in {spec!r}"
            )
        canonical = _BY_KEY.get(_key(spec))
        if canonical is None:
            raise ValueError(
                f"spec={spec!r} is invalid (unknown activation): it must be one of {', '.join(ACTIVATIONS)} "
                "(torch's class names such as 'LeakyReLU' work too), or a vectorized numpy function"
            )
        allowed = list(inspect.signature(_BUILDERS[canonical]).parameters)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"activation {canonical!r} does not take {unknown}: its parameters are {allowed or 'none'}"
            )
        return _BUILDERS[canonical](**params)
    if not callable(spec):
        invalid("spec", spec, "an activation name, an Activation or a vectorized numpy function")
    if params:
        raise ValueError(f"parameters {sorted(params)} are for built-in activations; bind them into your function")
    points = tuple(sorted({_number(f"breakpoints[{i}]", b) for i, b in enumerate(breakpoints)}))
    dead = None
    if dead_below is not None:
        dead = check_float("dead_below", dead_below, maximum=0.0, allowed="a number <= 0 or None")
    label = name if name is not None else getattr(spec, "__name__", "custom")
    act = Activation(str(label), _CallableAdapter(spec), (), None, points, dead)
    _validate_custom(act, spec)
    return act


class _CallableAdapter:
    """Calls a user's function with the array only (hashable by the function it wraps)."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fn(x)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _CallableAdapter) and other.fn is self.fn

    def __hash__(self) -> int:
        return hash(("custom", id(self.fn)))


def _validate_custom(act: Activation, spec: Any) -> None:
    probe = np.linspace(-50.0, 50.0, 1001).reshape(7, 143)
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(act.fn(probe.copy()))
    except Exception as error:  # noqa: BLE001 - any failure of the user's function is reported the same way
        raise ValueError(f"spec={describe(spec)} is invalid: calling it on a float64 array raised {error!r}") from None
    if out.shape != probe.shape or not np.issubdtype(out.dtype, np.number) or np.iscomplexobj(out):
        raise ValueError(
            f"spec={describe(spec)} is invalid: it must map a float64 array of shape {probe.shape} to a real "
            f"array of the same shape (elementwise), got {out.dtype} of shape {out.shape}"
        )
    if not np.all(np.isfinite(out)):
        raise ValueError(f"spec={describe(spec)} is invalid: it returned non-finite values on [-50, 50]")
    if act.dead_below is not None and np.any(act(np.array([act.dead_below - 1.0, act.dead_below])) != 0.0):
        raise ValueError(f"dead_below={act.dead_below!r} is invalid: phi is not 0 below it")


def _as_activation(value: Any, name: str = "activation") -> Activation:
    if value is None:
        return _BUILDERS["identity"]()
    if isinstance(value, Activation):
        return value
    if isinstance(value, str):
        try:
            return activation(value)
        except ValueError as error:
            raise ValueError(str(error).replace("spec=", f"{name}=", 1)) from None
    invalid(name, value, "an Activation (from activation(...)), an activation name or None (no activation)")


# ----------------------------------------------------------------------------- quadrature constants

_STEP = 0.5  # trapezoid step in u = log t; exponentially accurate (the tests check closed forms to 1e-8)
_LOW = 25.0  # the t-integral starts at t * E||phi||^2 = e^-25
_DEAD = 80.0  # ||phi(h)||^2 below e^-80 of its mean counts as dead; the t-integral stops there
_MAX_WIDTH = 2**24
_X_LOW, _X_HIGH, _X_STEP = -10.0, 10.0, 0.1  # tabulated log per-unit scales (beyond: homogeneous limits)
_GL_X, _GL_W = np.polynomial.legendre.leggauss(12)
_EULER = float(np.euler_gamma)
_A3 = _EULER**2 / 2.0 - math.pi**2 / 12.0  # third Taylor coefficient of 1/Gamma
_J_STEP = 0.075  # log-radius spacing of the sphere tables
_J_MARGIN = 2.0  # the sphere tables reach this far below the smallest tabulated scale
_COMPONENTS_UP_TO = 30  # up to this width the all-negative case (probability 2^-d) is tracked apart


def _check_width(name: str, d: Any) -> int:
    return check_int(name, d, minimum=1, maximum=_MAX_WIDTH, allowed=f"an integer in [1, {_MAX_WIDTH}] (a layer width)")


def _check_scale(name: str, value: Any) -> float:
    return check_float(name, value, minimum=0.0, low_open=True, allowed="a positive finite number")


def _check_distribution(distribution: Any) -> str:
    return check_choice("distribution", distribution, theory.DISTRIBUTIONS)


def _drawn(d_in: int, d_out: int, drawn_in: int | None) -> int:
    """``D = max(drawn_in or d_in, d_out)``: the larger side of the drawn orthogonal matrix."""
    return max(d_in if drawn_in is None else _check_width("drawn_in", drawn_in), d_out)


# ----------------------------------------------------------------------------- one-dimensional Gaussian integrals


@lru_cache(maxsize=8)
def _x_nodes(act: Activation) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights in ``x = s z``, shared by every tabulated scale ``s``.

    Panels grow geometrically (ratio 1.5) away from 0, the kinks and the zeros of ``phi`` (graded down
    to 1e-25 at 0 and to rounding elsewhere: ``exp(-t phi^2)`` is sharp there for large ``t``), and are
    no wider than ``1 / |d log phi^2 / dx|`` where ``phi^2 > e^-115`` (the far tails of GELU or SiLU,
    where ``exp(-t phi^2)`` switches from 0 to 1 within that width).
    """
    reach = 12.0 * math.exp(_X_HIGH + 1.0)
    zeros = {0.0} | ({act.dead_below} if act.dead_below is not None else set())
    anchors = sorted({p for p in zeros | set(act.breakpoints) if -reach < p < reach})
    edges: list[float] = []
    ends = [-reach] + anchors + [reach]
    for i, (a, b) in enumerate(itertools.pairwise(ends)):
        if i == 0:
            piece = _march(act, b, a, b in zeros)[::-1]
        elif i == len(ends) - 2:
            piece = _march(act, a, b, a in zeros)
        else:
            middle = (a + b) / 2.0
            piece = _march(act, a, middle, a in zeros) + _march(act, b, middle, b in zeros)[::-1][1:]
        edges.extend(piece if not edges else piece[1:])
    bounds = np.array(edges)
    lo, hi = bounds[:-1], bounds[1:]
    x = ((lo + hi) / 2.0)[:, None] + ((hi - lo) / 2.0)[:, None] * _GL_X
    w = ((hi - lo) / 2.0)[:, None] * _GL_W
    return x.ravel(), w.ravel()


def _march(act: Activation, anchor: float, stop: float, zero: bool) -> list[float]:
    """Panel edges from ``anchor`` to ``stop`` (both included), graded away from ``anchor``."""
    direction = 1.0 if stop > anchor else -1.0
    first = max(1e-25, 4e-16 * abs(anchor)) if zero else 1e-6 * max(1.0, abs(anchor))
    edges, x = [anchor], anchor + direction * first
    while direction * (stop - x) > 0.0:
        edges.append(x)
        width = 0.5 * abs(x - anchor)
        value = float(act(np.array([x]))[0])
        if value != 0.0 and value * value > math.exp(-115.0):
            eps = 1e-6 * max(1.0, abs(x))
            slope = abs(float(np.diff(act(np.array([x - eps, x + eps])))[0]) / (eps * value))
            if slope > 0.0:
                width = min(width, 1.0 / slope)
        x += direction * max(width, 4e-16 * abs(x))
    edges.append(stop)
    return edges


@lru_cache(maxsize=8)
def _t_grid(act: Activation) -> np.ndarray:
    """The common ``u = log t`` grid of an activation: every tabulated scale and width up to ``2^24``."""
    x, w = _x_nodes(act)
    phi2 = act(x) ** 2
    scales = np.exp(np.array([_X_LOW - _J_MARGIN / 4.0, _X_HIGH + 0.5]))
    means = [float(np.sum(w * phi2 * np.exp(-0.5 * (x / s) ** 2)) / (s * math.sqrt(2.0 * math.pi))) for s in scales]
    grid_scales = np.exp(np.arange(_X_LOW, _X_HIGH + 0.5, 0.5))
    means += [_gauss_mean(act, float(s)) for s in grid_scales]
    logs = np.log(np.maximum(means, 1e-300))
    low = -_LOW - math.log(_MAX_WIDTH) - float(logs.max()) - 2.0
    high = _DEAD - float(logs.min()) + 2.0
    return np.arange(math.floor(low / _STEP) * _STEP, high + _STEP, _STEP)


def _gauss_mean(act: Activation, s: float) -> float:
    x, w = _x_nodes(act)
    return float(np.sum(w * act(x) ** 2 * np.exp(-0.5 * (x / s) ** 2)) / (s * math.sqrt(2.0 * math.pi)))


@lru_cache(maxsize=8)
def _one_minus_exp(act: Activation) -> np.ndarray:
    """``1 - exp(-t phi(x)^2)`` on (t grid) x (x nodes), computed once per activation."""
    x, _ = _x_nodes(act)
    t = np.exp(_t_grid(act))
    return -np.expm1(-np.outer(t, act(x) ** 2))


def _gauss_laplace(act: Activation, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each scale ``s``: ``1 - m_-(t)``, ``1 - m_+(t)`` (half-line means of ``exp(-t phi(s z)^2)``,
    rows = scales) and ``E[phi(s z)^2 | z < 0]``, ``E[phi(s z)^2 | z > 0]``."""
    x, w = _x_nodes(act)
    density = w[:, None] * np.exp(-0.5 * (x[:, None] / scales[None, :]) ** 2) * (2.0 / math.sqrt(2.0 * math.pi))
    density /= scales[None, :]
    negative = x < 0.0
    one_minus = _one_minus_exp(act)
    neg = np.clip((one_minus[:, negative] @ density[negative]).T, 0.0, 1.0)
    pos = np.clip((one_minus[:, ~negative] @ density[~negative]).T, 0.0, 1.0)
    phi2 = act(x) ** 2
    return neg, pos, phi2[negative] @ density[negative], phi2[~negative] @ density[~negative]


# ----------------------------------------------------------------------------- log-moments from Laplace transforms


def _log_cumulants(u: np.ndarray, laplace_m1: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows of (dead, E Y, Var Y, third cumulant of Y) for ``Y = log Q`` given ``E e^{-tQ} - 1`` on ``u = log t``.

    ``mean`` is ``E Q`` (any value of the right order: it only centres the integrals). ``dead`` is the
    Laplace transform at ``t = e^80 / mean``, i.e. ``P(Q`` below about ``e^-80`` of its mean``)``;
    the moments are those of the rest (the Laplace transform of ``Q`` with that mass removed).
    """
    mean = np.maximum(np.asarray(mean, dtype=np.float64), 1e-300)
    log_mean = np.log(mean)
    t = np.exp(u)
    n = laplace_m1.shape[0]
    hi = np.clip(np.searchsorted(u, _DEAD - log_mean, side="right") - 1, 0, u.size - 1)
    inside = (u[None, :] >= (-_LOW - log_mean)[:, None]) & (np.arange(u.size)[None, :] <= hi[:, None])
    dead = np.clip(1.0 + laplace_m1[np.arange(n), hi], 0.0, 1.0)
    alive = np.maximum(1.0 - dead, 1e-300)
    conditional_m1 = laplace_m1 / alive[:, None]

    def integrals(centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        delta = np.where(inside, np.expm1(-t[None, :] * centre[:, None]) - conditional_m1, 0.0)
        log_tau = u[None, :] + np.log(centre)[:, None]
        return (_STEP * delta.sum(1), _STEP * (delta * log_tau).sum(1), _STEP * (delta * log_tau**2).sum(1))

    first, _, _ = integrals(mean)
    centre = np.exp(log_mean + first)
    i0, i1, i2 = integrals(centre)
    m1 = i0
    m2 = -2.0 * (i1 + _EULER * i0)
    m3 = 3.0 * i2 + 6.0 * _EULER * i1 + 6.0 * _A3 * i0
    out = np.empty((n, 4))
    out[:, 0] = dead
    out[:, 1] = np.log(centre) + m1
    out[:, 2] = np.maximum(m2 - m1 * m1, 0.0)
    out[:, 3] = m3 - 3.0 * m1 * m2 + 2.0 * m1**3
    out[dead > 1.0 - 1e-12, 1:] = np.nan
    return out


# ----------------------------------------------------------------------------- the sphere (orthogonal weights)


@lru_cache(maxsize=256)
def _beta_rule(k: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes ``b``, ``1 - b`` and weights for ``b ~ Beta(k/2, m/2)``: the trapezoidal rule in ``v = logit b``.

    In ``v`` the density ``b^{k/2} (1-b)^{m/2} / B(k/2, m/2)`` is smooth with exponential tails, and
    so is the integrand where a part of the sphere is small (``J_k(t, rho sqrt(b))`` switches from
    0 to 1 within a width O(1) of ``v = -log(t rho^2)``), so the rule resolves it for every ``t``.
    Tails are cut where the density falls ``e^-20`` below its peak. For ``k = m`` the integrand
    is symmetric in ``b <-> 1 - b`` and only ``v >= 0`` is kept (doubled weights).
    """
    alpha, beta = k / 2.0, m / 2.0
    centre = float(special.digamma(alpha) - special.digamma(beta))
    spread = math.sqrt(float(special.polygamma(1, alpha) + special.polygamma(1, beta)))
    step = min(0.5, spread / 2.0)
    lo = centre - 3.0 * spread - 50.0 / alpha
    hi = centre + 3.0 * spread + 50.0 / beta
    v = np.arange(math.floor(lo / step), math.ceil(hi / step) + 1) * step
    log_weight = -alpha * np.logaddexp(0.0, -v) - beta * np.logaddexp(0.0, v)
    weights = np.exp(log_weight - log_weight.max())
    if k == m:
        weights = np.where(v > 0.0, 2.0 * weights, np.where(v == 0.0, weights, 0.0))
    keep = weights > math.exp(-20.0)
    v, weights = v[keep], weights[keep]
    return special.expit(v), special.expit(-v), weights / weights.sum()


def _split(k: int) -> tuple[int, int]:
    if k & (k - 1) == 0:
        return k // 2, k // 2
    top = 1 << (k.bit_length() - 1)
    return top, k - top


class _Sphere:
    """``J_k(t, rho) = E prod_i f_t(rho u_i)`` for ``u`` uniform on the unit sphere of R^k, all ``k``.

    ``negative=True`` conditions on every coordinate being negative (the all-negative component).
    Tables ``J_k`` (``k >= 2`` that are needed as parts) are cubic splines in ``x = log(rho / sqrt(k))``,
    from ``_X_LOW - _J_MARGIN`` up to what the queries need (a part of a sphere of ``k + m``
    coordinates reaches ``1/2 log((k + m) / k)`` above the whole's per-unit scale; a table is rebuilt,
    with its parts, when a query needs more). Below the table, ``phi`` is linear to within ``e^-12``
    (one-sided slopes), so ``J_k(t, rho)`` depends on ``t rho^2`` only when ``phi(0) = 0``, and is
    ``J_k(t, 0)`` otherwise.
    """

    def __init__(self, act: Activation, negative: bool) -> None:
        self.act, self.negative = act, negative
        self.u = _t_grid(act)
        self.t = np.exp(self.u)
        self.scaling = float(act(np.array([0.0]))[0]) == 0.0
        self.tables: dict[int, tuple[np.ndarray, CubicSpline, CubicSpline]] = {}

    def j1(self, radii: np.ndarray) -> np.ndarray:
        minus = np.exp(-np.outer(self.act(-radii) ** 2, self.t))
        if self.negative:
            return minus
        return 0.5 * (minus + np.exp(-np.outer(self.act(radii) ** 2, self.t)))

    def values(self, k: int, radii: np.ndarray) -> np.ndarray:
        if k == 1:
            return self.j1(radii)
        x = np.log(radii) - 0.5 * math.log(k)
        grid, table, edge = self.table(k, float(x.max()))
        out = table(np.clip(x, grid[0], grid[-1]))
        below = x < grid[0]
        if self.scaling and below.any():  # J_k(t, rho) = J_k(t rho^2 / rho_min^2, rho_min)
            shifted = self.u[None, :] + 2.0 * (x[below] - grid[0])[:, None]
            out[below] = edge(np.maximum(shifted, self.u[0]))
        return out

    def combine(self, k: int, radii: np.ndarray) -> np.ndarray:
        a, b = _split(k)
        nodes, rest, weights = _beta_rule(a, b)
        out = np.empty((radii.size, self.t.size))
        chunk = max(1, 2_000_000 // (nodes.size * self.t.size))
        for start in range(0, radii.size, chunk):
            r = radii[start:start + chunk]
            left = self.values(a, (r[:, None] * np.sqrt(nodes)).ravel()).reshape(r.size, nodes.size, -1)
            right = self.values(b, (r[:, None] * np.sqrt(rest)).ravel()).reshape(r.size, nodes.size, -1)
            out[start:start + chunk] = np.einsum("rbt,rbt,b->rt", left, right, weights)
        return out

    def table(self, k: int, reach: float) -> tuple[np.ndarray, CubicSpline, CubicSpline]:
        if k not in self.tables or self.tables[k][0][-1] < reach:
            # enough for a sphere of 1024 coordinates at once (rebuilt for a wider query): the parts of a
            # table's grid reach 1/2 log 2 higher, so this top exceeds what the level above needs by 0.1
            default = _X_HIGH + 0.5 * math.log(max(1024.0 / k, 1.0)) + 0.5 + 0.1 * math.log2(max(2048.0 / k, 2.0))
            top = max(reach + 0.1, default)
            grid = np.arange(_X_LOW - _J_MARGIN, top + _J_STEP / 2, _J_STEP)
            values = self.combine(k, math.sqrt(k) * np.exp(grid))
            self.tables[k] = (grid, CubicSpline(grid, values, axis=0), CubicSpline(self.u, values[0]))
        return self.tables[k]

    def laplace(self, d: int, big: int, scales: np.ndarray) -> np.ndarray:
        """``E exp(-t ||phi(h)||^2)`` (rows = scales) for ``h = s sqrt(D) g_d / ||g_D||``."""
        if big == d:
            radii = math.sqrt(d) * scales
            return self.combine(d, radii) if d > 1 else self.j1(radii)
        nodes, _, weights = _beta_rule(d, big - d)  # the squared norm of d of D coordinates of a unit vector
        radii = (scales[:, None] * np.sqrt(big * nodes)[None, :]).ravel()
        values = self.values(d, radii).reshape(scales.size, nodes.size, -1)
        return np.einsum("sbt,b->st", values, weights)


@lru_cache(maxsize=8)
def _sphere(act: Activation, negative: bool) -> _Sphere:
    return _Sphere(act, negative)


# ----------------------------------------------------------------------------- the law of Y = log ||phi(h)||^2


def _splits(act: Activation, d: int) -> bool:
    """Whether the chain tracks the all-negative component apart: narrow layers (probability ``2^-d``
    at least ``2^-30``) of activations that vanish on the negative side (ReLU, GELU, SiLU, sigmoid...)."""
    return d <= _COMPONENTS_UP_TO and abs(float(act(np.array([-40.0]))[0])) < 1e-8


def _laws(
    act: Activation, d: int, big: int, distribution: str, scales: np.ndarray, split: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Rows (one per scale) of [dead, mean, var, third cumulant] of ``Y`` for the whole law and, with
    ``split``, for the all-negative component (every unit of ``h`` negative, probability ``2^-d`` for
    both laws: where GELU-like activations nearly vanish) and for the rest."""
    q = 0.5**d
    if distribution == "gaussian":
        u = _t_grid(act)
        neg, pos, a_neg, a_pos = _gauss_laplace(act, scales)
        with np.errstate(divide="ignore"):  # m = 0 only as t -> inf, where log m = -inf is right
            log_neg = np.log1p(-neg)
            log_all = np.log1p(-(neg + pos) / 2.0)
        whole_m1 = np.expm1(d * log_all)
        negative_m1 = np.expm1(d * log_neg) if split else None
        mean_all = d * (a_neg + a_pos) / 2.0
        mean_neg = d * a_neg
    else:
        sphere = _sphere(act, False)
        u = sphere.u
        whole_m1 = sphere.laplace(d, big, scales) - 1.0
        _, _, a_neg, a_pos = _gauss_laplace(act, scales)  # centring only: the Gaussian means
        mean_all = d * (a_neg + a_pos) / 2.0
        mean_neg = d * a_neg
        negative_m1 = _sphere(act, True).laplace(d, big, scales) - 1.0 if split else None
    whole = _log_cumulants(u, whole_m1, mean_all)
    if not split:
        return whole, None, None
    rest_m1 = (whole_m1 - q * negative_m1) / (1.0 - q)
    mean_rest = np.maximum((mean_all - q * mean_neg) / (1.0 - q), 1e-300)
    return whole, _log_cumulants(u, negative_m1, np.maximum(mean_neg, 1e-300)), _log_cumulants(u, rest_m1, mean_rest)


@lru_cache(maxsize=4096)
def _layer_law(
    act: Activation, d: int, big: int, distribution: str, scale: float
) -> tuple[float, float, float, float]:
    """(dead, E Y, Var Y, third cumulant) of ``Y = log ||phi(h)||^2`` at one scale (exact, no table)."""
    if act.homogeneous:
        return _homogeneous_law(act, d, big, distribution, scale)
    row = _laws(act, d, big, distribution, np.array([scale]), False)[0][0]
    return tuple(float(v) for v in row)


def _homogeneous_law(
    act: Activation, d: int, big: int, distribution: str, scale: float
) -> tuple[float, float, float, float]:
    a = float(act.homogeneous_slope)
    dead = 0.5**d if a == 0.0 else 0.0
    mean = theory.expected_log_q(d, a) + 2.0 * math.log(scale)
    var = theory.log_q_variance(d, a)
    if distribution == "orthogonal":
        mean += math.log(big) - theory._log_chi2(big)
        var -= float(special.polygamma(1, big / 2.0))
    third = _homogeneous_third(a, d, big, distribution)
    return dead, mean, max(var, 0.0), third


@lru_cache(maxsize=1024)
def _homogeneous_third(a: float, d: int, big: int, distribution: str) -> float:
    """Third cumulant of ``log Q_{d,a}`` from :func:`theory._log_m` (closed-form Laplace transform);
    orthogonal: minus that of ``log chi2_D`` (the norm that the sphere removes)."""
    u = np.arange(-_LOW - math.log(d) - 10.0, _DEAD + 10.0, _STEP)
    t = np.exp(u)
    mean_q = d * (1.0 + a * a) / 2.0
    log_m = theory._log_m(t, a)
    laplace_m1 = np.expm1(d * log_m)
    if a == 0.0:
        laplace_m1 = laplace_m1 / -math.expm1(-d * math.log(2.0))
    row = _log_cumulants(u, laplace_m1[None, :], np.array([mean_q]))[0]
    third = float(row[3])
    if distribution == "orthogonal":
        third -= float(special.polygamma(2, big / 2.0))
    return third


# ----------------------------------------------------------------------------- per-layer quantities


def _law(activation_: Any, d: Any, scale: Any, distribution: Any, d_in: Any, drawn_in: Any) -> tuple[float, ...]:
    act = _as_activation(activation_)
    d = _check_width("d", d)
    s = _check_scale("scale", scale)
    distribution = _check_distribution(distribution)
    d_in = d if d_in is None else _check_width("d_in", d_in)
    big = _drawn(d_in, d, drawn_in) if distribution == "orthogonal" else d
    return _layer_law(act, d, big, distribution, s)


def expected_log_q(
    activation: Activation | str | None,
    d: int,
    scale: float = 1.0,
    distribution: str = "gaussian",
    *,
    d_in: int | None = None,
    drawn_in: int | None = None,
) -> float:
    """``E log ||phi(h)||^2`` for the pre-activation ``h`` (``d`` units) at per-unit scale ``s``.

    Gaussian weights: ``h = s g``, ``g ~ N(0, I_d)``. Orthogonal (``D = max(drawn_in or d_in, d)``):
    ``h = s sqrt(D) g / ||g_D||``. Conditional on an alive output (module docstring). For a
    homogeneous activation ``E log Q_{d,a} + 2 log s`` (plus ``log D - E log chi2_D`` orthogonal).

    Example::

        >>> expected_log_q("relu", 4, scale=2.0) == theory.expected_log_q(4, 0.0) + 2.0 * math.log(2.0)
        True
        >>> round(expected_log_q("gelu", 64), 4), round(expected_log_q("gelu", 64, distribution="orthogonal"), 4)
        (3.2537, 3.2729)
    """
    return _law(activation, d, scale, distribution, d_in, drawn_in)[1]


def log_q_variance(
    activation: Activation | str | None,
    d: int,
    scale: float = 1.0,
    distribution: str = "gaussian",
    *,
    d_in: int | None = None,
    drawn_in: int | None = None,
) -> float:
    """``Var log ||phi(h)||^2`` at per-unit scale ``s`` (as :func:`expected_log_q`).

    Example::

        >>> round(log_q_variance("identity", 4), 6) == round(float(special.polygamma(1, 2.0)), 6)
        True
    """
    return _law(activation, d, scale, distribution, d_in, drawn_in)[2]


def dead_probability(
    activation: Activation | str | None,
    d: int,
    scale: float = 1.0,
    distribution: str = "gaussian",
    *,
    d_in: int | None = None,
    drawn_in: int | None = None,
) -> float:
    """Probability that ``||phi(h)||^2`` is 0 or below ``e^-80`` of its mean (ReLU: exactly ``2^-d``).

    Example::

        >>> dead_probability("relu", 3)
        0.125
    """
    return _law(activation, d, scale, distribution, d_in, drawn_in)[0]


def lyapunov_exponent(
    activation: Activation | str | None,
    d_in: int,
    d_out: int,
    weight_scale: float,
    distribution: str = "gaussian",
    scale: float = 1.0,
    *,
    drawn_in: int | None = None,
) -> float:
    """Per-layer drift ``E log r(phi(W x)) - log r(x)`` when the layer's pre-activation has scale ``s``.

    The input ``x`` then has ``||x|| = s / sigma`` (Gaussian, ``sigma = weight_scale``) or
    ``s sqrt(D) / eta`` (orthogonal gain ``eta``), so::

        lambda(s) = log w + 1/2 E log ||phi(h)||^2 - log s - [1/2 log D] + 1/2 log(d_in / d_out)

    (``[.]`` for orthogonal weights only). Homogeneous activations: :func:`theory.lyapunov_exponent`
    for every ``s``. Otherwise it depends on ``s``: the plan's exponent at its operating scale.

    Example (GELU treated as ReLU: the ReLU's Lyapunov gain drifts -0.32 per layer once the scale is small)::

        >>> eta = theory.critical_scale(32, 32, 0.0, "orthogonal")
        >>> round(lyapunov_exponent("gelu", 32, 32, eta, "orthogonal", scale=1e-3), 2)
        -0.32
    """
    act = _as_activation(activation)
    d_in = _check_width("d_in", d_in)
    d_out = _check_width("d_out", d_out)
    w = _check_scale("weight_scale", weight_scale)
    s = _check_scale("scale", scale)
    distribution = _check_distribution(distribution)
    big = _drawn(d_in, d_out, drawn_in)
    if act.homogeneous:
        return theory.lyapunov_exponent(d_in, d_out, act.homogeneous_slope, w, distribution, drawn_in=drawn_in)
    mean = _layer_law(act, d_out, big if distribution == "orthogonal" else d_out, distribution, s)[1]
    exponent = math.log(w) + 0.5 * mean - math.log(s) + 0.5 * math.log(d_in / d_out)
    return exponent - (0.5 * math.log(big) if distribution == "orthogonal" else 0.0)


def critical_scale(
    activation: Activation | str | None,
    d_in: int,
    d_out: int,
    distribution: str = "gaussian",
    scale: float = 1.0,
    *,
    drawn_in: int | None = None,
) -> float:
    """The weight scale (Gaussian ``sigma`` or orthogonal gain ``eta``) with zero drift at scale ``s``::

        log w = log s - 1/2 E log ||phi(h)||^2 + [1/2 log D] + 1/2 log(d_out / d_in)

    Zero *local* drift only: for a non-homogeneous activation a chain of such layers leaves the
    fixed point when it is unstable (:func:`stability`); :func:`predict_chain` keeps the expected
    log-norm at ``s`` at every depth. Homogeneous activations: :func:`theory.critical_scale`.

    Example::

        >>> critical_scale("relu", 2, 2) == theory.critical_scale(2, 2, 0.0)
        True
        >>> round(critical_scale("gelu", 2, 2), 3), round(critical_scale("gelu", 2, 2, scale=3.0), 3)
        (2.326, 4.038)
    """
    act = _as_activation(activation)
    d_in = _check_width("d_in", d_in)
    d_out = _check_width("d_out", d_out)
    s = _check_scale("scale", scale)
    distribution = _check_distribution(distribution)
    big = _drawn(d_in, d_out, drawn_in)
    if act.homogeneous:
        return theory.critical_scale(d_in, d_out, act.homogeneous_slope, distribution, drawn_in=drawn_in)
    mean = _layer_law(act, d_out, big if distribution == "orthogonal" else d_out, distribution, s)[1]
    log_w = math.log(s) - 0.5 * mean + 0.5 * math.log(d_out / d_in)
    return math.exp(log_w + (0.5 * math.log(big) if distribution == "orthogonal" else 0.0))


def log_norm_variance(
    activation: Activation | str | None,
    d_in: int,
    d_out: int,
    distribution: str = "gaussian",
    scale: float = 1.0,
    *,
    drawn_in: int | None = None,
) -> float:
    """Per-layer variance of the log-norm increment at scale ``s``: ``1/4 Var log ||phi(h)||^2``.

    Homogeneous activations: :func:`theory.log_norm_variance` (``1/4 Var log Q_{d,a}``, minus
    ``1/4 trigamma(D/2)`` orthogonal) for every ``s``.

    Example::

        >>> round(log_norm_variance("tanh", 8, 8), 4), round(log_norm_variance("tanh", 8, 8, scale=3.0), 4)
        (0.0237, 0.007)
    """
    act = _as_activation(activation)
    d_in = _check_width("d_in", d_in)
    d_out = _check_width("d_out", d_out)
    s = _check_scale("scale", scale)
    distribution = _check_distribution(distribution)
    big = _drawn(d_in, d_out, drawn_in)
    if act.homogeneous:
        return theory.log_norm_variance(d_in, d_out, act.homogeneous_slope, distribution, drawn_in=drawn_in)
    return _layer_law(act, d_out, big if distribution == "orthogonal" else d_out, distribution, s)[2] / 4.0


class Stability(NamedTuple):
    """The fixed point's stability: ``slope = d E[log s_next] / d log s`` and ``"stable"``,
    ``"neutral"`` or ``"unstable"`` (``|slope|`` below, at or above 1)."""

    slope: float
    kind: str


def stability(
    activation: Activation | str | None,
    d_in: int,
    d_out: int,
    distribution: str = "gaussian",
    scale: float = 1.0,
    *,
    drawn_in: int | None = None,
) -> Stability:
    """How a chain of equal layers at zero drift treats a deviation of its log-scale from ``log s``::

        slope = 1/2 d/dlog s E log ||phi(h)||^2

    (central difference of the exact mean, step 1e-3 in ``log s``). A homogeneous activation has
    slope 1 exactly ("neutral": a random walk). Saturating activations (tanh, sigmoid) pull the
    scale back (slope < 1, "stable"); GELU, SiLU and the like push it away (slope > 1, "unstable"):
    a chain a little too large slides into the ReLU regime, one a little too small into the linear one.

    Example::

        >>> stability("tanh", 16, 16).kind, stability("relu", 16, 16).kind
        ('stable', 'neutral')
    """
    act = _as_activation(activation)
    d_in = _check_width("d_in", d_in)
    d_out = _check_width("d_out", d_out)
    s = _check_scale("scale", scale)
    distribution = _check_distribution(distribution)
    big = _drawn(d_in, d_out, drawn_in) if distribution == "orthogonal" else d_out
    if act.homogeneous:
        return Stability(1.0, "neutral")
    step = 1e-3
    up = _layer_law(act, d_out, big, distribution, s * math.exp(step))[1]
    down = _layer_law(act, d_out, big, distribution, s * math.exp(-step))[1]
    slope = (up - down) / (4.0 * step)
    kind = "neutral" if abs(abs(slope) - 1.0) < 1e-3 else "stable" if abs(slope) < 1.0 else "unstable"
    return Stability(slope, kind)


# ----------------------------------------------------------------------------- the chain over a whole network


class _Table:
    """The law of ``Z = Y / 2`` as a function of ``x = log s`` for one (activation, width, law): two
    components (all-negative units, the rest), each with its alive probability and three cumulants."""

    def __init__(self, act: Activation, d: int, big: int, distribution: str) -> None:
        split = _splits(act, d)
        self.weights = (0.5**d, 1.0 - 0.5**d) if split else (0.0, 1.0)
        if act.homogeneous:
            self._homogeneous(act, d, big, distribution)
            return
        self.x = np.arange(_X_LOW, _X_HIGH + _X_STEP / 2, _X_STEP)
        whole, negative, rest = _laws(act, d, big, distribution, np.exp(self.x), split)
        self.parts = [self._splines(negative), self._splines(rest)] if split else [None, self._splines(whole)]

    def _homogeneous(self, act: Activation, d: int, big: int, distribution: str) -> None:
        self.x = None
        a = float(act.homogeneous_slope)
        _, mean, var, third = _homogeneous_law(act, d, big, distribution, 1.0)
        if a == 0.0 and _splits(act, d):  # ReLU: the all-negative component is exactly dead
            self.parts = [(1.0, 0.0, 1.0, 0.0), (0.0, mean, var, third)]
        else:
            self.weights = (0.0, 1.0)
            self.parts = [None, (0.0, mean, var, third)]

    def _splines(self, rows: np.ndarray) -> tuple:
        ok = np.isfinite(rows[:, 1:]).all(1)
        dead = PchipInterpolator(self.x, rows[:, 0])
        if ok.sum() < 4:
            return dead, None, None, None, self.x[0], self.x[-1]
        xs = self.x[ok]
        smooth = bool(ok.all()) and float(rows[:, 0].max()) < 1e-9
        kind = CubicSpline if smooth else PchipInterpolator
        return dead, kind(xs, rows[ok, 1]), kind(xs, rows[ok, 2]), kind(xs, rows[ok, 3]), xs[0], xs[-1]

    def evaluate(self, part: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(dead, mean, variance, third cumulant) of ``Y`` at log-scales ``x``; linear (mean) or constant
        continuation beyond the table, where the activation is homogeneous to within ``e^-10``."""
        spec = self.parts[part]
        if self.x is None:
            dead, mean, var, third = spec
            return (np.full(x.shape, dead), mean + 2.0 * x, np.full(x.shape, var), np.full(x.shape, third))
        dead_f, mean_f, var_f, third_f, lo, hi = spec
        dead = np.clip(dead_f(np.clip(x, self.x[0], self.x[-1])), 0.0, 1.0)
        if mean_f is None:
            return np.ones(x.shape), np.zeros(x.shape), np.ones(x.shape), np.zeros(x.shape)
        inside = np.clip(x, lo, hi)
        mean = mean_f(inside)
        slope_lo, slope_hi = float(mean_f(lo, 1)), float(mean_f(hi, 1))
        mean = mean + np.where(x < lo, slope_lo * (x - lo), 0.0) + np.where(x > hi, slope_hi * (x - hi), 0.0)
        return dead, mean, np.maximum(var_f(inside), 0.0), third_f(inside)


@lru_cache(maxsize=64)
def _table(act: Activation, d: int, big: int, distribution: str) -> _Table:
    return _Table(act, d, big, distribution)


# ----------------------------------------------------------------------------- the kernel's shape
# Z = mean + sd * W with W standardized: Gaussian (|skew| < 1e-5); W = sign (L - digamma(k)) / sqrt(trigamma(k)),
# L = log Gamma(k, 1) (a log-gamma variable: exact for a linear layer with Gaussian weights, log chi2_d) for
# |skew| < 1.75; beyond, W = sign (G - b) / sqrt(b), G ~ Gamma(b, 1), b = 4 / skew^2 (a gamma variable,
# bounded on one side: the law of log ||phi(h)||^2 on the sphere at a large scale is that skewed).
_K = np.exp(np.linspace(math.log(0.3), 14.0, 721))
_K_SKEW = -special.polygamma(2, _K) / special.polygamma(1, _K) ** 1.5  # decreasing from 1.75 to 0
_K_MEAN = special.digamma(_K)
_K_SD = np.sqrt(special.polygamma(1, _K))
_K_LOW = (np.log(special.gammaincinv(_K, 1e-13)) - _K_MEAN) / _K_SD  # standardized 1e-13 quantiles
_K_HIGH = (np.log(special.gammainccinv(_K, 1e-13)) - _K_MEAN) / _K_SD
_GAUSSIAN, _LOG_GAMMA, _GAMMA = 0, 1, 2


def _kernel_shape(skew: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the shape family and its parameter (``k`` of the log-gamma, ``b`` of the gamma)."""
    g = np.abs(skew)
    kind = np.where(g < 1e-5, _GAUSSIAN, np.where(g < float(_K_SKEW[0]), _LOG_GAMMA, _GAMMA))
    k = np.interp(-g, -_K_SKEW, _K)
    b = np.clip(4.0 / np.maximum(g, 1e-300) ** 2, 0.02, None)
    return kind, np.where(kind == _LOG_GAMMA, k, np.where(kind == _GAMMA, b, 1.0))


def _kernel_cdf(z: np.ndarray, mean: np.ndarray, sd: np.ndarray, skew: np.ndarray, kind: np.ndarray,
                shape: np.ndarray) -> np.ndarray:
    """``P(Z < z)`` for the kernel of each row (all arguments broadcast)."""
    standard = (z - mean) / sd
    negative = skew < 0.0
    sign = np.where(negative, 1.0, -1.0)
    ell = special.digamma(shape) + sign * standard * np.sqrt(special.polygamma(1, shape))
    g = np.exp(np.minimum(ell, 700.0))
    log_gamma = np.where(negative, special.gammainc(shape, g), special.gammaincc(shape, g))
    x = np.maximum(shape - sign * standard * np.sqrt(shape), 0.0)  # G for the gamma shape
    gamma = np.where(negative, special.gammaincc(shape, x), special.gammainc(shape, x))
    return np.where(kind == _GAUSSIAN, special.ndtr(standard), np.where(kind == _LOG_GAMMA, log_gamma, gamma))


def _kernel_density(z: np.ndarray, mean: np.ndarray, sd: np.ndarray, skew: np.ndarray, kind: np.ndarray,
                    shape: np.ndarray) -> np.ndarray:
    """Density of ``Z`` (Gaussian and log-gamma shapes; the gamma shape is laid out by its CDF)."""
    standard = (z - mean) / sd
    gauss = np.exp(-0.5 * standard**2) / (math.sqrt(2.0 * math.pi) * sd)
    sign = np.where(skew < 0.0, 1.0, -1.0)
    sd_l = np.sqrt(special.polygamma(1, shape))
    ell = special.digamma(shape) + sign * standard * sd_l
    log_density = shape * ell - np.exp(np.minimum(ell, 700.0)) - special.gammaln(shape)
    return np.where(kind == _LOG_GAMMA, np.exp(log_density) * sd_l / sd, gauss)


def _kernel_extent(skew: np.ndarray, kind: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardized lower and upper 1e-13 quantiles of each row's kernel."""
    k = np.where(kind == _LOG_GAMMA, shape, 1.0)
    log_low, log_high = np.interp(k, _K, _K_LOW), np.interp(k, _K, _K_HIGH)
    b = np.where(kind == _GAMMA, shape, 1.0)
    gamma_far = (special.gammainccinv(b, 1e-13) - b) / np.sqrt(b)  # the long side of (G - b) / sqrt(b)
    gamma_near = np.sqrt(b)  # the bounded side
    negative = skew < 0.0
    low = np.where(kind == _LOG_GAMMA, log_low, np.where(kind == _GAMMA, -gamma_far, -7.4))
    high = np.where(kind == _LOG_GAMMA, log_high, np.where(kind == _GAMMA, gamma_near, 7.4))
    return np.where(negative | (kind == _GAUSSIAN), low, -high), np.where(negative | (kind == _GAUSSIAN), high, -low)


@dataclass(frozen=True)
class ChainPrediction:
    """What :func:`predict_chain` predicts for a network, per layer ``l = 1..L`` (pre-activations ``h_l``).

    ``weight_scales``: the Gaussian standard deviation or orthogonal gain of each layer (chosen, or
    given). ``mean_log_norm``, ``std_log_norm``: mean and standard deviation over weight draws of
    ``log r(h_l)`` for a fixed input, among the alive networks; ``alive``: probability that the
    network is alive at layer ``l`` (its log-norm stayed above ``log operating scale - floor``);
    ``drift``: ``mean[l] - mean[l-1]`` (the first entry against ``log input_scale``).
    ``seconds``: the computation time. ``lattice_step``: the finest spacing of the log-scale grid.
    """

    weight_scales: np.ndarray
    mean_log_norm: np.ndarray
    std_log_norm: np.ndarray
    alive: np.ndarray
    drift: np.ndarray
    distribution: str
    operating_scale: np.ndarray
    input_scale: float
    lattice_step: float
    seconds: float

    @property
    def mean_drift(self) -> float:
        """Least-squares slope of the predicted mean log-norm over the layers."""
        layers = np.arange(self.mean_log_norm.size)
        if layers.size < 2:
            return 0.0
        return float(np.polyfit(layers, self.mean_log_norm, 1)[0])


def _check_layers(layers: Any) -> list[tuple[int, int, Activation]]:
    allowed = "a non-empty sequence of (d_in, d_out, activation_after_layer) tuples"
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        invalid("layers", layers, allowed)
    if len(layers) == 0:
        invalid("layers", layers, allowed, error=ValueError)
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, (str, bytes)) or not isinstance(layer, Sequence) or len(layer) != 3:
            invalid(f"layers[{i}]", layer, "a tuple (d_in, d_out, activation_after_layer or None)")
        d_in = _check_width(f"layers[{i}][0] (d_in)", layer[0])
        d_out = _check_width(f"layers[{i}][1] (d_out)", layer[1])
        out.append((d_in, d_out, _as_activation(layer[2], f"layers[{i}][2] (activation)")))
    return out


def _per_layer(name: str, value: Any, n: int) -> np.ndarray:
    allowed = f"a positive number or a sequence of {n} positive numbers (one per layer)"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return np.full(n, _check_scale(name, value))
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        invalid(name, value, allowed)
    if len(value) != n:
        invalid(name, value, allowed, error=ValueError)
    return np.array([_check_scale(f"{name}[{i}]", v) for i, v in enumerate(value)])


def _offsets(d: int, big: int, distribution: str) -> tuple[float, float]:
    """Mean and variance of ``log r(h) - log s`` (independent of ``s``): the measured norm's own noise."""
    if distribution == "gaussian":
        return 0.5 * (math.log(2.0 / d) + float(special.digamma(d / 2.0))), float(special.polygamma(1, d / 2.0)) / 4.0
    mean = 0.5 * (math.log(big / d) + float(special.digamma(d / 2.0)) - float(special.digamma(big / 2.0)))
    var = (float(special.polygamma(1, d / 2.0)) - float(special.polygamma(1, big / 2.0))) / 4.0
    return mean, var


def predict_chain(
    layers: Sequence[tuple[int, int, Activation | str | None]],
    distribution: str = "gaussian",
    operating_scale: float | Sequence[float] = 1.0,
    *,
    weight_scales: Sequence[float] | None = None,
    input_scale: float = 1.0,
    floor: float = 40.0,
) -> ChainPrediction:
    """Propagate the law of the log-scale through a network and choose (or check) its weight scales.

    ``layers``: ``(d_in, d_out, activation_after_layer)`` per weight layer (the last usually ``None``);
    layer ``l`` computes ``h_l = W_l x_{l-1}``, ``x_l = phi_l(h_l)``. The input ``x_0`` is fixed, with
    per-unit rms ``input_scale``. ``operating_scale`` (one number or one per layer): the target per-unit
    rms of the pre-activations.

    With ``weight_scales=None`` each layer's scale is chosen in turn so that
    ``E log r(h_l) = log operating_scale`` at every depth, given the law of the log-scale propagated
    exactly through the layers before (the finite-depth meaning of "exponent 0"). With given
    ``weight_scales`` (e.g. He's, or :func:`theory.critical_scale`'s) it predicts their drift.

    The law of ``x = log s_l`` lives on a grid in ``log s`` (spacing a quarter of the narrowest one-step
    standard deviation, coarser as the law widens). Each step maps ``x`` to
    ``log w + 1/2 log(d_in/d_prev) [- 1/2 log D] + Y/2`` with ``Y = log ||phi(h)||^2``; the law of ``Y``
    given ``x`` is a mixture of two components (all units negative, probability ``2^-d``, tracked apart
    for ``d <= 30`` when ``phi`` vanishes on the negative side; the rest), each with its exact alive
    probability, mean, variance and third cumulant from the Laplace machinery, and the shape of a
    log-gamma variable with those three cumulants (exact for a linear layer with Gaussian weights:
    ``log chi2_d``), or of a gamma variable where the skewness exceeds 1.75. So every step's mean,
    variance and third cumulant are exact; the shape beyond them is the approximation. Networks whose
    log-scale falls ``floor`` below the operating scale count as dead (removed from the mean and std).

    Example::

        >>> net = [(32, 32, "gelu")] * 9 + [(32, 32, None)]
        >>> plan = predict_chain(net)
        >>> bool(np.allclose(plan.mean_log_norm, 0.0, atol=1e-9)), bool(plan.std_log_norm[-1] > plan.std_log_norm[0])
        (True, True)
    """
    start = time.perf_counter()
    spec = _check_layers(layers)
    n = len(spec)
    distribution = _check_distribution(distribution)
    targets = np.log(_per_layer("operating_scale", operating_scale, n))
    r0 = _check_scale("input_scale", input_scale)
    floor = check_float("floor", floor, minimum=1.0, allowed="a number >= 1 (log-units below the operating scale)")
    given = None if weight_scales is None else np.log(_per_layer("weight_scales", weight_scales, n))

    bigs = [max(d_in, d_out) if distribution == "orthogonal" else d_out for d_in, d_out, _ in spec]
    offsets = [_offsets(d_out, big, distribution) for (_, d_out, _), big in zip(spec, bigs)]
    tables = [_table(act, d_out, big, distribution) for (_, d_out, act), big in zip(spec[:-1], bigs[:-1])]

    # layer 1: a fixed input, so a single log-scale
    d_in0 = spec[0][0]
    log_norm_x0 = math.log(r0) + 0.5 * math.log(d_in0)
    root_big = 0.5 * math.log(bigs[0]) if distribution == "orthogonal" else 0.0
    if given is None:
        x1 = targets[0] - offsets[0][0]
        log_w = [x1 - log_norm_x0 + root_big]
    else:
        log_w = [float(given[0])]
        x1 = log_w[0] + log_norm_x0 - root_big
    step = _lattice_step(tables, x1)
    xs, probs, alive = np.array([x1]), np.array([1.0]), 1.0
    means, stds, alives = [x1 + offsets[0][0]], [math.sqrt(offsets[0][1])], [1.0]

    base_step = step
    for l in range(1, n):
        table = tables[l - 1]
        if probs.size > 1 and table.x is not None:  # coarser as the law widens: ~60 points per std
            spread = math.sqrt(max(float(np.dot(probs, xs**2)) - float(np.dot(probs, xs)) ** 2, 0.0))
            step = min(max(base_step, spread / 60.0), max(base_step, 0.25))
        d_in, d_prev = spec[l][0], spec[l - 1][1]
        shift_fixed = 0.5 * math.log(d_in / d_prev) - (0.5 * math.log(bigs[l]) if distribution == "orthogonal" else 0.0)
        target_x = targets[l] - offsets[l][0]
        x_floor = targets[l] - floor
        if given is None:
            lowest = lambda mean_z, t=target_x, f=x_floor: f - (t - mean_z) - 2.0
        else:
            lowest = lambda mean_z, f=x_floor, g=float(given[l]) + shift_fixed: f - g
        z, pz, dead_mass = _transition(table, xs, probs, step, lowest)
        if given is None:
            log_shift = target_x - _alive_mean(z, pz, x_floor, target_x)
            lw = log_shift - shift_fixed
        else:
            lw = float(given[l])
            log_shift = lw + shift_fixed
        log_w.append(lw)
        x_next = log_shift + z
        ok = x_next >= x_floor
        kept = np.where(ok, pz, 0.0)
        total = kept.sum()
        alive *= total / (total + pz[~ok].sum() + dead_mass) if total > 0 else 0.0
        if total <= 0.0:
            raise ValueError(
                f"every network is dead at layer {l + 1}: the log-scale fell more than floor={floor:g} below the "
                "operating scale; check weight_scales, or raise floor"
            )
        nz = np.nonzero(kept > 1e-16 * kept.max())[0]
        xs, probs = x_next[nz[0]:nz[-1] + 1], kept[nz[0]:nz[-1] + 1] / total
        mean = float(np.dot(probs, xs))
        var = float(np.dot(probs, (xs - mean) ** 2))
        means.append(mean + offsets[l][0])
        stds.append(math.sqrt(var + offsets[l][1]))
        alives.append(alive)

    means_a = np.array(means)
    drift = np.diff(np.concatenate([[math.log(r0)], means_a]))
    return ChainPrediction(
        weight_scales=np.exp(np.array(log_w)),
        mean_log_norm=means_a,
        std_log_norm=np.array(stds),
        alive=np.array(alives),
        drift=drift,
        distribution=distribution,
        operating_scale=np.exp(targets),
        input_scale=r0,
        lattice_step=base_step,
        seconds=time.perf_counter() - start,
    )


def chain_scales(
    layers: Sequence[tuple[int, int, Activation | str | None]],
    distribution: str = "gaussian",
    operating_scale: float | Sequence[float] = 1.0,
    *,
    input_scale: float = 1.0,
) -> np.ndarray:
    """The weight scales of :func:`predict_chain` (flat expected log-norm at the operating scale).

    Example::

        >>> scales = chain_scales([(8, 8, "tanh")] * 3 + [(8, 1, None)])
        >>> scales.shape
        (4,)
    """
    return predict_chain(layers, distribution, operating_scale, input_scale=input_scale).weight_scales


def _lattice_step(tables: list[_Table], x: float) -> float:
    """A quarter of the smallest kernel standard deviation (of ``Z = Y/2``) at the starting scale."""
    sds = []
    for table in tables:
        _, _, var, _ = table.evaluate(1, np.array([x]))
        sds.append(math.sqrt(max(float(var[0]), 0.0)) / 2.0)
    sd = min(sds) if sds else 0.0
    return float(min(max(sd / 4.0, 1e-3), 0.1))


def _alive_mean(z: np.ndarray, pz: np.ndarray, x_floor: float, target: float) -> float:
    """Mean of ``Z`` over the mass that stays above the floor once shifted to have that mean at ``target``."""
    mean = float(np.dot(pz, z) / pz.sum())
    for _ in range(3):
        ok = target - mean + z >= x_floor
        mean = float(np.dot(pz[ok], z[ok]) / pz[ok].sum())
    return mean


def _transition(
    table: _Table, xs: np.ndarray, probs: np.ndarray, step: float, lowest: Callable[[float], float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """The law of ``Z = Y/2`` from the log-scales ``xs`` (masses ``probs``): unnormalized masses on a
    lattice of spacing ``step``, and the dead mass. ``lowest(mean Z)`` is the smallest ``Z`` that can stay
    above the floor; the kernels are not laid out below it (that mass is dead anyway)."""
    if table.x is None and (xs.size == 1 or np.allclose(np.diff(xs), step, rtol=0.0, atol=1e-9 * step)):
        return _convolve(table, xs, probs, step)
    dead_mass = 0.0
    pieces = []
    for part, weight in enumerate(table.weights):
        if weight <= 0.0:
            continue
        dead, mean, var, third = table.evaluate(part, xs)
        mass = weight * probs * (1.0 - dead)
        dead_mass += float(weight * np.dot(probs, dead))
        use = mass > 1e-300
        if use.any():
            # a component of weight below 1% (the all-negative one from width 7 on) is laid out more
            # coarsely (its shape matters less, and its kernels are the widest)
            coarse = weight < 0.01
            pieces.append((mass[use], mean[use] / 2.0, np.sqrt(var[use]) / 2.0, third[use] / 8.0, coarse))
    if not pieces:
        return np.zeros(1), np.zeros(1), dead_mass
    total = sum(float(p[0].sum()) for p in pieces)
    heaviest = max(pieces, key=lambda p: float(p[0].sum()))
    origin = float(heaviest[1][np.argmax(heaviest[0])])
    z_low = lowest(sum(float(np.dot(p[0], p[1])) for p in pieces) / total)
    j_floor = math.floor((z_low - origin) / step)
    parts = []
    for mass, mean, sd, third, coarse in pieces:
        wide = sd >= 2.0 * step
        if wide.any():
            cols, weights = _lay_out(mass[wide], mean[wide], sd[wide], third[wide], origin, step, j_floor, coarse)
            parts.append((cols, weights))
        narrow = ~wide
        if narrow.any():
            cols, weights = _lay_out_narrow(mass[narrow], mean[narrow], sd[narrow], origin, step)
            parts.append((np.maximum(cols, j_floor - 1), weights))  # below the floor's reach: dead
    parts = [(c, w) for c, w in parts if c.size]
    if not parts:
        return np.zeros(1), np.zeros(1), dead_mass + total
    lo_j = min(int(c.min()) for c, _ in parts)
    hi_j = max(int(c.max()) for c, _ in parts)
    pz = np.zeros(hi_j - lo_j + 1)
    for cols, weights in parts:
        pz += np.bincount(cols - lo_j, weights, minlength=pz.size)
    z = origin + step * np.arange(lo_j, hi_j + 1)
    return z, pz, dead_mass


def _convolve(table: _Table, xs: np.ndarray, probs: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, float]:
    """A homogeneous activation on an evenly spaced law: every row's kernel is the first one shifted by
    whole steps (``E Z = E Z(x_0) + x - x_0``), so the new law is a convolution."""
    dead_mass, z_parts = 0.0, []
    for part, weight in enumerate(table.weights):
        if weight <= 0.0:
            continue
        dead, mean, var, third = (float(v[0]) for v in table.evaluate(part, xs[:1]))
        dead_mass += weight * dead * float(probs.sum())
        if dead >= 1.0:
            continue
        one = np.array([weight * (1.0 - dead)])
        sd = math.sqrt(var) / 2.0
        origin = mean / 2.0
        if sd >= 2.0 * step:
            cols, weights = _lay_out(one, np.array([origin]), np.array([sd]), np.array([third / 8.0]), origin, step,
                                     -(2**40))
        else:
            cols, weights = _lay_out_narrow(one, np.array([origin]), np.array([sd]), origin, step)
        keep = (weights > 0.0) & (cols > -(2**39))  # no floor here: predict_chain applies it
        z_parts.append((origin, cols[keep], weights[keep]))
    if not z_parts:
        return np.zeros(1), np.zeros(1), dead_mass
    origin = z_parts[0][0]
    lo = min(int(c.min()) for _, c, _ in z_parts)
    hi = max(int(c.max()) for _, c, _ in z_parts)
    kernel = np.zeros(hi - lo + 1)
    for _, cols, weights in z_parts:
        np.add.at(kernel, cols - lo, weights)
    pz = np.convolve(probs, kernel)
    z = origin + step * (lo + np.arange(pz.size))
    return z, pz, dead_mass


# standardized cell edges for gamma-shaped kernels: a quarter of a standard deviation within 4 of the
# mean, then 1.3 times wider per cell out to the far quantiles (each cell keeps its exact moments;
# the edges are moved to the nearest lattice half-points)
_GAMMA_EDGES = np.concatenate([-4.0 * 1.3 ** np.arange(16, 0, -1), np.linspace(-4.0, 4.0, 33),
                               4.0 * 1.3 ** np.arange(1, 17)])
_GAMMA_EDGES_COARSE = np.r_[_GAMMA_EDGES[::3], _GAMMA_EDGES[-1]]  # for components of weight below 1%


def _lay_out(
    mass: np.ndarray, mean: np.ndarray, sd: np.ndarray, third: np.ndarray, origin: float, step: float, j_floor: int,
    coarse: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Kernels at least two steps wide, on the lattice points at and above ``j_floor``.

    Gaussian and log-gamma shapes (smooth): the density on every ``stride``-th point (spacing at most a
    quarter of a standard deviation: the sampled kernel keeps its mean and variance to 1e-10), scaled
    to the kernel's mass above the floor. Gamma shapes (singular at their bound): the exact mass, mean
    and variance of each of a few dozen cells (:data:`_GAMMA_EDGES`), each cell laid on three points
    (:func:`_lay_out_narrow`). The mass below ``j_floor`` (dead) goes to ``j_floor - 1``."""
    skew = third / sd**3
    kind, shape = _kernel_shape(skew)
    low, high = _kernel_extent(skew, kind, shape)
    gamma = kind == _GAMMA
    cols_out, weights_out = [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
    if gamma.any():
        cols, weights = _lay_out_gamma(mass[gamma], mean[gamma], sd[gamma], skew[gamma], shape[gamma],
                                       low[gamma], high[gamma], origin, step, j_floor,
                                       _GAMMA_EDGES_COARSE if coarse else _GAMMA_EDGES)
        cols_out.append(cols)
        weights_out.append(weights)
    smooth = np.nonzero(~gamma)[0]
    if smooth.size == 0:
        return np.concatenate(cols_out), np.concatenate(weights_out)
    mass, mean, sd, skew = mass[smooth], mean[smooth], sd[smooth], skew[smooth]
    kind, shape, low, high = kind[smooth], shape[smooth], low[smooth], high[smooth]
    points_per_sd = 1.5 if coarse else 4.0  # sampled at 1.5 per sd a smooth kernel keeps its moments to 1e-15
    stride = np.maximum(1, np.floor(sd / (points_per_sd * step))).astype(np.int64)
    j_lo = np.maximum(np.floor((mean + low * sd - origin) / step).astype(np.int64), j_floor)
    j_lo = j_lo + (-j_lo) % stride  # multiples of the stride, so that rows share the same points
    j_hi = np.ceil((mean + high * sd - origin) / step).astype(np.int64)
    below = _kernel_cdf(origin + step * (j_lo - 0.5 * stride), mean, sd, skew, kind, shape)
    cols_out.append(np.full(mass.size, j_floor - 1, dtype=np.int64))
    weights_out.append(mass * below)
    count = np.maximum(-((j_lo - j_hi) // stride) + 1, 0)  # the last point reaches past j_hi
    order = np.lexsort((count, stride))
    for block in np.array_split(order, max(1, order.size // 64)):
        n = int(count[block].max()) if block.size else 0
        if n == 0:
            continue
        offsets = np.arange(n)[None, :]
        cols = j_lo[block][:, None] + offsets * stride[block][:, None]
        valid = offsets < count[block][:, None]
        sampled = _kernel_density(origin + step * cols, mean[block][:, None], sd[block][:, None],
                                  skew[block][:, None], kind[block][:, None], shape[block][:, None])
        weights = np.where(valid, sampled, 0.0)
        total = weights.sum(1)
        scale = np.where(total > 0.0, mass[block] * (1.0 - below[block]) / np.maximum(total, 1e-300), 0.0)
        cols_out.append(cols[valid])
        weights_out.append((weights * scale[:, None])[valid])
    return np.concatenate(cols_out), np.concatenate(weights_out)


def _lay_out_gamma(
    mass: np.ndarray, mean: np.ndarray, sd: np.ndarray, skew: np.ndarray, b: np.ndarray, low: np.ndarray,
    high: np.ndarray, origin: float, step: float, j_floor: int, standard_edges: np.ndarray = _GAMMA_EDGES
) -> tuple[np.ndarray, np.ndarray]:
    """Gamma-shaped kernels: cells with their exact mass, mean and variance, each on three lattice points;
    cells whose mean lies below ``j_floor`` are dead (``j_floor - 1``)."""
    edges = mean[:, None] + sd[:, None] * np.clip(standard_edges[None, :], low[:, None], high[:, None])
    # on lattice half-points, so that a cell's mean sits near a lattice point (its variance is kept then)
    position = (edges - origin) / step - 0.5
    index = np.round(position)
    index[:, 0], index[:, -1] = np.floor(position[:, 0]), np.ceil(position[:, -1])  # keep the whole kernel
    edges = origin + step * (np.maximum.accumulate(index, axis=1) + 0.5)
    cell_mass, cell_mean, cell_sd = _gamma_cells(edges, mean[:, None], sd[:, None], skew[:, None], b[:, None])
    cell_mass = cell_mass * mass[:, None]
    alive = (cell_mass > 0.0) & (cell_mean >= origin + step * (j_floor - 0.5))
    dead = np.where(alive, 0.0, cell_mass).sum(1)
    cols, weights = _lay_out_narrow(cell_mass[alive], cell_mean[alive], cell_sd[alive], origin, step)
    return (np.concatenate([cols, np.full(mass.size, j_floor - 1, dtype=np.int64)]),
            np.concatenate([weights, dead]))


def _gamma_cells(
    edges: np.ndarray, mean: np.ndarray, sd: np.ndarray, skew: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mass, mean and standard deviation of the gamma-shaped kernel within the cells between consecutive
    ``edges`` (rows: kernels).

    With ``Z = A - B G`` (negative skew; ``A + B G`` positive), ``G ~ Gamma(b)``:
    ``E[G^n 1_cell] = b (b+1) ... (b+n-1) P_{b+n}(cell)``, and ``P_{b+1}(g) = P_b(g) - g^b e^-g / Gamma(b+1)``."""
    root = np.sqrt(b)
    sign = np.where(skew < 0.0, -1.0, 1.0)
    scale = sd / root
    centre = mean - sign * sd * root  # Z = centre + sign * scale * G
    g = np.maximum(sign * (edges - centre) / scale, 0.0)
    with np.errstate(divide="ignore"):
        log_g = np.log(g)
    p0 = special.gammainc(b, g)
    term1 = np.where(g > 0.0, np.exp(b * log_g - g - special.gammaln(b + 1.0)), 0.0)
    p1 = p0 - term1
    term2 = np.where(g > 0.0, np.exp((b + 1.0) * log_g - g - special.gammaln(b + 2.0)), 0.0)
    p2 = p1 - term2
    m0 = np.abs(np.diff(p0, axis=1))
    m1 = b * np.abs(np.diff(p1, axis=1))
    m2 = b * (b + 1.0) * np.abs(np.diff(p2, axis=1))
    safe = np.maximum(m0, 1e-300)
    g_mean = m1 / safe
    g_var = np.maximum(m2 / safe - g_mean**2, 0.0)
    return m0, centre + sign * scale * g_mean, scale * np.sqrt(g_var)


def _lay_out_narrow(
    mass: np.ndarray, mean: np.ndarray, sd: np.ndarray, origin: float, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """Narrow kernels: three lattice points ``m`` steps apart around the nearest one, with the kernel's
    exact mean and variance (``m = ceil(sqrt(E (Z - nearest)^2) / step)``); when the variance is too
    small for that, the two neighbours of the mean, with its exact mean."""
    pos = (mean - origin) / step
    centre = np.rint(pos).astype(np.int64)
    delta = pos - centre
    second = (sd / step) ** 2 + delta**2
    m = np.maximum(1, np.ceil(np.sqrt(second) - 1e-12)).astype(np.int64)
    up = 0.5 * (second / m**2 + delta / m)
    down = 0.5 * (second / m**2 - delta / m)
    feasible = (up >= 0.0) & (down >= 0.0) & (up + down <= 1.0 + 1e-12)
    left = np.floor(pos).astype(np.int64)
    frac = pos - left
    zeros = np.zeros_like(up)
    cols = np.stack([centre - m, centre, centre + m, left, left + 1], axis=1)
    three = np.stack([down, np.maximum(1.0 - up - down, 0.0), up, zeros, zeros], axis=1)
    two = np.stack([zeros, zeros, zeros, 1.0 - frac, frac], axis=1)
    weights = np.where(feasible[:, None], three, two) * mass[:, None]
    return cols.ravel(), weights.ravel()
