"""``mnist_fractional``: the fractional-moment paper's experiments on MNIST (width 64, depth 20, ReLU, SGD,
s = 0.8) and its small CNN (one conv + four fully connected layers of width 64) on MNIST and CIFAR-10
(JPEG q75 copy), every scheme plus LSUV, all runs of a data set trained together.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
from torch import nn

from benchmarks._lib import plots, stats
from benchmarks._lib.data import CIFAR_NOTE, cifar10, mnist
from benchmarks._lib.engine import SGD
from benchmarks._lib.package import DeepMLP
from benchmarks._lib.package import theory as th
from benchmarks._lib.protocol import Grid, classify, non_finite_note, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import RELU_NOTE, scheme_note, with_data_driven
from benchmarks.fractional import FRACTIONAL

WIDTH, DEPTH, LR, BATCH = 64, 20, 0.01, 64
TITLE = "Fractional-moment paper on MNIST and CIFAR-10 (JPEG q75 copy): every scheme"
PAPER_TRAIN = {FRACTIONAL.label: 85.0, "he": 80.1, "glorot": 13.9}  # MNIST MLP, 30 epochs, means of 20 runs
PAPER_CNN_EPOCHS = 50  # the paper's CNN (MLP: 30 epochs)


@dataclass(frozen=True)
class Size:
    seeds: int
    n_train: int  # training images (a random subset)
    n_test_mnist: int | None  # None: all
    n_test_cifar: int
    mlp_epochs: int
    cnn_epochs: int


SIZES = Sizes(quick=Size(seeds=2, n_train=256, n_test_mnist=256, n_test_cifar=128, mlp_epochs=1, cnn_epochs=1),
              full=Size(seeds=20, n_train=3000, n_test_mnist=None, n_test_cifar=2000, mlp_epochs=30, cnn_epochs=50))


def paper_cnn(in_channels: int, size: int) -> nn.Sequential:
    """One 5x5 conv (16 channels, stride 2) + ReLU, then four Linear+ReLU of width 64 and a Linear head."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, 5, stride=2, padding=2), nn.ReLU(), nn.Flatten()]
    d = 16 * (size // 2) ** 2
    for _ in range(4):
        layers += [nn.Linear(d, WIDTH), nn.ReLU()]
        d = WIDTH
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers)


@dataclass
class Experiment:
    name: str
    epochs: list[int]  # the recorded epochs
    grid: Grid
    n_test: int


