"""Data calibration after the Lyapunov draw vs LSUV, on the two deep narrow tasks (issue 14).

Every method initializes one ``DeepMLP`` per seed (Lyapunov orthogonal draw from
``torch.Generator().manual_seed(seed)``, then a rescaling on a batch of real inputs), all runs are
trained together (:mod:`benchmarks.training`), full batch for the regression, minibatches with fresh
noise for score matching. Methods through the package: ``apply_init(..., calibrate="layers" |
"output", calibrate_target=...)`` and ``sample_lyapunov_`` + ``calibration.calibrate_``; LSUV is the
``lsuv`` package (0.3.0, the benchmarks extra). The other variants (standard deviation or median
instead of root-mean-square) are written here, on the same draws.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.common import Report
from benchmarks.training import StackedMLP, train
from lightning_lyapunov import apply_init, sample_lyapunov_
from lightning_lyapunov.calibration import calibrate_
from lightning_lyapunov.data import PolynomialRegression
from lightning_lyapunov.models import DeepMLP

SLOPE = 0.1
SIGMA = 0.5
LRS = (1e-3,)  # the protocol; the paper's per-method rate (best 80% of seeds) needs a grid
MAIN_LR = 1e-3


def _quiet(fn: Callable[[], object]) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _linears(net: nn.Module) -> list[nn.Linear]:
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


def _statistic(kind: str) -> Callable[[Tensor], float]:
    return {
        "rms": lambda v: float(v.pow(2).mean().sqrt()),
        "std": lambda v: float(v.std()),
    }[kind]


@torch.no_grad()
def _per_layer(net: nn.Module, x: Tensor, kind: str, target: float) -> None:
    """Each Linear's output to ``kind`` = 1 in forward order (the last to ``target``): LSUV's loop
    (one exact step per layer) on the Lyapunov draw, with a choice of statistic."""
    stat, layers = _statistic(kind), _linears(net)
    h = x
    for i, layer in enumerate(layers):
        pre = layer(h)
        factor = (target if i == len(layers) - 1 else 1.0) / stat(pre)
        layer.weight.mul_(factor)
        h = torch.nn.functional.leaky_relu(pre * factor, SLOPE)


@torch.no_grad()
def _global(net: nn.Module, x: Tensor, target: float, far: float) -> None:
    """One factor ``c^{1/L}`` on every layer, ``log c`` = the part of ``log(target / rms(output))``
    beyond ``+-log far`` (rescue only the nets that are far off)."""
    layers = _linears(net)
    log_c = math.log(target / _statistic("rms")(net(x)))
    log_c = math.copysign(max(abs(log_c) - math.log(far), 0.0), log_c)
    for layer in layers:
        layer.weight.mul_(math.exp(log_c / len(layers)))


def _lyapunov(net: nn.Module, seed: int, probe: Tensor, **calibration: object) -> None:
    _quiet(lambda: apply_init(net, scheme="lyapunov", distribution="orthogonal",
                              generator=torch.Generator().manual_seed(seed), **calibration))


def _sampled(net: nn.Module, seed: int, probe: Tensor, calibrate: str | None = None, target: float = 1.0) -> None:
    report = _quiet(lambda: sample_lyapunov_(net, probe, generator=torch.Generator().manual_seed(seed)))
    if calibrate:
        calibrate_(net, report.plan.layers, probe, calibrate, target)


def _lsuv(net: nn.Module, seed: int, probe: Tensor) -> None:
    import lsuv

    torch.manual_seed(seed)  # LSUV's orthonormal start draws from the global generator
    _quiet(lambda: lsuv.lsuv_with_singlebatch(net, probe, verbose=False))


@dataclass(frozen=True)
class Method:
    """``init(net, seed, probe, target)``; ``target``: the task's output scale (std of y, or of the
    score target ``eps / sigma``)."""

    label: str
    init: Callable[[nn.Module, int, Tensor, float], None]
    api: bool = False  # through apply_init(calibrate=...) / calibrate_


METHODS: tuple[Method, ...] = (
    Method("Lyapunov orthogonal (no calibration)", lambda n, s, p, t: _lyapunov(n, s, p), True),
    Method("LSUV (lsuv 0.3.0)", lambda n, s, p, t: _lsuv(n, s, p)),
    Method("calibrate='layers' (rms 1)", lambda n, s, p, t: _lyapunov(n, s, p, example_input=p, calibrate="layers"),
           True),
    Method("calibrate='layers', target = target scale",
           lambda n, s, p, t: _lyapunov(n, s, p, example_input=p, calibrate="layers", calibrate_target=t), True),
    Method("calibrate='output' (rms 1)", lambda n, s, p, t: _lyapunov(n, s, p, example_input=p, calibrate="output"),
           True),
    Method("calibrate='output', target = target scale",
           lambda n, s, p, t: _lyapunov(n, s, p, example_input=p, calibrate="output", calibrate_target=t), True),
    Method("per layer std 1 (LSUV's statistic)", lambda n, s, p, t: (_lyapunov(n, s, p), _per_layer(n, p, "std", 1.0))),
    Method("global rms = target scale, only beyond 3x",
           lambda n, s, p, t: (_lyapunov(n, s, p), _global(n, p, t, far=3.0))),
    Method("sampled + calibrate='layers'", lambda n, s, p, t: _sampled(n, s, p, "layers"), True),
    Method("sampled + calibrate='output', target", lambda n, s, p, t: _sampled(n, s, p, "output", t), True),
)


@dataclass
class Task:
    name: str
    make: Callable[[], nn.Module]
    probe: Tensor
    target_scale: float
    threshold: float
    metric: str


def _regression(seeds: tuple[int, ...], steps: int, methods: tuple[Method, ...], lrs: tuple[float, ...]):
    data = PolynomialRegression(in_features=1, degree=5, seed=0)
    splits = data.build()
    x, y = splits["train"]
    var = float(y.var())
    task = Task("deep_narrow_regression", lambda: DeepMLP(1, 1, width=2, depth=40, negative_slope=SLOPE),
                x, math.sqrt(var), 0.1, "test MSE / var y")

    def loss(model: nn.Module, batch: tuple[Tensor, ...], generator: torch.Generator | None) -> Tensor:
        xb, yb = batch
        return (model(xb) - yb).pow(2).flatten(1).mean(1) / var

    model, lr, streams = _stack(task, seeds, methods, lrs)
    result = train(model, loss, (x, y), {"val": splits["val"], "test": splits["test"]}, lr=lr, steps=steps,
                   batch_size=None, eval_every=steps, streams=streams)
    return task, result.curves["val"], result.curves["test"]


def _score(seeds: tuple[int, ...], steps: int, methods: tuple[Method, ...], lrs: tuple[float, ...]):
    from benchmarks.score_learning import dsm_loss, noisy_data, relative_score_error

    data, x, fixed, noisy, probe = noisy_data(1024)
    task = Task("score_learning", lambda: DeepMLP(2, 2, width=2, depth=30, negative_slope=SLOPE), probe,
                1 / SIGMA, 0.9, "relative score error")
    model, lr, streams = _stack(task, seeds, methods, lrs)
    result = train(model, dsm_loss, (x,), {"val": fixed["val"], "score": (noisy, data.score(noisy, sigma=SIGMA))},
                   lr=lr, steps=steps, batch_size=128, eval_every=steps, streams=streams,
                   eval_fns={"score": relative_score_error})
    return task, result.curves["val"], result.curves["score"]


def _stack(task: Task, seeds: tuple[int, ...], methods: tuple[Method, ...], lrs: tuple[float, ...]):
    nets = []
    for method in methods:
        for seed in seeds:
            net = task.make()
            method.init(net, seed, task.probe, task.target_scale)
            nets.append(net)
    model = StackedMLP.from_modules(nets * len(lrs), SLOPE)
    lr = torch.tensor(lrs, dtype=torch.float32).repeat_interleave(len(nets))
    streams = torch.arange(len(seeds)).repeat(len(lrs) * len(methods))
    return model, lr, streams


def _best80(values: np.ndarray) -> float:
    """Median over the best 80% of seeds (the Lyapunov paper's learning-rate selection)."""
    kept = np.sort(np.where(np.isfinite(values), values, np.inf))[: max(1, int(0.8 * len(values)))]
    return float(np.median(kept))


def _rows(task: Task, methods: tuple[Method, ...], lrs: tuple[float, ...], seeds: tuple[int, ...],
          val: np.ndarray, test: np.ndarray) -> list[dict[str, object]]:
    shape = (len(lrs), len(methods), len(seeds))
    val_final, test_init, test_final = val[-1].reshape(shape), test[0].reshape(shape), test[-1].reshape(shape)
    rows = []
    for j, method in enumerate(methods):
        chosen = min(range(len(lrs)), key=lambda i: (_best80(val_final[i, j]), lrs[i]))
        choices = [("1e-3", lrs.index(MAIN_LR))] + ([(f"{lrs[chosen]:g} (best 80%)", chosen)] if len(lrs) > 1 else [])
        for label, i in choices:
            final = np.where(np.isfinite(test_final[i, j]), test_final[i, j], np.inf)
            q = np.quantile(final, [0.5, 0.25, 0.75], method="nearest")
            rows.append({
                "task": task.name, "method": method.label, "lr": label,
                "trained": f"{int((final < task.threshold).sum())}/{len(seeds)}",
                "test median": float(q[0]), "test q25": float(q[1]), "test q75": float(q[2]),
                "init test median": float(np.median(test_init[i, j])),
            })
    return rows


def run(quick: bool = False) -> Report:
    torch.set_num_threads(1)
    seeds = tuple(range(3 if quick else 20))
    steps = 200 if quick else 2000
    methods = METHODS[:3] if quick else METHODS
    lrs = LRS if not quick else (1e-3, 3e-3)
    rows = []
    for build in (_regression, _score):
        task, val, test = build(seeds, steps, methods, lrs)
        rows += _rows(task, methods, lrs, seeds, val, test)
    return Report("calibration", "Calibration after the Lyapunov draw vs LSUV (width 2, depths 40 and 30)",
                  SETUP.format(seeds=len(seeds), steps=steps), rows, findings(rows), None)


SETUP = """
Tasks: `deep_narrow_regression`'s (`PolynomialRegression(seed=0)`, degree 5 on [-1, 1], 1024 train
points; `DeepMLP(1, 1, width=2, depth=40)`, Leaky ReLU 0.1, zero biases; loss MSE / var y, full batch)
and `score_learning`'s (3-Gaussian mixture, denoising score matching at sigma 0.5, `DeepMLP(2, 2,
width=2, depth=30)`, minibatches of 128 with fresh noise; metric: relative score error). Adam (no
weight decay), {steps} steps, {seeds} seeds (seed k: the draw `torch.Generator().manual_seed(k)`; LSUV:
`torch.manual_seed(k)`). Learning rate 1e-3 for every method (the issue's protocol; with a grid, rows
"best 80%" use per method the rate with the lowest median validation loss over the best 80% of
seeds, the Lyapunov paper's selection; the full grid did not fit this run's CPU budget). Calibration batch: the 1024 training
inputs (regression) or 1024 noisy training inputs (score). "target scale": std of y (1.01) for the
regression, 1 / sigma = 2 (the scale of the score target eps / sigma) for score matching. "Trained":
test MSE / var y < 0.1, or relative score error < 0.9.
"""


def goal_lines(rows: list[dict[str, object]]) -> list[str]:
    """Per task and method (learning rate 1e-3): the issue's goal, >= 19/20 seeds trained, median
    below LSUV's and at most twice plain Lyapunov's."""
    lines = []
    for task in dict.fromkeys(str(r["task"]) for r in rows):
        mine = [r for r in rows if r["task"] == task and r["lr"] == "1e-3"]
        plain = next(r for r in mine if str(r["method"]).startswith("Lyapunov orthogonal"))
        lsuv = next(r for r in mine if str(r["method"]).startswith("LSUV"))
        p_med, l_med = float(plain["test median"]), float(lsuv["test median"])
        lines.append(f"- {task}: plain Lyapunov {plain['trained']} (median {p_med:.3g}), LSUV {lsuv['trained']} "
                     f"(median {l_med:.3g}). Goal met by: " + (", ".join(
                         f"{r['method']} ({r['trained']}, {float(r['test median']):.3g})" for r in mine
                         if r is not plain and r is not lsuv
                         and int(str(r["trained"]).split("/")[0]) >= 0.95 * int(str(r["trained"]).split("/")[1])
                         and float(r["test median"]) < l_med and float(r["test median"]) <= 2 * p_med) or "none") + ".")
    return lines


def findings(rows: list[dict[str, object]]) -> str:
    return "The issue's goal (>= 19/20 trained, median below LSUV's, at most 2x plain Lyapunov's), at lr 1e-3:\n\n" \
        + "\n".join(goal_lines(rows)) + "\n\n" + FINDINGS


FINDINGS = """
Exploration before this run (the same protocol but one random polynomial per seed,
`PolynomialRegression(seed=k)`, loss MSE / var y of that seed's targets; the variants written on the
stacked weights; 20 seeds, lr 1e-3; trained / median):

| variant | regression (polynomial per seed) | score learning |
|---|---|---|
| plain Lyapunov orthogonal | 11/20, 0.055 | 11/20, 0.889 |
| LSUV (lsuv 0.3.0) | 12/20, 0.074 | 20/20, 0.741 |
| per layer std 1 (LSUV's loop on the Lyapunov draw) | 14/20, 0.025 | 19/20, 0.656 |
| per layer rms 1 (= `calibrate="layers"`) | 15/20, 0.017 | 20/20, 0.753 |
| per layer std 1, last layer to the target scale | 16/20, 0.018 | 18/20, 0.756 |
| per layer median abs 1 (robust) | 9/20, 0.106 | 15/20, 0.757 |
| global std 1 | 12/20, 0.062 | 18/20, 0.741 |
| global rms 1 (= `calibrate="output"`) | 13/20, 0.025 | 19/20, 0.739 |
| global std = target scale | 15/20, 0.041 | 20/20, 0.740 |
| global rms = target scale | 14/20, 0.018 | 19/20, 0.752 |
| global median abs 1 (robust) | 8/20, 0.159 | 15/20, 0.763 |
| global exp(mean log r) 1 (log-space) | 7/20, 0.206 | 13/20, 0.824 |
| global rms = target, only beyond 3x | 13/20, 0.055 | 19/20, 0.772 |
| global rms = target, only beyond 10x | 11/20, 0.055 | 14/20, 0.798 |
| sampled (best of 13), no calibration | 10/20, 0.144 | 8/20, 0.917 |
| sampled + global rms = target | 13/20, 0.018 | 19/20, 0.790 |
| sampled + per layer std 1 | 13/20, 0.033 | 18/20, 0.754 |

What the numbers say:

- Every calibration that fixes the output's scale at step 0 rescues seeds that plain Lyapunov loses
  (score learning: plain Lyapunov's median initial error is 40 times the zero predictor's): the spread of one deep narrow net's
  log-gain, N(0, L s^2) with s^2 ~ 0.95 per layer at width 2, is what loses them, not the mean.
- Robust statistics are worse, not better: the median of |v| and the geometric mean of r ignore the
  few large outputs that dominate the loss, so the calibrated nets still start 50-90 times too
  large (median initial loss 49-90). The root-mean-square is the statistic the MSE sees.
- Rescuing only the nets that are far off (beyond 3x or 10x) keeps most of the spread and most of
  the lost seeds; sampling alone (best of 13 by |mean log-gain|) selects on log|c+| + log|c-| of a
  two-slope function and can keep one huge and one tiny slope.
- Per-layer factors (each layer's output rms 1) beat one global factor on the regression (15 vs 13
  trained, median 0.017 vs 0.025) at an equal output scale: with the same function at step 0, they
  differ only in how weight magnitude is spread over the layers, which Adam's per-parameter steps
  see. rms beats std at width 2 (the batch mean of a unit is part of its signal).
- The target's scale as the output target matters little (1 vs std y ~ 1 for the regression; 1 vs
  2 for the score, where it costs a little).
- This run (one polynomial, the benchmark's): no method reaches 19/20 on the regression. Most
  failing seeds of every method sit on the same plateau, test MSE / var y ~ 0.28 after 2000 steps
  (the q75 column), a local fit of this polynomial by a width-2 net that 2000 Adam steps at 1e-3 do
  not leave; calibration moves seeds out of the group that does not learn at all (plain Lyapunov's test
  q75 1.0, the constant predictor's loss) onto that plateau or below it. On score learning `calibrate="output"`
  meets the goal (20/20, median 0.741 < LSUV's 0.758, plain Lyapunov 11/20, 0.896), as does the
  per-layer std variant (20/20, 0.702); `calibrate="layers"` has the lowest median (0.675) but
  18/20.
- Sampling plus calibration gives the best regression median (0.0039, 13/20) but not on score
  learning (16/20, 0.781): selection by |mean log-gain| plus rescaling is not reliably better.
- Not reached there: no variant trains more than 16/20 on the regression with one polynomial per
  seed (some of those polynomials are harder than others; which seeds fail was not recorded).
"""


if __name__ == "__main__":
    import sys

    from benchmarks.__main__ import main

    main(["calibration", *sys.argv[1:]])
