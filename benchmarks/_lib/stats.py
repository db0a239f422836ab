"""The statistics every conclusion is computed with, and the sentences that state them.

Runs are paired by seed: in every benchmark seed ``k`` draws scheme A's and scheme B's weights from
the same generator seed and (where the batch order is seeded) shows them the same batches, so the
comparison of two schemes is over the paired differences ``a_k - b_k``:

* :func:`compare`: the median of the paired differences with a percentile bootstrap interval, and a
  two-sided exact sign test (ties dropped). "A beats B" only when the sign test rejects at ``alpha``
  *and* the interval excludes 0; otherwise the two are "not distinguishable";
* :func:`count` / :func:`compare_counts`: how many runs trained, with a Wilson interval; two schemes'
  counts compared by the sign test on the seeds where exactly one of them trained (McNemar's exact test);
* :func:`median` is ``np.median`` (the mean of the two middle values for an even count, never a
  nearest rank) and :func:`quantile` interpolates linearly; a non-finite value (a diverged run) counts
  as the worst value, never as missing.

Example::

    >>> a, b = [0.1, 0.2, 0.15, 0.12, 0.3, 0.11], [1.0, 0.9, 1.1, 1.0, 0.95, 1.2]
    >>> compare(a, b, "Lyapunov", "He", higher_is_better=False).verdict
    'Lyapunov'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL, ALPHA, RESAMPLES = 0.95, 0.05, 10_000
_Z = {0.9: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}
_HUGE = 1e300


def worst_for_nan(values: Iterable[float] | np.ndarray, higher_is_better: bool) -> np.ndarray:
    """``values`` as floats with NaN replaced by the worst value (``-inf`` when higher is better,
    ``+inf`` when lower is better): a diverged run ranks last instead of disappearing."""
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    return np.where(np.isnan(array), -np.inf if higher_is_better else np.inf, array)


def median(values: Iterable[float] | np.ndarray, higher_is_better: bool = False, axis: int | None = None):
    """``np.median`` with NaN counted as the worst value (see :func:`worst_for_nan`)."""
    return np.median(worst_for_nan(values, higher_is_better), axis=axis)


def quantile(values: Iterable[float] | np.ndarray, q, higher_is_better: bool = False, axis: int | None = None):
    """Linear-interpolation quantiles (numpy's default) that treat infinities as the limit: a quantile
    between a finite value and ``+inf`` is ``+inf`` (numpy gives ``nan`` between two infinities)."""
    array = worst_for_nan(values, higher_is_better)
    clipped = np.clip(array, -np.finfo(float).max, np.finfo(float).max)
    out = np.quantile(clipped, q, axis=axis)
    return np.where(out > _HUGE, np.inf, np.where(out < -_HUGE, -np.inf, out))


def med_iqr(values: Iterable[float] | np.ndarray, higher_is_better: bool = False) -> tuple[float, float, float]:
    """(median, 25th percentile, 75th percentile)."""
    array = worst_for_nan(values, higher_is_better)
    if array.size == 0:
        return math.nan, math.nan, math.nan
    q25, q75 = quantile(array, [0.25, 0.75])
    return float(np.median(array)), float(q25), float(q75)


def cell(values: Iterable[float] | np.ndarray, scale: float = 1.0, digits: int = 3,
         higher_is_better: bool = False, fixed: bool = False) -> str:
    """``"median [q25, q75]"`` of ``values * scale`` for a table cell (``fixed``: ``digits`` decimals,
    else ``digits`` significant digits)."""
    med, lo, hi = (v * scale for v in med_iqr(values, higher_is_better))
    if math.isnan(med):
        return "nan"
    spec = f".{digits}f" if fixed else f".{digits}g"
    return f"{med:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def percent(values: Iterable[float] | np.ndarray) -> str:
    """``"median [q25, q75]"`` of fractions in percent with one decimal (accuracies)."""
    return cell(values, 100.0, 1, higher_is_better=True, fixed=True)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of ``wins`` against ``losses`` (ties already dropped): the probability
    under a fair coin of a split at least this uneven."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_median(values: Sequence[float] | np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (resampled with replacement,
    ``resamples`` times, from ``np.random.default_rng(seed)``)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    medians = np.median(array[rng.integers(0, array.size, (resamples, array.size))], axis=1)
    lo, hi = quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return 0.0, 1.0
    z = _Z[level]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def plural(k: int, unit: str = "seeds") -> str:
    """``"1 seed"``, ``"3 seeds"``."""
    return f"{k} {unit[:-1] if k == 1 and unit.endswith('s') else unit}"


def number(value: float, style: str = "g") -> str:
    """A number in a sentence: ``"g"`` 3 significant digits, ``"percent"`` a fraction as ``"91.2%"``,
    ``"points"`` a difference of fractions as ``"+1.2 points"``, ``"signed"`` ``"+0.0123"``-like."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if style == "percent":
        return f"{100 * value:.1f}%"
    if style == "points":
        return f"{100 * value:+.1f} points"
    if style == "signed":
        return f"{value:+.3g}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class Paired:
    """A paired comparison of ``a`` and ``b`` over seeds (see :func:`compare`)."""

    a: str
    b: str
    median_a: float
    median_b: float
    difference: float  # median of the paired differences a - b
    lo: float
    hi: float
    wins: int  # seeds where a is better
    losses: int  # seeds where b is better
    ties: int
    p: float
    higher_is_better: bool
    level: float = LEVEL
    alpha: float = ALPHA

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def verdict(self) -> str | None:
        """The label of the better scheme, or None when the two are not distinguishable."""
        if self.p >= self.alpha or not (self.lo > 0 or self.hi < 0):
            return None
        a_better = (self.lo > 0) == self.higher_is_better
        if a_better != (self.wins > self.losses):
            return None  # the interval and the sign test disagree on the direction
        return self.a if a_better else self.b

    def sentence(self, metric: str, style: str = "g") -> str:
        """``"A beats B in <metric>: median X vs Y, ..."`` or ``"A and B are not distinguishable in
        <metric> (median X vs Y, ...)"``; ``style`` formats the numbers (see :func:`number`)."""
        diff_style = {"percent": "points", "g": "signed"}.get(style, style)
        numbers = (f"median {number(self.median_a, style)} vs {number(self.median_b, style)}, paired difference "
                   f"{number(self.difference, diff_style)} [{number(self.lo, diff_style)}, "
                   f"{number(self.hi, diff_style)}] ({100 * self.level:.0f}% bootstrap), {plural(self.wins)} better, "
                   f"{self.losses} worse, {self.ties} tied, sign test p = {self.p:.2g}, n = {plural(self.n)}")
        verdict = self.verdict
        if verdict is None:
            return f"{self.a} and {self.b} are not distinguishable in {metric} ({numbers})"
        if verdict == self.a:
            return f"{self.a} beats {self.b} in {metric}: {numbers}"
        flipped = (f"median {number(self.median_b, style)} vs {number(self.median_a, style)}, paired difference "
                   f"{number(-self.difference, diff_style)} [{number(-self.hi, diff_style)}, "
                   f"{number(-self.lo, diff_style)}] ({100 * self.level:.0f}% bootstrap), {plural(self.losses)} better, "
                   f"{self.wins} worse, {self.ties} tied, sign test p = {self.p:.2g}, n = {plural(self.n)}")
        return f"{self.b} beats {self.a} in {metric}: {flipped}"


def compare(a_values: Sequence[float] | np.ndarray, b_values: Sequence[float] | np.ndarray, a: str, b: str, *,
            higher_is_better: bool, level: float = LEVEL, alpha: float = ALPHA, resamples: int = RESAMPLES,
            seed: int = 0) -> Paired:
    """Paired comparison of two schemes' per-seed values (``a_values[k]`` and ``b_values[k]`` from seed k).

    Non-finite values count as the worst (a diverged run); two equal infinities are a tie. Returns the
    two medians, the median paired difference ``a - b`` with its bootstrap interval, the wins, losses
    and ties of ``a`` and the two-sided sign-test p-value.
    """
    x, y = worst_for_nan(a_values, higher_is_better), worst_for_nan(b_values, higher_is_better)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same seeds: {a} has {x.shape}, {b} has {y.shape}")
    with np.errstate(invalid="ignore"):
        diff = np.where(x == y, 0.0, x - y)
    better = diff > 0 if higher_is_better else diff < 0
    worse = diff < 0 if higher_is_better else diff > 0
    wins, losses = int(better.sum()), int(worse.sum())
    lo, hi = bootstrap_median(diff, level, resamples, seed)
    return Paired(a, b, float(np.median(x)), float(np.median(y)), float(np.median(diff)), lo, hi, wins, losses,
                  int(diff.size) - wins - losses, sign_test(wins, losses), higher_is_better, level, alpha)


@dataclass(frozen=True)
class Count:
    """``k`` of ``n`` runs with a property (e.g. trained), with a Wilson interval."""

    k: int
    n: int
    level: float = LEVEL

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n, self.level)

    def __str__(self) -> str:
        lo, hi = self.interval
        digits = 1 if self.n >= 200 else 0
        return f"{self.k}/{self.n} [{100 * lo:.{digits}f}%, {100 * hi:.{digits}f}%]"


