"""``lookahead``: issue 25's look-ahead selection against its peers at equal total steps.

Two tasks (the seeds' regression protocol and ``score_learning``'s denoising score matching) at two
deep narrow shapes; every method takes the same number of optimizer steps in all:

* one draw trained ``steps`` steps: the default (``LyapunovInit()``'s calibrated Lyapunov draw), He,
  LSUV and the sampled Lyapunov variants (network-level, layer-wise);
* a selection among ``K`` draws by successive halving (the library's schedule and ranking rule:
  ``halving.halving_cuts``, ``Halving.rung_losses``; the library's ``look_ahead_`` keeps the same
  candidate with the same weights, ``tests/test_bench_lookahead.py``), whose look-ahead steps count:
  the kept candidate continues with its Adam moments until the run has taken ``steps`` in all. The
  candidates are the default's draws (``look_ahead=K``, candidate 0 is the default's own draw), or
  best-of-K restarts of He or of LSUV under the same budget and rule;
* GradInit (:mod:`benchmarks._lib.gradinit`) on He's and on the default's draw, its iterations
  counted as two steps each, as many as the look-ahead's extra steps;
* the default's draw and the look-ahead with a small output (``calibrate_target`` chosen on other
  seeds by ``scripts/lookahead_targets.py``: :func:`small_target`).

All runs of a cell (task, shape) are trained stacked by the benchmark engine (``Stack``, ``fit``;
``Stack.take`` and ``take_state`` carry the surviving candidates and their optimizer state from cut
to cut). The cells run in parallel processes (``Size.workers``).

The report also counts the other selection rules tried for issue 25's goal (:func:`rule_findings`),
from the files ``scripts/lookahead_schedules.py`` writes (``--search``, ``--validate --out``; and
``scripts/lookahead_rank_target.py --out``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks._lib.engine import SGD, Adam, Draws, FullBatch, Stack, fit, take_state
from benchmarks._lib.gradinit import GradInit
from benchmarks._lib.package import (
    DEFAULT_CANDIDATES,
    DEFAULT_STEPS,
    DeepMLP,
    Halving,
    PolynomialRegression,
    candidate_seeds,
    halving_cuts,
    halving_steps,
)
from benchmarks._lib.report import RESULTS, Report, Sizes
from benchmarks._lib.schemes import HE, LSUV, Calibrated, Scheme
from benchmarks._lib.stats import bootstrap_median, compare, compare_counts, count, median, number, rank_correlation
from benchmarks.deep_narrow_regression import BATCH_SIZE, PROBE_SIZE
from benchmarks.score_learning import SIGMA, TRAINED as SCORE_TRAINED, dsm_loss, noisy_data, relative_score_error

TITLE = "Look-ahead selection at equal total steps: regression and score learning, two deep narrow shapes"
LR = 1e-3
REGRESSION_TRAINED = 0.1  # test MSE / var(y_test) below which a regression run counts as trained
FIRST_SEED = 25000

DEFAULT, HE_LABEL, LSUV_LABEL = "default (calibrated)", "he", "lsuv"
SINGLE: dict[str, Any] = {
    DEFAULT: Calibrated(),
    HE_LABEL: HE,
    LSUV_LABEL: LSUV(),
    "sampled lyapunov-orth": Scheme("sampled lyapunov-orth", "lyapunov", "orthogonal", sampled="network"),
    "layerwise lyapunov-orth": Scheme("layerwise lyapunov-orth", "lyapunov", "orthogonal", sampled="layerwise"),
}
LOOK_AHEAD = "look-ahead"
#: the selections: label -> the scheme drawing the candidates
SELECTED: dict[str, Any] = {LOOK_AHEAD: Calibrated(), "best-of-K he": HE, "best-of-K lsuv": LSUV()}
#: GradInit (Zhu et al. 2021) on the draws of: label -> scheme
GRADINIT: dict[str, Any] = {"gradinit (he)": HE, "gradinit (default)": Calibrated()}
#: output scales (``calibrate_target``) tried for the small-output methods on the tuning seeds
#: (``scripts/lookahead_targets.py`` writes :data:`TARGETS_CSV`; :func:`small_target` picks one)
TARGETS = (1.0, 0.1, 0.01, 0.001)
TUNING_FIRST_SEED = 29000
TARGETS_CSV = RESULTS / "lookahead_targets.csv"
TARGETS_SGD_CSV = RESULTS / "lookahead_targets_sgd.csv"  # the same with plain SGD (w2d40 regression)
#: the targets on two standard classifiers (``scripts/lookahead_targets.py --classification``)
TARGETS_CLASSIFICATION_CSV = RESULTS / "lookahead_targets_classification.csv"
CLASSIFICATION_TARGETS = (1.0, 0.01, 0.001)
CLASSIFICATION_SEEDS = 20
CLASSIFICATION_EPOCHS = (1, 2, 5, 20)  # train accuracy recorded after these epochs; the runs train to the last
CLASSIFICATION_COMPARED = (5, 20)  # the epochs whose accuracies the report and the README compare


@dataclass(frozen=True)
class Shape:
    name: str
    width: int
    depth: int
    slope: float


@dataclass(frozen=True)
class Size:
    seeds: int
    steps: int  # every method's optimizer steps in all
    candidates: int  # K
    look_ahead_steps: int  # the selection's budget (the library's look_ahead_steps)
    cells: tuple[tuple[str, Shape], ...]  # (task, shape)
    workers: int


SHAPES = (Shape("w2d40", 2, 40, 0.1), Shape("w3d60", 3, 60, 0.05))
#: The cells of the committed run: both tasks at both shapes.
FULL_CELLS = tuple((task, shape) for shape in SHAPES for task in ("regression", "score"))
SIZES = Sizes(quick=Size(seeds=2, steps=24, candidates=2, look_ahead_steps=8,
                         cells=(("regression", Shape("w2d6", 2, 6, 0.1)), ("score", Shape("w2d6", 2, 6, 0.1))),
                         workers=1),
              full=Size(seeds=40, steps=2000, candidates=8, look_ahead_steps=256, cells=FULL_CELLS, workers=2))


class Regression:
    """The seeds' regression protocol: seed ``s``'s own random degree-5 polynomial
    (``PolynomialRegression(degree=5, seed=s)``, 1024 training points), full-batch Adam on the MSE
    divided by var(y); metric: test MSE / var(y_test)."""

    name, features, metric, threshold = "regression", 1, "test MSE / var(y)", REGRESSION_TRAINED
    limits = (1e-4, 10.0)  # the figure's axis (values beyond it drawn at its edge)

    def __init__(self, seeds: Sequence[int]) -> None:
        splits = [PolynomialRegression(in_features=1, degree=5, seed=s).build() for s in seeds]
        self.x, self.y = (torch.stack([sp["train"][i] for sp in splits]) for i in (0, 1))
        self.xt, self.yt = (torch.stack([sp["test"][i] for sp in splits]) for i in (0, 1))
        self.var, self.var_test = self.y.var(dim=(1, 2)), self.yt.var(dim=(1, 2))

    def probe(self, index: int) -> Tensor:
        """What a data-dependent init sees of seed ``index``: its training inputs (the full batch)."""
        return self.x[index]

    def data(self, seed_of: Tensor) -> tuple[Tensor, ...]:
        return self.x[seed_of], self.y[seed_of], self.var[seed_of]

    def order(self, seed_of: Tensor, first_step: int) -> FullBatch:
        return FullBatch()

    @staticmethod
    def objective(model: Stack, batch: tuple[Tensor, ...], generator: torch.Generator | None = None) -> Tensor:
        x, y, var = batch
        return (model(x) - y).pow(2).mean(dim=(1, 2)) / var

    def test(self, seed_of: Tensor) -> dict[str, Any]:
        return {"test": ((self.xt[seed_of], self.yt[seed_of], self.var_test[seed_of]), self.objective)}


class Score:
    """``score_learning``'s task (its builders): denoising score matching of its 3-Gaussian mixture at
    sigma 0.5, minibatches of 128 drawn with replacement (one stream per seed) and fresh noise at every
    step; metric: relative score error on the noisy test points (1 = the zero predictor)."""

    name, features, metric, threshold = "score", 2, "relative score error", SCORE_TRAINED
    limits = (0.4, 2.0)

    def __init__(self, seeds: Sequence[int]) -> None:
        data, self.x, _, noisy_test, self.probe_batch = noisy_data(PROBE_SIZE)
        self.evals = {"test": ((noisy_test, data.score(noisy_test, sigma=SIGMA)), relative_score_error)}

    def probe(self, index: int) -> Tensor:
        """What a data-dependent init sees: the first training inputs plus noise (``score_learning``'s probe)."""
        return self.probe_batch

    def data(self, seed_of: Tensor) -> tuple[Tensor, ...]:
        return (self.x,)

    def order(self, seed_of: Tensor, first_step: int) -> Draws:
        """Seed ``i``'s stream; a continuation draws on from a new generator (seeded by its first step)."""
        return Draws(BATCH_SIZE, seed=first_step, streams=seed_of.tolist())

    objective = staticmethod(dsm_loss)

    def test(self, seed_of: Tensor) -> dict[str, Any]:
        return self.evals


TASKS = {"regression": Regression, "score": Score}


def _net(task, shape: Shape) -> torch.nn.Module:
    return DeepMLP(task.features, task.features, width=shape.width, depth=shape.depth, negative_slope=shape.slope)


def _draw(task, shape: Shape, scheme, seed: int, index: int) -> torch.nn.Module:
    net = _net(task, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheme.apply(net, seed, task.probe(index))
    return net


def _train(task, stack: Stack, seed_of: Tensor, steps: int, first_step: int = 0, state=None, test: bool = False,
           optimizer: Adam | SGD | None = None):
    """``steps`` steps of ``optimizer`` (default the benchmark's Adam) on the task's objective."""
    return fit(stack, task.objective, task.data(seed_of), optimizer=optimizer or Adam(LR), steps=steps,
               order=task.order(seed_of, first_step), nonfinite="skip", state=state, first_step=first_step,
               final_evals=task.test(seed_of) if test else None)


def select(task, shape: Shape, schemes: Sequence, seeds: Sequence[int], candidates: int, budget: int):
    """Successive halving among ``candidates`` draws of every (scheme, seed) at once, the library's
    schedule and rule. Returns the kept runs (``Stack``, scheme-major, seed order), their Adam state,
    the look-ahead's steps per (scheme, seed), the kept candidate's own steps and per run the kept
    candidate and its rank-defining loss at each cut."""
    cuts = halving_cuts(candidates, budget)
    nets, group, cand, seed_of = [], [], [], []
    for g, scheme in enumerate(schemes):
        for i, seed in enumerate(seeds):
            for k, drawn in enumerate(candidate_seeds(seed, candidates)):
                nets.append(_draw(task, shape, scheme, drawn, i))
                group.append(g * len(seeds) + i)
                cand.append(k)
                seed_of.append(i)
    stack = Stack(nets)
    group_t, cand_t, seed_t = (torch.tensor(v) for v in (group, cand, seed_of))
    state, done, histories = None, 0, {}
    for cut in cuts:
        result = _train(task, stack, seed_t, cut - done, first_step=done, state=state)
        keep = []
        for g in range(len(schemes) * len(seeds)):
            runs = (group_t == g).nonzero().flatten().tolist()
            h = Halving.start(candidates, cuts)  # the library's rule, fed this rung's losses
            h.alive = [int(cand_t[r]) for r in runs]
            for r in runs:
                h.losses[int(cand_t[r])] = [float(v) for v in result.losses[:, r]]
            before = list(h.alive)
            h.cut(h.rung_losses())
            histories.setdefault(g, []).append(h.history[-1])
            keep += [runs[before.index(k)] for k in h.alive]
        index = torch.tensor(keep)
        state, stack = take_state(result.state, stack, index), stack.take(index)
        group_t, cand_t, seed_t = group_t[index], cand_t[index], seed_t[index]
        done = cut
    kept = [int(k) for k in cand_t]
    losses = [[history[kept[g]] for history in histories[g]] for g in range(len(kept))]
    return stack, state, seed_t, *halving_steps(candidates, cuts), kept, losses


def _rows(task, shape: Shape, seeds: Sequence[int], labels: Sequence[str], values: np.ndarray,
          extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, seed) of runs stacked method-major (``values``, ``extra``: one per run)."""
    rows = []
    for j, label in enumerate(labels):
        for i, seed in enumerate(seeds):
            value = float(values[j * len(seeds) + i])
            rows.append({"task": task.name, "shape": shape.name, "scheme": label, "seed": seed, "metric": value,
                         "trained": bool(value < task.threshold), **extra[j * len(seeds) + i]})
    return rows


def run_cell(task_name: str, shape: Shape, size: Size, single: dict[str, Any] | None = None,
             selected: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The one-draw methods ``single`` (default :data:`SINGLE`) and the selections ``selected`` (default
    :data:`SELECTED`) on one (task, shape): one row per (method, seed). Threads: the runner's (forked
    cell processes inherit them; a direct ``python -m benchmarks.lookahead`` takes ``OMP_NUM_THREADS``)."""
    single, selected = SINGLE if single is None else single, SELECTED if selected is None else selected
    seeds = list(range(FIRST_SEED, FIRST_SEED + size.seeds))
    task = TASKS[task_name](seeds)
    labels = list(single)
    nets = [_draw(task, shape, single[label], seed, i) for label in labels for i, seed in enumerate(seeds)]
    seed_of = torch.arange(len(seeds)).repeat(len(labels))
    trained = _train(task, Stack(nets), seed_of, size.steps, test=True)
    rows = _rows(task, shape, seeds, labels, trained.final["test"],
                 [{"steps": size.steps, "extra steps": 0, "kept": "", "cut losses": ""}] * len(nets))
    stack, state, seed_of, used, own, kept, losses = select(
        task, shape, list(selected.values()), seeds, size.candidates, size.look_ahead_steps)
    after = _train(task, stack, seed_of, size.steps - used, first_step=own, state=state, test=True)
    extra = [{"steps": size.steps, "extra steps": used - own, "kept": k,
              "cut losses": "/".join(f"{v:.4g}" for v in loss)} for k, loss in zip(kept, losses)]
    return rows + _rows(task, shape, seeds, [label.replace("best-of-K", f"best-of-{size.candidates}")
                                             for label in selected], after.final["test"], extra)


def trained_per_target(rows: list[dict[str, str]]) -> dict[float, tuple[int, int]]:
    """Per ``calibrate_target`` of ``rows`` (``scripts/lookahead_targets.py``'s per-run rows, in order of
    appearance): how many runs trained, and how many there are."""
    out: dict[float, tuple[int, int]] = {}
    for r in rows:
        trained, runs = out.get(float(r["target"]), (0, 0))
        out[float(r["target"])] = (trained + (r["trained"] == "True"), runs + 1)
    return out


def trained_per_sgd_run(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[float, tuple[int, int]]]:
    """Per (shape, SGD learning rate) of ``rows`` (``scripts/lookahead_targets.py --sgd``'s per-run rows, in
    order of appearance): :func:`trained_per_target` of its runs."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["shape"], r["sgd lr"]), []).append(r)
    return {key: trained_per_target(runs) for key, runs in groups.items()}


def small_target(path: Path = TARGETS_CSV) -> tuple[float, dict[float, int], int]:
    """The output scale of the small-output methods: of :data:`TARGETS`, the one that trained the most
    tuning seeds over the cells of ``path`` (``scripts/lookahead_targets.py``; a tie goes to the larger
    target). Returns it, the trained count of every target, and the number of runs per target."""
    tally = trained_per_target(_read_csv(path))
    counts = {t: tally.get(t, (0, 0))[0] for t in TARGETS}
    return max(TARGETS, key=lambda t: (counts[t], t)), counts, tally.get(TARGETS[0], (0, 0))[1]


def small_labels(target: float) -> tuple[str, str]:
    """The labels of the small-output one-draw method and look-ahead."""
    return f"default at target {target:g}", f"{LOOK_AHEAD} at target {target:g}"


def run_small(task_name: str, shape: Shape, size: Size) -> list[dict[str, Any]]:
    """The default's draw and the look-ahead with the output calibrated to :func:`small_target`'s scale
    (``LyapunovInit(calibrate_target=...)``, with ``look_ahead=K`` for the second)."""
    target = small_target()[0]
    one, look = small_labels(target)
    return run_cell(task_name, shape, size, single={one: Calibrated(target=target)},
                    selected={look: Calibrated(target=target)})


def gradinit_for(size: Size) -> GradInit:
    """GradInit with the look-ahead's extra steps (the candidates' steps beyond the kept one's own):
    half as many iterations, two gradients each."""
    used, own = halving_steps(size.candidates, halving_cuts(size.candidates, size.look_ahead_steps))
    return GradInit(iterations=(used - own) // 2, eta=LR)


def run_gradinit(task_name: str, shape: Shape, size: Size) -> list[dict[str, Any]]:
    """GradInit (:mod:`benchmarks._lib.gradinit`) on the draws of :data:`GRADINIT`'s schemes, then
    Adam for the rest of the ``size.steps`` (its iterations count two steps each): one row per
    (method, seed), with the learned scales' range and how often the gradient-norm constraint acted."""
    seeds = list(range(FIRST_SEED, FIRST_SEED + size.seeds))
    gradinit = gradinit_for(size)
    task = TASKS[task_name](seeds)
    labels = list(GRADINIT)
    nets = [_draw(task, shape, GRADINIT[label], seed, i) for label in labels for i, seed in enumerate(seeds)]
    seed_of = torch.arange(len(seeds)).repeat(len(labels))
    stack = Stack(nets)
    learned = gradinit.fit_(stack, task.objective, task.data(seed_of), task.order(seed_of, 0))
    after = _train(task, stack, seed_of, size.steps - gradinit.steps, test=True)
    extra = [{"steps": size.steps, "extra steps": gradinit.steps, "kept": "", "cut losses": "",
              "gradinit scales": f"{scales.min():.3g}..{scales.max():.3g}", "gradinit constraint steps": int(c)}
             for scales, c in zip(learned["scales"], learned["constrained"])]
    return _rows(task, shape, seeds, labels, after.final["test"], extra)


#: the parts of a cell, each cached on its own: file suffix -> the function computing its rows
PARTS = {"": run_cell, "_gradinit": run_gradinit, "_small": run_small}


def cached_cell(task_name: str, shape: Shape, size: Size, part: str = "") -> tuple[list[dict[str, Any]], float]:
    """The rows of :data:`PARTS` ``[part]`` on one cell, kept in ``$LOOKAHEAD_CELLS/<task>_<shape><part>.json``
    with the CPU seconds they took when that variable names a folder (a part already there for the same
    size is read back, not rerun): a long run can be done cell by cell (``python -m benchmarks.lookahead
    TASK SHAPE``), then reported by the runner. Returns the rows and the CPU seconds of a part read back
    (0 for a part run here, whose time the runner measures itself; NaN for a part cached without its time)."""
    folder = os.environ.get("LOOKAHEAD_CELLS")
    path = Path(folder) / f"{task_name}_{shape.name}{part}.json" if folder else None
    key = f"{task_name} {shape} seeds={size.seeds} steps={size.steps} K={size.candidates} budget={size.look_ahead_steps}"
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved["size"] == key:  # NaN: cached before the CPU time was stored with it
            return saved["rows"], float(saved.get("cpu_seconds", math.nan))
    start, cpu = time.time(), time.process_time()
    rows = PARTS[part](task_name, shape, size)
    cpu = time.process_time() - cpu
    print(f"lookahead: {task_name} {shape.name}{part} done in {time.time() - start:.0f} s ({cpu:.0f} s CPU)",
          file=sys.stderr, flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"size": key, "cpu_seconds": cpu, "rows": rows}))
    return rows, 0.0


