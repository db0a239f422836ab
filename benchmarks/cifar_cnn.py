"""``cifar_cnn``: the ``configs/cifar10.yaml`` deep narrow plain CNN and a small ResNet on CIFAR-10 (JPEG q75
copy), every scheme plus LSUV, test accuracy per epoch and time to a target accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from benchmarks._lib import plots, stats
from benchmarks._lib.data import CIFAR_NOTE, cifar10
from benchmarks._lib.engine import Adam
from benchmarks._lib.package import PlainCNN, SmallResNet
from benchmarks._lib.protocol import Grid, classify, non_finite_note, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import RELU_NOTE, scheme_note, with_data_driven

LR, WEIGHT_DECAY, BATCH, POOL, TARGET = 1e-3, 5e-4, 64, 4, 0.25
TITLE = f"Config plain CNN and ResNet-8 on {CIFAR_NOTE}: every scheme"
MODELS = {
    "plain CNN (config)": lambda: PlainCNN(3, 10, width=16, depth=20, activation="leaky_relu", negative_slope=0.1),
    "ResNet-8 (BN)": lambda: SmallResNet(3, 10, width=16, blocks_per_stage=(1, 1, 1)),
}


@dataclass(frozen=True)
class Size:
    seeds: int
    epochs: int
    n_train: int
    n_test: int


SIZES = Sizes(quick=Size(seeds=2, epochs=1, n_train=128, n_test=64),
              full=Size(seeds=20, epochs=3, n_train=1920, n_test=1000))


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    data = cifar10(n_train=size.n_train, n_test=size.n_test, pool=POOL, seed=0)
    per_epoch = len(data["train"][0]) // BATCH
    results = {name: classify(build, with_data_driven(), seeds, data, evals=("test",),
                              optimizer=lambda lrs: Adam(lrs, weight_decay=WEIGHT_DECAY), lrs=(LR,),
                              steps=size.epochs * per_epoch, batch_size=BATCH,
                              record=[e * per_epoch for e in range(size.epochs + 1)])
               for name, build in MODELS.items()}
    rows, runs = [], []
    for name, grid in results.items():
        per_run = grid.train_seconds / (len(grid.schemes) * len(seeds))
        for label in grid.labels:
            acc = grid.curve("test_acc", label)  # (epochs + 1, seeds)
            reached = [int(np.flatnonzero(acc[:, k] >= TARGET)[0]) for k in range(len(seeds))
                       if (acc[:, k] >= TARGET).any()]
            row = {"model": name, "scheme": label, "path": grid.path}
            for e in range(1, size.epochs + 1):
                row[f"test acc epoch {e} (%)"] = stats.percent(acc[e])
            row[f"runs reaching {100 * TARGET:.0f}%"] = str(stats.Count(len(reached), len(seeds)))
            row["epochs to target (median of those)"] = f"{np.median(reached):.1f}" if reached else "-"
            row["CPU s to target"] = f"{np.median(reached) * per_run / size.epochs:.1f}" if reached else "-"
            rows.append(row)
        runs += [{"model": name, **row} for row in grid.run_rows()]
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (name, grid) in zip(axes[0], results.items()):
        plots.curves(ax, range(size.epochs + 1), {label: grid.curve("test_acc", label) for label in grid.labels},
                     100.0, True)
        ax.axhline(100 * TARGET, color="gray", lw=0.8)
        ax.set(title=f"{name} on {CIFAR_NOTE} (8x8)", xlabel="epoch", ylabel="test accuracy (%)")
        ax.title.set_fontsize(9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    setup = f"""
Models: the `configs/cifar10.yaml` net, `PlainCNN(width=16, depth=20, leaky_relu 0.1, no BatchNorm)`, and
`SmallResNet(width=16, blocks_per_stage=(1, 1, 1))` (ResNet-8 with BatchNorm and ReLU). Adam (lr {LR:g}, weight
decay {WEIGHT_DECAY:g}, the config's optimizer), batch {BATCH}, no augmentation, {size.epochs} epochs, seeds
{seeds[0]}..{seeds[-1]} ({len(seeds)} per scheme; seed k draws the weights and the batch order, so comparisons are
paired by seed). All runs of a model trained together by the benchmark engine (the plain CNN as a chain of
per-run convolutions, the ResNet under `torch.vmap` with its BatchNorm statistics per run).

{scheme_note()}

**Heavily reduced to fit the shared 2-core CPU** (the config trains 30 epochs on 45,000 full-size
images): {CIFAR_NOTE}, per-channel standardized, **average-pooled {POOL}x{POOL} to 8x8 pixels**, a random
**{len(data['train'][0])}-image training subset** and {len(data['test'][0])} random test images (seed 0). Absolute
accuracies are therefore far below full CIFAR-10 numbers. Time to target: the first epoch whose test accuracy
reaches {100 * TARGET:.0f}%, and the CPU seconds of training up to it (the stacked training's CPU time divided by
the number of runs, times the fraction of the epochs).
"""
    findings = _findings(results, size.epochs)
    return Report("cifar_cnn", TITLE, setup, rows, findings, fig, runs=runs, summary=findings[:4])


def _findings(results: dict[str, Grid], epochs: int) -> list[str]:
    lines = []
    for name, grid in results.items():
        test = grid.final("test_acc")
        lyap = {s.label: test[s.label] for s in grid.schemes if s.lyapunov}
        base = {s.label: test[s.label] for s in grid.schemes if not s.lyapunov}
        a, b = stats.best(lyap, True), stats.best(base, True)
        lines += [f"{name}, median test accuracy [IQR] after {epochs} epochs: {stats.ranking(test, True, 'percent')}.",
                  f"{name}: " + stats.compare(test[a], test[b], a, b, higher_is_better=True)
                  .sentence("test accuracy", "percent") + " (each the best of its group by median in this run)."]
    lines += [non_finite_note(results), stopped_note(results),
              "The ResNet-8 rows: " + RELU_NOTE]
    return [line for line in lines if line]
