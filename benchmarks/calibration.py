"""Data calibration after the Lyapunov draw vs LSUV, on the two deep narrow tasks (issue 14).

Every method initializes one ``DeepMLP`` per seed (Lyapunov orthogonal draw from
``torch.Generator().manual_seed(seed)``, then a rescaling on a batch of real inputs), all runs are
trained together (:mod:`benchmarks.training`), full batch for the regression, minibatches with fresh
noise for score matching. Methods through the package: ``apply_init(..., calibrate="layers" |
"output", calibrate_target=...)`` and ``apply_init(sampled=True, calibrate=...)``; LSUV is the
``lsuv`` package (0.3.0, the benchmarks extra). The earlier variants (standard deviation or median
instead of root-mean-square, a global factor only beyond 3x) are reported in the findings only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.common import Report
from benchmarks.training import StackedMLP, train
from lightning_lyapunov import apply_init
from lightning_lyapunov.settings import DEFAULT_TARGET
from lightning_lyapunov.examples.data import PolynomialRegression
from lightning_lyapunov.examples.models import DeepMLP

SLOPE = 0.1
SIGMA = 0.5
LRS = (1e-3, 3e-3, 1e-2)  # per method the rate with the best median over its best 80% of seeds (3e-4 never won)
MAIN_LR = 1e-3  # the protocol


def _quiet(fn: Callable[[], object]) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _lyapunov(net: nn.Module, seed: int, **calibration: object) -> None:
    _quiet(lambda: apply_init(net, scheme="lyapunov", distribution="orthogonal",
                              generator=torch.Generator().manual_seed(seed), **calibration))


def _sampled(net: nn.Module, seed: int, probe: Tensor, calibrate: str | None = None,
             target: float = DEFAULT_TARGET) -> None:
    calibration = {"calibrate": calibrate, "calibrate_target": target} if calibrate else {}
    _quiet(lambda: apply_init(net, sampled=True, example_input=probe, generator=torch.Generator().manual_seed(seed),
                              **calibration))


def _lsuv(net: nn.Module, seed: int, probe: Tensor) -> None:
    import lsuv

    torch.manual_seed(seed)  # LSUV's orthonormal start draws from the global generator
    _quiet(lambda: lsuv.lsuv_with_singlebatch(net, probe, verbose=False))


Init = Callable[[nn.Module, int, Tensor], None]  # (net, seed, probe batch)


@dataclass(frozen=True)
class Method:
    label: str
    init: Init


def _calibrated(calibrate: str, target: float = DEFAULT_TARGET) -> Init:
    return lambda n, s, p: _lyapunov(n, s, example_input=p, calibrate=calibrate, calibrate_target=target)


METHODS: tuple[Method, ...] = (
    Method("Lyapunov orthogonal (no calibration)", lambda n, s, p: _lyapunov(n, s)),
    Method("LSUV (lsuv 0.3.0)", _lsuv),
    Method("calibrate='layers', target 0.1", _calibrated("layers", 0.1)),
    Method("calibrate='output', target 0.1", _calibrated("output", 0.1)),
    Method("calibrate='layers', target 1 (the callback's default)", _calibrated("layers")),
    Method("calibrate='output', target 1", _calibrated("output")),
    Method("sampled + calibrate='layers', target 0.1", lambda n, s, p: _sampled(n, s, p, "layers", 0.1)),
)


@dataclass
class Task:
    name: str
    make: Callable[[], nn.Module]
    probe: Tensor
    threshold: float
    metric: str


def _regression(seeds: tuple[int, ...], steps: int, methods: tuple[Method, ...], lrs: tuple[float, ...]):
    data = PolynomialRegression(in_features=1, degree=5, seed=0)
    splits = data.build()
    x, y = splits["train"]
    var = float(y.var())
    task = Task("deep_narrow_regression", lambda: DeepMLP(1, 1, width=2, depth=40, negative_slope=SLOPE),
                x, 0.1, "test MSE / var y")

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
                0.9, "relative score error")
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
            method.init(net, seed, task.probe)
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
    seeds = tuple(range(3 if quick else 40))
    steps = 200 if quick else 2000
    methods = METHODS[:3] if quick else METHODS
    lrs = (1e-3, 3e-3) if quick else LRS
    rows = []
    for build in (_regression, _score):
        task, val, test = build(seeds, steps, methods, lrs)
        rows += _rows(task, methods, lrs, seeds, val, test)
    return Report("calibration", "Calibration after the Lyapunov draw vs LSUV (width 2, depths 40 and 30)",
                  SETUP.format(seeds=len(seeds), steps=steps, lrs=", ".join(f"{lr:g}" for lr in lrs)), rows, findings(rows), None)


SETUP = """
Tasks: `deep_narrow_regression`'s (`PolynomialRegression(seed=0)`, degree 5 on [-1, 1], 1024 train
points; `DeepMLP(1, 1, width=2, depth=40)`, Leaky ReLU 0.1, zero biases; loss MSE / var y, full batch)
and `score_learning`'s (3-Gaussian mixture, denoising score matching at sigma 0.5, `DeepMLP(2, 2,
width=2, depth=30)`, minibatches of 128 with fresh noise; metric: relative score error). Adam (no
weight decay), {steps} steps, {seeds} seeds (seed k: the draw `torch.Generator().manual_seed(k)`; LSUV:
`torch.manual_seed(k)`). Learning rates {lrs}, all trained at once; rows "1e-3": the issue's
protocol; rows "best 80%": per method the rate with the lowest median validation loss over the best 80% of
seeds (the Lyapunov paper's selection). Calibration batch: the 1024 training
inputs (regression) or 1024 noisy training inputs (score); "target": the output's root-mean-square
after calibration (`calibrate_target`; in the earlier exploration "target scale" is std y = 1.01,
or 1 / sigma = 2 for the score). "Trained": test MSE / var y < 0.1, or relative score error < 0.9.
The score task's noise is drawn for all runs at once, so its medians move by about +-0.05 between runs
with different sets of methods (LSUV: 0.758, 0.699 and 0.751 in three runs).
"""


def goal_lines(rows: list[dict[str, object]]) -> list[str]:
    """Per task, the issue's goal (>= 19/20 seeds trained, median below LSUV's and at most twice
    plain Lyapunov's) at lr 1e-3 and with each method's own rate (best 80%)."""
    lines = []
    for task in dict.fromkeys(str(r["task"]) for r in rows):
        for protocol, pick in (("lr 1e-3", lambda r: r["lr"] == "1e-3"),
                               ("each method's rate (best 80%)", lambda r: "best 80%" in str(r["lr"]))):
            mine = [r for r in rows if r["task"] == task and pick(r)]
            if not mine:
                continue
            plain = next(r for r in mine if str(r["method"]).startswith("Lyapunov orthogonal"))
            lsuv = next(r for r in mine if str(r["method"]).startswith("LSUV"))
            p_med, l_med = float(plain["test median"]), float(lsuv["test median"])
            met = [f"{r['method']} ({r['trained']}, {float(r['test median']):.3g})" for r in mine
                   if r is not plain and r is not lsuv and _trained(r) >= 0.95
                   and float(r["test median"]) < l_med and float(r["test median"]) <= 2 * p_med]
            lines.append(f"- {task}, {protocol}: plain Lyapunov {plain['trained']} (median {p_med:.3g}, lr "
                         f"{plain['lr']}), LSUV {lsuv['trained']} (median {l_med:.3g}, lr {lsuv['lr']}). "
                         f"Goal met by: {', '.join(met) or 'none'}.")
    return lines


def _trained(row: dict[str, object]) -> float:
    done, total = str(row["trained"]).split("/")
    return int(done) / int(total)


def findings(rows: list[dict[str, object]]) -> str:
    return "The issue's goal (>= 95% of seeds trained, median below LSUV's, at most 2x plain Lyapunov's):\n\n" \
        + "\n".join(goal_lines(rows)) + "\n\n" + FINDINGS


FINDINGS = """
What the numbers say (this run, 40 seeds; the figures below it are earlier runs):

- Every calibration trains more nets than plain Lyapunov (regression 19/40, score 21/40): plain
  Lyapunov's failures are the spread of one draw's output scale, its median initial loss is 3.6
  (regression) and 58 (score) times the zero predictor's; every calibration starts at 1.0-2.1.
- The callback's default, `calibrate="layers"` with target 1, trains 29/40 regressions (median test
  MSE / var y 0.025) and 36/40 score nets (0.736), against LSUV 23/40 (0.041) and 37/40 (0.751):
  better than LSUV on the regression, level with it on score learning.
- A small output at step 0 trains more with Adam: target 0.1 beats target 1 with either method on
  the regression (`"layers"` 36 vs 29/40, median 0.0046; `"output"` 30 vs 26/40) and costs nothing
  on score learning (38/40, 0.737). `"layers"` with target 0.1 meets the issue's goal on score
  learning and comes closest on the regression (90% of the seeds; the goal is 95%). It is not the
  default because it slows plain SGD: the earlier layers' gradients pass through the small last
  layer (the fractional-moment paper's CNN with SGD 0.01, `mnist_fractional`: CIFAR-10 31.4% train
  accuracy after 5 epochs at target 0.1 against 42.2% at target 1). With Adam, whose steps do not
  depend on the gradient's scale, use `calibrate_target=0.1`.
- Per-layer factors beat one global factor on the regression at an equal output scale (36 vs 30/40
  at target 0.1, 29 vs 26/40 at target 1): with zero biases and Leaky ReLU both start from the same
  function; they differ in how weight magnitude is spread over the layers, which Adam's
  per-parameter steps see. On score learning `"output"` has the lower median (0.688 vs 0.737).
- The failures are scattered over seeds, not one hard draw: per seed (20 seeds, lr 1e-3) the
  regression seeds that fail differ from method to method, most on a plateau at MSE / var y ~ 0.28
  or at the constant predictor (1.0) after 2000 steps. A width-2 zero-bias net starts as a
  two-slope function of x and must grow its biases to fit a degree-5 polynomial; whether Adam gets
  there in 2000 steps is a lottery the calibration improves but does not remove.
- A per-method learning rate (best 80% of seeds, the Lyapunov paper's selection) does not change the
  picture: it lowers some medians (0.0028 for `"layers"`, 0.1 at 3e-3) but trains fewer seeds;
  3e-4 never won an earlier grid and was dropped. Sampling first (best of 13 draws by |log-gain|)
  then `"layers"`, 0.1 trains 40/40 score nets but only 31/40 regressions.

Earlier exploration (20 seeds, lr 1e-3, target 1, one random polynomial per seed,
`PolynomialRegression(seed=k)`; the variants written on the stacked weights; trained / median):

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

What those runs said, still true here:

- Robust statistics are worse, not better: the median of |v| and the geometric mean of r ignore the
  few large outputs that dominate the loss, so the calibrated nets still start 50-90 times too
  large (median initial loss 49-90). The root-mean-square is the statistic the MSE sees; it beat
  the standard deviation (LSUV's statistic) at width 2, where a unit's batch mean is part of its signal.
- Rescuing only the nets that are far off (beyond 3x or 10x) keeps most of the spread and most of
  the lost seeds; sampling alone (best of 13 by |mean log-gain|) selects on log|c+| + log|c-| of a
  two-slope function and can keep one huge and one tiny slope.
- The target's scale was only tried at 1 and above there (std y ~ 1, 1/sigma = 2); this run's
  smaller target (0.1) is what moved the regression from 29/40 to 36/40.
"""


if __name__ == "__main__":
    import sys

    from benchmarks.__main__ import main

    main(["calibration", *sys.argv[1:]])
