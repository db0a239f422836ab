"""``mnist_stiefel``: the Stiefel paper's claim (stable training of deep narrow ReLU nets) on MNIST: width 32,
depths 50 / 100 / 200, test accuracy after a fixed budget of Adam steps, every scheme plus LSUV; all nets
of one depth trained together.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt

from benchmarks._lib import plots, stats
from benchmarks._lib.data import mnist
from benchmarks._lib.engine import Adam
from benchmarks._lib.package import DeepMLP
from benchmarks._lib.protocol import Grid, classify, non_finite_note, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import RELU_NOTE, scheme_note, with_data_driven

WIDTH, LR, BATCH = 32, 1e-3, 128
TITLE = f"Deep narrow ReLU nets on MNIST (width {WIDTH})"


@dataclass(frozen=True)
class Size:
    depths: tuple[int, ...]
    seeds: int
    steps: int
    n_train: int | None  # training images (a random subset; None: all)


SIZES = Sizes(quick=Size(depths=(5, 10), seeds=2, steps=3, n_train=256),
              full=Size(depths=(50, 100, 200), seeds=20, steps=200, n_train=None))


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    steps = size.steps
    data = mnist(n_train=size.n_train, seed=0)
    results = {depth: classify(lambda: DeepMLP(784, 10, WIDTH, depth, activation="relu"), with_data_driven(), seeds,
                               data, evals=("test",), optimizer=Adam, lrs=(LR,), steps=steps, batch_size=BATCH,
                               record=[0, steps // 3, 2 * steps // 3], order_by_seed=False)
               for depth in size.depths}
    rows = [{"depth": depth, "scheme": label, "seeds": len(seeds),
             "test acc at init (%)": stats.percent(grid.curve("test_acc", label)[0]),
             f"test acc after {steps} steps (%)": stats.percent(grid.curve("test_acc", label)[-1]),
             "train CPU s (all schemes)": round(grid.train_seconds, 1)}
            for depth, grid in results.items() for label in grid.labels]
    runs = [{"depth": depth, **row} for depth, grid in results.items() for row in grid.run_rows()]
    fig, axes = plt.subplots(1, len(results), figsize=(4.8 * len(results), 4.0), squeeze=False)
    for ax, (depth, grid) in zip(axes[0], results.items()):
        plots.curves(ax, grid.steps, {label: grid.curve("test_acc", label) for label in grid.labels}, 100.0, True)
        ax.set(title=f"MNIST, width {WIDTH}, depth {depth}", xlabel="Adam step", ylabel="test accuracy (%)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    n_train = len(data["train"][0])
    setup = f"""
The Stiefel paper's claim (Choi, Lee & Kim: stable training of deep narrow ReLU FFNNs) on MNIST ({n_train}
training images, standardized; test accuracy on the {len(data['test'][0])} test images):
`DeepMLP(784, 10, {WIDTH}, depth, activation="relu")` for depth in {list(size.depths)}; Adam (lr {LR:g}, the same for
every scheme, not tuned; no weight decay), batch {BATCH}, **{steps} steps** ({steps * BATCH / n_train:.2f} epochs: a
fixed budget sized to the shared 2-core CPU), seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} per scheme; seed k draws
the weights; every run sees the same batches, so comparisons are paired by seed). Median [q25, q75] over seeds.
All nets of one depth trained together by the benchmark engine.

{scheme_note()}
The Stiefel scheme is our reconstruction of the paper's construction, not the authors' code.
"""
    findings = _findings(results, steps)
    return Report("mnist_stiefel", f"{TITLE}, depths {list(size.depths)}", setup, rows, findings, fig, runs=runs,
                  summary=[line for line in findings if line.startswith("Depth")])


def _findings(results: dict[int, Grid], steps: int) -> list[str]:
    lines = []
    for depth, grid in results.items():
        test = grid.final("test_acc")
        lines.append(f"Depth {depth}, median test accuracy [IQR] after {steps} steps: "
                     f"{stats.ranking(test, True, 'percent')}. "
                     + stats.compare(test["stiefel"], test["he"], "stiefel", "he", higher_is_better=True)
                     .sentence("test accuracy", "percent") + ".")
    grids = {f"depth {d}": g for d, g in results.items()}
    lines += ["Paper's claim: Stiefel init trains deep narrow ReLU nets stably where Gaussian inits fail.",
              non_finite_note(grids), stopped_note(grids), RELU_NOTE]
    return [line for line in lines if line]