def _experiment(name: str, data: dict, build, seeds: tuple[int, ...], epochs: int) -> Experiment:
    """Initialize every (scheme, seed) net and train them all together with SGD (the same batches for all)."""
    per_epoch = len(data["train"][0]) // BATCH
    recorded = sorted({0, 1, 2, 5, 10, 20, epochs} & set(range(epochs + 1)))
    grid = classify(build, [FRACTIONAL, *with_data_driven()], seeds, data, evals=("train", "test"), optimizer=SGD,
                    lrs=(LR,), steps=epochs * per_epoch, batch_size=BATCH, record=[e * per_epoch for e in recorded],
                    order_by_seed=False)
    return Experiment(name, recorded, grid, len(data["test"][0]))


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    mnist_data = mnist(n_train=size.n_train, n_test=size.n_test_mnist, seed=0)
    cifar_data = cifar10(n_train=size.n_train, n_test=size.n_test_cifar, seed=0)
    experiments = [
        _experiment("MNIST, MLP 64x20", mnist_data, lambda: DeepMLP(784, 10, WIDTH, DEPTH, activation="relu"),
                    seeds, size.mlp_epochs),
        _experiment("MNIST, CNN", mnist_data, lambda: paper_cnn(1, 28), seeds, size.cnn_epochs),
        _experiment(f"{CIFAR_NOTE}, CNN", cifar_data, lambda: paper_cnn(3, 32), seeds, size.cnn_epochs),
    ]
    rows, runs = [], []
    for exp in experiments:
        after_one = exp.epochs.index(1) if 1 in exp.epochs else -1
        for label in exp.grid.labels:
            paper = PAPER_TRAIN.get(label) if exp.name.startswith("MNIST, MLP") else None
            rows.append({
                "data, model": exp.name, "scheme": label, "epochs": exp.epochs[-1],
                "train acc (%)": stats.percent(exp.grid.curve("train_acc", label)[-1]),
                "test acc (%)": stats.percent(exp.grid.curve("test_acc", label)[-1]),
                "paper train acc (%)": "-" if paper is None else f"{paper:.1f}",
                "train acc after 1 epoch (%)": stats.percent(exp.grid.curve("train_acc", label)[after_one]),
            })
        runs += [{"data, model": exp.name, **row} for row in exp.grid.run_rows()]

    fig, axes = plt.subplots(1, len(experiments), figsize=(5.2 * len(experiments), 4.2), squeeze=False)
    for ax, exp in zip(axes[0], experiments):
        plots.curves(ax, exp.epochs, {label: exp.grid.curve("train_acc", label) for label in exp.grid.labels},
                     100.0, True)
        ax.set(title=f"{exp.name}: train accuracy", xlabel="epoch", ylabel="accuracy (%)")
        ax.title.set_fontsize(9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()

    sigma2 = th.critical_scale(WIDTH, WIDTH, 0.0, "gaussian", FRACTIONAL.moment) ** 2 * WIDTH
    times = "; ".join(f"{e.name}: {e.grid.train_seconds:.0f} s training (all runs together), {e.grid.init_seconds:.0f} s "
                      "init" for e in experiments)
    cnn_epochs = " as in the paper" if size.cnn_epochs == PAPER_CNN_EPOCHS else f" instead of {PAPER_CNN_EPOCHS}"
    setup = f"""
The fractional-moment paper's experiment (Gürbüzbalaban & Hu): `DeepMLP(784, 10, {WIDTH}, {DEPTH},
activation="relu")` on MNIST, plain SGD (learning rate {LR}, no momentum, no weight decay, batch {BATCH},
the same for every scheme; the paper's learning rate was not available), {size.mlp_epochs} epochs.
Their CNN, as we read "one convolutional layer and four fully connected layers of width 64": a 5x5
conv with 16 channels, stride 2, ReLU, then four Linear+ReLU of width 64 and a Linear head, on MNIST
and on {CIFAR_NOTE} (per-channel standardized), same SGD, {size.cnn_epochs} epochs.

{scheme_note()} `{FRACTIONAL.label}`: the paper's scheme (sigma^2 = {sigma2:.4f}/d at width {WIDTH}).

**Reduced to fit the shared 2-core CPU** (the paper: full MNIST, 30 epochs for the MLP and {PAPER_CNN_EPOCHS} for the CNN,
20 runs): every model is
trained on a random subset of **{len(mnist_data['train'][0])} training images** (seed 0; CIFAR-10 test accuracy on a
random {experiments[2].n_test} of the test images, MNIST on all {experiments[0].n_test}), seeds
{seeds[0]}..{seeds[-1]} ({len(seeds)} per scheme; seed k draws the weights; every run sees the same batches, so the
comparisons are paired by seed), the CNNs for {size.cnn_epochs} epochs{cnn_epochs}. Train accuracy is measured
on that training subset. Cells: median [q25, q75] over seeds. All runs of one data set and model are trained
together by the benchmark engine. CPU times: {times}.
"""
    findings = _findings(experiments)
    return Report("mnist_fractional", TITLE, setup, rows, findings, fig, runs=runs, summary=findings[3:6])


def _findings(experiments: list[Experiment]) -> list[str]:
    lines = []
    for exp in experiments:
        lines.append(f"**{exp.name}**, after {exp.epochs[-1]} epochs, median train accuracy [IQR]: "
                     + stats.ranking(exp.grid.final("train_acc"), True, "percent") + ".")
    mlp = experiments[0].grid
    train = mlp.final("train_acc")
    for a, b in ((FRACTIONAL.label, "he"), ("lyapunov-gauss", "he"), ("he", "glorot")):
        lines.append(f"{experiments[0].name}: "
                     + stats.compare(train[a], train[b], a, b, higher_is_better=True).sentence("train accuracy", "percent")
                     + ".")
    lines.append(f"Paper (MNIST MLP, full training set, 30 epochs, means of 20 runs): s = 0.8 85.0%, He 80.1%, Glorot "
                 f"13.9% train accuracy; ours (medians): s = 0.8 {100 * stats.median(train[FRACTIONAL.label]):.1f}%, He "
                 f"{100 * stats.median(train['he']):.1f}%, Glorot {100 * stats.median(train['glorot']):.1f}%.")
    for exp in experiments:
        test = exp.grid.final("test_acc")
        lines.append(f"{exp.name}: " + stats.compare(test["lyapunov-calibrated"], test["lsuv"], "lyapunov-calibrated",
                                                     "lsuv", higher_is_better=True).sentence("test accuracy", "percent")
                     + ".")
    grids = {e.name: e.grid for e in experiments}
    lines += [non_finite_note(grids), stopped_note(grids), RELU_NOTE]
    return [line for line in lines if line]
