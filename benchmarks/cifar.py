"""``cifar``: a deep narrow plain CNN (no BatchNorm, no skips) on CIFAR-10 from a local directory,
every initialization scheme, test accuracy after a fixed budget of steps.

The data directory is ``$LYAPUNOV_CIFAR_DIR`` (default ``data/cifar10``), holding ``cifar-10-batches-py``
or its files. Nothing is downloaded: when the directory is missing the benchmark runs on synthetic
CIFAR-shaped data and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._lib import plots, stats
from benchmarks._lib.data import CIFAR_ENV, DEFAULT_CIFAR, Split, subsample
from benchmarks._lib.engine import Adam
from benchmarks._lib.package import CIFAR10, PlainCNN
from benchmarks._lib.protocol import Grid, classify, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import ALL_SCHEMES, at_init

WIDTH, DEPTH, SLOPE = 16, 12, 0.1
BATCH, LR = 32, 1e-3
POOL = 2  # images are average-pooled 32x32 -> 16x16 to fit the CPU budget
TITLE = f"Deep narrow plain CNN (depth {DEPTH}, width {WIDTH}) on CIFAR-10 or synthetic CIFAR-shaped data"


@dataclass(frozen=True)
class Size:
    seeds: int
    steps: int
    every: int
    val_size: int
    n_test: int | None  # a random subset of the test images (None: all)
    synthetic_size: int  # images of the synthetic fallback
    synthetic_val: int


SIZES = Sizes(quick=Size(seeds=2, steps=4, every=2, val_size=64, n_test=256, synthetic_size=256, synthetic_val=64),
              full=Size(seeds=20, steps=300, every=50, val_size=1000, n_test=None, synthetic_size=4096,
                        synthetic_val=256))


def load(size: Size) -> tuple[dict[str, Split], bool, str]:
    """(splits, synthetic?, directory): CIFAR-10 from ``$LYAPUNOV_CIFAR_DIR`` if it is there, else the
    synthetic CIFAR-shaped data of ``examples.data.CIFAR10(synthetic=True)``; images average-pooled by ``POOL``."""
    directory = os.environ.get(CIFAR_ENV, DEFAULT_CIFAR)
    try:
        data = CIFAR10(root=directory, val_size=size.val_size, augment=False, seed=0)
        data.setup()
        synthetic = False
    except FileNotFoundError:
        data = CIFAR10(synthetic=True, synthetic_size=size.synthetic_size, val_size=size.synthetic_val,
                       augment=False, seed=0)
        data.setup()
        synthetic = True
    assert data.splits is not None
    splits = subsample({name: (F.avg_pool2d(x, POOL), y) for name, (x, y) in data.splits.items()}, None, 0,
                       size.n_test)
    return splits, synthetic, directory


def build() -> PlainCNN:
    return PlainCNN(3, 10, width=WIDTH, depth=DEPTH, activation="leaky_relu", negative_slope=SLOPE)


def feature_rms(x: torch.Tensor, seeds: range) -> dict[str, list[float]]:
    """Per scheme and seed, at init: root mean square of the last conv block's output on ``x``."""
    def rms(model: PlainCNN) -> float:
        with torch.no_grad():
            return float(model.features(x).pow(2).mean().sqrt())

    return at_init(build, rms, seeds)


