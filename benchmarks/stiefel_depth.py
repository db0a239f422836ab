"""``stiefel_depth``: a very deep narrow ReLU net (depth 200, width 32) at initialization (dead units,
log-norm by depth, first-layer gradient norm) for every scheme, then a short training on MNIST-1D.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks._lib import plots, stats
from benchmarks._lib.data import mnist1d
from benchmarks._lib.engine import Adam
from benchmarks._lib.package import DeepMLP
from benchmarks._lib.protocol import Grid, classify, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import ALL_SCHEMES, RELU_NOTE, at_init

WIDTH, DEPTH, BATCH = 32, 200, 128
TITLE = f"Depth {DEPTH}, width {WIDTH}, ReLU: dead units, gradients and training"
LRS = (1e-4, 1e-3)


@dataclass(frozen=True)
class Size:
    init_seeds: int
    init_inputs: int  # training inputs of the measurements at init
    train_seeds: int
    steps: int
    every: int
    samples: int  # MNIST-1D samples (train / val / test: 70 / 10 / 20%)


SIZES = Sizes(quick=Size(init_seeds=2, init_inputs=256, train_seeds=2, steps=4, every=4, samples=1000),
              full=Size(init_seeds=10, init_inputs=3500, train_seeds=20, steps=200, every=25, samples=5000))


def build() -> DeepMLP:
    return DeepMLP(40, 10, WIDTH, DEPTH, activation="relu")


def _log_rms(h: Tensor) -> Tensor:
    """Per sample ``log(||h_b|| / sqrt(d))``, computed without squaring tiny values (no underflow)."""
    peak = h.abs().amax(dim=1, keepdim=True)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    rms = (h / safe).pow(2).mean(dim=1).sqrt()
    return torch.log(peak.squeeze(1)) + torch.log(rms)


def probe(model: DeepMLP, x: Tensor, y: Tensor) -> dict[str, object]:
    """At initialization: per hidden layer the fraction of dead units (exactly 0 on every input)
    and the median over inputs of ``log r(h_l) - log r(x)``; the first layer's gradient norm
    ``||dL/dW_1||_F`` of the mean cross-entropy over all inputs."""
    dead, log_gain = [], []
    h = x
    base = _log_rms(x)
    for module in model.net:
        h = module(h)
        if isinstance(module, nn.ReLU):
            dead.append(float((h.detach() > 0).sum(0).eq(0).float().mean()))
            log_gain.append(float((_log_rms(h.detach()) - base).median()))
    model.zero_grad(set_to_none=True)
    F.cross_entropy(h, y).backward()
    grad = float(model.net[0].weight.grad.norm())
    model.zero_grad(set_to_none=True)
    return {"dead": dead, "log_gain": log_gain, "grad": grad}


def _init_stats(x: Tensor, y: Tensor, seeds: range) -> dict[str, list[dict]]:
    """Per scheme, one :func:`probe` per seed of a freshly built and initialized net."""
    return at_init(build, lambda model: probe(model, x, y), seeds)


def _median_curve(runs: list[dict], key: str) -> list[float]:
    return [float(np.median([run[key][i] for run in runs])) for i in range(DEPTH)]


def _mean_curve(runs: list[dict], key: str) -> tuple[float, ...]:
    return tuple(sum(run[key][i] for run in runs) / len(runs) for i in range(DEPTH))


def _plot_dead(ax, stats: dict[str, list[dict]]) -> None:
    """Mean dead fraction by layer; schemes with identical curves share one line and one label."""
    groups: dict[tuple[float, ...], list[str]] = {}
    for label, runs in stats.items():
        groups.setdefault(_mean_curve(runs, "dead"), []).append(label)
    for i, (curve, labels) in enumerate(groups.items()):
        ax.plot(range(1, DEPTH + 1), [100 * v for v in curve], label=" = ".join(labels), lw=1.4,
                ls="--" if i % 2 else "-")
    ax.set(title="dead units at init (mean over seeds; identical curves merged)", xlabel="hidden layer",
           ylabel="dead units (%)")


def run(size: Size) -> Report:
    init_seeds, train_seeds = range(size.init_seeds), tuple(range(size.train_seeds))
    steps = size.steps
    data = mnist1d(size.samples)
    x, y = (t[:size.init_inputs] for t in data["train"])
    init = _init_stats(x, y, init_seeds)
    grid = classify(build, ALL_SCHEMES, train_seeds, data, evals=("val", "test"), optimizer=Adam, lrs=LRS, steps=steps,
                    batch_size=BATCH, record=range(0, steps + 1, size.every))
    chosen = grid.select("val_acc", higher_is_better=True)
    val, test = grid.final("val_acc", chosen), grid.final("test_acc", chosen)
    rows = []
    for j, scheme in enumerate(ALL_SCHEMES):
        runs = init[scheme.label]
        rows.append({
            "scheme": scheme.label,
            "dead units, last layer (%)": stats.cell([r["dead"][-1] for r in runs], 100, 1, fixed=True),
            "dead units, mean over layers (%)": stats.cell([sum(r["dead"]) / DEPTH for r in runs], 100, 1, fixed=True),
            "nets with a fully dead layer": f"{sum(max(r['dead']) == 1.0 for r in runs)}/{len(runs)}",
            f"log r(h_{DEPTH}) - log r(x)": stats.cell([r["log_gain"][-1] for r in runs], 1, 2, True, fixed=True),
            "grad norm W_1": stats.cell([r["grad"] for r in runs], 1, 3, True),
            "Adam lr (val)": f"{LRS[chosen[j]]:g}",
            f"val acc after {steps} steps (%)": stats.percent(val[scheme.label]),
            f"test acc after {steps} steps (%)": stats.percent(test[scheme.label]),
        })
    runs_rows = [{"part": "init", "scheme": label, "seed": seed, "dead last layer": r["dead"][-1],
                  "dead mean": sum(r["dead"]) / DEPTH, "log-gain": r["log_gain"][-1], "grad norm W_1": r["grad"]}
                 for label, rs in init.items() for seed, r in zip(init_seeds, rs)]
    runs_rows += [{"part": "training", **row} for row in grid.run_rows(chosen)]

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    layers = range(1, DEPTH + 1)
    for scheme in ALL_SCHEMES:
        axes[0, 1].plot(layers, _median_curve(init[scheme.label], "log_gain"), label=scheme.label, lw=1.4)
    _plot_dead(axes[0, 0], init)
    axes[0, 1].legend(fontsize=7, ncol=2)
    axes[0, 1].set(title="median log r(h_l) - log r(x) at init", xlabel="hidden layer", ylabel="log gain")
    axes[0, 1].set_yscale("symlog", linthresh=1.0)
    labels = [s.label for s in ALL_SCHEMES]
    grads = [stats.med_iqr([r["grad"] for r in init[lab]]) for lab in labels]
    floor = 1e-12
    med = [max(g[0], floor) for g in grads]
    err = [[m - max(g[1], floor) for m, g in zip(med, grads)], [max(g[2], floor) - m for m, g in zip(med, grads)]]
    axes[1, 0].bar(range(len(labels)), med, yerr=err, color=[f"C{i}" for i in range(len(labels))], capsize=3)
    axes[1, 0].set_yscale("log")
    axes[1, 0].set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    axes[1, 0].set(title=f"||dL/dW_1|| at init (median, IQR; zeros drawn at {floor:g})")
    plots.curves(axes[1, 1], grid.steps, {label: grid.curves["test_acc"][:, chosen[j], j]
                                          for j, label in enumerate(labels)}, 100.0, True)
    axes[1, 1].set(title="MNIST-1D test accuracy, Adam, lr chosen on val (median, IQR)", xlabel="step",
                   ylabel="accuracy (%)")
    for ax in (axes[0, 0], axes[1, 1]):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    axes[0, 1].grid(alpha=0.3)
    fig.tight_layout()

    setup = f"""
