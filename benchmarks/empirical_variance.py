"""``empirical_variance``: the vanishing empirical variance of deep narrow nets.

Width 10, depth 100, many random networks per scheme. Following the vanishing-empirical-variance
paper (DESIGN section 6): for each net and each Linear layer, the unbiased variance of output unit
0 (before the activation) over a fixed data set; its quantiles over nets by depth; the fraction of
nets whose variance fell below 1e-3; and the kurtosis of the pre-activations over random nets for
a fixed input against ``theory.kurtosis_by_depth``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks._lib import stats
from benchmarks._lib.chains import leaky_relu, square_draw
from benchmarks._lib.package import theory as th
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import RELU_NOTE

WIDTH, DEPTH, N_DATA, SEED, CHUNK = 10, 100, 256, 0, 100
TITLE = f"Vanishing empirical variance at width {WIDTH}, depth {DEPTH}"
THRESHOLD, AT_DEPTH = 1e-3, 80
SLOPES = (0.0, 0.1)
QUANTILES = (0.5, 0.9, 0.99, 0.999)
TABLE_DEPTHS = (1, 2, 5, 10, 20, 40, 80, 100)
SCHEMES = ("he", "lyapunov gaussian", "lyapunov orthogonal", "orthogonal", "stiefel", "zero")


@dataclass(frozen=True)
class Size:
    nets: int


SIZES = Sizes(quick=Size(nets=100), full=Size(nets=1000))


def _propagate(sample, a: float, x: torch.Tensor, n: int, generator: torch.Generator):
    """Empirical variance of unit 0 over the data, (n, DEPTH); and sums of h^2, h^4 at input 0."""
    h_in = x.T.unsqueeze(0).expand(n, -1, -1)  # (n, WIDTH, N_DATA)
    var = torch.empty(n, DEPTH, dtype=torch.float64)
    m2 = torch.empty(DEPTH, dtype=torch.float64)
    m4 = torch.empty(DEPTH, dtype=torch.float64)
    for layer in range(DEPTH):
        h = torch.bmm(sample(n, generator), h_in)
        var[:, layer] = h[:, 0, :].var(dim=1)
        fixed = h[:, :, 0]  # every unit of every net at input 0
        m2[layer], m4[layer] = fixed.pow(2).sum(), fixed.pow(4).sum()
        h_in = leaky_relu(h, a)
    return var, m2, m4


def _measure(scheme: str, a: float, x: torch.Tensor, n_nets: int, seed: int) -> dict[str, np.ndarray]:
    sample = square_draw(scheme, WIDTH, a)
    if scheme == "zero":
        n_nets = 1
    variances, m2, m4, fractions = [], 0.0, 0.0, []
    for chunk, start in enumerate(range(0, n_nets, CHUNK)):
        n = min(CHUNK, n_nets - start)
        generator = torch.Generator().manual_seed(seed + chunk)
        var, s2, s4 = _propagate(sample, a, x, n, generator)
        variances.append(var)
        m2, m4 = m2 + s2, m4 + s4
        fractions.append(float((var[:, AT_DEPTH - 1] < THRESHOLD).double().mean()))
    count = n_nets * WIDTH
    kurtosis = ((m4 / count) / (m2 / count) ** 2).numpy() if scheme != "zero" else np.full(DEPTH, np.nan)
    return {"var": torch.cat(variances).numpy(), "kurtosis": kurtosis, "chunk_fractions": np.asarray(fractions)}


def _figure(results: dict, predicted: dict):
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    colors = dict(zip(SCHEMES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    depth = np.arange(1, DEPTH + 1)
    styles = {0.0: "-", 0.1: "--"}
    for (scheme, a), r in results.items():
        var = r["var"]
        kw = dict(color=colors[scheme], ls=styles[a], label=f"{scheme}, a={a:g}")
        axes[0, 0].plot(depth, np.quantile(var, 0.9, axis=0), **kw)
        axes[0, 1].plot(depth, np.median(var, axis=0), **kw)
        axes[1, 0].plot(depth, (var < THRESHOLD).mean(axis=0), **kw)
        if scheme in ("he", "lyapunov gaussian", "orthogonal"):
            axes[1, 1].plot(depth, r["kurtosis"], marker=".", ms=3, lw=0.8, **kw)
    for a in SLOPES:
        axes[1, 1].plot(depth, predicted[a], color="k", ls=styles[a], lw=1.5, label=f"theory (Gaussian), a={a:g}")
    for ax, title in (
        (axes[0, 0], "0.9 quantile over nets of the empirical variance (unit 0)"),
        (axes[0, 1], "median over nets of the empirical variance (unit 0)"),
    ):
        ax.set_yscale("log")
        ax.axhline(THRESHOLD, color="gray", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("empirical variance over the data set")
    axes[1, 0].axvline(AT_DEPTH, color="gray", lw=0.8)
    axes[1, 0].set_title(f"fraction of nets with empirical variance < {THRESHOLD:g}", fontsize=10)
    axes[1, 0].set_ylabel("fraction of nets")
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_xlim(0, 30)
    axes[1, 1].set_ylim(1, 1e4)
    axes[1, 1].set_title("kurtosis over random nets, fixed input (first 30 layers)", fontsize=10)
    axes[1, 1].set_ylabel("E h^4 / (E h^2)^2")
    for ax in axes.ravel():
        ax.set_xlabel("depth (Linear layer)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    axes[1, 1].legend(fontsize=7)
    fig.suptitle(f"Width {WIDTH}, depth {DEPTH}; solid: ReLU, dashed: Leaky ReLU 0.1")
    fig.tight_layout()
    return fig


def run(size: Size) -> Report:
    n_nets = size.nets
    x = torch.randn(N_DATA, WIDTH, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
    results, predicted, rows = {}, {}, []
    for a in SLOPES:
        predicted[a] = th.kurtosis_by_depth(WIDTH, a, depth=DEPTH)
        for i, scheme in enumerate(SCHEMES):
            r = results[(scheme, a)] = _measure(scheme, a, x, n_nets, SEED + 1 + 1000 * i)
            var = r["var"]
            for L in TABLE_DEPTHS:
                col = var[:, L - 1]
                row = {"activation": "relu" if a == 0 else f"leaky_relu({a:g})", "scheme": scheme, "depth": L,
                       "nets": len(col)}
                row.update({f"q{q:g}": float(np.quantile(col, q)) for q in QUANTILES})
                row["frac_below_1e-3"] = float((col < THRESHOLD).mean())
                row["kurtosis"] = float(r["kurtosis"][L - 1])
                gaussian = scheme in ("he", "lyapunov gaussian")
                row["kurtosis_theory"] = float(predicted[a][L - 1]) if gaussian else math.nan
                rows.append(row)
    setup = (
        f"Width {WIDTH}, depth {DEPTH}: {DEPTH} square Linear layers {WIDTH} -> {WIDTH} (bias 0), each followed by "
        f"the activation; activations ReLU (slope 0, the paper's setting) and Leaky ReLU 0.1 (DESIGN's "
        f"experiments); every layer's scale uses that slope. Data: a fixed set of {N_DATA} Gaussian inputs "
        f"N(0, I_{WIDTH}) (seed {SEED}). {n_nets} random networks per scheme and activation (ZerO is "
        f"deterministic: 1 net), drawn in batches of {CHUNK} (batched (n, {WIDTH}, {WIDTH}) weights at the theory "
        "scales, Haar orthogonal by sign-fixed batched QR, the Stiefel sampler of DESIGN section 5; seed "
        f"{SEED + 1} + 1000 x scheme index + batch index; float64). Schemes: He, Lyapunov Gaussian, Lyapunov "
        "orthogonal, orthogonal with gain sqrt(2/(1+a^2)), Stiefel (gain 1), ZerO (identity).\n\n"
        "Measured per net and Linear layer: the unbiased variance over the data set of output unit 0 before "
        "the activation (the paper's quantity); `q*` = its quantiles over nets (with 1000 nets q0.999 is "
        f"the second-largest value), `frac_below_1e-3` = fraction of nets with variance < {THRESHOLD:g}. "
        "`kurtosis` = E h^4 / (E h^2)^2 of the pre-activations at input 0, pooled over the 10 units and "
        "all nets (over random weights, fixed input); `kurtosis_theory` = `theory.kurtosis_by_depth` "
        "(i.i.d. Gaussian weights; the same for every Gaussian scale). Fractions of nets come with 95% "
        "Wilson intervals; schemes are compared by Fisher's exact test (their nets are independent draws)."
    )
    findings = _findings(results, predicted, n_nets)
    return Report(name="empirical_variance", title=TITLE, setup=setup, rows=rows, findings=findings,
                  summary=findings[:3], figure=_figure(results, predicted))


def _collapsed(results: dict, scheme: str, a: float) -> tuple[int, int]:
    col = results[(scheme, a)]["var"][:, AT_DEPTH - 1]
    return int((col < THRESHOLD).sum()), len(col)


def _findings(results: dict, predicted: dict, n_nets: int) -> list[str]:
    lines = []
    for a in SLOPES:
        name = "ReLU" if a == 0 else f"Leaky ReLU {a:g}"
        parts = [f"{scheme} {stats.Count(*_collapsed(results, scheme, a))}" for scheme in SCHEMES]
        lines.append(f"{name}: nets with output-unit variance < {THRESHOLD:g} at depth {AT_DEPTH}: "
                     + "; ".join(parts) + " (ZerO: one deterministic net).")
    random = [s for s in SCHEMES if s != "zero"]
    for a in SLOPES:
        frac = {s: _collapsed(results, s, a) for s in random}
        best = min(random, key=lambda s: frac[s][0] / frac[s][1])
        lyap = min(("lyapunov gaussian", "lyapunov orthogonal"), key=lambda s: frac[s][0] / frac[s][1])
        name = "ReLU" if a == 0 else f"Leaky ReLU {a:g}"
        if best == lyap:
            lines.append(f"{name}, fewest collapsed nets among the random schemes: {lyap}. "
                         + stats.compare_fractions(*frac[lyap], *frac["he"], lyap, "he", "collapsed nets") + ".")
        else:
            lines.append(f"{name}, fewest collapsed nets among the random schemes: {best}, not a Lyapunov variant. "
                         + stats.compare_fractions(*frac[best], *frac[lyap], best, lyap, "collapsed nets") + "; "
                         + stats.compare_fractions(*frac[lyap], *frac["he"], lyap, "he", "collapsed nets") + ".")
    he, ly = results[("he", 0.0)]["var"][:, AT_DEPTH - 1], results[("lyapunov gaussian", 0.0)]["var"][:, AT_DEPTH - 1]
    lines.append(
        f"ReLU, depth {AT_DEPTH}: median variance He {np.median(he):.2e}, Lyapunov Gaussian {np.median(ly):.2e}; "
        f"0.999 quantile He {np.quantile(he, 0.999):.2e}, Lyapunov Gaussian {np.quantile(ly, 0.999):.2e}. "
        "Reference (paper, He, ReLU, CIFAR-10, width 10): at least 90% of nets below 1e-3 after 80 layers "
        f"(its lower bound); here, He with Gaussian inputs: {stats.Count(*_collapsed(results, 'he', 0.0))}.")
    for a in SLOPES:
        k = results[("he", a)]["kurtosis"]
        ratio = k / predicted[a]
        off = np.flatnonzero(np.abs(ratio - 1.0) > 0.25)
        agree = int(off[0]) if off.size else DEPTH
        lines.append(
            f"Kurtosis, He, slope {a:g}: measured {k[1]:.2f} / {k[4]:.1f} / {k[9]:.0f} at depths 2 / 5 / 10 against "
            f"predicted {predicted[a][1]:.2f} / {predicted[a][4]:.1f} / {predicted[a][9]:.0f}; within 25% of the "
            f"recursion for the first {agree} layers; the predicted kurtosis grows x{predicted[a][2] / predicted[a][1]:.2f} "
            f"per layer ({predicted[a][-1]:.1e} at depth {DEPTH}), carried by events rarer than 1 in {n_nets} nets.")
    kg, kh = results[("lyapunov gaussian", 0.1)]["kurtosis"], results[("he", 0.1)]["kurtosis"]
    lines.append(f"Kurtosis at depth 5, slope 0.1: Lyapunov Gaussian {kg[4]:.1f}, He {kh[4]:.1f} (the recursion does "
                 "not depend on the Gaussian scale).")
    lines.append("The ReLU rows: " + RELU_NOTE)
    return lines
