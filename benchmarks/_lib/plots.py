"""Figure helpers shared by the benchmarks. ``matplotlib``'s backend is the runner's business
(``python -m benchmarks`` selects Agg); nothing here selects one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from benchmarks._lib import stats


def color_of(i: int) -> str:
    """The i-th line color: tab10, then black, then tab10 again."""
    palette = [*plt.get_cmap("tab10").colors, "black"]
    return palette[i % len(palette)]


def band(ax, x: Sequence[float] | np.ndarray, values: np.ndarray, label: str, color=None, style: str = "-",
         scale: float = 1.0, higher_is_better: bool = False, marker: str | None = None) -> None:
    """The median over seeds (line) and the interquartile band of ``values`` ``(len(x), seeds)``."""
    v = np.asarray(values, dtype=float) * scale
    med = stats.median(v, higher_is_better, axis=1)
    lo, hi = stats.quantile(v, [0.25, 0.75], higher_is_better, axis=1)
    (line,) = ax.plot(x, med, style, color=color, label=label, lw=1.6, marker=marker, ms=3)
    cap = 1e30
    ax.fill_between(x, np.clip(lo, -cap, cap), np.clip(hi, -cap, cap), color=line.get_color(), alpha=0.15, lw=0)


def curves(ax, x: Sequence[float] | np.ndarray, by_label: Mapping[str, np.ndarray], scale: float = 1.0,
           higher_is_better: bool = False, dashed: str | None = None) -> None:
    """:func:`band` for every labelled ``(len(x), seeds)`` array (labels containing ``dashed`` dashed)."""
    for i, (label, values) in enumerate(by_label.items()):
        style = "--" if dashed and dashed in label else "-"
        band(ax, x, values, label, color_of(i), style, scale, higher_is_better)
    ax.grid(alpha=0.3)


def dots(ax, by_label: Mapping[str, np.ndarray], xlabel: str, log: bool = True,
         limits: tuple[float, float] | None = None) -> None:
    """Every seed's value per label (dots, one row per label) with the median (bar). Infinite values
    (diverged runs) are drawn at 3 times the largest finite one; ``limits`` clips the axis."""
    values = {k: np.asarray(v, dtype=float) for k, v in by_label.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] or [np.ones(1)])
    top = float(finite.max()) * 3 if finite.size else 1.0
    for j, (label, v) in enumerate(values.items()):
        ys = np.where(np.isfinite(v), v, top)
        if limits is not None:
            ys = np.clip(ys, *limits)
        ax.scatter(ys, j + np.linspace(-0.25, 0.25, len(ys)), s=12, color=color_of(j), alpha=0.8)
        ax.plot([np.median(ys)] * 2, [j - 0.4, j + 0.4], color="black", lw=2)
    ax.set_yticks(range(len(values)), list(values))
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    if limits is not None:
        ax.set_xlim(limits[0] / 1.05, limits[1] * 1.05)
    ax.set_xlabel(f"{xlabel} per seed (bar: median)")
    ax.grid(True, axis="x", alpha=0.3)
