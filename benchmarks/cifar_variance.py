"""``cifar_variance``: the vanishing-empirical-variance paper's Fig. 2 on CIFAR-10 (JPEG q75 copy).

Width 10, depth 100 ReLU nets on flattened CIFAR-10 images (3072 -> 10 -> ... -> 10): the
empirical variance over the data of unit 0 of every layer (before the ReLU: the output of the
depth-L net), its 0.9 / 0.99 / 0.999 quantiles over >= 1000 random nets per scheme, by depth. The
nets are drawn and evaluated as batches of stacked weights (``torch.bmm``). The two data-driven
inits run in closed form on the stacked nets and :func:`check_stacked` compares them with the real
ones (the ``lsuv`` package, ``apply_init(..., calibrate=...)``) on a few nets:

* LSUV: orthogonal draw (gain 1), then in forward order each layer's output scaled to standard
  deviation 1 on the batch when it is off by more than ``lsuv``'s tolerance 0.1 (one step is exact
  for a linear layer with zero bias: what its loop converges to).
* Calibrated (the project's calibration, its default target 1): Lyapunov orthogonal draw, then the depth-L
  net rescaled so that its output's root-mean-square is 1 on the batch. ReLU nets with zero bias
  are positively homogeneous: positive per-layer factors change the output only by their
  product, so ``calibrate="layers"`` (the callback's default) and ``"output"`` both give the bare
  draw's output times ``1 / rms``. A target ``t`` multiplies every variance by ``t^2``; target 1
  keeps the paper's absolute threshold 1e-3 comparable with the other schemes.

"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks._lib import stats
from benchmarks._lib.chains import batched_haar, semi_orthogonal, square_draw
from benchmarks._lib.data import CIFAR_NOTE, cifar10
from benchmarks._lib.package import DeepMLP, apply_init
from benchmarks._lib.package import theory as th
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import RELU_NOTE
from benchmarks.empirical_variance import SCHEMES as BARE

WIDTH, DEPTH, IN, PROBE = 10, 100, 3072, 256
TITLE = f"Vanishing empirical variance on {CIFAR_NOTE} (width {WIDTH}, depth {DEPTH})"
LSUV_TOL = 0.1  # the lsuv package's default std_tol
SCHEMES = (*BARE, "lsuv", "lyapunov calibrated")
QUANTILES = (0.5, 0.9, 0.99, 0.999)
THRESHOLD, AT_DEPTH = 1e-3, 80
TABLE_DEPTHS = (1, 10, 20, 40, 60, 80, 100)


@dataclass(frozen=True)
class Size:
    nets: int
    images: int  # training images the variance is measured over (the first PROBE are the init batch)
    chunk: int  # nets drawn and run together
    check_nets: int  # nets on which the closed forms are checked against lsuv and apply_init


SIZES = Sizes(quick=Size(nets=40, images=300, chunk=20, check_nets=2),
              full=Size(nets=1000, images=2000, chunk=125, check_nets=8))


def _semi_orthogonal(n: int, g: torch.Generator, first_column_ones: bool = False, rows: int = IN) -> torch.Tensor:
    """``n`` matrices ``(rows, WIDTH)`` with orthonormal columns (see ``chains.semi_orthogonal``)."""
    return semi_orthogonal(n, rows, WIDTH, g, first_column_ones)


def _first_layer(scheme: str):
    """(n, generator) -> n first-layer weights ``(WIDTH, IN)`` with the scale the project's
    ``apply_init`` gives that layer (d_in = 3072, d_out = 10, ReLU after it)."""
    if scheme == "he":
        return lambda n, g: th.he_scale(IN, 0.0) * torch.randn(n, WIDTH, IN, generator=g)
    if scheme == "lyapunov gaussian":
        return lambda n, g: th.critical_scale(IN, WIDTH, 0.0) * torch.randn(n, WIDTH, IN, generator=g)
    if scheme == "lyapunov orthogonal":
        scale = th.critical_scale(IN, WIDTH, 0.0, "orthogonal")
        return lambda n, g: scale * _semi_orthogonal(n, g).transpose(1, 2)
    if scheme == "orthogonal":
        return lambda n, g: th.orthogonal_gain(0.0) * _semi_orthogonal(n, g).transpose(1, 2)
    if scheme == "stiefel":  # P_m I_{m x n} P_n' = P_10 (first 10 columns of P_3072)'
        def draw(n, g):
            p_m = _semi_orthogonal(n, g, first_column_ones=True, rows=WIDTH)
            return p_m @ _semi_orthogonal(n, g, first_column_ones=True).transpose(1, 2)
        return draw
    if scheme == "zero":  # deterministic: the project's own ZerO matrix for a 3072 -> 10 layer
        net = DeepMLP(IN, WIDTH, WIDTH, 1, activation="relu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            apply_init(net, scheme="zero")
        weight = net.net[0].weight.detach().clone()
        return lambda n, g: weight.expand(n, -1, -1)
    raise ValueError(f"unknown scheme {scheme!r}")


def _draws(scheme: str, n: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """The ``DEPTH`` weights ``(n, d_out, d_in)`` of ``n`` nets in forward order, drawn lazily (LSUV
    starts from unit-gain orthogonal weights, the calibrated init from the Lyapunov orthogonal draw)."""
    if scheme == "lsuv":
        yield _semi_orthogonal(n, g).transpose(1, 2)
        for _ in range(DEPTH - 1):
            yield batched_haar(n, WIDTH, g).float()
        return
    base = "lyapunov orthogonal" if scheme == "lyapunov calibrated" else scheme
    first, hidden = _first_layer(base), square_draw(base, WIDTH, 0.0)
    yield first(n, g)
    for _ in range(DEPTH - 1):
        yield hidden(n, g).float()


@torch.no_grad()
def stacked_variances(weights: Iterable[torch.Tensor], x: torch.Tensor, scheme: str = "",
                      probe: int = PROBE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, layers)``: per net and layer, the unbiased variance over the data ``x`` of unit 0 of the
    layer's output (before its ReLU) for the nets with the stacked ``weights``, under ``scheme``'s
    data-driven step on the batch ``x[:probe]`` ("lsuv", "lyapunov calibrated"; module docstring).
    A layer whose output is all zero on the batch (dead units) keeps its weights (factor 1), as the
    project's calibration does; ``lsuv`` 0.3.0 itself then applies its further correction steps to
    the first layer (its counter is not reset within a layer) and writes inf/NaN there. Also ``(n,)``:
    whether the net has such a layer."""
    h, out, dead = x.T, [], None
    for layer, w in enumerate(weights):
        n = len(w)
        if layer == 0:
            h = (w.reshape(n * w.shape[1], -1) @ h).view(n, w.shape[1], -1)
        else:
            h = torch.bmm(w, torch.relu(h))
        zero = (h[:, :, :probe] == 0).flatten(1).all(dim=1)
        dead = zero if dead is None else dead | zero
        if scheme == "lsuv":
            std = h[:, :, :probe].flatten(1).std(dim=1)
            scale = torch.where(((std - 1).abs() > LSUV_TOL) & (std > 0), 1 / (std + 1e-8), 1.0)
            h = h * scale.view(n, 1, 1)
        var = h[:, 0].double().var(dim=1)
        if scheme == "lyapunov calibrated":  # the depth-(layer + 1) net's output times c = 1 / rms
            mean_square = h[:, :, :probe].double().pow(2).mean((1, 2))
            var = torch.where(mean_square > 0, var / mean_square, var)
        out.append(var)
    return torch.stack(out, dim=1), dead