def count(flags: Iterable[bool] | np.ndarray, level: float = LEVEL) -> Count:
    """How many of the runs have ``flags`` true (``"k/n [lo%, hi%]"`` with a Wilson interval)."""
    array = np.asarray(list(flags) if not isinstance(flags, np.ndarray) else flags, dtype=bool)
    return Count(int(array.sum()), int(array.size), level)


def compare_counts(a_flags: Sequence[bool] | np.ndarray, b_flags: Sequence[bool] | np.ndarray, a: str, b: str,
                   what: str = "trained", alpha: float = ALPHA, unit: str = "seeds") -> str:
    """A sentence comparing two schemes' counts over the same seeds (``unit``): McNemar's exact test, the
    sign test on the seeds where exactly one of the two has the property."""
    x, y = np.asarray(a_flags, dtype=bool), np.asarray(b_flags, dtype=bool)
    only_a, only_b = int((x & ~y).sum()), int((y & ~x).sum())
    p = sign_test(only_a, only_b)
    numbers = (f"{a} {count(x)}, {b} {count(y)} (95% Wilson intervals); {what} for {a} only on "
               f"{plural(only_a, unit)}, for {b} only on {only_b}, sign test p = {p:.2g}")
    if p < alpha:
        winner, loser = (a, b) if only_a > only_b else (b, a)
        return f"{winner} is {what} more often than {loser}: {numbers}"
    return f"{a} and {b} are not distinguishable in how often they are {what} ({numbers})"