def run(size: Size) -> Report:
    data, synthetic, directory = load(size)
    seeds = tuple(range(size.seeds))
    grid = classify(build, ALL_SCHEMES, seeds, data, evals=("val",), optimizer=Adam, lrs=(LR,), steps=size.steps,
                    batch_size=BATCH, record=range(0, size.steps + 1, size.every), final_evals=("test",))
    rms = feature_rms(data["val"][0][:256], range(size.seeds))
    rows = [{
        "scheme": label,
        "feature rms at init": stats.cell(rms[label]),
        "val acc at step 0 (%)": stats.percent(grid.curve("val_acc", label)[0]),
        f"val acc after {size.steps} steps (%)": stats.percent(grid.curve("val_acc", label)[-1]),
        f"test acc after {size.steps} steps (%)": stats.percent(grid.final("test_acc")[label]),
        "test loss": stats.cell(grid.final("test_loss")[label], 1, 3, fixed=True),
    } for label in grid.labels]
    runs = [{**row, "feature rms at init": rms[row["scheme"]][row["seed"]]} for row in grid.run_rows()]

    what = "SYNTHETIC CIFAR-shaped data" if synthetic else "CIFAR-10"
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    plots.curves(ax, grid.steps, {label: grid.curve("val_acc", label) for label in grid.labels}, 100.0, True)
    ax.set(title=f"Plain CNN depth {DEPTH}, width {WIDTH}, on {what}: validation accuracy (median, IQR)",
           xlabel="step", ylabel="accuracy (%)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()

    n_train, n_val, n_test = (len(data[k][0]) for k in ("train", "val", "test"))
    if synthetic:
        source = (
            f"**These are synthetic-data smoke results, not CIFAR-10 results.** No CIFAR-10 was found in "
            f"`{directory}` (`${CIFAR_ENV}`, default `{DEFAULT_CIFAR}`) and nothing is downloaded, so the run used "
            "`examples.data.CIFAR10(synthetic=True)`: images = one fixed random smooth pattern per class + "
            f"unit Gaussian noise ({n_train} train / {n_val} val / {n_test} test). They check that every scheme "
            "runs end to end on a CIFAR-shaped deep plain CNN; they say nothing about CIFAR-10 accuracy.")
    else:
        source = (f"CIFAR-10 read from `{directory}` ({n_train} train / {n_val} val (split with seed 0) / "
                  f"{n_test} test images (a random subset when fewer than all, seed 0)), normalized with the CIFAR channel mean and std, no augmentation.")
    setup = f"""
{source}

Model: `PlainCNN(3, 10, width={WIDTH}, depth={DEPTH}, activation="leaky_relu", negative_slope={SLOPE})`:
{DEPTH} 3x3 convs (stride 1, padding 1, no BatchNorm, no skips) with Leaky ReLU, global average pool,
Linear head; every scheme applied with the project's `apply_init` (zero biases; conv fans d_in = 9 C_in,
d_out = C_out): {", ".join(f"`{s.label}`" for s in ALL_SCHEMES)}. The Stiefel scheme is a reconstruction
(DESIGN section 5), not the authors' code.

To fit a 2-core CPU budget the images are average-pooled 2x2 to 16x16. Budget: {size.steps} steps of Adam
(lr {LR:g}, no weight decay, the same for every scheme, not tuned), batch {BATCH}
({size.steps * BATCH} images), seeds {seeds[0]}..{seeds[-1]} (seed k draws the weights and the batch order;
comparisons are paired by seed); all runs trained together by the benchmark engine ({grid.path} path).
Validation accuracy every {size.every} steps (figure); test accuracy after the last step; medians [q25, q75]
over seeds.
"""
    findings = _findings(grid, rms, synthetic)
    return Report("cifar", TITLE, setup, rows, findings, fig, runs=runs, summary=findings[:3])


def _findings(grid: Grid, rms: dict[str, list[float]], synthetic: bool) -> list[str]:
    test = grid.final("test_acc")
    lines = []
    if synthetic:
        lines.append("**Synthetic-data smoke results, not CIFAR-10 results** (see the setup): they show that the "
                     "schemes train (or fail to train) a deep plain CNN end to end, not which is best on CIFAR-10.")
    lines.append(f"Test accuracy, median [IQR] over seeds: {stats.ranking(test, True, 'percent')}.")
    lyap = {s.label: test[s.label] for s in grid.schemes if s.lyapunov}
    base = {s.label: test[s.label] for s in grid.schemes if not s.lyapunov}
    a, b = stats.best(lyap, True), stats.best(base, True)
    lines.append(stats.compare(test[a], test[b], a, b, higher_is_better=True).sentence("test accuracy", "percent")
                 + " (each the best of its group by median in this run).")
    typical = float(np.median([np.median(v) for v in rms.values()]))
    for label, values in rms.items():
        if float(np.median(values)) > 100 * typical:
            lines.append(f"`{label}` explodes at init: feature rms {np.median(values):.3g} after {DEPTH} layers (median "
                         f"over schemes {typical:.3g}), and ends at {stats.percent(test[label])}% test accuracy.")
    lines.append(stopped_note({"CIFAR": grid}))
    return [line for line in lines if line]
