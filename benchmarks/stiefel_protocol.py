"""``stiefel_protocol``: the Stiefel paper's claim on MNIST with its protocol's scale: width-32 ReLU nets
of depths 100 and 200 trained for whole epochs on all 60,000 images, several seeds, two Adam learning
rates (``mnist_stiefel`` is the cheap 200-step version over every scheme).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt

from benchmarks._lib import plots, stats
from benchmarks._lib.data import mnist
from benchmarks._lib.engine import Adam
from benchmarks._lib.package import DeepMLP
from benchmarks._lib.protocol import classify, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import HE, LYAPUNOV_ORTH, ORTHOGONAL, RELU_NOTE, STIEFEL

WIDTH, BATCH = 32, 128
PAPER_EPOCHS = 5  # the protocol the issue asks for
REDUCED = ("; **reduced from the 5 epochs the protocol asks for**: the shared 2-core CPU gave this run about "
           "a tenth of a core, and 5 epochs at both depths were estimated at 1,450 s of CPU")
SCHEMES = (HE, ORTHOGONAL, LYAPUNOV_ORTH, STIEFEL)
TITLE = f"Stiefel paper's protocol on MNIST: width {WIDTH}, depths 100 / 200, whole epochs, two learning rates"


@dataclass(frozen=True)
class Size:
    depths: tuple[int, ...]
    seeds: int
    epochs: int
    lrs: tuple[float, ...]
    n_train: int | None  # None: all 60,000
    n_test: int | None


SIZES = Sizes(quick=Size(depths=(5,), seeds=2, epochs=1, lrs=(1e-3, 1e-4), n_train=256, n_test=128),
              full=Size(depths=(100, 200), seeds=6, epochs=5, lrs=(1e-3, 1e-4), n_train=None, n_test=None))


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    data = mnist(n_train=size.n_train, n_test=size.n_test, seed=0)
    per_epoch = len(data["train"][0]) // BATCH
    steps = size.epochs * per_epoch
    grids = {depth: classify(lambda depth=depth: DeepMLP(784, 10, WIDTH, depth, activation="relu"), SCHEMES, seeds,
                             data, evals=("test",), optimizer=Adam, lrs=size.lrs, steps=steps, batch_size=BATCH,
                             record=[e * per_epoch for e in range(size.epochs + 1)])
             for depth in size.depths}
    rows, findings = [], []
    for depth, grid in grids.items():
        for i, lr in enumerate(grid.lrs):
            for label in grid.labels:
                curve = grid.curve("test_acc", label, i)
                row = {"depth": depth, "lr": lr, "scheme": label, "seeds": len(seeds)}
                if size.epochs > 1:
                    row["test acc after 1 epoch (%)"] = stats.percent(curve[1])
                row[f"test acc after {stats.plural(size.epochs, 'epochs')} (%)"] = stats.percent(curve[-1])
                rows.append({**row, "trained (> 50%)": str(stats.count(curve[-1] > 0.5))})
            test = grid.final("test_acc", i)
            findings.append(f"Depth {depth}, lr {lr:g}, median test accuracy [IQR] after {stats.plural(size.epochs, 'epochs')}: "
                            + stats.ranking(test, True, "percent") + ".")
            for other in ("he", "lyapunov-orth"):
                findings.append(f"Depth {depth}, lr {lr:g}: " + stats.compare(
                    test["stiefel"], test[other], "stiefel", other, higher_is_better=True).sentence(
                    "test accuracy", "percent") + "; " + stats.compare_counts(
                    test["stiefel"] > 0.5, test[other] > 0.5, "stiefel", other, "above 50% test accuracy") + ".")
    runs = [{"depth": depth, **row} for depth, grid in grids.items() for row in grid.run_rows()]
    findings += ["Paper's claim (Choi, Lee & Kim): Stiefel init trains deep narrow ReLU nets stably where Gaussian "
                 "inits fail.", stopped_note({f"depth {d}": g for d, g in grids.items()}), RELU_NOTE]
    summary = [f for f in findings if f.startswith("Depth") and "median test accuracy" in f]
    times = "; ".join(f"depth {d}: {g.train_seconds:.0f} s training, {g.init_seconds:.0f} s init" for d, g in grids.items())
    n_train = len(data["train"][0])
    setup = f"""
The Stiefel paper's claim on MNIST ({n_train} training images, standardized; test accuracy on
{len(data['test'][0])} test images): `DeepMLP(784, 10, {WIDTH}, depth, activation="relu")` for depth in
{list(size.depths)}; Adam (no weight decay) at each learning rate of {list(size.lrs)} (both reported, no selection),
batch {BATCH}, **{size.epochs} epoch(s)** ({steps} steps{REDUCED if size.epochs < PAPER_EPOCHS else ''}), per-epoch shuffles shared by all runs; test accuracy after every
epoch. Schemes: {', '.join(s.label for s in SCHEMES)} (through the package's `apply_init`; `stiefel` is our
reconstruction of the paper's construction, not the authors' code), seeds 0..{size.seeds - 1} ({size.seeds} per
scheme, paired by seed; with {size.seeds} seeds the smallest two-sided sign-test p is {2 * 0.5 ** size.seeds:.2g}, reached
only when one scheme wins on every seed).
"Trained": test accuracy above 50%. All runs of one depth are trained together by the benchmark engine.
CPU time: {times}.
"""
    fig, axes = plt.subplots(len(size.lrs), len(grids), figsize=(5.2 * len(grids), 3.8 * len(size.lrs)), squeeze=False)
    for c, (depth, grid) in enumerate(grids.items()):
        for i, lr in enumerate(grid.lrs):
            ax = axes[i, c]
            plots.curves(ax, list(range(size.epochs + 1)),
                         {label: grid.curve("test_acc", label, i) for label in grid.labels}, 100.0, True)
            ax.set(title=f"depth {depth}, Adam lr {lr:g}", xlabel="epoch", ylabel="test accuracy (%)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return Report("stiefel_protocol", TITLE, setup, rows, [f for f in findings if f], fig, runs=runs, summary=summary)