def _cells(size: Size) -> list[tuple[list[dict[str, Any]], float]]:
    jobs = [(task, shape, size, part) for task, shape in size.cells for part in PARTS]
    if size.workers <= 1:
        return [cached_cell(*job) for job in jobs]
    with ProcessPoolExecutor(max_workers=size.workers) as pool:
        return list(pool.map(cached_cell, *zip(*jobs)))


def _median_cell(values: np.ndarray) -> str:
    lo, hi = bootstrap_median(np.where(np.isfinite(values), values, 1e300))
    return f"{median(values):.3g} [{lo:.3g}, {hi:.3g}]"


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, shape, method): trained with its Wilson interval, median with its bootstrap interval."""
    rows = []
    for key in dict.fromkeys((r["task"], r["shape"], r["scheme"]) for r in runs):
        mine = [r for r in runs if (r["task"], r["shape"], r["scheme"]) == key]
        values = np.array([r["metric"] for r in mine])
        rows.append({"task": key[0], "shape": key[1], "scheme": key[2],
                     "trained [95% Wilson]": str(count([r["trained"] for r in mine])),
                     "median metric [95% bootstrap]": _median_cell(values),
                     "steps in all": mine[0]["steps"], "extra steps": mine[0]["extra steps"]})
    return rows


def findings(runs: list[dict[str, Any]], size: Size) -> tuple[list[str], list[str]]:
    """Per cell and look-ahead (the default's, and the small-output one when run): the goal check, then
    the look-ahead against every other method (counts, then paired medians)."""
    out, summary = [], []
    for cell in dict.fromkeys((r["task"], r["shape"]) for r in runs):
        by = {}
        for r in runs:
            if (r["task"], r["shape"]) == cell:
                by.setdefault(r["scheme"], []).append(r)
        metric = {m: np.array([r["metric"] for r in rs]) for m, rs in by.items()}
        flags = {m: np.array([r["trained"] for r in rs]) for m, rs in by.items()}
        for name in [m for m in metric if m.startswith(LOOK_AHEAD)]:
            look = metric[name]
            n = len(look)
            need = math.ceil(39 * n / 40)
            peers = [m for m in metric if m != name]
            lowest = all(median(look) < median(metric[m]) for m in peers)
            extra = by[name][0]["extra steps"]
            line = (f"{cell[0]}, {cell[1]}: {name} ({size.candidates} candidates, {extra} extra steps = "
                    f"{100 * extra / size.steps:.1f}% of {size.steps}) trained {count(flags[name])} (goal: at "
                    f"least {need}/{n}: {'met' if flags[name].sum() >= need else 'missed'}); its median "
                    f"{median(look):.3g} is {'below' if lowest else 'not below'} every other method's")
            closest = min(peers, key=lambda m: median(metric[m]))
            line += "; " + compare(look, metric[closest], name, closest, higher_is_better=False).sentence(
                TASKS[cell[0]].metric)
            summary.append(line)
            out.append(line)
            for m in peers:
                out.append(f"{cell[0]}, {cell[1]}: " + compare_counts(flags[name], flags[m], name, m))
                out.append(f"{cell[0]}, {cell[1]}: " + compare(look, metric[m], name, m, higher_is_better=False)
                           .sentence(TASKS[cell[0]].metric))
    return out, summary


def target_finding(path: Path = TARGETS_CSV, sgd: Path = TARGETS_SGD_CSV,
                   classification: Path = TARGETS_CLASSIFICATION_CSV) -> str:
    """How the small-output methods' target was chosen, from the tuning runs (and the SGD and classification
    runs, if any)."""
    target, counts, runs = small_target(path)
    tried = "; ".join(f"{t:g}: {c}/{runs}" for t, c in counts.items())
    line = (f"output scale of the small-output methods: on the tuning seeds ({TUNING_FIRST_SEED}.., one calibrated "
            f"draw per seed trained {SIZES.full.steps} Adam steps in the four cells, `scripts/lookahead_targets.py`), "
            f"seeds trained per `calibrate_target`: {tried}; chosen {target:g} (the most)")
    if sgd.exists():
        per_lr = [f"lr {float(lr):g}: " + ", ".join(f"{t:g}: {tally[t][0]}/{tally[TARGETS[0]][1]}" for t in TARGETS)
                  for (_, lr), tally in trained_per_sgd_run(_read_csv(sgd)).items()]
        line += f"; with plain SGD instead (regression w2d40, the same seeds) per target, {'; '.join(per_lr)}"
    if classification.exists():
        line += "; " + classification_finding(_read_csv(classification))
    return line


def accuracy_per_target(rows: list[dict[str, str]], epoch: int) -> dict[tuple[str, str], dict[float, np.ndarray]]:
    """Per (model, optimizer) and ``calibrate_target`` of ``rows`` (``scripts/lookahead_targets.py
    --classification``'s per-run rows): the runs' train accuracies after ``epoch`` epochs."""
    column = f"train acc epoch {epoch}"
    out: dict[tuple[str, str], dict[float, list[float]]] = {}
    for r in rows:
        out.setdefault((r["model"], r["optimizer"]), {}).setdefault(float(r["target"]), []).append(float(r[column]))
    return {key: {t: np.array(v) for t, v in per.items()} for key, per in out.items()}


def classification_finding(rows: list[dict[str, str]]) -> str:
    """What a small target costs two standard classifiers (``scripts/lookahead_targets.py --classification``):
    per model, optimizer and compared epoch the median train accuracy per target, and the smallest target
    against 1, paired."""
    small, one = min(CLASSIFICATION_TARGETS), max(CLASSIFICATION_TARGETS)
    parts: dict[tuple[str, str], list[str]] = {}
    for epoch in CLASSIFICATION_COMPARED:
        for key, acc in accuracy_per_target(rows, epoch).items():
            medians = " / ".join(number(float(np.median(acc[t])), "percent") for t in CLASSIFICATION_TARGETS)
            paired = compare(acc[small], acc[one], f"target {small:g}", f"target {one:g}", higher_is_better=True)
            sentence = paired.sentence(f"train accuracy after {epoch} epochs", style="percent")
            parts.setdefault(key, []).append(f"after {epoch} epochs {medians}; {sentence}")
    seeds = len({r["seed"] for r in rows})
    targets = " / ".join(f"{t:g}" for t in CLASSIFICATION_TARGETS)
    return (f"on two standard classifiers instead (`mnist_fractional`'s MNIST MLP 64x20 and CIFAR-10 CNN, 3000 "
            f"training images, {CLASSIFICATION_EPOCHS[-1]} epochs, {seeds} seeds, `--classification`), median train "
            f"accuracy at target {targets}: "
            + "; ".join(f"{model}, {optimizer}: " + "; ".join(p) for (model, optimizer), p in parts.items()))


def targets_rows(results: Path = RESULTS) -> list[dict[str, str]]:
    """The README's targets table as rows (``setting``, ``target``, ``value``), from the files of
    ``scripts/lookahead_targets.py`` in ``results`` that exist: seeds trained per target in the deep
    narrow cells (Adam; plain SGD per learning rate) and the classifiers' median train accuracy."""
    rows: list[dict[str, str]] = []

    def add(setting: str, values: dict[float, str]) -> None:
        rows.extend({"setting": setting, "target": f"{t:g}", "value": v} for t, v in values.items())

    paths = [results / p.name for p in (TARGETS_CSV, TARGETS_SGD_CSV, TARGETS_CLASSIFICATION_CSV)]
    if paths[0].exists():
        add("deep narrow regression and score, 4 cells, Adam 1e-3: seeds trained",
            {t: f"{k}/{n}" for t, (k, n) in trained_per_target(_read_csv(paths[0])).items()})
    if paths[1].exists():
        for (shape, lr), tally in trained_per_sgd_run(_read_csv(paths[1])).items():
            add(f"deep narrow regression {shape}, SGD {float(lr):g}: seeds trained",
                {t: f"{k}/{n}" for t, (k, n) in tally.items()})
    if paths[2].exists():
        found = _read_csv(paths[2])
        for epoch in CLASSIFICATION_COMPARED:
            for (model, optimizer), acc in accuracy_per_target(found, epoch).items():
                seeds = len({r["seed"] for r in found if (r["model"], r["optimizer"]) == (model, optimizer)})
                add(f"{model}, {optimizer}: median train accuracy after {epoch} epochs ({seeds} seeds)",
                    {t: f"{100 * float(np.median(v)):.1f}%" for t, v in acc.items()})
    return rows


SCAN = "library halving, budget"  # scripts/lookahead_schedules.py's rows of the library's schedule at larger budgets


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def halving_stages(candidates: int, steps: int) -> list[tuple[int, int]]:
    """The library's successive halving of ``candidates`` draws in ``steps`` look-ahead steps as
    ``[(cut, keep), ...]``: at each cut of ``halving_cuts`` the better half goes on, at the last one."""
    cuts = halving_cuts(candidates, steps)
    return [(cut, math.ceil(candidates / 2 ** (r + 1)) if r < len(cuts) - 1 else 1) for r, cut in enumerate(cuts)]


def stages_text(stages: Sequence[tuple[int, int]]) -> str:
    """``[(cut, keep), ...]`` as the rule files write it: ``"cut:keep,..."``."""
    return ",".join(f"{cut}:{keep}" for cut, keep in stages)


def library_rule() -> tuple[str, str, str]:
    """The library's default look-ahead as the rule files write it: ``(K, "cut:keep,...", rule)``
    (:func:`halving_stages`, ranked by the rung's window mean)."""
    return str(DEFAULT_CANDIDATES), stages_text(halving_stages(DEFAULT_CANDIDATES, DEFAULT_STEPS)), "window"


def rule_findings(runs: list[dict[str, Any]], results: Path = RESULTS) -> tuple[list[str], list[str]]:
    """What the other selection rules did (issue 25's goal), from ``scripts/lookahead_schedules.py``'s
    files in ``results`` (``scripts/lookahead_rank_target.py`` appends to the second):
    ``lookahead_rules_search.csv`` (every rule replayed on recorded trajectories, tuned on one set of
    seeds, replayed on another) and ``lookahead_rules.csv`` (per-seed rows of the
    named rules, replayed or trained for real), each rule against the library's on the same seeds
    (paired: this run's look-ahead rows where the seeds and cell are this run's). Empty without them."""
    out, summary = [], []
    search_path, rows_path = results / "lookahead_rules_search.csv", results / "lookahead_rules.csv"
    if search_path.exists():
        search = _read_csv(search_path)
        for shape in dict.fromkeys(r["shape"] for r in search):
            scan = [r for r in search if r["shape"] == shape and r["schedule"].startswith(SCAN)]
            mine = [r for r in search if r["shape"] == shape and r["trained (fresh)"] != "" and r not in scan]
            tune, fresh = (np.array([int(r[f"trained ({w})"]) for r in mine]) for w in ("tune", "fresh"))
            best = max(mine, key=lambda r: (int(r["trained (tune)"]), -float(r["median (tune)"])))
            rho, lo, hi = rank_correlation(tune, fresh)
            line = (f"rules replayed (regression, {shape}, every candidate recorded to the end): {len(mine)} (K, "
                    f"schedule, ranking) within {max(int(r['extra']) for r in mine)} extra steps (K up to "
                    f"{max(int(r['K']) for r in mine)}, the candidates recorded on both sets), tuned on seeds "
                    f"{mine[0]['tune seeds']} and replayed on {mine[0]['fresh seeds']}; in-sample trained counts "
                    f"{tune.min()}..{tune.max()}/40, on the fresh seeds {fresh.min()}..{fresh.max()}/40; the in-sample "
                    f"best (K={best['K']}, {best['schedule']} {best['stages']}, {best['rule']}: {best['trained (tune)']}"
                    f"/40) trained {best['trained (fresh)']}/40 on the fresh seeds; Spearman correlation of a rule's "
                    f"two counts {rho:.2f} [{lo:.2f}, {hi:.2f}] (95% bootstrap)")
            if hi < 0.5:
                line += ": a rule's count on one set of 40 seeds says little about its count on another"
            out.append(line)
            summary.append(line)
            if scan:
                out.append(f"the library's schedule and rule with larger budgets (regression, {shape}, replayed), "
                           "trained on the tuning / fresh seeds: " + "; ".join(
                               f"K={r['K']}, {r['schedule'][len(SCAN):].strip()} ({r['extra']} extra): "
                               f"{r['trained (tune)']} / {r['trained (fresh)'] or '-'}" for r in scan))
    if rows_path.exists():
        library = library_rule()
        own = {(r["task"], r["shape"], r["seed"]): r for r in runs if r["scheme"] == LOOK_AHEAD}
        groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
        for r in _read_csv(rows_path):
            groups.setdefault(tuple(r[k] for k in ("source", "seeds", "task", "shape", "K", "stages", "rule",
                                                   "extra")), []).append(r)
        for key, rows in groups.items():
            source, seeds, task, shape, k, stages, rule, extra = key
            flags = np.array([r["trained"] == "True" for r in rows])
            label = f"K={k}, cuts {stages} ranked by {rule} ({extra} extra steps)"
            line = (f"{task}, {shape}, seeds {seeds}, {'replayed' if source == 'replay' else 'trained for real'}: "
                    f"{label} trained {count(flags)}, median {median(np.array([float(r['metric']) for r in rows])):.3g}")
            if (k, stages, rule) != library:
                theirs = [own.get((task, shape, int(r["seed"]))) for r in rows]
                reference = "this run's look-ahead"
                if any(t is None for t in theirs):  # not this run's seeds or cell: the library's rule replayed
                    replayed = {r["seed"]: r for (src, sd, ts, sh, *rest), rs in groups.items() for r in rs
                                if (src, sd, ts, sh) == (source, seeds, task, shape) and tuple(rest[:3]) == library}
                    theirs = [replayed.get(r["seed"]) for r in rows]
                    reference = "the library's rule replayed"
                if all(t is not None for t in theirs):
                    line += "; " + compare_counts(flags, np.array([t["trained"] in (True, "True") for t in theirs]),
                                                  label, reference)
            out.append(line)
        fresh: dict[tuple[str, str, str], dict[str, int]] = {}  # rule -> cell -> trained, on this run's seeds
        for (source, seeds, task, shape, k, stages, rule, _), rows in groups.items():
            if (k, stages, rule) != library and all((task, shape, int(r["seed"])) in own for r in rows):
                fresh.setdefault((k, stages, rule), {})[f"{task} {shape}"] = sum(r["trained"] == "True" for r in rows)
        if fresh:
            cells = {f"{r['task']} {r['shape']}" for r in runs if r["scheme"] == LOOK_AHEAD}
            need = math.ceil(39 * len(own) / len(cells) / 40) if cells else 0
            met = [rule for rule, counts in fresh.items() if set(counts) >= cells and min(counts.values()) >= need]
            line = ("the other rules on this run's seeds (replayed or trained for real): " + "; ".join(
                f"K={k}, cuts {stages}, {rule}: " + ", ".join(f"{c} {n}" for c, n in counts.items())
                for (k, stages, rule), counts in fresh.items())
                + f"; the goal ({need} trained in every cell) met by "
                + (", ".join(f"K={k}, cuts {st}, {ru}" for k, st, ru in met) if met else "none of them"))
            out.append(line)
            summary.append(line)
    return out, summary


def figure(runs: list[dict[str, Any]]):
    import matplotlib.pyplot as plt

    from benchmarks._lib.plots import dots

    cells = list(dict.fromkeys((r["task"], r["shape"]) for r in runs))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.6), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        by: dict[str, list[float]] = {}
        for r in runs:
            if (r["task"], r["shape"]) == cell:
                by.setdefault(r["scheme"], []).append(r["metric"])
        dots(ax, {m: np.array(v) for m, v in by.items()}, TASKS[cell[0]].metric, limits=TASKS[cell[0]].limits)
        ax.axvline(TASKS[cell[0]].threshold, color="grey", ls="--", lw=1)
        ax.set_title(f"{cell[0]}, {cell[1]}", fontsize=10)
        if ax is not axes[0][0]:
            ax.set_yticklabels([])
    fig.tight_layout()
    return fig