Net: `DeepMLP(40, 10, width={WIDTH}, depth={DEPTH}, activation="relu")`: {DEPTH} hidden Linear+ReLU layers
of width {WIDTH} and a Linear head, zero biases, initialized with the project's `apply_init` for every
scheme: {", ".join(f"`{s.label}`" for s in ALL_SCHEMES)} (`lyapunov-*`: moment 0 Gaussian / Haar
orthogonal; `fractional s=1`: Gaussian; `orthogonal`: gain sqrt(2); `zero`: ZerO, deterministic).
**The Stiefel scheme is a reconstruction** (DESIGN section 5: the paper body of Choi, Lee & Kim was not
available; W semi-orthogonal with maximal row/column sums, gain 1, bias 0), not the authors' code.

Inputs: MNIST-1D (generated locally, seed 0): {len(data['train'][0])} train / {len(data['val'][0])} val /
{len(data['test'][0])} test samples, 40 features.

At init ({len(init_seeds)} seeds, 0..{init_seeds[-1]}; the first {len(x)} training inputs): a unit is *dead* when its
ReLU output is exactly 0 for every input; log r(h) = log(||h|| / sqrt(d)) per input (median over inputs,
minus the input's log r; computed without underflow); gradient norm ||dL/dW_1||_F of the mean
cross-entropy over all training inputs. Float32 throughout, as in training.

Training: Adam (no weight decay), batch {BATCH}, {steps} steps (~{steps * BATCH / len(data['train'][0]):.1f} epochs), seeds
{train_seeds[0]}..{train_seeds[-1]} ({len(train_seeds)} per scheme; seed k draws the weights and the batch order, so
comparisons are paired by seed); all (lr, scheme, seed) runs trained together by the benchmark engine
({grid.path} path). Each scheme's learning rate chosen from {{{", ".join(f"{lr:g}" for lr in LRS)}}} by median
final validation accuracy; test accuracy at that lr as median [q25, q75] over seeds. ZerO is deterministic, so
its seeds differ only in batch order.
"""
    findings = _findings(init, grid, chosen, steps)
    return Report("stiefel_depth", TITLE, setup, rows, findings, fig, runs=runs_rows, summary=findings[2:5])


def _findings(init: dict[str, list[dict]], grid: Grid, chosen: list[int], steps: int) -> list[str]:
    dead = {k: float(np.median([r["dead"][-1] for r in v])) for k, v in init.items()}
    gain = {k: float(np.median([r["log_gain"][-1] for r in v])) for k, v in init.items()}
    test = grid.final("test_acc", chosen)
    alive = [k for k in dead if dead[k] == 0.0]
    lines = [
        "Dead units in the last hidden layer at init (median over seeds): "
        + ", ".join(f"{k} {100 * dead[k]:.0f}%" for k in dead) + "."
        + (f" None at all (median): {', '.join(alive)}." if alive else ""),
        f"Median log-gain through the {DEPTH} layers, log r(h_{DEPTH}) - log r(x): "
        + ", ".join(f"{k} {gain[k]:+.1f}" for k in gain) + ".",
        f"Test accuracy after {steps} steps, median [IQR]: {stats.ranking(test, True, 'percent')}.",
    ]
    lyap = {s.label: test[s.label] for s in grid.schemes if s.lyapunov}
    base = {s.label: test[s.label] for s in grid.schemes if not s.lyapunov}
    pairs = [(stats.best(lyap, True), stats.best(base, True), " (each the best of its group by median in this run)"),
             ("lyapunov-gauss", "he", " (same directions, different scale)"),
             ("lyapunov-orth", "orthogonal", " (same directions, different scale)")]
    for a, b, note in pairs:
        lines.append(stats.compare(test[a], test[b], a, b, higher_is_better=True).sentence("test accuracy", "percent")
                     + note + ".")
    zero_grad = [k for k, v in init.items() if float(np.median([r["grad"] for r in v])) == 0.0]
    if zero_grad:
        lines.append(f"First-layer gradient exactly 0 in float32 (median over seeds) for {', '.join(zero_grad)}: the "
                     "signal and the backpropagated gradient both shrink by the product of the layer scales and underflow.")
    same_dead = _same_dead(init)
    if same_dead:
        lines.append("Identical dead-unit fractions in every layer for every seed: " + "; ".join(" = ".join(g) for g in
                     same_dead) + ". With zero biases a ReLU net is positively homogeneous and these schemes draw, "
                     "for the same seed, the same matrices up to a per-layer scale, so which units are dead does not "
                     "depend on the scale: the Lyapunov scale fixes the drift of the log-norm, not dead units.")
    lines += [stopped_note({"MNIST-1D": grid}), RELU_NOTE]
    return [line for line in lines if line]


def _same_dead(init: dict[str, list[dict]]) -> list[list[str]]:
    """Groups (of two or more) of schemes whose dead-unit fractions agree in every layer for every seed."""
    groups: dict[tuple, list[str]] = {}
    for label, runs in init.items():
        groups.setdefault(tuple(tuple(r["dead"]) for r in runs), []).append(label)
    return [g for g in groups.values() if len(g) > 1]