def compare_fractions(k_a: int, n_a: int, k_b: int, n_b: int, a: str, b: str, what: str,
                      alpha: float = ALPHA) -> str:
    """A sentence comparing two fractions from independent samples (e.g. collapsed nets of two schemes
    drawn with different seeds): Wilson intervals and Fisher's exact test."""
    from scipy.stats import fisher_exact

    p = float(fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]]).pvalue)
    numbers = f"{a} {Count(k_a, n_a)}, {b} {Count(k_b, n_b)} (95% Wilson intervals), Fisher's exact test p = {p:.2g}"
    if p < alpha:
        more, fewer = (a, b) if k_a / n_a > k_b / n_b else (b, a)
        return f"{more} has more {what} than {fewer}: {numbers}"
    return f"{a} and {b} are not distinguishable in {what} ({numbers})"


def best(values: Mapping[str, Sequence[float] | np.ndarray], higher_is_better: bool) -> str:
    """The label with the best median (ties: the first in ``values``' order)."""
    medians = {label: float(median(v, higher_is_better)) for label, v in values.items()}
    sign = -1.0 if higher_is_better else 1.0
    return min(medians, key=lambda label: sign * medians[label])


def ranking(values: Mapping[str, Sequence[float] | np.ndarray], higher_is_better: bool, style: str = "g") -> str:
    """``"label median [q25, q75]; ..."`` best median first (a description, not a test: use
    :func:`compare` for any claim that one is better)."""
    medians = {label: float(median(v, higher_is_better)) for label, v in values.items()}
    order = sorted(values, key=lambda label: (-medians[label] if higher_is_better else medians[label]))
    if style == "percent":
        return "; ".join(f"{label} {percent(values[label])}%" for label in order)
    return "; ".join(f"{label} {cell(values[label], higher_is_better=higher_is_better)}" for label in order)


def against_best(values: Mapping[str, Sequence[float] | np.ndarray], metric: str, higher_is_better: bool,
                 style: str = "g", among: Sequence[str] | None = None) -> list[str]:
    """The scheme with the best median compared with every other one (or those in ``among``): one
    sentence each, from :func:`compare`."""
    leader = best(values, higher_is_better)
    others = [label for label in (among or values) if label != leader]
    return [compare(values[leader], values[o], leader, o, higher_is_better=higher_is_better).sentence(metric, style)
            for o in others]


def rank_correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, level: float = LEVEL,
                     resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rank correlation of paired observations ``(x_i, y_i)`` (average ranks for ties) with a
    percentile bootstrap interval (pairs resampled with replacement): ``(rho, lo, hi)``. NaN pairs are
    dropped; fewer than 3 pairs give NaN."""
    from scipy.stats import rankdata

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if a.size < 3:
        return math.nan, math.nan, math.nan

    def rho(idx: np.ndarray) -> np.ndarray:  # one row of indices per resample
        ra, rb = rankdata(a[idx], axis=-1), rankdata(b[idx], axis=-1)
        ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (ra * rb).sum(-1) / np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))

    rng = np.random.default_rng(seed)
    boot = rho(rng.integers(0, a.size, (resamples, a.size)))
    lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(rho(np.arange(a.size)[None])[0]), float(lo), float(hi)


def correlation_sentence(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, what: str,
                         level: float = LEVEL) -> str:
    """``"<what>: Spearman rho = -0.62 [-0.70, -0.53] (95% bootstrap, n = 240), negative"`` (``"no
    monotone association shown"`` when the interval holds 0)."""
    r, lo, hi = rank_correlation(x, y, level)
    n = int((~(np.isnan(np.asarray(x, float)) | np.isnan(np.asarray(y, float)))).sum())
    sign = "negative" if hi < 0 else "positive" if lo > 0 else "no monotone association shown (the interval holds 0)"
    return f"{what}: Spearman rho = {r:+.2f} [{lo:+.2f}, {hi:+.2f}] ({100 * level:.0f}% bootstrap, n = {n}), {sign}"