def run(size: Size) -> Report:
    computed = _cells(size)
    runs = [row for rows, _ in computed for row in rows]
    earlier = sum(cpu for _, cpu in computed)
    read = [cpu for _, cpu in computed if cpu != 0]
    cached = (f"\n{len(read)} of the {len(computed)} parts of cells (a cell's methods, its GradInit runs, its "
              f"small-output runs) were run before, one by one (`python -m benchmarks.lookahead TASK SHAPE [PART]` "
              f"with `$LOOKAHEAD_CELLS`), and read back here: " + (
                  f"the CPU time above includes their {earlier:.0f} s." if not math.isnan(earlier) else
                  f"{sum(map(math.isnan, read))} of them were cached before their CPU time was stored with them, "
              "so the run's CPU time is not recorded.") if read else "")
    rows = table(runs)
    gradinit = gradinit_for(size)
    target = small_target()[0]
    one, look = small_labels(target)
    found, summary = findings(runs, size)
    tried, tried_summary = rule_findings(runs)
    chosen = target_finding()
    found, summary = [chosen] + found + tried, [chosen] + summary + tried_summary
    cuts = "/".join(map(str, halving_cuts(size.candidates, size.look_ahead_steps)))
    shapes = "; ".join(f"{s.name}: width {s.width}, depth {s.depth}, Leaky ReLU {s.slope}"
                       for s in dict.fromkeys(shape for _, shape in size.cells))
    cells = ", ".join(f"{task} {shape.name}" for task, shape in size.cells)
    setup = f"""
Shapes: {shapes} (`DeepMLP`, biases start at 0); cells run: {cells}. Seeds {FIRST_SEED}..{FIRST_SEED + size.seeds - 1} ({size.seeds}
per method, paired: seed s draws every method's init, candidate 0 of a selection is its one-draw method's draw).
Every method takes **{size.steps} Adam steps in all** (lr {LR:g}, betas 0.9/0.999, no weight decay), a
selection's look-ahead steps included (as `Trainer(max_steps={size.steps})` counts them).

Tasks: **regression**, the seeds' protocol of issue 25: seed s fits its own random degree-5 polynomial
(`PolynomialRegression(degree=5, seed=s)`, 1024 training points, full batch), loss MSE / var(y); trained =
test MSE / var(y_test) < {REGRESSION_TRAINED:g}. **score**: `score_learning`'s mixture and loss (denoising score
matching at sigma {SIGMA:g}, minibatches of {BATCH_SIZE} drawn with replacement, one stream per seed, fresh
noise each step); trained = relative test score error < {SCORE_TRAINED:g}. A data-dependent init (calibration,
LSUV, sampling) sees the training inputs (regression) or `score_learning`'s probe of {PROBE_SIZE} noisy inputs.

Methods: one draw trained {size.steps} steps: {', '.join(f'`{m}`' for m in SINGLE)} (the default is
`LyapunovInit()`'s draw: Lyapunov orthogonal, calibrated on the inputs); selections among K = {size.candidates}
draws by successive halving with the library's schedule (`halving_cuts({size.candidates}, {size.look_ahead_steps})`:
cuts at {cuts} steps of each candidate) and rule (mean training loss over the last half of each rung):
`look-ahead` (`LyapunovInit(look_ahead={size.candidates}, look_ahead_steps={size.look_ahead_steps})`'s
candidates: the default's draws from `candidate_seeds(s, K)`) and best-of-{size.candidates} restarts of He and of
LSUV (the same seeds, rule and budget); the kept candidate continues with its Adam state until {size.steps}
steps in all. GradInit (Zhu et al. 2021, the authors' algorithm for a target Adam as their code runs it:
`benchmarks/_lib/gradinit.py`) on the draws of He (`gradinit (he)`, the paper's kind of start) and of the default
(`gradinit (default)`): a scale per weight tensor, learned for {gradinit.iterations} iterations to lower the loss
after Adam's first step (`{gradinit.eta:g} sign(g)`) on the next batch (the full batch in the regression), under
the bound {gradinit.gamma:g} on the gradient's 1-norm; Adam on the scales (lr {gradinit.lr:g}, betas
{gradinit.betas[0]:g}/{gradinit.betas[1]:g}), scales in [{gradinit.min_scale:g}, {gradinit.max_scale:g}]: the authors'
settings for their Adam-trained Transformer, not tuned here. An iteration takes two gradients and counts as two
steps ({gradinit.steps} in all, the look-ahead's extra steps); Adam then trains {size.steps - gradinit.steps} steps.
The CSV has each run's range of learned scales and how many iterations took the constraint's step.
Small output: `{one}` and `{look}` are the default's draw and the look-ahead with the
output calibrated to root-mean-square {target:g} instead of 1 (`LyapunovInit(calibrate_target={target:g})`, with
`look_ahead={size.candidates}` for the second), the scale chosen on other seeds (the first finding).

The figure: every seed's final metric, clipped to [1e-4, 10] (regression) and [0.4, 2] (score); the
table has the unclipped numbers. Columns: trained count with its 95% Wilson interval; the median of the metric over seeds with a 95%
percentile-bootstrap interval; "extra steps": the look-ahead's steps beyond the kept candidate's own.
Per-seed rows in the CSV, with the kept candidate and its ranking loss at each cut. All runs of one
(task, shape) trained stacked by the benchmark engine, one thread per cell.{cached}
"""
    return Report("lookahead", TITLE, setup, rows, found, figure(runs), runs=runs, summary=summary,
                  earlier_cpu_seconds=earlier)


if __name__ == "__main__":  # one cell of the full size into $LOOKAHEAD_CELLS (run it with OMP_NUM_THREADS=1):
    # python -m benchmarks.lookahead TASK SHAPE [PART]  (PART: one of PARTS, e.g. _gradinit; default every part)
    for part in sys.argv[3:] or PARTS:
        cached_cell(sys.argv[1], next(s for s in SHAPES if s.name == sys.argv[2]), SIZES.full, part)
