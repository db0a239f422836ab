"""``conv_delta``: delta vs full draws for convolutions (``conv="delta"`` vs ``conv="full"``).

A delta conv holds one drawn ``(C_out, C_in)`` matrix at the kernel's centre tap and zeros elsewhere
(Xiao et al. 2018); a full draw fills the whole kernel. Measured: the log-gain of a 20-layer 3x3 ReLU
CNN at init, and a short training of a 12-layer Conv1d ReLU net on MNIST-1D.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from benchmarks._lib import plots, stats
from benchmarks._lib.data import mnist1d
from benchmarks._lib.engine import Adam
from benchmarks._lib.package import log_gain
from benchmarks._lib.protocol import Grid, classify, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import RELU_NOTE, Scheme

TITLE = "Delta vs full conv draws: log-gain at init and a short training"
SCHEMES = (
    Scheme("lyapunov-orth full", "lyapunov", "orthogonal", conv="full"),
    Scheme("lyapunov-orth delta", "lyapunov", "orthogonal", conv="delta"),
    Scheme("orthogonal full", "orthogonal", "orthogonal", conv="full"),
    Scheme("orthogonal delta", "orthogonal", "orthogonal", conv="delta"),
    Scheme("lyapunov-gauss full", "lyapunov", "gaussian", conv="full"),
    Scheme("stiefel (delta)", "stiefel", "orthogonal"),
)
CHANNELS, DEPTH_2D, SIZE = 16, 20, 16
DEPTH_1D, LR, BATCH = 12, 1e-3, 128


@dataclass(frozen=True)
class Size:
    init_seeds: int
    train_seeds: int
    steps: int
    samples: int  # MNIST-1D samples (train / val / test: 70 / 10 / 20%)


SIZES = Sizes(quick=Size(init_seeds=2, train_seeds=2, steps=5, samples=1000),
              full=Size(init_seeds=20, train_seeds=20, steps=250, samples=5000))


def cnn2d() -> nn.Sequential:
    """``DEPTH_2D`` layers of 3x3 Conv2d(16, 16, padding 1) + ReLU (no head: a plain chain)."""
    return nn.Sequential(*[m for _ in range(DEPTH_2D) for m in (nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU())])


def cnn1d() -> nn.Sequential:
    """MNIST-1D classifier: ``DEPTH_1D`` Conv1d(k=3, padding 1) + ReLU layers of 16 channels, Linear head."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, 40))]
    for i in range(DEPTH_1D):
        layers += [nn.Conv1d(1 if i == 0 else CHANNELS, CHANNELS, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(CHANNELS * 40, 10))


def log_gain_at_init(scheme: Scheme, seed: int) -> float:
    """Mean over 16 Gaussian inputs (16 x 16 pixels) of log r(output) - log r(input)."""
    model = cnn2d()
    scheme.apply(model, seed)
    x = torch.randn(16, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        return log_gain(x, model(x))


def run(size: Size) -> Report:
    init_seeds, train_seeds, steps = range(size.init_seeds), tuple(range(size.train_seeds)), size.steps
    every = max(1, steps // 5)
    gains = {s.label: [log_gain_at_init(s, seed) for seed in init_seeds] for s in SCHEMES}
    data = mnist1d(size.samples)
    grid = classify(cnn1d, SCHEMES, train_seeds, data, evals=("val", "test"), optimizer=Adam, lrs=(LR,), steps=steps,
                    batch_size=BATCH, record=range(0, steps + 1, every))
    rows = [{
        "scheme": s.label,
        f"log-gain at init, {DEPTH_2D} layers (median [q25, q75])": stats.cell(gains[s.label], 1, 2, True, fixed=True),
        "log-gain at init, min / max": f"{min(gains[s.label]):+.2f} / {max(gains[s.label]):+.2f}",
        "val loss at step 0": stats.cell(grid.curve("val_loss", s.label)[0], 1, 3, fixed=True),
        f"val loss after {steps} steps": stats.cell(grid.curve("val_loss", s.label)[-1], 1, 3, fixed=True),
        f"test acc after {steps} steps (%)": stats.percent(grid.curve("test_acc", s.label)[-1]),
    } for s in SCHEMES]
    runs = [{"part": "init", "scheme": label, "seed": seed, "log-gain": g}
            for label, values in gains.items() for seed, g in zip(init_seeds, values)]
    runs += [{"part": "training", **row} for row in grid.run_rows()]

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [s.label for s in SCHEMES]
    axes[0].boxplot([gains[label] for label in labels], showfliers=True)
    axes[0].set_xticks(range(1, len(labels) + 1), labels, rotation=25, ha="right", fontsize=8)
    axes[0].axhline(0.0, color="k", lw=0.8)
    axes[0].set(title=f"log r(out) - log r(in) at init, {DEPTH_2D}-layer 3x3 ReLU CNN", ylabel="log-gain")
    axes[0].grid(alpha=0.3)
    plots.curves(axes[1], grid.steps, {label: grid.curve("test_acc", label) for label in labels}, 100.0, True)
    axes[1].legend(fontsize=7)
    axes[1].set(title=f"MNIST-1D, {DEPTH_1D}-layer Conv1d ReLU, Adam lr {LR:g}", xlabel="step", ylabel="test acc (%)")
    fig.tight_layout()

    setup = f"""
At init: `{DEPTH_2D}` layers of `Conv2d({CHANNELS}, {CHANNELS}, 3, padding=1)` + ReLU, zero biases, initialized with the
project's `apply_init(model, scheme=..., distribution=..., conv=...)`, seeds 0..{init_seeds[-1]}; per seed the mean over
16 standard normal inputs ({CHANNELS} x {SIZE} x {SIZE}) of log r(output) - log r(input), r(v) = ||v|| / sqrt(numel).
`full`: the whole kernel drawn as the flattened (C_out, C_in * 9) matrix; `delta`: one (C_out, C_in) matrix at
the centre tap, the other taps 0. Stiefel always uses delta for convolutions (`conv="full"` is refused).

Training: MNIST-1D (generated locally, seed 0; {len(data['train'][0])} train / {len(data['val'][0])} val /
{len(data['test'][0])} test), input reshaped to 1 x 40, `{DEPTH_1D}` layers of Conv1d(k=3, padding 1, 16 channels) + ReLU
and a Linear head, Adam lr {LR:g}, batch {BATCH}, {steps} steps, seeds {train_seeds[0]}..{train_seeds[-1]} (seed k draws the
weights and the batch order: comparisons are paired by seed); median [q25, q75] over seeds. All runs trained
together by the benchmark engine ({grid.path} path). Float32, one torch thread.
"""
    findings = _findings(gains, grid, steps)
    return Report("conv_delta", TITLE, setup, rows, findings, fig, runs=runs, summary=findings[2:4])


def _findings(gains: dict[str, list[float]], grid: Grid, steps: int) -> list[str]:
    test = grid.final("test_acc")
    lines = [
        "Log-gain over 20 layers at init, median (interquartile width): "
        + "; ".join(f"{k} {np.median(v):+.2f} ({np.subtract(*np.quantile(v, [0.75, 0.25])):.2f})"
                    for k, v in gains.items()) + ".",
        f"Test accuracy after {steps} steps, median [IQR]: {stats.ranking(test, True, 'percent')}.",
    ]
    for full in (k for k in test if k.endswith(" full")):
        delta = full.replace(" full", " delta")
        if delta in test:
            lines.append(stats.compare(test[delta], test[full], delta, full, higher_is_better=True)
                         .sentence("test accuracy", "percent") + ".")
    lines += [
        "A delta kernel starts as a 1x1 convolution: its spatial taps start at 0 and are grown by training.",
        stopped_note({"MNIST-1D": grid}),
        RELU_NOTE,
    ]
    return [line for line in lines if line]
