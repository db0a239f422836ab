"""Deep narrow regression (the Lyapunov paper's task): width 2, depth 40, degree-5 polynomial.

Every scheme of :data:`benchmarks.training.SCHEMES` initializes ``DeepMLP(1, 1, width=2, depth=40)``
(Leaky ReLU 0.1) through the package's ``apply_init`` / ``sample_lyapunov_``; all (learning rate,
scheme, seed) runs are trained together with Adam by :func:`benchmarks.training.compare_schemes`.
"""

from __future__ import annotations

import torch

from benchmarks.common import Report
from benchmarks.training import (
    SCHEMES,
    STIEFEL_WIDTH_2,
    compare_schemes,
    comparison_figure,
    describe,
    mse_loss,
    summary_rows,
)
from lightning_lyapunov.examples.data import PolynomialRegression
from lightning_lyapunov.examples.models import DeepMLP

WIDTH, DEPTH, SLOPE = 2, 40, 0.1
LRS = (3e-4, 1e-3, 3e-3, 1e-2)
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 128
PROBE_SIZE = 256
EVAL_EVERY = 100


def run(quick: bool = False) -> Report:
    torch.set_num_threads(1)
    seeds = tuple(range(3 if quick else 20))
    steps = 600 if quick else 3000
    data = PolynomialRegression(in_features=1, degree=5, seed=0)
    splits = data.build()
    x, y = splits["train"]
    baseline = float((splits["test"][1] - y.mean()).pow(2).mean())  # the best constant predictor's test MSE
    threshold = baseline / 10
    comparison = compare_schemes(
        lambda: DeepMLP(1, 1, width=WIDTH, depth=DEPTH, negative_slope=SLOPE),
        x[:PROBE_SIZE], mse_loss, (x, y), {"val": splits["val"], "test": splits["test"]},
        seeds=seeds, lrs=LRS, steps=steps, batch_size=BATCH_SIZE, weight_decay=WEIGHT_DECAY,
        negative_slope=SLOPE, eval_every=EVAL_EVERY,
    )
    rows = summary_rows(comparison, "test", lambda final: final < threshold)
    figure = comparison_figure(
        comparison, "test", "test MSE",
        f"width {WIDTH}, depth {DEPTH}, degree-5 polynomial: median test MSE, IQR band ({len(seeds)} seeds)",
        reference=threshold, reference_label="trained threshold (constant predictor / 10)",
    )
    setup = f"""
Task: `PolynomialRegression(in_features=1, degree=5, seed=0)`: y = p(x), p a fixed random degree-5
polynomial (coefficients N(0, 1)), x uniform on [-1, 1]; {len(x)} train / {len(splits['val'][0])} val /
{len(splits['test'][0])} test points, no label noise. Model: `DeepMLP(1, 1, width={WIDTH}, depth={DEPTH})`
(41 Linear layers, Leaky ReLU slope {SLOPE}, biases start at 0), MSE loss.

Schemes (all through the package: `apply_init`, or `sample_lyapunov_` for the sampled ones): He, Glorot,
orthogonal (gain sqrt(2/(1+a^2))), Lyapunov Gaussian / orthogonal (exponent 0), their sampled versions:
network-level (`sample_lyapunov_`, best of K = ceil(2 sqrt(41)) = 13 whole networks) and layer-wise
(`layerwise=True`), both scored on a probe of the first {PROBE_SIZE} training inputs; fractional moment
s = 1 (Gaussian) and Stiefel. Seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} per scheme; seed k draws the
init from `torch.Generator().manual_seed(k)` and fixes the minibatch order, shared by all schemes).

Training: Adam (betas 0.9/0.999, L2 weight decay {WEIGHT_DECAY:g} added to the gradient, as
`torch.optim.Adam`), {steps} steps of minibatches of {BATCH_SIZE} drawn with replacement
({steps * BATCH_SIZE / len(x):.0f} epochs), no schedule; all {len(LRS) * len(SCHEMES) * len(seeds)} runs trained
at once by `benchmarks/training.py` (batched matmuls over runs, one thread). Learning rate per scheme
from the grid {{{', '.join(f'{lr:g}' for lr in LRS)}}}: the one with the lowest median (over seeds)
final validation MSE; the table reports the test MSE at that rate after the last step.

"Trained": final test MSE below {threshold:.4g} = 1/10 of the best constant predictor's test MSE
({baseline:.4g}). "init log-gain": mean over the probe of log r(output) - log r(input),
r(v) = ||v|| / sqrt(dim), measured on the initialized network (0 = signal size preserved).
Timing: init {comparison.init_seconds:.0f} s, training {comparison.train_seconds:.0f} s.
"""
    findings = describe(rows, "test MSE") + "\n\nNotes:\n\n" + "\n".join(f"- {note}" for note in (
        "Baselines whose initial log-gain is far below 0 (He, Glorot, orthogonal, fractional s = 1 at "
        "width 2) start with an output that hardly depends on the input; their runs that do not train stay "
        "at the constant predictor's loss (about 1) at every learning rate of the grid.",
        "Why sampling can hurt here: with one input and zero biases the network is positively homogeneous, "
        "f(x) = c+ x for x > 0 and c- |x| for x < 0, so the sampling score |mean log-gain| only constrains "
        "log|c+| + log|c-|. The kept draw can have one huge and one tiny slope: see the column "
        "\"init test median\" (the median test MSE at initialization) of the sampled rows.",
        STIEFEL_WIDTH_2,
    ))
    return Report("deep_narrow_regression", "Deep narrow regression: width 2, depth 40, degree-5 polynomial",
                  setup, rows, findings, figure)


if __name__ == "__main__":
    import sys

    from benchmarks.__main__ import main

    main(["deep_narrow_regression", *sys.argv[1:]])