def _variances(scheme: str, x: torch.Tensor, n_nets: int, chunk: int, seed: int) -> tuple[np.ndarray, float]:
    """``(n_nets, DEPTH)`` for ``n_nets`` random nets of ``scheme`` (ZerO: one net, deterministic), and
    the fraction of nets with a layer that is all zero on the batch."""
    if scheme == "zero":
        n_nets, chunk = 1, 1
    out, dead = [], []
    for k, start in enumerate(range(0, n_nets, chunk)):
        g = torch.Generator().manual_seed(seed + k)
        var, flags = stacked_variances(_draws(scheme, min(chunk, n_nets - start), g), x, scheme)
        out.append(var)
        dead.append(flags)
    return torch.cat(out).numpy(), float(torch.cat(dead).double().mean())


def check_stacked(x: torch.Tensor, depth: int, nets: int = 2) -> dict[str, float]:
    """The largest relative difference ``|a - b| / (|b| + 1e-4)`` (variances near 0 are float32
    round-off), over ``nets`` nets of depth ``depth``, between the stacked closed forms and the real
    inits on the same weights: ``"lsuv"``: every layer's variance of unit 0 after
    ``lsuv.lsuv_with_singlebatch(net, x[:PROBE], do_orthonorm=False)`` on orthogonal weights, over the
    nets where it stays finite (``"lsuv dead"`` counts the others: each has a layer that the stacked
    step finds all zero on the batch, else the count is negative); ``"calibrate=layers"`` and
    ``"calibrate=output"``: the output's after ``apply_init(net, scheme="lyapunov", distribution=
    "orthogonal", calibrate=..., calibrate_target=1, example_input=x[:PROBE])`` against the stacked
    step on the same draw without ``calibrate``, over the nets with no layer all zero on the batch
    (``"calibration dead"`` counts the others: there ``"layers"`` rescales the layers before the
    dead one, the stacked step does not)."""
    import lsuv

    def build() -> DeepMLP:
        return DeepMLP(x.shape[1], WIDTH, WIDTH, depth - 1, activation="relu", bias=False)

    def layer_variances(net: DeepMLP) -> torch.Tensor:
        h, out = x, []
        with torch.no_grad():
            for module in net.net:
                h = module(h)
                if isinstance(module, torch.nn.Linear):
                    out.append(h[:, 0].double().var())
        return torch.stack(out)

    def stack(nets_: list[DeepMLP]) -> list[torch.Tensor]:
        layers = [[m.weight.detach() for m in net.net if isinstance(m, torch.nn.Linear)] for net in nets_]
        return [torch.stack(ws) for ws in zip(*layers)]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b).abs() / (b.abs() + 1e-4)).max())

    lsuv_nets, bare, calibrated = [], [], {"layers": [], "output": []}
    for seed in range(nets):
        torch.manual_seed(seed)
        net = build()
        for m in net.net:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.orthogonal_(m.weight)
        lsuv_nets.append(net)
        for store, kwargs in ((bare, {}), *((calibrated[method], {"calibrate": method, "calibrate_target": 1.0,
                                                                   "example_input": x[:PROBE]}) for method in calibrated)):
            model = build()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                apply_init(model, scheme="lyapunov", distribution="orthogonal",
                           generator=torch.Generator().manual_seed(seed), **kwargs)
            store.append(model)
    lsuv_stacked, dead = stacked_variances(stack(lsuv_nets), x, "lsuv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for net in lsuv_nets:
            lsuv.lsuv_with_singlebatch(net, x[:PROBE], do_orthonorm=False, verbose=False)
    lsuv_real = torch.stack([layer_variances(net) for net in lsuv_nets])
    finite = torch.isfinite(lsuv_real).all(dim=1)
    out = {"lsuv": rel(lsuv_stacked[finite], lsuv_real[finite]),
           "lsuv dead": int((~finite).sum()) if bool((dead | finite).all()) else -1}
    cal_stacked, cal_dead = stacked_variances(stack(bare), x, "lyapunov calibrated")
    for method, models in calibrated.items():
        cal_real = torch.stack([layer_variances(net)[-1] for net in models])
        out[f"calibrate={method}"] = rel(cal_stacked[~cal_dead, -1], cal_real[~cal_dead])
    out["calibration dead"] = int(cal_dead.sum())
    return out


def run(size: Size) -> Report:
    n_nets, n_data, chunk = size.nets, size.images, size.chunk
    data = cifar10(n_train=n_data, seed=0, standardize="train")
    x = data["train"][0].flatten(1)
    seeds = {scheme: 1 + 1000 * i for i, scheme in enumerate(SCHEMES)}
    seeds["lyapunov calibrated"] = seeds["lyapunov orthogonal"]  # the same draws, calibrated
    measured = {scheme: _variances(scheme, x, n_nets, chunk, seeds[scheme]) for scheme in SCHEMES}
    results = {scheme: var for scheme, (var, _) in measured.items()}
    dead = {scheme: fraction for scheme, (_, fraction) in measured.items()}
    check_start = time.process_time()
    check = check_stacked(x, DEPTH, size.check_nets)
    check_seconds = time.process_time() - check_start
    rows = []
    for scheme, var in results.items():
        for depth in TABLE_DEPTHS:
            col = var[:, depth - 1]
            row = {"scheme": scheme, "depth": depth, "nets": len(col)}
            row.update({f"q{q:g}": float(np.quantile(col, q)) for q in QUANTILES})
            row["frac < 1e-3"] = float((col < THRESHOLD).mean())
            rows.append(row)
    setup = f"""
{CIFAR_NOTE}: a random subset of **{n_data} training images** (seed 0; the paper uses the whole training
set of 50,000 — subsampled to fit the shared 2-core CPU), flattened to 3072 features and standardized
per channel with that subset's own mean and standard deviation.

Nets: 3072 -> {WIDTH} followed by {DEPTH - 1} layers {WIDTH} -> {WIDTH} (bias 0), ReLU after every layer;
the empirical variance of a depth-L net's output is the unbiased variance over the {n_data} images of unit 0
of layer L before its ReLU (the paper's quantity). {n_nets} random nets per scheme (ZerO is deterministic:
1 net), drawn as batches of {chunk} stacked weight tensors at the scales of the project's `apply_init`
(first layer: d_in = 3072, d_out = 10; He sigma = sqrt(2/d_in); Lyapunov Gaussian / orthogonal: the
critical scales of `theory`; orthogonal: gain sqrt(2) times a semi-orthogonal matrix (sign-fixed QR);
Stiefel: our reconstruction P_m I P_n' (gain 1); ZerO: the project's own deterministic matrices).
Float32 forward, float64 variances. `q*`: quantiles over nets; `frac < 1e-3`: fraction of nets whose
variance is below 1e-3.

The data-driven inits use the first {PROBE} of these {n_data} images as their batch (a random sample; the
variance is still measured over all {n_data}) and run in closed form on the stacked nets, each layer or
depth exactly as the real init would do it:

- `lsuv`: orthogonal draw (gain 1), then in forward order each layer's output scaled to standard
  deviation 1 over the batch (all units and images together, as the `lsuv` package measures it) when it
  is off by more than the package's tolerance {LSUV_TOL:g}; one step is exact for a linear layer with zero bias.
- `lyapunov calibrated`: the project's calibration, the same draws as `lyapunov orthogonal`, each depth L
  its own depth-L net rescaled so that its output's root-mean-square over the batch is **1**. With ReLU
  and zero biases only the product of the per-layer factors reaches the output, so `calibrate="layers"`
  (the callback's default) and `"output"` give the same output here (the callback's default target 1
  also keeps the threshold 1e-3 comparable; a target t multiplies every variance in this row by t^2).

A layer whose output is all zero on the batch (every unit dead on every image) keeps factor 1 in both
(for the calibration: the whole net keeps the bare draw, as `calibrate="output"` does). The `lsuv` package (0.3.0) does not: its loop then keeps correcting,
and every correction after the first goes to the *first* layer (its layer counter is not reset within
a layer), which ends with inf/NaN weights; such nets are counted here with the intended factor 1.

Checked against the real thing on {size.check_nets} nets of depth {DEPTH} with the same weights, on this batch: the
largest relative difference in the variance of unit 0 is {check['lsuv']:.1e} over every layer after
`lsuv.lsuv_with_singlebatch(net, batch, do_orthonorm=False)` (on the {size.check_nets - check['lsuv dead']} nets it leaves
finite; the other {check['lsuv dead']} have a layer that is all zero on the batch), and for the output after
`apply_init(net, scheme="lyapunov", distribution="orthogonal", calibrate=..., calibrate_target=1,
example_input=batch)` {check['calibrate=layers']:.1e} (`"layers"`) and {check['calibrate=output']:.1e}
(`"output"`) on the {size.check_nets - check['calibration dead']} nets with no dead layer on the batch
(check: {check_seconds:.0f} s CPU).
"""
    findings = _findings(results, dead)
    return Report("cifar_variance", TITLE, setup, rows, findings, _figure(results), summary=findings[:2])


def _findings(results: dict[str, np.ndarray], dead: dict[str, float]) -> list[str]:
    collapsed = {s: (int((v[:, AT_DEPTH - 1] < THRESHOLD).sum()), len(v)) for s, v in results.items()}
    q9 = {s: float(np.quantile(v[:, AT_DEPTH - 1], 0.9)) for s, v in results.items()}
    med = {s: float(np.median(v[:, AT_DEPTH - 1])) for s, v in results.items()}
    lines = [
        f"Nets with output variance < 1e-3 at depth {AT_DEPTH} (95% Wilson intervals): "
        + "; ".join(f"{s} {stats.Count(*c)}" for s, c in collapsed.items()) + " (ZerO: one deterministic net).",
        stats.compare_fractions(*collapsed["lyapunov calibrated"], *collapsed["lsuv"], "lyapunov calibrated",
                                "lsuv", "collapsed nets") + "; "
        + stats.compare_fractions(*collapsed["lyapunov orthogonal"], *collapsed["he"], "lyapunov orthogonal", "he",
                                  "collapsed nets") + ".",
        f"Paper (He, CIFAR-10, width 10): at least 90% of nets below 1e-3 after 80 layers (its lower bound). Ours, "
        f"He: {stats.Count(*collapsed['he'])}, 0.9 quantile at depth {AT_DEPTH} {q9['he']:.2e}.",
        f"Median variance at depth {AT_DEPTH}: " + "; ".join(f"{s} {m:.2e}" for s, m in med.items()) + ".",
        f"Calibrated against its own bare draws (lyapunov orthogonal, the same weights), at depth {AT_DEPTH}: "
        f"0.9 quantile {q9['lyapunov calibrated']:.2e} against {q9['lyapunov orthogonal']:.2e}; "
        + stats.compare_counts(results["lyapunov calibrated"][:, AT_DEPTH - 1] < THRESHOLD,
                               results["lyapunov orthogonal"][:, AT_DEPTH - 1] < THRESHOLD, "lyapunov calibrated",
                               "lyapunov orthogonal", "collapsed", unit="draws") + ".",
        f"Nets with a layer whose output is all zero on the {PROBE}-image batch, by depth {DEPTH}: "
        + "; ".join(f"{s} {100 * f:.1f}%" for s, f in dead.items())
        + " (for LSUV these are the nets that the `lsuv` package itself turns into inf/NaN).",
        RELU_NOTE,
    ]
    return lines


def _figure(results: dict[str, np.ndarray]):
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    depth = np.arange(1, DEPTH + 1)
    for ax, q in zip(axes, (0.9, 0.99, 0.999)):
        for scheme, var in results.items():
            values = np.quantile(var, q, axis=0) if len(var) > 1 else var[0]
            ax.plot(depth, np.maximum(values, 1e-300), label=scheme)
        ax.axhline(THRESHOLD, color="gray", lw=0.8)
        ax.set_yscale("log")
        ax.set(title=f"{q:g} quantile over nets", xlabel="depth", ylabel="empirical variance of unit 0")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{CIFAR_NOTE}: width {WIDTH}, ReLU", fontsize=10)
    fig.tight_layout()
    return fig

