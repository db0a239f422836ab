"""``fractional_protocol``: the fractional-moment paper's MNIST table with its protocol's scale: width 64,
depth 20, ReLU, plain SGD on all 60,000 training images, 20 runs per scheme, s = 0.8 against Kaiming (He),
Xavier (Glorot) and the random-walk initialization, at the learning rate (from a grid) where Kaiming's mean
comes closest to the paper's 80% (``mnist_fractional`` is the small-subset version over every scheme).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from benchmarks._lib import stats
from benchmarks._lib.data import mnist
from benchmarks._lib.engine import SGD
from benchmarks._lib.package import DeepMLP
from benchmarks._lib.protocol import classify, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import GLOROT, HE, RELU_NOTE
from benchmarks.fractional import FRACTIONAL

WIDTH, DEPTH = 64, 20
TITLE = f"Fractional-moment paper's MNIST table (width {WIDTH}, depth {DEPTH}, ReLU, SGD, all 60,000 images)"
#: the paper's MNIST table: mean and std of the accuracy over 20 runs, 30 epochs
PAPER = {FRACTIONAL.label: (85.02, 11.74), "he": (80.08, 14.7), "glorot": (13.9, math.nan)}


@dataclass(frozen=True)
class RandomWalk:
    """Sussillo & Abbott (2014) random-walk initialization for ReLU, as we read it: every Linear layer
    N(0, g^2 / n), n = fan_in, g = sqrt(2) exp(1.2 / (max(n, 6) - 2.4)); biases 0."""

    label: str = "random walk"
    lyapunov: bool = False

    def apply(self, model: nn.Module, seed: int, probe: Tensor | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
                n = layer.in_features
                g = math.sqrt(2.0) * math.exp(1.2 / (max(n, 6) - 2.4))
                layer.weight.normal_(0.0, g / math.sqrt(n), generator=generator)
                if layer.bias is not None:
                    layer.bias.zero_()


SCHEMES = (FRACTIONAL, HE, GLOROT, RandomWalk())


@dataclass(frozen=True)
class Size:
    seeds: int
    epochs: int
    lrs: tuple[float, ...]
    batch: int
    n_train: int | None  # None: all 60,000
    n_test: int | None


PAPER_EPOCHS = 30
# full: the paper's 30 epochs, at rates meant to bracket Kaiming's mean near the paper's 80% (30 epochs at 1e-4
# take about the lr x steps of one epoch at 3e-3); hours of CPU: run it with $LYAPUNOV_BENCH_CHECKPOINTS set
SIZES = Sizes(quick=Size(seeds=3, epochs=1, lrs=(0.01, 0.03), batch=64, n_train=256, n_test=128),
              full=Size(seeds=20, epochs=PAPER_EPOCHS, lrs=(1e-4, 3e-4, 1e-3), batch=64, n_train=None, n_test=None))


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    data = mnist(n_train=size.n_train, n_test=size.n_test, seed=0)
    per_epoch = len(data["train"][0]) // size.batch
    grid = classify(lambda: DeepMLP(784, 10, WIDTH, DEPTH, activation="relu"), SCHEMES, seeds, data, evals=(),
                    optimizer=SGD, lrs=size.lrs, steps=size.epochs * per_epoch, batch_size=size.batch,
                    order_by_seed=True, final_evals=("train", "test"))
    he_means = [100 * float(np.mean(grid.finals["train_acc"][i, grid.index("he")])) for i in range(len(size.lrs))]
    chosen = min(range(len(size.lrs)), key=lambda i: abs(he_means[i] - PAPER["he"][0]))
    rows = []
    for i, lr in enumerate(size.lrs):
        for j, label in enumerate(grid.labels):
            train, test = (100 * grid.finals[k][i, j] for k in ("train_acc", "test_acc"))
            paper = PAPER.get(label)
            rows.append({"lr": lr, "chosen": i == chosen, "scheme": label, "runs": len(seeds),
                         "train acc mean (%)": float(train.mean()), "train acc std (%)": float(train.std(ddof=1)),
                         "train acc median [IQR] (%)": stats.percent(train / 100),
                         "runs below 20% train acc": int((train < 20).sum()),
                         "test acc mean (%)": float(test.mean()),
                         "paper mean (std) (%)": "-" if paper is None else f"{paper[0]:.2f} ({paper[1]:.2f})"})
    train = {label: grid.finals["train_acc"][chosen, j] for j, label in enumerate(grid.labels)}
    lr = size.lrs[chosen]
    findings = [
        "Learning-rate search (batch " + str(size.batch) + ", fixed): Kaiming's mean train accuracy "
        + ", ".join(f"{m:.1f}% at lr {r:g}" for m, r in zip(he_means, size.lrs))
        + f"; the closest to the paper's {PAPER['he'][0]:.2f}% is lr {lr:g}, where the comparisons below are made.",
        f"At lr {lr:g}, median train accuracy [IQR] over {len(seeds)} runs: " + stats.ranking(train, True, "percent") + ".",
    ]
    if he_means[chosen] > PAPER["he"][0] and lr == min(size.lrs):
        above = he_means[chosen] - PAPER["he"][0]
        findings.append(f"Kaiming's mean at the grid's smallest learning rate, {lr:g}, is still {above:.1f} "
                        "points above the paper's: the paper's regime (some runs failing) needs a smaller rate, "
                        "fewer steps or another batch size than tried here.")
    for a, b in ((FRACTIONAL.label, "he"), ("he", "glorot"), ("random walk", "he")):
        findings.append(f"At lr {lr:g}: " + stats.compare(train[a], train[b], a, b, higher_is_better=True)
                        .sentence("train accuracy", "percent") + ".")
    for label, (mean, std) in PAPER.items():
        ours = 100 * train[label]
        findings.append(f"{label} at lr {lr:g}: mean {ours.mean():.1f}% (std {ours.std(ddof=1):.1f}) against the paper's "
                        f"{mean:.2f}%" + ("" if math.isnan(std) else f" (std {std:.2f})")
                        + f": differs by {ours.mean() - mean:+.1f} points; {int((ours < 20).sum())} of {len(ours)} runs "
                        "below 20%.")
    epochs = (f"the paper's {PAPER_EPOCHS} epochs" if size.epochs == PAPER_EPOCHS
              else f"{size.epochs} epoch(s) instead of the paper's {PAPER_EPOCHS} (CPU)")
    findings.append(f"Tried: learning rates {list(size.lrs)} at batch {size.batch}, {epochs}; the batch size was not "
                    "searched.")
    findings += [stopped_note({"all learning rates": grid}), RELU_NOTE]
    fig, axes = plt.subplots(1, len(size.lrs), figsize=(4.6 * len(size.lrs), 3.8), squeeze=False)
    for ax, (i, r) in zip(axes[0], enumerate(size.lrs)):
        for j, label in enumerate(grid.labels):
            ax.scatter(np.full(len(seeds), j) + np.linspace(-0.2, 0.2, len(seeds)),
                       100 * grid.finals["train_acc"][i, j], s=10, color=f"C{j}")
        ax.set_xticks(range(len(grid.labels)), grid.labels, rotation=30, fontsize=8)
        ax.set(title=f"SGD lr {r:g}" + (" (chosen)" if i == chosen else ""), ylabel="train accuracy (%)")
    fig.tight_layout()
    n_train = len(data["train"][0])
    setup = f"""
