"""``fractional``: the fractional-moment paper's experiment (width 64, depth 20, ReLU, s = 0.8) with He,
Glorot and Lyapunov (moment 0) next to it, on MNIST-1D (MNIST itself: ``mnist_fractional``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt

from benchmarks._lib import plots, stats
from benchmarks._lib.data import mnist1d
from benchmarks._lib.engine import SGD
from benchmarks._lib.package import DeepMLP
from benchmarks._lib.package import theory as th
from benchmarks._lib.protocol import classify, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import GLOROT, HE, LYAPUNOV_GAUSS, RELU_NOTE, Scheme

WIDTH, DEPTH, MOMENT = 64, 20, 0.8
TITLE = f"Fractional-moment init vs He, Glorot and Lyapunov (width {WIDTH}, depth {DEPTH}, ReLU, MNIST-1D)"
LR, BATCH = 0.01, 64
FRACTIONAL = Scheme(f"fractional s={MOMENT}", "fractional", "gaussian", MOMENT)
SCHEMES = (FRACTIONAL, HE, GLOROT, LYAPUNOV_GAUSS)
TABLE_EPOCHS = (0, 1, 2, 5, 10, 15, 20, 25, 30)


@dataclass(frozen=True)
class Size:
    seeds: int
    epochs: int
    samples: int  # MNIST-1D samples (train / val / test: 70 / 10 / 20%)


SIZES = Sizes(quick=Size(seeds=2, epochs=1, samples=1000), full=Size(seeds=10, epochs=30, samples=5000))


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    data = mnist1d(size.samples)
    n_train = len(data["train"][0])
    per_epoch = n_train // BATCH
    grid = classify(lambda: DeepMLP(data["train"][0].shape[1], 10, WIDTH, DEPTH, activation="relu"), SCHEMES, seeds,
                    data, evals=("train", "test"), optimizer=SGD, lrs=(LR,), steps=size.epochs * per_epoch,
                    batch_size=BATCH, record=[e * per_epoch for e in range(size.epochs + 1)])
    epochs = grid.steps / per_epoch
    rows = []
    for label in grid.labels:
        for e in (e for e in TABLE_EPOCHS if e <= size.epochs):
            k = int(list(epochs).index(e))
            train = stats.med_iqr(grid.curve("train_acc", label)[k], higher_is_better=True)
            test = stats.med_iqr(grid.curve("test_acc", label)[k], higher_is_better=True)
            rows.append({"data": "MNIST-1D", "scheme": label, "epoch": e,
                         "train_acc_median": 100 * train[0], "train_q25": 100 * train[1], "train_q75": 100 * train[2],
                         "test_acc_median": 100 * test[0], "test_q25": 100 * test[1], "test_q75": 100 * test[2]})

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, what in zip(axes, ("train_acc", "test_acc"), ("train", "test")):
        plots.curves(ax, epochs, {label: grid.curve(key, label) for label in grid.labels}, 100.0, True)
        ax.set(title=f"MNIST-1D: {what} accuracy (median, IQR band)", xlabel="epoch", ylabel="accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()

    sigma2 = {s: th.critical_scale(WIDTH, WIDTH, 0.0, "gaussian", s) ** 2 * WIDTH for s in (0.0, MOMENT, 2.0)}
    setup = f"""
The fractional-moment paper's experiment (Gürbüzbalaban & Hu): fully connected net, width {WIDTH},
depth {DEPTH} hidden layers (`DeepMLP(in, 10, {WIDTH}, {DEPTH}, activation="relu")`, zero biases), ReLU,
Gaussian weights. Schemes, all applied with the project's `apply_init` (last layer: slope 1):

- `fractional s={MOMENT}`: sigma^2 = {sigma2[MOMENT]:.4f}/d (the paper's 2/d + 3/d^2 = {2 + 3 / WIDTH:.4f}/d);
- `he` (Kaiming, s = 2): sigma^2 = 2/d_in; `glorot` (Xavier): sigma^2 = 2/(d_in + d_out);
- `lyapunov-gauss` (moment s = 0, zero Lyapunov exponent): sigma^2 = {sigma2[0.0]:.4f}/d.

Data: MNIST-1D (Greydanus 2020), generated locally (seed 0, 40 features, already standardized):
{n_train} train / {len(data['test'][0])} test samples; {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), {size.epochs} epochs.
MNIST-1D is a harder task than MNIST, so the absolute numbers are not comparable with the paper's
MNIST numbers; the paper's MNIST protocol is run by
`mnist_fractional`.

Protocol: plain SGD, learning rate {LR}, no momentum, no weight decay, batch {BATCH}, cross-entropy, the same
for every scheme (not tuned per scheme). Seed k draws the weights (`torch.Generator().manual_seed(k)`) and
the batch order, so the schemes see identical batches for the same seed (comparisons are paired by seed).
All runs are trained together by the benchmark engine ({grid.path} path). Accuracy on the whole train and
test sets after every epoch; the table shows median and interquartile range over seeds in percent.
Paper's reported numbers (MNIST, 30 epochs, means of 20 runs): 85.0% train accuracy s = 0.8, 80.1%
Kaiming, 13.9% Xavier.
"""
    findings = _findings(grid, size.epochs)
    return Report("fractional", TITLE, setup, rows, findings, fig, runs=grid.run_rows(), summary=findings[1:3])


def _findings(grid, epochs: int) -> list[str]:
    frac, lyap, he, gl = FRACTIONAL.label, LYAPUNOV_GAUSS.label, HE.label, GLOROT.label
    lines = [f"MNIST-1D after {epochs} epochs, median train accuracy [IQR]: "
             + stats.ranking(grid.final("train_acc"), True, "percent") + "; test: "
             + stats.ranking(grid.final("test_acc"), True, "percent") + "."]
    for a, b in ((frac, he), (lyap, he), (lyap, frac), (he, gl)):
        for key, what in (("train_acc", "train accuracy"), ("test_acc", "test accuracy")):
            values = grid.final(key)
            lines.append(stats.compare(values[a], values[b], a, b, higher_is_better=True).sentence(what, "percent")
                         + ".")
    he_exponent = th.lyapunov_exponent(WIDTH, WIDTH, 0.0, math.sqrt(2 / WIDTH))
    sigma2 = {s: th.critical_scale(WIDTH, WIDTH, 0.0, "gaussian", s) ** 2 * WIDTH for s in (0.0, 2.0)}
    lines += [
        f"At width {WIDTH} the Gaussian scales of s = 0 and s = 2 differ by {100 * (sigma2[0.0] / sigma2[2.0] - 1):.1f}% "
        f"in variance: He's per-layer Lyapunov exponent is {he_exponent:+.4f}, {DEPTH * he_exponent:+.2f} in "
        f"log-norm over the {DEPTH} layers, and for the same seed He, s = {MOMENT} and Lyapunov draw the same "
        "standard normal matrices, only the scale differs.",
        stopped_note({"MNIST-1D": grid}),
        RELU_NOTE,
    ]
    return [line for line in lines if line]
