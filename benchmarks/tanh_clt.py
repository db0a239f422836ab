"""``tanh_clt``: the Lyapunov paper's tanh case (its Fig. 5): at width 2 the log-norm CLT holds for Leaky ReLU
and fails for tanh, and the scale chain (``chain_theory``) says why.

``n`` independent random width-2 chains with Gaussian weights at zero drift (Leaky ReLU 0.1: the Lyapunov
scale; tanh: ``chain_theory.critical_scale``, zero drift at pre-activation scale 1), input ``x_0 = (1, 1)``.
The pre-activations' log-norm ``log r(h_L)`` at growing depth ``L`` against two predictions:

- the CLT: a sum of independent increments, mean ``m_1 + (L - 1) lambda`` and variance ``v_1 + (L - 1) s^2``
  (``lambda``, ``s^2``: the per-layer exponent and variance at scale 1; ``m_1``, ``v_1``: layer 1's);
- the scale chain (``chain_theory.predict_chain`` at the same weights): the law of the log-scale propagated
  exactly, mean and standard deviation at every depth.

For Leaky ReLU the two coincide (a random walk). tanh's scale chain has a stable fixed point (slope
``kappa < 1``): the log-scale is pulled back every layer, its law converges to a stationary one, and the
log-norm does not diffuse: the CLT's ``sqrt(L)`` spread is wrong by a factor that grows with depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy import stats

from benchmarks._lib.chains import gaussian_draw, leaky_relu
from benchmarks._lib.package import chain_theory as ct
from benchmarks._lib.package import theory as th
from benchmarks._lib.report import Report, Sizes
from benchmarks.lln_clt import Size  # the same two sizes: chains and depth

WIDTH, SLOPE, SEED = 2, 0.1, 0  # lln_clt's
FLOOR = 400.0  # predict_chain's dead floor, far below any chain here (the simulations have none)
TITLE = f"The log-norm CLT at width {WIDTH}: Leaky ReLU {SLOPE} holds, tanh fails (the paper's Fig. 5)"


SIZES = Sizes(quick=Size(nets=300, depth=20), full=Size(nets=20000, depth=200))


@dataclass(frozen=True)
class Chain:
    name: str
    phi: Callable[[torch.Tensor], torch.Tensor]
    activation: str  # chain_theory's name
    homogeneous: bool


CHAINS = (Chain(f"Leaky ReLU {SLOPE}", lambda z: leaky_relu(z, SLOPE), f"leaky_relu({SLOPE})", True),
          Chain("tanh", torch.tanh, "tanh", False))


def _activation(chain: Chain):
    return ct.activation("leaky_relu", negative_slope=SLOPE) if chain.homogeneous else ct.activation("tanh")


def pre_activation_log_norms(draw, phi: Callable[[torch.Tensor], torch.Tensor], homogeneous: bool, n_nets: int,
                             depth: int, generator: torch.Generator) -> np.ndarray:
    """``log r(h_l)``, shape ``(depth, n_nets)``, of ``n_nets`` random chains ``h_l = W_l x_{l-1}``,
    ``x_l = phi(h_l)`` from ``x_0 = (1, ..., 1)``; a homogeneous ``phi``'s signal is renormalized after every
    layer and the log carried (nothing under- or overflows); a bounded one (tanh) is run as it is."""
    x = torch.ones(n_nets, WIDTH, dtype=torch.float64)
    offset = torch.zeros(n_nets, dtype=torch.float64)
    out = np.empty((depth, n_nets))
    for layer in range(depth):
        h = torch.bmm(draw(n_nets, generator), x.unsqueeze(-1)).squeeze(-1)
        norm = h.norm(dim=1)
        out[layer] = (offset + torch.log(norm / math.sqrt(WIDTH))).numpy()
        x = phi(h)
        if homogeneous:
            scale = x.norm(dim=1).clamp_min(1e-300)
            offset = offset + torch.log(scale)
            x = x / scale.unsqueeze(1)
    return out


def _weight_scale(chain: Chain) -> float:
    if chain.homogeneous:
        return th.critical_scale(WIDTH, WIDTH, SLOPE)
    return ct.critical_scale(_activation(chain), WIDTH, WIDTH)


def _depths(depth: int) -> list[int]:
    return [L for L in (1, 2, 5, 10, 20, 50, 100, 200) if L <= depth]


def run(size: Size) -> Report:
    depths = _depths(size.depth)
    ks_crit = 1.36 / math.sqrt(size.nets)
    rows, sims, chains, clts = [], {}, {}, {}
    for i, chain in enumerate(CHAINS):
        sigma = _weight_scale(chain)
        act = _activation(chain)
        log_r = pre_activation_log_norms(gaussian_draw(WIDTH, sigma), chain.phi, chain.homogeneous, size.nets,
                                         size.depth, torch.Generator().manual_seed(SEED + i))
        predicted = ct.predict_chain([(WIDTH, WIDTH, act)] * size.depth, weight_scales=[sigma] * size.depth,
                                     floor=FLOOR)
        lam = ct.lyapunov_exponent(act, WIDTH, WIDTH, sigma)
        s2 = ct.log_norm_variance(act, WIDTH, WIDTH)
        layers = np.arange(1, size.depth + 1)
        clt_mean = predicted.mean_log_norm[0] + (layers - 1) * lam
        clt_std = np.sqrt(predicted.std_log_norm[0] ** 2 + (layers - 1) * s2)
        sims[chain.name], chains[chain.name], clts[chain.name] = log_r, predicted, (clt_mean, clt_std)
        kappa = ct.stability(act, WIDTH, WIDTH).slope
        for L in depths:
            v = log_r[L - 1]
            z_own = (v - v.mean()) / v.std(ddof=1)
            rows.append({
                "activation": chain.name, "depth": L, "weight scale": sigma, "kappa": kappa,
                "mean": float(v.mean()), "mean se": float(v.std(ddof=1) / math.sqrt(v.size)),
                "chain mean": float(predicted.mean_log_norm[L - 1]), "CLT mean": float(clt_mean[L - 1]),
                "std": float(v.std(ddof=1)), "chain std": float(predicted.std_log_norm[L - 1]),
                "CLT std": float(clt_std[L - 1]),
                "skewness": float(stats.skew(v)), "excess kurtosis": float(stats.kurtosis(v)),
                "KS to the CLT": float(stats.kstest((v - clt_mean[L - 1]) / clt_std[L - 1], "norm").statistic),
                "KS to its own Gaussian": float(stats.kstest(z_own, "norm").statistic),
            })
    setup = (
        f"Width {WIDTH}, Gaussian weights, {size.nets} independent random chains per activation (seeds {SEED} and "
        f"{SEED + 1}, one torch generator each), depths up to {size.depth} (rows at L in {depths}), input "
        f"x_0 = (1, 1), float64. Weight scales at zero drift: Leaky ReLU {SLOPE} at the Lyapunov scale "
        f"`theory.critical_scale` (sigma = {_weight_scale(CHAINS[0]):.4f}); tanh at `chain_theory.critical_scale` "
        f"(zero drift at pre-activation scale 1: sigma = {_weight_scale(CHAINS[1]):.4f}). Measured: log r(h_L) = "
        "log(||h_L|| / sqrt 2) of the pre-activations (Leaky ReLU chains renormalized after every layer with the "
        "log carried; tanh is bounded and runs as it is). `mean`/`std`/`skewness`/`excess kurtosis` over the "
        "chains; `chain mean`/`chain std`: `chain_theory.predict_chain` at the same weight scales (the law of the "
        f"log-scale propagated layer by layer; `floor={FLOOR:g}`, so no chain counts as dead); "
        "`CLT mean`/`CLT std`: independent increments, layer 1's mean and "
        "variance plus (L - 1) times the per-layer exponent and variance at scale 1 (`chain_theory."
        "lyapunov_exponent`, `log_norm_variance`); `kappa`: `chain_theory.stability`'s slope of the scale map at "
        "the fixed point (1: a random walk; below 1: pulled back). `KS to the CLT`: Kolmogorov-Smirnov distance "
        "of (log r - CLT mean) / CLT std to N(0, 1); `KS to its own Gaussian`: of the log-norm standardized by its "
        f"own mean and std (the shape alone). 5% critical value of the distance for {size.nets} samples: "
        f"{ks_crit:.3f}. The rows of one activation come from the same chains at growing depth."
    )
    findings = _findings(rows, depths[-1], ks_crit)
    return Report(name="tanh_clt", title=TITLE, setup=setup, rows=rows, findings=findings, summary=findings[:3],
                  figure=_figure(sims, chains, clts, depths[-1]))


def _findings(rows: list[dict], last: int, ks_crit: float) -> list[str]:
    at = {(r["activation"], r["depth"]): r for r in rows}
    leaky, tanh = (at[(c.name, last)] for c in CHAINS)
    first = min(r["depth"] for r in rows if r["depth"] >= 10) if any(r["depth"] >= 10 for r in rows) else last
    tanh_early = at[("tanh", first)]
    return [
        f"Leaky ReLU {SLOPE}: at L = {last} the log-norm's spread over chains is {leaky['std']:.3f} against the CLT's "
        f"{leaky['CLT std']:.3f} and the chain's {leaky['chain std']:.3f}; KS distance to the CLT's Gaussian "
        f"{leaky['KS to the CLT']:.3f} (5% critical value {ks_crit:.3f}): the CLT holds.",
        f"tanh: at L = {last} the spread is {tanh['std']:.3f}, the CLT predicts {tanh['CLT std']:.3f} "
        f"({tanh['CLT std'] / tanh['std']:.1f} times too wide) and the chain {tanh['chain std']:.3f}; it was "
        f"{tanh_early['std']:.3f} at L = {first}: the log-norm does not diffuse. KS distance to the CLT's Gaussian "
        f"{tanh['KS to the CLT']:.3f}: the CLT fails.",
        f"Why: tanh's scale map has slope kappa = {tanh['kappa']:.3f} at its fixed point (Leaky ReLU: "
        f"{leaky['kappa']:.3f}, a random walk), so each layer pulls the log-scale back towards it and the law of "
        "the log-norm converges to a stationary one. Its shape is not Gaussian either: skewness "
        f"{tanh['skewness']:+.2f}, excess kurtosis {tanh['excess kurtosis']:+.2f}, KS distance to its own Gaussian "
        f"{tanh['KS to its own Gaussian']:.3f} at L = {last} (Leaky ReLU: {leaky['skewness']:+.2f}, "
        f"{leaky['excess kurtosis']:+.2f}, {leaky['KS to its own Gaussian']:.3f}).",
        f"Means at L = {last}: Leaky ReLU {leaky['mean']:+.3f} +- {leaky['mean se']:.3f} "
        f"(chain {leaky['chain mean']:+.3f}, "
        f"CLT {leaky['CLT mean']:+.3f}); tanh {tanh['mean']:+.3f} +- {tanh['mean se']:.3f} (chain "
        f"{tanh['chain mean']:+.3f}, CLT {tanh['CLT mean']:+.3f}).",
    ]


def _figure(sims: dict[str, np.ndarray], chains: dict, clts: dict, last: int):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    layers = np.arange(1, last + 1)
    ax = axes[0]
    for color, (name, log_r) in zip(colors, sims.items()):
        ax.plot(layers, log_r.std(1, ddof=1), color=color, lw=2, label=f"{name}: measured")
        ax.plot(layers, chains[name].std_log_norm, color=color, ls="--", label=f"{name}: scale chain")
        ax.plot(layers, clts[name][1], color=color, ls=":", label=f"{name}: CLT sqrt(v1 + (L-1) s^2)")
    ax.set(xlabel="depth L", ylabel="std of log r(h_L) over chains", title=f"spread of the log-norm, width {WIDTH}")
    ax.legend(fontsize=7)
    for ax, color, (name, log_r) in zip(axes[1:], colors, sims.items()):
        v = log_r[last - 1]
        ax.hist(v, bins=80, density=True, color=color, alpha=0.5, label=f"{v.size} chains")
        t = np.linspace(v.min(), v.max(), 400)
        mean, std = clts[name][0][last - 1], clts[name][1][last - 1]
        ax.plot(t, stats.norm.pdf(t, mean, std), "k:", label=f"CLT N({mean:+.2f}, {std:.2f}^2)")
        cm, cs = chains[name].mean_log_norm[last - 1], chains[name].std_log_norm[last - 1]
        ax.plot(t, stats.norm.pdf(t, cm, cs), "k--", label=f"Gaussian at the chain's mean, std ({cs:.2f})")
        ax.set(xlabel=f"log r(h_L), L = {last}", ylabel="density", title=f"{name}: the log-norm at depth {last}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