The fractional-moment paper's MNIST experiment (Gürbüzbalaban & Hu): `DeepMLP(784, 10, {WIDTH}, {DEPTH},
activation="relu")`, plain SGD (no momentum, no weight decay), batch {size.batch}, {n_train} training images
(standardized), **{size.epochs} epoch(s)** (the paper: {PAPER_EPOCHS}{"" if size.epochs == PAPER_EPOCHS else "; reduced to fit the shared 2-core CPU"}), runs
0..{size.seeds - 1} ({size.seeds} per scheme; run k draws the weights and its own per-epoch shuffle, shared by the
schemes, so comparisons are paired by run). Schemes: `{FRACTIONAL.label}` (the paper's, through `apply_init`),
`he` (Kaiming), `glorot` (Xavier) and `random walk` (Sussillo & Abbott 2014 for ReLU, as we read it: N(0, g^2/n),
g = sqrt(2) exp(1.2 / (max(n, 6) - 2.4)); in this module). Every learning rate of {list(size.lrs)} is run; the
reported one is where Kaiming's mean train accuracy is closest to the paper's {PAPER['he'][0]:.2f}% (the regime
where some runs fail). Accuracies are train accuracy on all training images (as the paper's table) and test
accuracy on {len(data['test'][0])} test images, after the last step. CPU: {grid.train_seconds:.0f} s training,
{grid.init_seconds:.0f} s init.
"""
    summary = findings[:2] + [f for f in findings if "differs by" in f][:2]
    return Report("fractional_protocol", TITLE, setup, rows, [f for f in findings if f], fig,
                  runs=grid.run_rows([chosen] * len(grid.schemes)), summary=summary)
