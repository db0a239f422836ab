"""``calibration``: data calibration after the Lyapunov draw vs LSUV, on the two deep narrow tasks.

Every method initializes one ``DeepMLP`` per seed (Lyapunov orthogonal draw from
``torch.Generator().manual_seed(seed)``, then a rescaling on a batch of real inputs); all runs are
trained together (:func:`benchmarks._lib.protocol.train_grid`), full batch for the regression,
minibatches with fresh noise for score matching. Methods through the package: ``apply_init(...,
calibrate="layers" | "output", calibrate_target=...)`` and ``apply_init(sampled=True, calibrate=...)``; LSUV
is the ``lsuv`` package (0.3.0, the benchmarks extra).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from benchmarks._lib import stats
from benchmarks._lib.engine import Adam, Draws, FullBatch
from benchmarks._lib.package import DeepMLP, PolynomialRegression, default_calibration
from benchmarks._lib.protocol import Grid, train_grid
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import LSUV, Calibrated, Scheme
from benchmarks.score_learning import SIGMA, dsm_loss, noisy_data, relative_score_error

TITLE = "Calibration after the Lyapunov draw vs LSUV (width 2, depths 40 and 30)"
SLOPE = 0.1
MAIN_LR = 1e-3  # the protocol


def _methods() -> tuple:
    method, target = default_calibration()
    return (
        Scheme("Lyapunov orthogonal (no calibration)", "lyapunov", "orthogonal"),
        LSUV("LSUV (lsuv 0.3.0)"),
        Calibrated("calibrate='layers', target 0.1", "layers", 0.1),
        Calibrated("calibrate='output', target 0.1", "output", 0.1),
        Calibrated(f"calibrate='{method}', target {target:g} (the callback's default)"),
        Calibrated("calibrate='output', target 1", "output", 1.0),
        Calibrated("sampled + calibrate='layers', target 0.1", "layers", 0.1, sampled=True),
    )


@dataclass(frozen=True)
class Size:
    seeds: int
    steps: int
    methods: int  # the first methods of the list
    lrs: tuple[float, ...]


SIZES = Sizes(quick=Size(seeds=3, steps=30, methods=3, lrs=(1e-3, 3e-3)),
              full=Size(seeds=40, steps=2000, methods=7, lrs=(1e-3, 3e-3, 1e-2)))


@dataclass
class Task:
    name: str
    make: Callable[[], nn.Module]
    probe: Tensor
    threshold: float
    metric: str


def _regression(seeds: tuple[int, ...], steps: int, methods: tuple, lrs: tuple[float, ...]) -> tuple[Task, Grid]:
    splits = PolynomialRegression(in_features=1, degree=5, seed=0).build()
    x, y = splits["train"]
    var = float(y.var())
    task = Task("deep_narrow_regression", lambda: DeepMLP(1, 1, width=2, depth=40, negative_slope=SLOPE),
                x, 0.1, "test MSE / var y")

    def loss(model, batch, generator=None) -> Tensor:
        xb, yb = batch
        return (model(xb) - yb).pow(2).flatten(1).mean(1) / var

    grid = train_grid(task.make, methods, seeds, loss, (x, y), {"val": (splits["val"], loss),
                                                                 "test": (splits["test"], loss)},
                      optimizer=Adam, lrs=lrs, steps=steps, order=lambda streams: FullBatch(), record=(0,),
                      probe=task.probe, nonfinite="skip")
    return task, grid


def _score(seeds: tuple[int, ...], steps: int, methods: tuple, lrs: tuple[float, ...]) -> tuple[Task, Grid]:
    data, x, fixed, noisy, probe = noisy_data(1024)
    task = Task("score_learning", lambda: DeepMLP(2, 2, width=2, depth=30, negative_slope=SLOPE), probe,
                0.9, "relative score error")
    grid = train_grid(task.make, methods, seeds, dsm_loss, (x,),
                      {"val": (fixed["val"], dsm_loss),
                       "test": ((noisy, data.score(noisy, sigma=SIGMA)), relative_score_error)},
                      optimizer=Adam, lrs=lrs, steps=steps, order=lambda streams: Draws(128, seed=0, streams=streams),
                      record=(0,), probe=task.probe, nonfinite="skip")
    return task, grid


def _best80(values: np.ndarray) -> float:
    """Median over the best 80% of seeds (the Lyapunov paper's learning-rate selection)."""
    kept = np.sort(stats.worst_for_nan(values, False))[: max(1, int(0.8 * len(values)))]
    return float(np.median(kept))


def _choices(grid: Grid) -> dict[str, list[int]]:
    """Per protocol, the learning-rate index of every method: the issue's 1e-3, and each method's own
    rate by the median validation loss over its best 80% of seeds."""
    val = grid.curves["val"][-1]
    own = [min(range(len(grid.lrs)), key=lambda i: (_best80(val[i, j]), grid.lrs[i])) for j in range(len(grid.labels))]
    return {"lr 1e-3": [grid.lrs.index(MAIN_LR)] * len(grid.labels), "each method's rate (best 80%)": own}


def _rows(task: Task, grid: Grid) -> list[dict[str, object]]:
    rows = []
    for j, label in enumerate(grid.labels):
        for protocol, chosen in _choices(grid).items():
            i = chosen[j]
            final, initial = grid.curves["test"][-1, i, j], grid.curves["test"][0, i, j]
            med, lo, hi = stats.med_iqr(final)
            rows.append({"task": task.name, "method": label, "protocol": protocol, "lr": grid.lrs[i],
                         "trained": str(stats.count(final < task.threshold)), "test median": med, "test q25": lo,
                         "test q75": hi, "init test median": float(stats.median(initial))})
    return rows


def _findings(task: Task, grid: Grid) -> list[str]:
    """Computed comparisons at lr 1e-3 (the issue's protocol), paired by seed."""
    i = grid.lrs.index(MAIN_LR)
    final = {label: grid.curves["test"][-1, i, j] for j, label in enumerate(grid.labels)}
    initial = {label: grid.curves["test"][0, i, j] for j, label in enumerate(grid.labels)}
    flags = {label: v < task.threshold for label, v in final.items()}
    plain, lsuv = grid.labels[0], grid.labels[1]
    lines = [f"{task.name}, lr 1e-3: seeds trained (95% Wilson interval): "
             + "; ".join(f"{k} {stats.count(v)}" for k, v in flags.items())
             + f". Median {task.metric} at init: " + "; ".join(f"{k} {stats.median(v):.3g}" for k, v in initial.items())
             + "."]

    def pair(a: str, b: str) -> None:
        lines.append(f"{task.name}, lr 1e-3: "
                     + stats.compare(final[a], final[b], a, b, higher_is_better=False).sentence(task.metric) + "; "
                     + stats.compare_counts(flags[a], flags[b], a, b) + ".")

    for label in grid.labels[2:]:
        pair(label, plain)
    for label in grid.labels[2:]:
        pair(label, lsuv)
    settings = {label: _settings(s) for label, s in zip(grid.labels, grid.schemes) if isinstance(s, Calibrated)}
    for k, a in enumerate(settings):
        for b in list(settings)[k + 1:]:
            if sum(x != y for x, y in zip(settings[a], settings[b])) == 1:  # one setting changed
                pair(a, b)
    return lines


def _settings(scheme: Calibrated) -> tuple[str, float, bool]:
    method, target = default_calibration()
    return (scheme.calibrate or method, target if scheme.target is None else scheme.target, scheme.sampled)


def _goal(task: Task, grid: Grid) -> list[str]:
    """The issue's goal (>= 95% of the seeds trained, median below LSUV's and at most twice plain
    Lyapunov's), under both learning-rate protocols."""
    lines = []
    for protocol, chosen in _choices(grid).items():
        final = {label: grid.curves["test"][-1, chosen[j], j] for j, label in enumerate(grid.labels)}
        plain, lsuv = grid.labels[0], grid.labels[1]
        p_med, l_med = float(stats.median(final[plain])), float(stats.median(final[lsuv]))
        met = [f"{k} ({stats.count(v < task.threshold)}, median {stats.median(v):.3g})" for k, v in final.items()
               if k not in (plain, lsuv) and (v < task.threshold).mean() >= 0.95
               and stats.median(v) < l_med and stats.median(v) <= 2 * p_med]
        lines.append(f"{task.name}, {protocol}: plain Lyapunov median {p_med:.3g}, LSUV {l_med:.3g}. Goal met by: "
                     + (", ".join(met) or "none") + " (a description of medians, not a test).")
    return lines


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    methods = _methods()[: size.methods]
    rows, runs, findings, goal = [], [], [], []
    for build in (_regression, _score):
        task, grid = build(seeds, size.steps, methods, size.lrs)
        rows += _rows(task, grid)
        runs += [{"task": task.name, **row} for row in grid.run_rows()]
        findings += _findings(task, grid)
        goal += _goal(task, grid)
    lrs = ", ".join(f"{lr:g}" for lr in size.lrs)
    setup = f"""
Tasks: `deep_narrow_regression`'s (`PolynomialRegression(seed=0)`, degree 5 on [-1, 1], 1024 train
points; `DeepMLP(1, 1, width=2, depth=40)`, Leaky ReLU 0.1, zero biases; loss MSE / var y, full batch)
and `score_learning`'s (3-Gaussian mixture, denoising score matching at sigma 0.5, `DeepMLP(2, 2,
width=2, depth=30)`, minibatches of 128 with fresh noise; metric: relative score error). Adam (no
weight decay), {size.steps} steps, {len(seeds)} seeds (seed k: the draw `torch.Generator().manual_seed(k)`; LSUV:
`torch.manual_seed(k)`; comparisons are paired by seed). Learning rates {lrs}, all trained at once by the
benchmark engine; protocol "lr 1e-3": the issue's; "best 80%": per method the rate with the lowest
median validation loss over the best 80% of seeds (the Lyapunov paper's selection). Calibration batch:
the 1024 training inputs (regression) or 1024 noisy training inputs (score); "target": the output's
root-mean-square after calibration (`calibrate_target`). "Trained": test MSE / var y < 0.1, or relative
score error < 0.9. The score task's training noise is drawn for all runs at once, so a run's noise
depends on which other runs are trained with it.
"""
    findings = ["The issue's goal: " + goal[0], *goal[1:], *findings]
    summary = [line for line in findings if "the callback's default" in line and "LSUV" in line]
    return Report("calibration", TITLE, setup, rows, findings, None, runs=runs, summary=summary)
