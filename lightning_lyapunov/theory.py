"""Closed-form signal propagation for Leaky ReLU layers (numpy/scipy only, no torch).

A layer maps ``x`` in R^{d_in} to ``y = phi(W x)`` in R^{d_out}, with ``phi`` the Leaky ReLU of
slope ``a`` in [0, 1] (``a = 0`` is ReLU, ``a = 1`` no activation). The signal per unit is
``r(x) = ||x|| / sqrt(d)``. Everything here follows from one random variable,

    Q_{d,a} = ||phi(g)||^2,   g ~ N(0, I_d),

whose Laplace transform factorizes over the coordinates:

    E exp(-t Q) = m(t)^d,   m(t) = ((1 + 2t)^{-1/2} + (1 + 2 a^2 t)^{-1/2}) / 2.

The log-moments then are single integrals (Frullani), evaluated in ``u = log t`` by the
trapezoidal rule, which converges exponentially fast for these analytic integrands:

    E log X       = int_0^inf (e^-t - E e^{-tX}) / t dt
    E (log X)^2   = -2 int_0^inf (e^-t - E e^{-tX}) log(t) / t dt - 2 gamma E log X
    E X^p         = 1 / Gamma(1 - p) int_0^inf t^-p E[X e^{-tX}] dt,     0 < p < 1.

For ``a = 0`` the layer output is exactly zero with probability 2^-d (the network dies); log
quantities are then taken conditionally on a non-zero output, as in the fractional-moment paper.

Example::

    >>> from lightning_lyapunov import theory
    >>> round(theory.critical_scale(2, 2, 0.1), 3)          # Lyapunov scale at width 2
    2.263
    >>> round(theory.lyapunov_exponent(2, 2, 0.1, theory.he_scale(2, 0.1)), 2)
    -0.82
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import special

from lightning_lyapunov._checks import check_choice, check_float, check_int, check_slope, invalid

__all__ = [
    "DISTRIBUTIONS",
    "critical_scale",
    "expected_log_q",
    "glorot_scale",
    "he_scale",
    "kurtosis_by_depth",
    "log_norm_variance",
    "log_q_variance",
    "lyapunov_exponent",
    "moment_q",
    "orthogonal_gain",
    "theory_table",
]

DISTRIBUTIONS = ("gaussian", "orthogonal")

_STEP = 0.05  # trapezoid step in u = log t; the error is below 1e-12 (tests check closed forms)
_EULER_GAMMA = float(np.euler_gamma)


# ----------------------------------------------------------------------------- validation


def _check_width(name: str, d: int) -> int:
    return check_int(name, d, minimum=1, allowed="an integer >= 1 (a layer width)")


def _check_slope(negative_slope: float, name: str = "negative_slope") -> float:
    return check_slope(name, negative_slope)


def _check_moment(moment: float, *, allow_zero: bool = True) -> float:
    interval = "[0, 2] (0 = Lyapunov, 2 = He)" if allow_zero else "(0, 2] (2 = He)"
    return check_float("moment", moment, minimum=0.0, maximum=2.0, low_open=not allow_zero,
                       allowed=f"a number in {interval}")


def _check_distribution(distribution: str) -> str:
    return check_choice("distribution", distribution, DISTRIBUTIONS)


def _check_scale(scale: float) -> float:
    return check_float("scale", scale, minimum=0.0, low_open=True, allowed="a positive finite number")


# ----------------------------------------------------------------------------- quadrature


def _grid(d: int, a: float) -> np.ndarray:
    """Nodes u = log t covering both the t ~ 1/d and the t ~ 1/a^2 scales of m(t)^d."""
    low = -math.log(d) - 45.0
    high = 95.0 + (2.0 * math.log(1.0 / a) if a > 0.0 else 0.0)
    return np.arange(low, high + _STEP, _STEP)


def _mean_q(d: int, a: float) -> float:
    """E Q_{d,a} = d (1 + a^2) / 2 (unconditional)."""
    return d * (1.0 + a * a) / 2.0


def _log_m(x: np.ndarray, a: float) -> np.ndarray:
    """log m(x) to full relative precision, also where m(x) is close to 1 (x small)."""
    half_sum = np.expm1(-0.5 * np.log1p(2.0 * x)) + np.expm1(-0.5 * np.log1p(2.0 * a * a * x))
    with np.errstate(divide="ignore"):  # m = 0 only as t -> inf, where log m = -inf is right
        return np.log1p(0.5 * half_sum)


def _laplace_normalized_m1(t: np.ndarray, d: int, a: float) -> np.ndarray:
    """E exp(-t X) - 1 for X = Q_{d,a} / E Q (conditional on Q > 0 when a = 0)."""
    x = t / _mean_q(d, a)
    if a == 0.0:
        # (m^d - 2^-d) / (1 - 2^-d) - 1 = (m^d - 1) / (1 - 2^-d), without overflow or cancellation
        return np.expm1(d * _log_m(x, a)) / -math.expm1(-d * math.log(2.0))
    return np.expm1(d * _log_m(x, a))


@lru_cache(maxsize=4096)
def _log_moments(d: int, a: float) -> tuple[float, float]:
    """(E log X, E (log X)^2) for X = Q_{d,a} / E Q_{d,a}; centring keeps the variance exact."""
    u = _grid(d, a)
    t = np.exp(u)
    f = np.expm1(-t) - _laplace_normalized_m1(t, d, a)
    mean = _STEP * float(np.sum(f))
    second = -2.0 * _STEP * float(np.sum(f * u)) - 2.0 * _EULER_GAMMA * mean
    return mean, second


def expected_log_q(d: int, negative_slope: float) -> float:
    """E log Q_{d,a}, with Q_{d,a} = ||LeakyReLU_a(g)||^2 and g ~ N(0, I_d).

    ``E log Q = log E Q + int_0^inf (e^-t - m(t/EQ)^d) / t dt`` with ``E Q = d (1 + a^2) / 2``.
    Closed forms: ``a = 1`` gives ``log 2 + digamma(d/2)``. For ``a = 0`` the value is conditional
    on ``Q > 0`` (probability ``1 - 2^-d``).

    Example::

        >>> round(expected_log_q(1, 1.0), 6) == round(math.log(2) + float(special.digamma(0.5)), 6)
        True
    """
    return _expected_log_q(_check_width("d", d), _check_slope(negative_slope))


def _expected_log_q(d: int, a: float) -> float:
    return math.log(_mean_q(d, a)) + _log_moments(d, a)[0]


def log_q_variance(d: int, negative_slope: float) -> float:
    """Var log Q_{d,a} (conditional on Q > 0 for a = 0); ``a = 1`` gives ``trigamma(d/2)``."""
    return _log_q_variance(_check_width("d", d), _check_slope(negative_slope))


def _log_q_variance(d: int, a: float) -> float:
    mean, second = _log_moments(d, a)
    return max(second - mean * mean, 0.0)


@lru_cache(maxsize=4096)
def _moment(d: int, a: float, p: float) -> float:
    """E X^p for X = Q_{d,a} / E Q, 0 < p < 1 (unconditional: a dead layer contributes 0)."""
    c = _mean_q(d, a)
    u = _grid(d, a)
    t = np.exp(u)
    x = t / c
    # E[X e^{-tX}] = -d/dt m(t/c)^d = (d / (2c)) m(x)^{d-1} ((1+2x)^{-3/2} + a^2 (1+2a^2 x)^{-3/2}), x = t/c
    m_power = np.exp((d - 1) * _log_m(x, a)) if d > 1 else 1.0
    derivative = (d / (2.0 * c)) * m_power * (
        (1.0 + 2.0 * x) ** -1.5 + a * a * (1.0 + 2.0 * a * a * x) ** -1.5
    )
    # below the grid, E[X e^{-tX}] = 1 - t E X^2 + O(t^2) with E X = 1: integrate that tail exactly;
    # E X^2 = 1 + Var q / (d (E q)^2) for one coordinate q = phi(g)^2, E q^2 = 3 (1 + a^4) / 2
    t0 = t[0]
    per_unit = _mean_q(1, a)
    second = 1.0 + (1.5 * (1.0 + a**4) - per_unit**2) / (d * per_unit**2)
    tail = t0 ** (1.0 - p) / (1.0 - p) - second * t0 ** (2.0 - p) / (2.0 - p)
    body = _STEP * (float(np.sum(derivative * t ** (1.0 - p))) - 0.5 * float(derivative[0] * t0 ** (1.0 - p)))
    return (tail + body) / math.gamma(1.0 - p)


def moment_q(d: int, negative_slope: float, moment: float) -> float:
    """E Q_{d,a}^{s/2} for the moment order ``s`` in (0, 2].

    ``E Q^p = (E Q)^p / Gamma(1 - p) int_0^inf t^-p E[X e^{-tX}] dt`` with ``X = Q / E Q``,
    ``p = s/2`` and ``E[X e^{-tX}] = -d/dt m(t / E Q)^d``; ``s = 2`` gives ``E Q = d (1+a^2)/2``.
    For ``a = 0`` this is unconditional (a dead layer contributes zero), as in the
    fractional-moment paper (its ``I_a(s, d)``).

    Example::

        >>> round(moment_q(4, 0.0, 2.0), 12)
        2.0
    """
    return _moment_q(_check_width("d", d), _check_slope(negative_slope), _check_moment(moment, allow_zero=False))


def _moment_q(d: int, a: float, s: float) -> float:
    mean = _mean_q(d, a)
    if s == 2.0:
        return mean
    return mean ** (s / 2.0) * _moment(d, a, s / 2.0)


# ----------------------------------------------------------------------------- per-layer scales


def he_scale(d_in: int, negative_slope: float) -> float:
    """He (Kaiming, fan-in) standard deviation ``sqrt(2 / ((1 + a^2) d_in))``."""
    return _he_scale(_check_width("d_in", d_in), _check_slope(negative_slope))


def _he_scale(d_in: int, a: float) -> float:
    return math.sqrt(2.0 / ((1.0 + a * a) * d_in))


def glorot_scale(d_in: int, d_out: int) -> float:
    """Glorot (Xavier) normal standard deviation ``sqrt(2 / (d_in + d_out))``."""
    return _glorot_scale(_check_width("d_in", d_in), _check_width("d_out", d_out))


def _glorot_scale(d_in: int, d_out: int) -> float:
    return math.sqrt(2.0 / (d_in + d_out))


def orthogonal_gain(negative_slope: float) -> float:
    """The orthogonal gain ``sqrt(2 / (1 + a^2))`` (``torch.nn.init.calculate_gain('leaky_relu', a)``)."""
    return _orthogonal_gain(_check_slope(negative_slope))


def _orthogonal_gain(a: float) -> float:
    return math.sqrt(2.0 / (1.0 + a * a))


def _log_chi2(d: int) -> float:
    """E log chi2_d = log 2 + digamma(d/2)."""
    return math.log(2.0) + float(special.digamma(d / 2.0))


def _check_drawn_in(drawn_in: int | None) -> None:
    if drawn_in is not None:
        _check_width("drawn_in", drawn_in)


def _drawn_width(d_in: int, d_out: int, drawn_in: int | None) -> int:
    """``max(D_in, d_out)``: the larger side of the drawn orthogonal matrix (``D_in = drawn_in or d_in``)."""
    return max(d_in if drawn_in is None else drawn_in, d_out)


def _orthogonal_offset(d_in: int, d_out: int, drawn_in: int | None = None) -> float:
    """E log ||phi(O x)||^2 - E log Q: the norm of the Gaussian vector that O replaces."""
    return -_log_chi2(_drawn_width(d_in, d_out, drawn_in))


def lyapunov_exponent(
    d_in: int,
    d_out: int,
    negative_slope: float,
    scale: float,
    distribution: str = "gaussian",
    *,
    drawn_in: int | None = None,
) -> float:
    """Per-layer drift ``E log r(y) - log r(x)`` of the log-norm per unit.

    Gaussian ``W_ij ~ N(0, scale^2)``::

        lambda = log scale + 1/2 E log Q_{d_out,a} + 1/2 log(d_in / d_out)

    Haar orthogonal ``W = scale * O`` (orthonormal rows or columns)::

        lambda = log scale + 1/2 E log Q_{d_out,a} - 1/2 (log 2 + digamma(max(D_in, d_out)/2))
                 + 1/2 log(d_in / d_out)

    ``D_in = drawn_in`` (default ``d_in``) is the column count of the drawn matrix when each output
    sees only part of it: a transposed conv draws ``(d_out, C_in/groups * prod(kernel))`` but each
    output location sees ``d_in ~ C_in/groups * prod(kernel) / prod(stride)`` of its columns. Those
    columns of a matrix with orthonormal rows shrink a unit vector to ``Beta(d_out/2, (D_in - d_out)/2)``
    in squared norm, so the offset uses ``D_in``, not ``d_in``.

    Example::

        >>> round(lyapunov_exponent(2, 2, 0.1, 0.995), 2)        # He at width 2 loses 0.82 per layer
        -0.82
    """
    d_in = _check_width("d_in", d_in)
    d_out = _check_width("d_out", d_out)
    a = _check_slope(negative_slope)
    sigma = _check_scale(scale)
    _check_distribution(distribution)
    _check_drawn_in(drawn_in)
    return _exponent(d_in, d_out, a, sigma, distribution, drawn_in)


def _exponent(d_in: int, d_out: int, a: float, sigma: float, distribution: str, drawn_in: int | None) -> float:
    """:func:`lyapunov_exponent` of validated arguments."""
    exponent = math.log(sigma) + 0.5 * _expected_log_q(d_out, a) + 0.5 * math.log(d_in / d_out)
    if distribution == "orthogonal":
        exponent += 0.5 * _orthogonal_offset(d_in, d_out, drawn_in)
    return exponent


def critical_scale(
    d_in: int,
    d_out: int,
    negative_slope: float,
    distribution: str = "gaussian",
    moment: float = 0.0,
    *,
    drawn_in: int | None = None,
) -> float:
    """The weight scale that keeps the signal stable, per layer.

    ``moment = 0`` (Lyapunov): the scale with ``lyapunov_exponent == 0``::

        sigma = sqrt(d_out / d_in) exp(-1/2 E log Q_{d_out,a})                     (gaussian)
        eta   = sigma * exp(1/2 (log 2 + digamma(max(d_in, d_out) / 2)))            (orthogonal)

    ``moment = s`` in (0, 2]: the scale with ``E r(y)^s = r(x)^s``::

        sigma = sqrt(d_out / d_in) (E Q_{d_out,a}^{s/2})^{-1/s}                     (gaussian)
        eta   = sigma * (E chi2_D^{s/2})^{1/s},  D = max(d_in, d_out)                (orthogonal)

    The orthogonal case uses that ``||phi(g)|| / ||g||`` is independent of ``||g||``. ``s = 2``
    gives He, ``sqrt(2 / ((1 + a^2) d_in))``, and the orthogonal gain ``sqrt(2 / (1 + a^2))``
    (times ``sqrt(max(d_in, d_out) / d_in)``). ``drawn_in``: as in :func:`lyapunov_exponent`
    (``D = max(drawn_in, d_out)`` for the orthogonal draw).

    Example::

        >>> round(critical_scale(2, 2, 0.1), 3), round(critical_scale(2, 2, 0.1, "orthogonal"), 3)
        (2.263, 2.398)
    """
    d_in = _check_width("d_in", d_in)
    d_out = _check_width("d_out", d_out)
    a = _check_slope(negative_slope)
    _check_distribution(distribution)
    _check_drawn_in(drawn_in)
    return _critical_scale(d_in, d_out, a, distribution, _check_moment(moment), drawn_in)


def _critical_scale(d_in: int, d_out: int, a: float, distribution: str, s: float, drawn_in: int | None) -> float:
    """:func:`critical_scale` of validated arguments."""
    ratio = 0.5 * math.log(d_out / d_in)
    big = _drawn_width(d_in, d_out, drawn_in)
    if s == 0.0:
        log_scale = ratio - 0.5 * _expected_log_q(d_out, a)
        if distribution == "orthogonal":
            log_scale += 0.5 * _log_chi2(big)
        return math.exp(log_scale)
    log_scale = ratio - math.log(_moment_q(d_out, a, s)) / s
    if distribution == "orthogonal":
        p = s / 2.0
        log_chi2_moment = p * math.log(2.0) + special.gammaln(big / 2.0 + p) - special.gammaln(big / 2.0)
        log_scale += float(log_chi2_moment) / s
    return math.exp(log_scale)


def log_norm_variance(
    d_in: int,
    d_out: int,
    negative_slope: float,
    distribution: str = "gaussian",
    *,
    drawn_in: int | None = None,
) -> float:
    """Per-layer variance ``s^2`` of the log-norm increment (the CLT variance, independent of scale).

    Gaussian: ``s^2 = 1/4 Var log Q_{d_out,a}``. Orthogonal: ``s^2 = 1/4 (Var log Q_{d_out,a} -
    trigamma(max(d_in, d_out)/2))``, because ``log Q = log(Q / ||g||^2) + log ||g||^2`` splits into
    independent parts (``max(drawn_in, d_out)`` with ``drawn_in``, as in :func:`lyapunov_exponent`). After ``L`` layers ``log r(x_L) - log r(x_0) ~ N(L lambda, L s^2)``.

    Example::

        >>> round(log_norm_variance(2, 2, 0.1), 2)
        1.36
    """
    d_in = _check_width("d_in", d_in)
    d_out = _check_width("d_out", d_out)
    a = _check_slope(negative_slope)
    _check_distribution(distribution)
    _check_drawn_in(drawn_in)
    return _log_norm_variance(d_in, d_out, a, distribution, drawn_in)


def _log_norm_variance(d_in: int, d_out: int, a: float, distribution: str, drawn_in: int | None) -> float:
    """:func:`log_norm_variance` of validated arguments."""
    variance = _log_q_variance(d_out, a)
    if distribution == "orthogonal":
        variance -= float(special.polygamma(1, _drawn_width(d_in, d_out, drawn_in) / 2.0))
    return max(variance, 0.0) / 4.0


# ----------------------------------------------------------------------------- kurtosis


def kurtosis_by_depth(
    widths: Sequence[int] | int,
    negative_slope: float | Sequence[float],
    depth: int | None = None,
    weight_kurtosis: float = 3.0,
    initial_kurtosis: float = 3.0,
) -> np.ndarray:
    """Predicted kurtosis ``E z^4 / (E z^2)^2`` of a pre-activation unit at layers ``1..L``.

    Over random i.i.d. symmetric weights (kurtosis ``k_w``) and a fixed input, with
    ``c~ = Cov(h_i^2, h_j^2) / (E h^2)^2`` for the outputs ``h = phi(z)`` of a layer of width ``w``::

        kappa' = 2 (1+a^4) k_w / (w (1+a^2)^2) kappa + 3 (w-1)/w c~ + 3 (w-1)/w
        c~'    = 2 (1+a^4)     / (w (1+a^2)^2) kappa +   (w-1)/w c~ - 1/w

    starting from ``kappa_1 = initial_kurtosis`` and ``c~_1 = 0``. The recursion does not depend on
    the weight scale. For Gaussian weights it closes: ``kappa_{l+1} = kappa_l (1 + C_a / w_l)`` with
    ``C_a = (5 - 2a^2 + 5a^4) / (1 + a^2)^2``, so the kurtosis grows without bound with depth.

    ``widths`` lists the widths ``w_1..w_{L-1}`` of the hidden layers (an int with ``depth``
    means a constant width); the result has ``L = len(widths) + 1`` entries. ``negative_slope``
    is one slope for every hidden layer or one per hidden layer (``a_l`` after layer ``l``).

    Example::

        >>> kurtosis_by_depth(10, 0.0, depth=3).round(4).tolist()
        [3.0, 4.5, 6.75]
    """
    widths = _check_widths(widths, depth)
    if isinstance(negative_slope, (int, float, np.number)):
        slopes = [_check_slope(negative_slope)] * len(widths)
    else:
        slopes = [_check_slope(a) for a in negative_slope]
        if len(slopes) != len(widths):
            raise ValueError(f"negative_slope has {len(slopes)} slopes for {len(widths)} hidden widths; "
                             "give one slope, or one per hidden layer")
    weight_kurtosis = check_float("weight_kurtosis", weight_kurtosis, minimum=1.0, allowed="a number >= 1 (a kurtosis)")
    initial_kurtosis = check_float("initial_kurtosis", initial_kurtosis, minimum=1.0,
                                   allowed="a number >= 1 (a kurtosis)")
    kappa, cov = float(initial_kurtosis), 0.0
    out = [kappa]
    for w, a in zip(widths, slopes):
        fourth = 2.0 * (1.0 + a**4) / (1.0 + a * a) ** 2  # E h^4 / (E h^2)^2 per unit of kappa
        kappa, cov = (
            fourth * weight_kurtosis / w * kappa + 3.0 * (w - 1) / w * (cov + 1.0),
            fourth / w * kappa + (w - 1) / w * cov - 1.0 / w,
        )
        out.append(kappa)
    return np.asarray(out)


def _check_widths(widths: Sequence[int] | int, depth: int | None) -> list[int]:
    """The hidden widths ``w_1..w_{L-1}``: a sequence of widths, or an int repeated ``depth - 1`` times."""
    if isinstance(widths, numbers.Integral) and not isinstance(widths, bool):
        depth = check_int("depth", depth, minimum=1, allowed="an integer >= 1 when widths is an int")
        return [_check_width("widths", widths)] * (depth - 1)
    if isinstance(widths, (str, bytes)) or not isinstance(widths, (Sequence, np.ndarray)):
        invalid("widths", widths, "an integer width or a sequence of them")
    if depth is not None:
        raise ValueError(
            f"depth={depth!r} is only used when widths is an int; with a list of widths the depth is len(widths) + 1"
        )
    return [_check_width(f"widths[{i}]", w) for i, w in enumerate(widths)]


# ----------------------------------------------------------------------------- table


def _sequence(name: str, value: Sequence) -> Sequence:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        invalid(name, value, "a sequence (list, tuple or array)")
    return value


def theory_table(
    widths: Sequence[int] = (2, 4, 16, 64, 256),
    slopes: Sequence[float] = (0.0, 0.01, 0.1, 0.2),
    depth: int = 40,
) -> str:
    """A markdown table: per-layer exponents of He, Glorot and orthogonal-with-gain for square
    layers, the critical (Lyapunov) scales, and the log-norm drift of He over ``depth`` layers.

    Example::

        >>> print(theory_table(widths=[2], slopes=[0.1], depth=40))  # doctest: +ELLIPSIS
        | width | slope | ...
    """
    header = (
        "| width | slope | lambda He | lambda Glorot | lambda orth | sigma He | sigma Lyap "
        "| eta Lyap | s^2 gauss | He drift over depth |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    widths = [_check_width(f"widths[{i}]", d) for i, d in enumerate(_sequence("widths", widths))]
    slopes = [_check_slope(a, f"slopes[{i}]") for i, a in enumerate(_sequence("slopes", slopes))]
    depth = check_int("depth", depth, minimum=1)
    rows = [header]
    for d in widths:
        for a in slopes:
            he = he_scale(d, a)
            lam_he = lyapunov_exponent(d, d, a, he)
            lam_glorot = lyapunov_exponent(d, d, a, glorot_scale(d, d))
            lam_orth = lyapunov_exponent(d, d, a, orthogonal_gain(a), "orthogonal")
            rows.append(
                f"| {d} | {a:g} | {lam_he:+.4f} | {lam_glorot:+.4f} | {lam_orth:+.4f} | {he:.4f} "
                f"| {critical_scale(d, d, a):.4f} | {critical_scale(d, d, a, 'orthogonal'):.4f} "
                f"| {log_norm_variance(d, d, a):.4f} | {depth * lam_he:+.2f} |"
            )
    note = (
        f"\nlambda: per-layer drift of E log(||x||/sqrt(d)) (square layers); drift over depth {depth}"
        " is depth * lambda(He); s^2: per-layer CLT variance of the log-norm (Gaussian).\n"
        "slope 0 (ReLU): log quantities are conditional on a non-zero layer output."
    )
    return "\n".join(rows) + note


#: What each column of :func:`theory_table` means (``theory --help``).
COLUMNS = """columns (one row per width d and slope a; square layers, d_in = d_out = d):
  lambda He / Glorot / orth  the exponent per layer of He, Glorot and orthogonal-with-gain init: the
                             expected change of the log-norm log(||x|| / sqrt(d)) through one layer
  sigma He                   He's weight standard deviation, sqrt(2 / ((1 + a^2) d))
  sigma Lyap                 the Gaussian weight standard deviation whose exponent is 0 (Lyapunov init)
  eta Lyap                   the gain of Haar orthogonal weights whose exponent is 0 (W = eta O)
  s^2 gauss                  the per-layer variance of the log-norm's change (Gaussian weights): one
                             draw's log-norm spreads like N(L lambda, L s^2) over L layers
  He drift over depth        depth x lambda He: the typical log-norm change over --depth layers"""


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """``python -m lightning_lyapunov.theory [--widths 2 4 16] [--slopes 0.01 0.1] [--depth 40]``."""
    description = ("Print the theory as a markdown table: per-layer exponents of He, Glorot and orthogonal-with-gain "
                   "init for square layers, the critical (Lyapunov) scales, and He's log-norm drift over --depth layers.")
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=COLUMNS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4, 16, 64, 256], metavar="D",
                        help="layer widths, one row each (default: 2 4 16 64 256)")
    parser.add_argument("--slopes", type=float, nargs="+", default=[0.0, 0.01, 0.1, 0.2], metavar="A",
                        help="Leaky ReLU negative slopes in [0, 1] (0: ReLU, 1: linear), one row each per width "
                             "(default: 0 0.01 0.1 0.2)")
    parser.add_argument("--depth", type=int, default=40, metavar="L",
                        help="number of layers of the last column's drift (default: 40)")
    args = parser.parse_args(argv)
    print(theory_table(args.widths, args.slopes, args.depth))


if __name__ == "__main__":
    main()
