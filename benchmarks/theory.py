"""Benchmark 1 (``theory``): per-layer Lyapunov exponents of the classic inits, checked by Monte Carlo.

For square layers of width ``d`` with Leaky ReLU slope ``a`` the table lists the per-layer drift
``lambda = E log r(y) - log r(x)`` (``r(x) = ||x|| / sqrt(d)``) of He, Glorot and
orthogonal-with-gain, the critical (Lyapunov) scales next to He's, and, for a subset, the drift
measured on random chains (mean per-layer log-norm increment +- standard error). The batched
weight samplers and the chain propagation here are shared with ``lln_clt`` and
``empirical_variance``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import Report
from lightning_lyapunov import theory as th

SEED = 0
Draw = Callable[[int, torch.Generator], torch.Tensor]  # (n_nets, generator) -> weights (n_nets, d, d)


# ----------------------------------------------------------------------------- shared helpers


def batched_haar(n: int, d: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` independent Haar orthogonal ``d x d`` matrices: Q of a Gaussian matrix, sign-fixed
    so that ``diag(R) > 0`` (the same law as ``lightning_lyapunov.init.orthogonal_``)."""
    q, r = torch.linalg.qr(torch.randn(n, d, d, generator=generator, dtype=dtype))
    signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) >= 0, 1.0, -1.0).to(dtype)
    return q * signs.unsqueeze(-2)


