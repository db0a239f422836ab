"""``deep_narrow_regression``: the Lyapunov paper's task, width 2, depth 40, a degree-5 polynomial.

Every scheme of ``schemes.DEEP_NARROW`` initializes ``DeepMLP(1, 1, width=2, depth=40)`` (Leaky ReLU
0.1) through the package; all (learning rate, scheme, seed) runs are trained together with Adam
(:func:`benchmarks._lib.protocol.train_grid`), each scheme's learning rate chosen on validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks._lib.engine import Adam, Draws, mse
from benchmarks._lib.package import DeepMLP, PolynomialRegression
from benchmarks._lib.protocol import Grid, grid_figure, grid_findings, grid_rows, train_grid
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import DEEP_NARROW

WIDTH, DEPTH, SLOPE = 2, 40, 0.1
TITLE = f"Deep narrow regression: width {WIDTH}, depth {DEPTH}, degree-5 polynomial"
WEIGHT_DECAY, BATCH_SIZE, PROBE_SIZE = 1e-4, 128, 256

STIEFEL_WIDTH_2 = (
    "Stiefel at width 2 is degenerate: a 2x2 orthogonal matrix whose rows and columns sum to 1 is the "
    "identity or the coordinate swap, so every hidden layer only permutes the two units (every seed draws "
    "essentially the same network) and a unit that is negative after the first layer is multiplied by "
    "0.1 at every layer; its measured log-gain is -inf when a probe point's output underflows to 0."
)


@dataclass(frozen=True)
class Size:
    seeds: int
    steps: int
    lrs: tuple[float, ...]
    eval_every: int


SIZES = Sizes(quick=Size(seeds=2, steps=60, lrs=(1e-3, 1e-2), eval_every=20),
              full=Size(seeds=20, steps=3000, lrs=(3e-4, 1e-3, 3e-3, 1e-2), eval_every=100))


def train(size: Size, build, objective, data, evals, probe, schemes: Sequence = DEEP_NARROW,
          record: Sequence[int] | None = None) -> tuple[Grid, list[int]]:
    """The deep narrow protocol (``score_learning`` and ``sampled_steps`` share it): every (lr, scheme,
    seed) run with Adam on minibatches drawn with replacement, one stream per seed; each scheme's learning
    rate by the median final ``evals["val"]`` over seeds. ``record``: the steps of the curves (default
    every ``size.eval_every``)."""
    grid = train_grid(build, schemes, tuple(range(size.seeds)), objective, data, evals,
                      optimizer=lambda lr: Adam(lr, weight_decay=WEIGHT_DECAY), lrs=size.lrs, steps=size.steps,
                      order=lambda streams: Draws(BATCH_SIZE, seed=0, streams=streams),
                      record=range(0, size.steps + 1, size.eval_every) if record is None else record,
                      probe=probe, measure_gain=True, nonfinite="skip")
    return grid, grid.select("val", higher_is_better=False)


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    splits = PolynomialRegression(in_features=1, degree=5, seed=0).build()
    x, y = splits["train"]
    baseline = float((splits["test"][1] - y.mean()).pow(2).mean())  # the best constant predictor's test MSE
    threshold = baseline / 10
    grid, chosen = train(size, lambda: DeepMLP(1, 1, width=WIDTH, depth=DEPTH, negative_slope=SLOPE), mse, (x, y),
                         {"val": (splits["val"], mse), "test": (splits["test"], mse)}, x[:PROBE_SIZE])

    def trained(final):
        return final < threshold

    rows = grid_rows(grid, chosen, "test", trained)
    figure = grid_figure(grid, chosen, "test", "test MSE",
                         f"width {WIDTH}, depth {DEPTH}, degree-5 polynomial: median test MSE, IQR band "
                         f"({len(seeds)} seeds)", reference=threshold,
                         reference_label="trained threshold (constant predictor / 10)")
    lrs = ", ".join(f"{lr:g}" for lr in size.lrs)
    setup = f"""
Task: `PolynomialRegression(in_features=1, degree=5, seed=0)`: y = p(x), p a fixed random degree-5
polynomial (coefficients N(0, 1)), x uniform on [-1, 1]; {len(x)} train / {len(splits['val'][0])} val /
{len(splits['test'][0])} test points, no label noise. Model: `DeepMLP(1, 1, width={WIDTH}, depth={DEPTH})`
({DEPTH + 1} Linear layers, Leaky ReLU slope {SLOPE}, biases start at 0), MSE loss.

Schemes (through the package: `apply_init`, or `sample_lyapunov_` for the sampled ones): he, glorot,
orthogonal (gain sqrt(2/(1+a^2))), lyapunov-gauss / lyapunov-orth (exponent 0), their sampled versions:
network-level (`sample_lyapunov_`, best of K = ceil(2 sqrt({DEPTH + 1})) whole networks) and layer-wise
(`layerwise=True`), both scored on a probe of the first {PROBE_SIZE} training inputs; fractional moment
s = 1 (Gaussian) and stiefel. Seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} per scheme; seed k draws the
init from `torch.Generator().manual_seed(k)` and fixes the minibatch stream, shared by all schemes: the
comparisons are paired by seed).

Training: Adam (betas 0.9/0.999, L2 weight decay {WEIGHT_DECAY:g} added to the gradient, as
`torch.optim.Adam`), {size.steps} steps of minibatches of {BATCH_SIZE} drawn with replacement
({size.steps * BATCH_SIZE / len(x):.0f} epochs), no schedule; all {len(size.lrs) * len(DEEP_NARROW) * len(seeds)}
runs trained at once by the benchmark engine (`benchmarks/_lib/engine.py`, {grid.path} path, one thread).
A run whose loss is not finite gets zero gradient for that step. Learning rate per scheme from the grid
{{{lrs}}}: the one with the lowest median (over seeds) final validation MSE; the table reports the test
MSE at that rate after the last step.

"Trained": final test MSE below {threshold:.4g} = 1/10 of the best constant predictor's test MSE
({baseline:.4g}). "init log-gain": mean over the probe of log r(output) - log r(input),
r(v) = ||v|| / sqrt(dim), measured on the initialized network (0 = signal size preserved).
CPU time: init {grid.init_seconds:.0f} s, training {grid.train_seconds:.0f} s.
"""
    findings = grid_findings(grid, chosen, "test", trained, "test MSE")
    findings += [
        "Why sampling can move the result here: with one input and zero biases the network is positively "
        "homogeneous, f(x) = c+ x for x > 0 and c- |x| for x < 0, so the sampling score |mean log-gain| only "
        "constrains log|c+| + log|c-|; compare the column \"init test median\" of the sampled rows.",
        STIEFEL_WIDTH_2,
    ]
    return Report("deep_narrow_regression", TITLE, setup, rows, findings, figure,
                  runs=grid.run_rows(chosen), summary=findings[1:4])
