"""``cifar_depth``: the vanishing-empirical-variance paper's Fig. 3 on CIFAR-10 (JPEG q75 copy): test accuracy
after 500 Adam steps against depth, width 10 (depths 0..100), and width 200 at a few depths with a smaller
learning rate; every scheme plus LSUV, all nets of one depth trained together.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from torch import nn

from benchmarks._lib import stats
from benchmarks._lib.data import CIFAR_NOTE, cifar10
from benchmarks._lib.engine import Adam
from benchmarks._lib.package import DeepMLP
from benchmarks._lib.protocol import Grid, classify, non_finite_note, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import RELU_NOTE, scheme_note, with_data_driven

BATCH = 64
TITLE = f"Test accuracy against depth on {CIFAR_NOTE} after a fixed budget of Adam steps"
NARROW = {"width": 10, "lr": 1e-4}
WIDE = {"width": 200, "lr": 1e-5, "schemes": ("he", "lyapunov-gauss", "zero")}


@dataclass(frozen=True)
class Size:
    depths: tuple[int, ...]  # width 10
    seeds: int
    wide_depths: tuple[int, ...]  # width 200
    wide_seeds: int
    n_train: int
    n_test: int
    steps: int


SIZES = Sizes(quick=Size(depths=(0, 4), seeds=2, wide_depths=(2,), wide_seeds=2, n_train=256, n_test=128, steps=3),
              full=Size(depths=tuple(range(0, 101, 10)), seeds=20, wide_depths=(10, 20, 50, 100, 200), wide_seeds=5,
                        n_train=10000, n_test=10000, steps=500))


def build(width: int, depth: int) -> nn.Module:
    """``depth`` hidden ReLU layers of ``width`` on flattened CIFAR images (depth 0: a linear classifier)."""
    if depth == 0:
        return nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    return DeepMLP(3072, 10, width, depth, activation="relu")


def _sweep(data: dict, width: int, lr: float, depths: tuple[int, ...], seeds: tuple[int, ...], steps: int,
           labels=None) -> dict[int, Grid]:
    return {depth: classify(lambda: build(width, depth), with_data_driven(labels), seeds, data, evals=("test",),
                            optimizer=lambda lrs: Adam(lrs, betas=(0.9, 0.999)), lrs=(lr,), steps=steps,
                            batch_size=BATCH, record=[0], order_by_seed=False)
            for depth in depths}


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    steps = size.steps
    data = cifar10(n_train=size.n_train, n_test=size.n_test, seed=0)
    narrow = _sweep(data, NARROW["width"], NARROW["lr"], size.depths, seeds, steps)
    wide = _sweep(data, WIDE["width"], WIDE["lr"], size.wide_depths, tuple(range(size.wide_seeds)), steps,
                  WIDE["schemes"])
    rows, runs = [], []
    for width, lr, sweep in ((NARROW["width"], NARROW["lr"], narrow), (WIDE["width"], WIDE["lr"], wide)):
        for depth, grid in sweep.items():
            for label in grid.labels:
                rows.append({"width": width, "depth": depth, "lr": lr, "scheme": label, "reps": len(grid.seeds),
                             "test acc (%)": stats.percent(grid.curve("test_acc", label)[-1]),
                             "train CPU s": round(grid.train_seconds, 1)})
            runs += [{"width": width, "depth": depth, **row} for row in grid.run_rows()]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for ax, (width, sweep) in zip(axes, ((NARROW["width"], narrow), (WIDE["width"], wide))):
        ds = sorted(sweep)
        for label in sweep[ds[0]].labels:
            finals = [100 * sweep[d].curve("test_acc", label)[-1] for d in ds]
            (line,) = ax.plot(ds, [np.median(f) for f in finals], marker="o", ms=3, label=label)
            ax.fill_between(ds, [np.quantile(f, 0.25) for f in finals], [np.quantile(f, 0.75) for f in finals],
                            color=line.get_color(), alpha=0.15, lw=0)
        ax.set(title=f"{CIFAR_NOTE}: width {width}, test accuracy after {steps} Adam steps", xlabel="depth",
               ylabel="test accuracy (%)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    n_train, n_test = len(data["train"][0]), len(data["test"][0])
    setup = f"""
The vanishing-empirical-variance paper's Fig. 3 protocol on {CIFAR_NOTE} (per-channel standardized,
flattened to 3072 features): fully connected ReLU nets with `depth` hidden layers (depth 0: a linear
classifier), Adam (betas 0.9 / 0.999, no weight decay), {steps} steps, batch {BATCH}; test accuracy on
{n_test} test images after the last step.

- Width {NARROW['width']}, learning rate {NARROW['lr']:g}, depths {list(size.depths)}, {len(seeds)} repetitions per scheme
  (seed k draws the weights; all runs see the same batches, so comparisons are paired by seed).
- Width {WIDE['width']}, learning rate {WIDE['lr']:g}, depths {list(size.wide_depths)}, schemes {", ".join(WIDE['schemes'])},
  {size.wide_seeds} repetitions per scheme (the paper's width-200 sweep: 11 depths, 5 repetitions; fewer depths
  here for CPU time).

{scheme_note()}

**Subsampled**: training batches are drawn from a random {n_train}-image subset of the training images
(seed 0); {steps} x {BATCH} = {steps * BATCH} samples is about {steps * BATCH / n_train:.1f} passes over it. All nets of
one (width, depth) are trained together by the benchmark engine. The batch size of the paper was not available to us.
"""
    findings = _findings(narrow, wide)
    return Report("cifar_depth", TITLE, setup, rows, findings, fig, runs=runs, summary=findings[:2])


def _findings(narrow: dict[int, Grid], wide: dict[int, Grid]) -> list[str]:
    deepest = max(narrow)
    test = narrow[deepest].final("test_acc")
    lines = [f"Width 10, depth {deepest}, median test accuracy [IQR]: {stats.ranking(test, True, 'percent')}.",
             f"Width 10, depth {deepest}: " + stats.compare(test["lyapunov-calibrated"], test["lsuv"],
                                                            "lyapunov-calibrated", "lsuv", higher_is_better=True)
             .sentence("test accuracy", "percent") + "; "
             + stats.compare(test["lyapunov-orth"], test["he"], "lyapunov-orth", "he", higher_is_better=True)
             .sentence("test accuracy", "percent") + "."]
    for label in ("he", "lyapunov-gauss", "lyapunov-orth", "lyapunov-calibrated", "zero", "stiefel", "lsuv"):
        trace = ", ".join(f"{d}: {100 * stats.median(narrow[d].final('test_acc')[label]):.1f}" for d in sorted(narrow))
        lines.append(f"{label} by depth (median %): {trace}.")
    for depth, grid in sorted(wide.items()):
        test = grid.final("test_acc")
        lines.append(f"Width 200, depth {depth}, median test accuracy [IQR] over {len(grid.seeds)} runs: "
                     f"{stats.ranking(test, True, 'percent')}; " + stats.compare(
                         test["lyapunov-gauss"], test["he"], "lyapunov-gauss", "he", higher_is_better=True)
                     .sentence("test accuracy", "percent") + ".")
    grids = {f"width 10, depth {d}": g for d, g in narrow.items()} | {f"width 200, depth {d}": g for d, g in wide.items()}
    lines += ["Paper (Fig. 3): He-family inits lose accuracy with depth at width 10 and fail at large depths; "
              "ZerO keeps training.", non_finite_note(grids), stopped_note(grids), RELU_NOTE]
    return [line for line in lines if line]
