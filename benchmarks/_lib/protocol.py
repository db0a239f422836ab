"""Scheme comparisons on the engine: every (learning rate, scheme, seed) run of a benchmark trained
together as one :class:`~benchmarks._lib.engine.Stack`.

:func:`train_grid` builds one module per (scheme, seed) (the global RNG seeded with the seed, then
the scheme's init drawn from the seed; data-driven schemes see ``probe``), copies it once per
learning rate, trains all of them with one engine call and returns the curves as arrays
``(records, lrs, schemes, seeds)`` in a :class:`Grid`. The seed also picks the run's batch stream
(the ``order`` callable receives the stream of every run), so runs of the same seed see the same
batches whatever their scheme: the pairing :mod:`benchmarks._lib.stats` relies on.

Long runs survive their process: with ``$LYAPUNOV_BENCH_CHECKPOINTS`` set to a directory, every grid
saves its training state there (``<key>.pt``, the key a hash of the nets, schemes, seeds, learning
rates, steps, data and order) every ``CHECKPOINT_EVERY`` steps, and the same command started again
continues from it (the resumed training is the uninterrupted one; its CPU time counts the earlier
processes' too).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks._lib import stats
from benchmarks._lib.engine import (
    SGD, Adam, Batch, Checkpoint, Draws, Epochs, FullBatch, Metric, Objective, Stack, classification, cross_entropy,
    fit)
from benchmarks._lib.package import log_gain
from benchmarks._lib.schemes import init_modules, non_finite

Order = Callable[[list[int]], "Epochs | Draws | FullBatch"]
CHECKPOINT_ENV = "LYAPUNOV_BENCH_CHECKPOINTS"
CHECKPOINT_EVERY = 1000


def checkpoint_for(*identity: object) -> Checkpoint | None:
    """The checkpoint of the training ``identity`` describes (its reprs hashed), in
    ``$LYAPUNOV_BENCH_CHECKPOINTS``; None when that is not set."""
    directory = os.environ.get(CHECKPOINT_ENV)
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    key = hashlib.sha256(repr(identity).encode()).hexdigest()[:20]
    return Checkpoint(os.path.join(directory, f"{key}.pt"), every=CHECKPOINT_EVERY)


@dataclass
class Grid:
    """Outcome of :func:`train_grid`.

    ``curves[name]``: ``(len(steps), len(lrs), len(schemes), len(seeds))``; ``finals[name]``: ``(lrs,
    schemes, seeds)`` the metrics evaluated once after training; ``stopped``: ``(lrs, schemes,
    seeds)`` the step at which a run stopped on a non-finite loss (-1: never); ``gains``: ``(schemes,
    seeds)`` the log-gain at init on the probe (None when not measured); ``non_finite[label]``: nets left
    with inf/NaN weights by their init; times in CPU seconds.
    """

    schemes: tuple
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: np.ndarray
    curves: dict[str, np.ndarray]
    finals: dict[str, np.ndarray]
    stopped: np.ndarray
    gains: np.ndarray | None
    non_finite: dict[str, int]
    init_seconds: float
    train_seconds: float
    path: str

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.schemes]

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def curve(self, name: str, label: str, lr: int = 0) -> np.ndarray:
        """``(len(steps), seeds)`` of one scheme at learning rate index ``lr``."""
        return self.curves[name][:, lr, self.index(label)]

    def final(self, name: str, lr: int | Sequence[int] = 0) -> dict[str, np.ndarray]:
        """Per scheme label the final values over seeds (a curve's last record, or a metric of
        ``final_evals``), at learning rate index ``lr`` (one per scheme when a sequence, e.g. :meth:`select`'s)."""
        chosen = [lr] * len(self.schemes) if isinstance(lr, int) else list(lr)
        if name in self.finals:
            return {s.label: self.finals[name][chosen[j], j] for j, s in enumerate(self.schemes)}
        return {s.label: self.curves[name][-1, chosen[j], j] for j, s in enumerate(self.schemes)}

    def select(self, name: str, higher_is_better: bool) -> list[int]:
        """Per scheme, the learning rate index with the best median final ``name`` over seeds (ties: the
        smaller rate)."""
        out = []
        for j in range(len(self.schemes)):
            medians = [float(stats.median(self.curves[name][-1, i, j], higher_is_better)) for i in range(len(self.lrs))]
            sign = -1.0 if higher_is_better else 1.0
            out.append(min(range(len(self.lrs)), key=lambda i: (sign * medians[i], self.lrs[i])))
        return out

    def run_rows(self, chosen: Sequence[int] | None = None) -> list[dict[str, object]]:
        """One row per run (learning rate, scheme, seed): every curve at init and after the last step, the
        stop step, the log-gain at init; ``chosen``: marks each scheme's selected learning rate."""
        rows = []
        for i, lr in enumerate(self.lrs):
            for j, scheme in enumerate(self.schemes):
                for k, seed in enumerate(self.seeds):
                    row: dict[str, object] = {"scheme": scheme.label, "seed": seed, "lr": lr}
                    if chosen is not None:
                        row["chosen lr"] = chosen[j] == i
                    if self.gains is not None:
                        row["init log-gain"] = float(self.gains[j, k])
                    for name, values in self.curves.items():
                        row[f"{name} init"] = float(values[0, i, j, k])
                        row[f"{name} final"] = float(values[-1, i, j, k])
                    for name, values in self.finals.items():
                        row[f"{name} final"] = float(values[i, j, k])
                    row["stopped at step"] = int(self.stopped[i, j, k])
                    rows.append(row)
        return rows


def train_grid(build: Callable[[], nn.Module], schemes: Sequence, seeds: Sequence[int], objective: Objective,
               train: Batch, evals: Mapping[str, tuple[Batch, Metric]], *,
               optimizer: Callable[[list[float]], SGD | Adam], lrs: Sequence[float], steps: int, order: Order,
               record: Sequence[int] = (), probe: Tensor | None = None, measure_gain: bool = False,
               eval_chunk: int | None = None, nonfinite: str = "stop",
               final_evals: Mapping[str, tuple[Batch, Metric]] | None = None) -> Grid:
    """Initialize one ``build()`` per (scheme, seed), train every (lr, scheme, seed) run together.

    ``optimizer(lr_per_run)`` makes the engine's optimizer; ``order(streams)`` the batch order, given the
    stream of every run (its seed's index). ``probe``: the data batch of the data-driven schemes (and of
    the log-gain at init when ``measure_gain``). The rest goes to :func:`~benchmarks._lib.engine.fit`.
    """
    start = time.process_time()
    nets, counts = [], {}
    gains = np.zeros((len(schemes), len(seeds))) if measure_gain else None
    for j, scheme in enumerate(schemes):
        modules = init_modules(build, scheme, seeds, probe)
        counts[scheme.label] = non_finite(modules)
        if gains is not None:
            with torch.no_grad():
                gains[j] = [log_gain(probe, m(probe)) for m in modules]
        nets += modules
    init_seconds = time.process_time() - start
    stack = Stack(nets * len(lrs), sample_dims=train[0].dim() - 1)
    per_run = [float(lr) for lr in lrs for _ in nets]
    streams = list(range(len(seeds))) * (len(lrs) * len(schemes))
    data = [(tuple(t.shape), float(t.double().sum())) for t in train]
    run_order, run_optimizer = order(streams), optimizer(per_run)
    checkpoint = checkpoint_for(repr(build()), [s.label for s in schemes], seeds, lrs, steps, data, run_order,
                                run_optimizer, getattr(objective, "__name__", repr(objective)), sorted(record),
                                nonfinite)
    result = fit(stack, objective, train, optimizer=run_optimizer, steps=steps, order=run_order,
                 evals=evals, record=record, eval_chunk=eval_chunk, nonfinite=nonfinite, final_evals=final_evals,
                 checkpoint=checkpoint)
    shape = (len(lrs), len(schemes), len(seeds))
    curves = {name: values.reshape(len(result.steps), *shape) for name, values in result.curves.items()}
    finals = {name: values.reshape(shape) for name, values in result.final.items()}
    return Grid(tuple(schemes), tuple(float(lr) for lr in lrs), tuple(seeds), result.steps, curves, finals,
                result.stopped.reshape(shape), gains, counts, init_seconds, result.seconds, stack.path)


def classify(build: Callable[[], nn.Module], schemes: Sequence, seeds: Sequence[int], data: Mapping[str, Batch], *,
             evals: Sequence[str], optimizer: Callable[[list[float]], SGD | Adam], lrs: Sequence[float], steps: int,
             batch_size: int, record: Sequence[int] = (), order_by_seed: bool = True,
             final_evals: Sequence[str] = ()) -> Grid:
    """:func:`train_grid` for a classifier on ``data["train"]`` with the cross-entropy: curves
    ``<split>_acc`` and ``<split>_loss`` for every split named in ``evals`` (in chunks of 1000 images),
    ``final_evals`` once after training; batches: per-epoch shuffles, one sequence per seed
    (``order_by_seed``) or one for all runs (seed 0); data-driven schemes see the first 256 training inputs."""
    seeds = tuple(seeds)

    def order(streams: list[int]) -> Epochs:
        return Epochs(batch_size, seeds=seeds, streams=streams) if order_by_seed else Epochs(batch_size)

    return train_grid(build, schemes, seeds, cross_entropy, data["train"],
                      {k: (data[k], classification) for k in evals}, optimizer=optimizer, lrs=lrs, steps=steps,
                      order=order, record=record, probe=data["train"][0][:256], eval_chunk=1000,
                      final_evals={k: (data[k], classification) for k in final_evals})


def non_finite_note(grids: Mapping[str, Grid]) -> str:
    """A findings line for ``{setting: Grid}``: which inits left nets with inf/NaN weights (``""``: none)."""
    hits = [f"{label} at {setting}: {n}" for setting, g in grids.items() for label, n in g.non_finite.items() if n]
    if not hits:
        return ""
    return ("Nets left with inf/NaN weights by their init (they predict class 0 throughout; counted in the medians): "
            + "; ".join(hits) + ". The `lsuv` package (0.3.0) does this when a layer's output is all zero on the "
            "batch: its further correction steps go to the first layer (see cifar_variance).")


def stopped_note(grids: Mapping[str, Grid]) -> str:
    """A findings line on runs stopped by a non-finite training loss (``""``: none)."""
    hits = []
    for setting, g in grids.items():
        for j, label in enumerate(g.labels):
            n = int((g.stopped[:, j] >= 0).sum())
            if n:
                hits.append(f"{label} at {setting}: {n} of {g.stopped[:, j].size}")
    if not hits:
        return ""
    return ("Runs stopped by a non-finite training loss (frozen there, counted in the medians with their last "
            "parameters): " + "; ".join(hits) + ".")


# ---------------------------------------------------------------------------------------------
# the learning-rate-grid comparison of the deep narrow benchmarks


def grid_rows(grid: Grid, chosen: Sequence[int], metric: str, trained: Callable[[np.ndarray], np.ndarray],
              val: str = "val") -> list[dict[str, object]]:
    """One table row per scheme at its chosen learning rate: the final ``metric`` (median and IQR over
    seeds, ``np.median`` and linear quantiles), how many seeds ``trained`` (Wilson interval), the
    median ``metric`` at init, the initial log-gain, and the median final ``val`` at every rate."""
    values = {label: grid.curves[metric][:, chosen[j], j] for j, label in enumerate(grid.labels)}
    rows = []
    for j, label in enumerate(grid.labels):
        final = values[label][-1]
        med, lo, hi = stats.med_iqr(final)
        row: dict[str, object] = {
            "scheme": label, "lr": grid.lrs[chosen[j]],
            f"{metric} median": med, f"{metric} q25": lo, f"{metric} q75": hi,
            "trained": str(stats.count(trained(final))),
            f"init {metric} median": float(stats.median(values[label][0])),
        }
        if grid.gains is not None:
            g_med, g_lo, g_hi = stats.med_iqr(grid.gains[j], higher_is_better=True)
            row.update({"init log-gain median": g_med, "init log-gain q25": g_lo, "init log-gain q75": g_hi})
        for i, lr in enumerate(grid.lrs):
            row[f"{val} median @{lr:g}"] = float(stats.median(grid.curves[val][-1, i, j]))
        rows.append(row)
    return rows


def grid_findings(grid: Grid, chosen: Sequence[int], metric: str, trained: Callable[[np.ndarray], np.ndarray],
                  what: str) -> list[str]:
    """Computed findings of a learning-rate-grid comparison (``what`` names ``metric`` in sentences; lower
    is better): the ranking by median, the trained counts, and paired comparisons over seeds (each scheme
    at its own chosen rate): the best Lyapunov variant against the best other scheme (both picked by their
    median in this run), Lyapunov Gaussian against He, and each sampled variant against its unsampled one."""
    final = grid.final(metric, chosen)
    flags = {label: trained(v) for label, v in final.items()}
    lines = [f"Median final {what} (IQR over seeds), best first: {stats.ranking(final, higher_is_better=False)}.",
             "Seeds trained (95% Wilson interval): " + "; ".join(f"{k} {stats.count(v)}" for k, v in flags.items())
             + "."]
    lyap = {s.label: final[s.label] for s in grid.schemes if s.lyapunov}
    base = {s.label: final[s.label] for s in grid.schemes if not s.lyapunov}

    def pair(a: str, b: str, note: str = "") -> None:
        lines.append(stats.compare(final[a], final[b], a, b, higher_is_better=False).sentence(what) + note + "; "
                     + stats.compare_counts(flags[a], flags[b], a, b) + ".")

    if lyap and base:
        pair(stats.best(lyap, False), stats.best(base, False),
             " (each the best of its group by median in this run, so the pair is chosen after the fact)")
    if "lyapunov-gauss" in final and "he" in final:
        pair("lyapunov-gauss", "he")
    for dist in ("gauss", "orth"):
        plain = f"lyapunov-{dist}"
        for variant in (f"sampled lyapunov-{dist}", f"layerwise lyapunov-{dist}"):
            if plain in final and variant in final:
                pair(variant, plain)
    return lines


def grid_figure(grid: Grid, chosen: Sequence[int], metric: str, ylabel: str, title: str,
                reference: float | None = None, reference_label: str = "", limits: tuple[float, float] | None = None):
    """Left: median and IQR band over seeds of the ``metric`` curve of every scheme at its chosen rate.
    Right: every seed's final value per scheme. Log axes; ``reference``: the "trained" threshold."""
    import matplotlib.pyplot as plt

    from benchmarks._lib import plots

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.2), gridspec_kw={"width_ratios": [1.35, 1]})
    curves = {f"{label} (lr {grid.lrs[chosen[j]]:g})": grid.curves[metric][:, chosen[j], j]
              for j, label in enumerate(grid.labels)}
    plots.curves(left, grid.steps, curves, dashed="lyapunov-orth")
    left.set(yscale="log", xlabel="Adam step", ylabel=ylabel, title=title)
    plots.dots(right, grid.final(metric, chosen), f"final {ylabel}", limits=limits)
    right.set_title("final value, every seed")
    if reference is not None:
        left.axhline(reference, color="grey", ls=":", lw=1.2, label=reference_label)
        right.axvline(reference, color="grey", ls=":", lw=1.2)
    if limits is not None:
        left.set_ylim(*limits)
    left.legend(fontsize=7.5, loc="upper right", framealpha=0.85)
    fig.tight_layout()
    return fig
