"""``score_learning``: denoising score matching of a 3-component 2-D Gaussian mixture, width 2, depth 30.

Same protocol as ``deep_narrow_regression`` (:func:`benchmarks._lib.protocol.train_grid`): every scheme
initializes ``DeepMLP(2, 2, width=2, depth=30)`` (Leaky ReLU 0.1) through the package, all (learning
rate, scheme, seed) runs are trained together with Adam on the per-run denoising score matching loss,
and each scheme's learning rate is chosen on the validation loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from benchmarks import deep_narrow_regression
from benchmarks._lib.engine import Stack
from benchmarks._lib.package import DeepMLP, GaussianMixtureScore
from benchmarks._lib.protocol import grid_figure, grid_findings, grid_rows
from benchmarks._lib.report import Report
from benchmarks._lib.schemes import DEEP_NARROW
from benchmarks._lib.stats import median
from benchmarks.deep_narrow_regression import BATCH_SIZE, PROBE_SIZE, STIEFEL_WIDTH_2, WEIGHT_DECAY, Size, train

WIDTH, DEPTH, SLOPE = 2, 30, 0.1
TITLE = f"Score learning: 3-Gaussian mixture, width {WIDTH}, depth {DEPTH}"
SIGMA = 0.5
TRAINED = 0.9  # relative score error below which a run counts as trained (>= 10% of the score explained)
SIZES = deep_narrow_regression.SIZES  # the same protocol, the same sizes


def dsm_loss(model: Stack, batch: tuple[Tensor, ...], generator: torch.Generator | None = None) -> Tensor:
    """Per-run denoising score matching loss ``mean_b || s(x_b + sigma eps_b) + eps_b / sigma ||^2``
    (``denoising_score_matching_loss`` with one value per run), shape ``(R,)``.

    ``batch``: ``(x,)`` (fresh noise from ``generator``; independent per run when x is ``(R, B, 2)``)
    or ``(x, eps)`` (fixed noise).
    """
    x = batch[0]
    eps = batch[1] if len(batch) > 1 else torch.randn(x.shape, generator=generator)
    return (model(x + SIGMA * eps) + eps / SIGMA).pow(2).sum(-1).mean(-1)


def relative_score_error(model: Stack, batch: tuple[Tensor, ...]) -> Tensor:
    """``mean_b ||s(x_b) - s*(x_b)||^2 / mean_b ||s*(x_b)||^2`` per run, for ``batch = (x, s*(x))``
    (the zero predictor scores 1)."""
    x, target = batch
    return (model(x) - target).pow(2).sum(-1).mean(-1) / target.pow(2).sum(-1).mean()


def noisy_data(probe_size: int):
    """The task's data: ``(data, x_train, fixed, noisy_test, probe)`` with ``fixed[name] = (x, eps)``
    for "val" and "test" (fixed noise), ``noisy_test = x_test + sigma eps`` and ``probe`` the first
    ``probe_size`` training inputs plus noise (all noise from one generator seeded 12345)."""
    data = GaussianMixtureScore(seed=0)
    splits = data.build()
    (x,) = splits["train"]
    noise = torch.Generator().manual_seed(12345)
    fixed = {name: (splits[name][0], torch.randn(splits[name][0].shape, generator=noise)) for name in ("val", "test")}
    noisy_test = fixed["test"][0] + SIGMA * fixed["test"][1]
    probe = x[:probe_size] + SIGMA * torch.randn(probe_size, 2, generator=noise)
    return data, x, fixed, noisy_test, probe


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    data, x, fixed, noisy_test, probe = noisy_data(PROBE_SIZE)
    grid, chosen = train(size, lambda: DeepMLP(2, 2, width=WIDTH, depth=DEPTH, negative_slope=SLOPE), dsm_loss, (x,),
                         {"val": (fixed["val"], dsm_loss), "test": (fixed["test"], dsm_loss),
                          "score": ((noisy_test, data.score(noisy_test, sigma=SIGMA)), relative_score_error)}, probe)

    def trained(final):
        return final < TRAINED

    rows = grid_rows(grid, chosen, "score", trained)
    for row, values in zip(rows, grid.final("test", chosen).values()):
        row["test DSM median"] = float(median(values))
    figure = grid_figure(grid, chosen, "score", "relative score error",
                         f"width {WIDTH}, depth {DEPTH}, 3-Gaussian mixture (sigma {SIGMA}): median test score "
                         f"error, IQR band ({len(seeds)} seeds)", reference=TRAINED,
                         reference_label=f"trained threshold ({TRAINED:g})", limits=(0.4, 2.0))
    lrs = ", ".join(f"{lr:g}" for lr in size.lrs)
    setup = f"""
Task: `GaussianMixtureScore(seed=0)`: 2-D mixture of 3 equal-weight Gaussians (means on a circle of
radius 2, random covariances); {len(x)} train / {len(fixed['val'][0])} val / {len(fixed['test'][0])} test points.
Denoising score matching at one noise level sigma = {SIGMA}: loss = mean_b ||s(x_b + sigma eps_b) + eps_b / sigma||^2
(`denoising_score_matching_loss`, computed per run); fresh noise every training step, fixed noise on
validation and test. Model: `DeepMLP(2, 2, width={WIDTH}, depth={DEPTH})` ({DEPTH + 1} Linear layers, Leaky
ReLU slope {SLOPE}, biases start at 0).

Test metric: relative score error mean_b ||s(x~_b) - s*(x~_b)||^2 / mean_b ||s*(x~_b)||^2 on the noisy
test points x~ = x + sigma eps, with s* the exact score of the noised mixture (`GaussianMixtureScore.score`);
the zero predictor scores 1. The DSM loss itself (column "test DSM median") has an irreducible floor, so
it is used only to choose the learning rate (on validation, as a practitioner would, without s*).
"Trained": final relative score error below {TRAINED:g}.

Schemes, seeds and protocol as in `deep_narrow_regression` (sampled variants: K = ceil(2 sqrt({DEPTH + 1}))
candidates, probe: the first {PROBE_SIZE} noisy training inputs); seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} per
scheme, paired by seed). Adam (L2 weight decay {WEIGHT_DECAY:g}), {size.steps} steps of minibatches of
{BATCH_SIZE} ({size.steps * BATCH_SIZE / len(x):.0f} epochs), learning rate per scheme from {{{lrs}}} by the
median final validation DSM loss over seeds; all {len(size.lrs) * len(DEEP_NARROW) * len(seeds)} runs trained at
once by the benchmark engine ({grid.path} path). "init log-gain": mean over the probe of log r(output) - log
r(input), r(v) = ||v|| / sqrt(dim). The figure's loss axis is cut at [0.4, 2]: larger values are drawn at
its edge; the table has the unclipped numbers. CPU time: init {grid.init_seconds:.0f} s, training
{grid.train_seconds:.0f} s.
"""
    findings = grid_findings(grid, chosen, "score", trained, "relative score error")
    findings += [
        f"A width-2 network is a weak score model: the best median relative error is "
        f"{min(float(r['score median']) for r in rows):.2f} (1 = the zero predictor). The comparison is about "
        "which initializations leave the network trainable at all.",
        STIEFEL_WIDTH_2,
    ]
    return Report("score_learning", TITLE, setup, rows, findings, figure, runs=grid.run_rows(chosen),
                  summary=findings[1:4])