def batched_stiefel(n: int, d: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` square mean-calibrated orthogonal matrices ``P_1 P_2^T`` (``P`` the sign-fixed Q of
    ``[1 | Gaussian]``, as ``lightning_lyapunov.init.stiefel_orthogonal_``): ``W 1 = 1``."""

    def basis() -> torch.Tensor:
        columns = torch.randn(n, d, d, generator=generator, dtype=dtype)
        columns[:, :, 0] = 1.0
        q, r = torch.linalg.qr(columns)
        signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) >= 0, 1.0, -1.0).to(dtype)
        return q * signs.unsqueeze(-2)

    return basis() @ basis().transpose(-1, -2)


def gaussian_draw(d: int, scale: float) -> Draw:
    return lambda n, g: scale * torch.randn(n, d, d, generator=g, dtype=torch.float64)


def orthogonal_draw(d: int, gain: float) -> Draw:
    return lambda n, g: gain * batched_haar(n, d, g)


def leaky_relu(z: torch.Tensor, slope: float) -> torch.Tensor:
    return torch.where(z > 0, z, slope * z)


def log_norm_increments(
    draw: Draw, d: int, slope: float, n_nets: int, depth: int, generator: torch.Generator
) -> torch.Tensor:
    """Per-layer increments ``log r(x_{l+1}) - log r(x_l)``, shape ``(depth, n_nets)``, of
    ``n_nets`` independent random chains started at ``x_0 = (1, ..., 1)``. The signal is
    renormalized after every layer (the increments do not depend on the norm), so nothing
    under- or overflows at any depth."""
    x = torch.ones(n_nets, d, dtype=torch.float64)
    out = torch.empty(depth, n_nets, dtype=torch.float64)
    for layer in range(depth):
        y = leaky_relu(torch.bmm(draw(n_nets, generator), x.unsqueeze(-1)).squeeze(-1), slope)
        norm = y.norm(dim=1)
        out[layer] = torch.log(norm / x.norm(dim=1))
        x = y / norm.clamp_min(1e-300).unsqueeze(1)
    return out


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


def _figure(rows: list[dict], slopes: list[float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def run(quick: bool = False) -> Report:
    torch.set_num_threads(1)
    if quick:
        widths, slopes = [2, 4, 16, 64], [0.01, 0.1]
        mc_widths, mc_slopes, n_nets, depth = [2, 16], [0.1], 100, 20
    else:
        widths = [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
        slopes = [0.01, 0.05, 0.1, 0.2]
        mc_widths, mc_slopes, n_nets, depth = [2, 4, 16, 64], [0.01, 0.1, 0.2], 400, 50
    chains = {d: n_nets if d <= 16 else n_nets // 4 for d in mc_widths}  # batched QR cost grows like d^3
    rows = []
    for d in widths:
        for a in slopes:
            he, orth = th.he_scale(d, a), th.orthogonal_gain(a)
            row = {
                "width": d, "slope": a,
                "lambda_he": th.lyapunov_exponent(d, d, a, he),
                "lambda_glorot": th.lyapunov_exponent(d, d, a, th.glorot_scale(d, d)),
                "lambda_orth": th.lyapunov_exponent(d, d, a, orth, "orthogonal"),
                "sigma_he": he, "sigma_lyap": th.critical_scale(d, d, a),
                "eta_orth": orth, "eta_lyap": th.critical_scale(d, d, a, "orthogonal"),
                "s2_gauss": th.log_norm_variance(d, d, a),
                "s2_orth": th.log_norm_variance(d, d, a, "orthogonal"),
            }
            mc = _monte_carlo(d, a, chains[d], depth, SEED) if d in mc_widths and a in mc_slopes else {}
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
    r2, r16, r256 = by.get((2, 0.1)), by.get((16, 0.1)), by.get((widths[-1], 0.01))
    setup = (
        f"Square layers, widths {widths}, Leaky ReLU slopes {slopes}. Theory: "
        "`lightning_lyapunov.theory` (exponents of He `sigma^2 = 2/((1+a^2) d)`, Glorot `sigma^2 = 1/d`, "
        "Haar orthogonal with gain `sqrt(2/(1+a^2))`; Lyapunov critical scales `sigma_lyap`, `eta_lyap`; "
        "per-layer CLT variances `s2_*`).\n\n"
        f"Monte Carlo (torch float64, seed {SEED} + 1000 x scheme index) for widths {mc_widths} x slopes "
        f"{mc_slopes}: {n_nets} independent chains (width 64: {n_nets // 4}) x {depth} layers per scheme, input `(1, ..., 1)`, "
        "signal renormalized after each layer; `mc_*` = mean per-layer increment of "
        "`log(||x||/sqrt(d))`, `mc_*_se` = its standard error (std / sqrt(chains x layers); the "
        "increments are i.i.d. because a Gaussian or Haar layer's output law depends on the input only "
        "through its norm). Schemes measured: He, orthogonal with gain, Lyapunov Gaussian and "
        "Lyapunov orthogonal (predicted 0)."
    )
    findings = [
        f"- Monte Carlo agrees with the closed forms: over {len(z_all)} (width, slope, scheme) cells the "
        f"median |measured - predicted| is {np.median(z_all):.2f} standard errors, the largest "
        f"{np.max(z_all):.2f} (He {max(z['he']):.2f}, orthogonal {max(z['orth']):.2f}, Lyapunov Gaussian "
        f"{max(z['lyap_gauss']):.2f}, Lyapunov orthogonal {max(z['lyap_orth']):.2f}).",
    ]
    if r2 is not None:
        findings.append(
            f"- Width 2, slope 0.1: He loses {r2['lambda_he']:+.3f} per layer (Glorot {r2['lambda_glorot']:+.3f}, "
            f"orthogonal {r2['lambda_orth']:+.3f}), i.e. {40 * r2['lambda_he']:+.1f} in log-norm over 40 layers; "
            f"the Lyapunov scales are sigma = {r2['sigma_lyap']:.3f} (He {r2['sigma_he']:.3f}, "
            f"{r2['sigma_lyap'] / r2['sigma_he']:.2f}x) and eta = {r2['eta_lyap']:.3f} (gain {r2['eta_orth']:.3f})."
        )
    if r16 is not None:
        findings.append(
            f"- Width 16, slope 0.1: He {r16['lambda_he']:+.4f}, orthogonal {r16['lambda_orth']:+.4f} per layer; "
            f"sigma_lyap / sigma_He = {r16['sigma_lyap'] / r16['sigma_he']:.3f}."
        )
    if r256 is not None:
        findings.append(
            f"- The problem is a narrow-network one: at width {widths[-1]} (slope 0.01) He drifts "
            f"{r256['lambda_he']:+.5f} per layer and orthogonal {r256['lambda_orth']:+.5f}; the Lyapunov "
            f"scales differ from He's / the gain by {100 * (r256['sigma_lyap'] / r256['sigma_he'] - 1):.2f}% "
            f"and {100 * (r256['eta_lyap'] / r256['eta_orth'] - 1):.2f}%: there Lyapunov init is "
            "practically He / orthogonal and brings nothing."
        )
    less = all(r["lambda_he"] < r["lambda_orth"] < 0 for r in rows)
    how = "less than He (and still negatively) at every width and slope here" if less else (
        "differently from He (not uniformly less: see the table)")
    findings.append(
        f"- Orthogonal-with-gain drifts {how}: an orthogonal layer "
        "does not add the chi-square fluctuation of a Gaussian layer's norm. Glorot's drift is He's "
        "minus log sqrt(2/(1+a^2)) (about -0.35) at every width: Glorot is not calibrated for (Leaky) ReLU."
    )
    return Report(
        name="theory",
        title="Per-layer Lyapunov exponents of He, Glorot and orthogonal init, with Monte Carlo",
        setup=setup,
        rows=rows,
        findings="\n".join(findings),
        figure=_figure(rows, slopes),
    )
