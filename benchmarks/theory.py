"""``theory``: per-layer Lyapunov exponents of the classic inits, checked by Monte Carlo.

For square layers of width ``d`` with Leaky ReLU slope ``a`` the table lists the per-layer drift
``lambda = E log r(y) - log r(x)`` (``r(x) = ||x|| / sqrt(d)``) of He, Glorot and
orthogonal-with-gain, the critical (Lyapunov) scales next to He's, the exact per-layer growth of the
mean square at the Lyapunov Gaussian scale, and, for a subset, the drift measured on random chains
(mean per-layer log-norm increment +- standard error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks._lib.chains import gaussian_draw, log_norm_increments, orthogonal_draw
from benchmarks._lib.package import theory as th
from benchmarks._lib.report import Report, Sizes

TITLE = "Per-layer Lyapunov exponents of He, Glorot and orthogonal init, with Monte Carlo"
SEED = 0


@dataclass(frozen=True)
class Size:
    widths: tuple[int, ...]
    slopes: tuple[float, ...]
    mc_widths: tuple[int, ...]
    mc_slopes: tuple[float, ...]
    nets: int  # Monte Carlo chains per cell (a quarter above width 16: batched QR costs d^3)
    depth: int


SIZES = Sizes(
    quick=Size(widths=(2, 4, 16, 64), slopes=(0.01, 0.1), mc_widths=(2, 16), mc_slopes=(0.1,), nets=100, depth=20),
    full=Size(widths=(2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256), slopes=(0.01, 0.05, 0.1, 0.2),
              mc_widths=(2, 4, 16, 64), mc_slopes=(0.01, 0.1, 0.2), nets=400, depth=50),
)


# ----------------------------------------------------------------------------- the benchmark


def _schemes(d: int, a: float) -> dict[str, tuple[str, float]]:
    """name -> (distribution, scale) for a square layer of width d."""
    return {
        "he": ("gaussian", th.he_scale(d, a)),
        "orth": ("orthogonal", th.orthogonal_gain(a)),
        "lyap_gauss": ("gaussian", th.critical_scale(d, d, a)),
        "lyap_orth": ("orthogonal", th.critical_scale(d, d, a, "orthogonal")),
    }


def _monte_carlo(d: int, a: float, n_nets: int, depth: int, seed: int) -> dict[str, tuple[float, float]]:
    """scheme -> (mean per-layer increment, standard error) over n_nets x depth increments."""
    out = {}
    for i, (name, (law, scale)) in enumerate(_schemes(d, a).items()):
        generator = torch.Generator().manual_seed(seed + 1000 * i)
        draw = gaussian_draw(d, scale) if law == "gaussian" else orthogonal_draw(d, scale)
        inc = log_norm_increments(draw, d, a, n_nets, depth, generator).flatten()
        out[name] = (float(inc.mean()), float(inc.std() / math.sqrt(inc.numel())))
    return out


def _figure(rows: list[dict], slopes: tuple[float, ...]):
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, a in zip(colors, slopes):
        sub = [r for r in rows if r["slope"] == a]
        w = [r["width"] for r in sub]
        ax.plot(w, [-r["lambda_he"] for r in sub], "-", color=color, label=f"He, a={a:g}")
        ax.plot(w, [-r["lambda_glorot"] for r in sub], "--", color=color, label=f"Glorot, a={a:g}")
        ax.plot(w, [-r["lambda_orth"] for r in sub], ":", color=color, label=f"orthogonal, a={a:g}")
        mc = [r for r in sub if math.isfinite(r["mc_he"])]
        for key, marker in (("he", "o"), ("orth", "s")):
            ax.errorbar([r["width"] for r in mc], [-r[f"mc_{key}"] for r in mc],
                        yerr=[2 * r[f"mc_{key}_se"] for r in mc], fmt=marker, color=color, ms=4, capsize=2)
        ax2.plot(w, [r["sigma_lyap"] / r["sigma_he"] for r in sub], "-", color=color, label=f"Gaussian, a={a:g}")
        ax2.plot(w, [r["eta_lyap"] / r["eta_orth"] for r in sub], "--", color=color, label=f"orthogonal, a={a:g}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width d (square layers)")
    ax.set_ylabel("-lambda: log-norm lost per layer (log scale)")
    ax.set_title("Lyapunov exponent per layer\nlines: theory; markers: Monte Carlo (o He, s orthogonal, +-2 SE)")
    ax.legend(fontsize=7, ncol=2)
    ax2.axhline(1.0, color="k", lw=0.6)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("width d")
    ax2.set_ylabel("Lyapunov scale / classic scale")
    ax2.set_title("critical scales: sigma_lyap / sigma_He and eta_lyap / orthogonal gain")
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def mean_square_growth(d: int, a: float, sigma: float) -> float:
    """``log E r(y)^2 / r(x)^2`` of one square Gaussian layer (std ``sigma``) with Leaky ReLU slope ``a``:
    exactly ``log(sigma^2 (1 + a^2) d / 2)`` (the fractional-moment paper's Thm 7 at s = 2), whatever the
    input; so ``E r_L^2 = r_0^2 (sigma^2 (1 + a^2) d / 2)^L`` over ``L`` such layers."""
    return math.log(sigma * sigma * (1 + a * a) * d / 2)


def run(size: Size) -> Report:
    widths, slopes = size.widths, size.slopes
    chains = {d: size.nets if d <= 16 else size.nets // 4 for d in size.mc_widths}
    rows = []
    for d in widths:
        for a in slopes:
            he, orth = th.he_scale(d, a), th.orthogonal_gain(a)
            sigma_lyap = th.critical_scale(d, d, a)
            row = {
                "width": d, "slope": a,
                "lambda_he": th.lyapunov_exponent(d, d, a, he),
                "lambda_glorot": th.lyapunov_exponent(d, d, a, th.glorot_scale(d, d)),
                "lambda_orth": th.lyapunov_exponent(d, d, a, orth, "orthogonal"),
                "sigma_he": he, "sigma_lyap": sigma_lyap,
                "eta_orth": orth, "eta_lyap": th.critical_scale(d, d, a, "orthogonal"),
                "s2_gauss": th.log_norm_variance(d, d, a),
                "s2_orth": th.log_norm_variance(d, d, a, "orthogonal"),
                "log_ms_lyap_gauss": mean_square_growth(d, a, sigma_lyap),
            }
            mc = _monte_carlo(d, a, chains[d], size.depth, SEED) if d in size.mc_widths and a in size.mc_slopes else {}
            for name in ("he", "orth", "lyap_gauss", "lyap_orth"):
                mean, se = mc.get(name, (math.nan, math.nan))
                row[f"mc_{name}"], row[f"mc_{name}_se"] = mean, se
            rows.append(row)
    mc_rows = [r for r in rows if math.isfinite(r["mc_he"])]
    z = {
        name: [abs(r[f"mc_{name}"] - pred(r)) / r[f"mc_{name}_se"] for r in mc_rows]
        for name, pred in (
            ("he", lambda r: r["lambda_he"]), ("orth", lambda r: r["lambda_orth"]),
            ("lyap_gauss", lambda r: 0.0), ("lyap_orth", lambda r: 0.0),
        )
    }
    z_all = np.concatenate([np.asarray(v) for v in z.values()])
    by = {(r["width"], r["slope"]): r for r in rows}
    r2, r16, wide = by.get((2, 0.1)), by.get((16, 0.1)), by.get((widths[-1], slopes[0]))
    setup = (
        f"Square layers, widths {list(widths)}, Leaky ReLU slopes {list(slopes)}. Theory: "
        "`lightning_lyapunov.theory` (exponents of He `sigma^2 = 2/((1+a^2) d)`, Glorot `sigma^2 = 1/d`, "
        "Haar orthogonal with gain `sqrt(2/(1+a^2))`; Lyapunov critical scales `sigma_lyap`, `eta_lyap`; "
        "per-layer CLT variances `s2_*`); `log_ms_lyap_gauss` = log(sigma_lyap^2 (1+a^2) d / 2), the exact "
        "per-layer growth of the mean square E r^2 at the Lyapunov Gaussian scale (the fractional-moment "
        "paper's Thm 7 at s = 2), against the log-normal approximation 2 s2_gauss.\n\n"
        f"Monte Carlo (torch float64, seed {SEED} + 1000 x scheme index) for widths {list(size.mc_widths)} x slopes "
        f"{list(size.mc_slopes)}: {size.nets} independent chains (above width 16: {size.nets // 4}) x {size.depth} "
        "layers per scheme, input `(1, ..., 1)`, signal renormalized after each layer; `mc_*` = mean per-layer "
        "increment of `log(||x||/sqrt(d))`, `mc_*_se` = its standard error (std / sqrt(chains x layers); the "
        "increments are i.i.d. because a Gaussian or Haar layer's output law depends on the input only "
        "through its norm). Schemes measured: He, orthogonal with gain, Lyapunov Gaussian and "
        "Lyapunov orthogonal (predicted 0)."
    )
    findings = [
        f"Monte Carlo against the closed forms: over {len(z_all)} (width, slope, scheme) cells the median "
        f"|measured - predicted| is {np.median(z_all):.2f} standard errors, the largest {np.max(z_all):.2f} (He "
        f"{max(z['he']):.2f}, orthogonal {max(z['orth']):.2f}, Lyapunov Gaussian {max(z['lyap_gauss']):.2f}, "
        f"Lyapunov orthogonal {max(z['lyap_orth']):.2f}); {int((z_all > 2).sum())} of {len(z_all)} cells are beyond "
        f"2 standard errors (about {0.0455 * len(z_all):.1f} expected by chance).",
    ]
    if r2 is not None:
        findings.append(
            f"Width 2, slope 0.1: He drifts {r2['lambda_he']:+.3f} per layer (Glorot {r2['lambda_glorot']:+.3f}, "
            f"orthogonal {r2['lambda_orth']:+.3f}), i.e. {40 * r2['lambda_he']:+.1f} in log-norm over 40 layers; "
            f"the Lyapunov scales are sigma = {r2['sigma_lyap']:.3f} (He {r2['sigma_he']:.3f}, "
            f"{r2['sigma_lyap'] / r2['sigma_he']:.2f}x) and eta = {r2['eta_lyap']:.3f} (gain {r2['eta_orth']:.3f}). "
            f"At sigma_lyap the mean square grows by exactly e^{r2['log_ms_lyap_gauss']:.3f} per layer (the "
            f"log-normal approximation e^(2 s^2) says e^{2 * r2['s2_gauss']:.3f}): the median net keeps its scale "
            "while the mean square, carried by rare large draws, grows.")
    if r16 is not None:
        findings.append(
            f"Width 16, slope 0.1: He {r16['lambda_he']:+.4f}, orthogonal {r16['lambda_orth']:+.4f} per layer; "
            f"sigma_lyap / sigma_He = {r16['sigma_lyap'] / r16['sigma_he']:.3f}.")
    if wide is not None:
        findings.append(
            f"At width {widths[-1]} (slope {slopes[0]:g}) He drifts {wide['lambda_he']:+.5f} per layer and "
            f"orthogonal {wide['lambda_orth']:+.5f}; the Lyapunov scales differ from He's / the gain by "
            f"{100 * (wide['sigma_lyap'] / wide['sigma_he'] - 1):.2f}% and "
            f"{100 * (wide['eta_lyap'] / wide['eta_orth'] - 1):.2f}%.")
    less = all(r["lambda_he"] < r["lambda_orth"] < 0 for r in rows)
    gap = {a: [r["lambda_glorot"] - r["lambda_he"] for r in rows if r["slope"] == a] for a in slopes}
    same = all(max(abs(g - 0.5 * math.log((1 + a * a) / 2)) for g in gs) < 1e-9 for a, gs in gap.items())
    findings.append(
        ("Orthogonal-with-gain drifts less than He, and still negatively, in every cell of the table"
         if less else "Orthogonal-with-gain does not drift less than He in every cell (see the table)")
        + ". Glorot's drift minus He's: " + ", ".join(f"{gs[0]:+.4f} at slope {a:g}" for a, gs in gap.items())
        + (", the same at every width (log sqrt((1+a^2)/2): Glorot's variance 1/d against He's 2/((1+a^2) d))"
           if same else " (not the same at every width: see the table)") + ".")
    summary = [findings[0]]
    if r2 is not None:
        summary.append(f"Width 2, slope 0.1: He drifts {r2['lambda_he']:+.4f} per layer; Lyapunov scales "
                       f"sigma = {r2['sigma_lyap']:.3f} (He {r2['sigma_he']:.3f}), eta = {r2['eta_lyap']:.3f}.")
    if wide is not None:
        summary.append(f"Width {widths[-1]}: the Lyapunov scale differs from He's by "
                       f"{100 * (wide['sigma_lyap'] / wide['sigma_he'] - 1):.2f}%.")
    return Report(name="theory", title=TITLE, setup=setup, rows=rows, findings=findings, summary=summary,
                  figure=_figure(rows, slopes))
