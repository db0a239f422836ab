"""Score learning: denoising score matching of a 3-component 2-D Gaussian mixture, width 2, depth 30.

Same protocol as ``deep_narrow_regression`` (:func:`benchmarks.training.compare_schemes`): every scheme
initializes ``DeepMLP(2, 2, width=2, depth=30)`` (Leaky ReLU 0.1) through the package, all (learning
rate, scheme, seed) runs are trained together with Adam on the denoising score matching loss of
``lightning_lyapunov.examples.models.denoising_score_matching_loss`` (per run), and each scheme's learning
rate is chosen on the validation loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmarks.common import Report
from benchmarks.training import SCHEMES, STIEFEL_WIDTH_2, compare_schemes, comparison_figure, describe, summary_rows
from lightning_lyapunov.examples.data import GaussianMixtureScore
from lightning_lyapunov.examples.models import DeepMLP

WIDTH, DEPTH, SLOPE = 2, 30, 0.1
SIGMA = 0.5
LRS = (3e-4, 1e-3, 3e-3, 1e-2)
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 128
PROBE_SIZE = 256
EVAL_EVERY = 100
TRAINED = 0.9  # relative score error below which a run counts as trained (>= 10% of the score explained)


def dsm_loss(model: nn.Module, batch: tuple[Tensor, ...], generator: torch.Generator | None) -> Tensor:
    """Per-run denoising score matching loss ``mean_b || s(x_b + sigma eps_b) + eps_b / sigma ||^2``
    (``models.denoising_score_matching_loss`` with one value per run), shape ``(R,)``.

    ``batch``: ``(x,)`` (fresh noise from ``generator``; independent per run when x is ``(R, B, 2)``)
    or ``(x, eps)`` (fixed noise).
    """
    x = batch[0]
    eps = batch[1] if len(batch) > 1 else torch.randn(x.shape, generator=generator)
    return (model(x + SIGMA * eps) + eps / SIGMA).pow(2).sum(-1).mean(-1)


def relative_score_error(model: nn.Module, batch: tuple[Tensor, ...], generator: torch.Generator | None) -> Tensor:
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


def run(quick: bool = False) -> Report:
    torch.set_num_threads(1)
    seeds = tuple(range(3 if quick else 20))
    steps = 600 if quick else 3000
    data, x, fixed, noisy_test, probe = noisy_data(PROBE_SIZE)
    comparison = compare_schemes(
        lambda: DeepMLP(2, 2, width=WIDTH, depth=DEPTH, negative_slope=SLOPE),
        probe, dsm_loss, (x,),
        {**fixed, "score": (noisy_test, data.score(noisy_test, sigma=SIGMA))},
        seeds=seeds, lrs=LRS, steps=steps, batch_size=BATCH_SIZE, weight_decay=WEIGHT_DECAY,
        negative_slope=SLOPE, eval_every=EVAL_EVERY, eval_fns={"score": relative_score_error},
    )
    rows = summary_rows(comparison, "score", lambda final: final < TRAINED)
    dsm = comparison.at_chosen("test")[-1]
    for row, values in zip(rows, dsm):
        row["test DSM median"] = float(torch.tensor(values).median())
    figure = comparison_figure(
        comparison, "score", "relative score error",
        f"width {WIDTH}, depth {DEPTH}, 3-Gaussian mixture (sigma {SIGMA}): median test score error, IQR band "
        f"({len(seeds)} seeds)",
        reference=TRAINED, reference_label=f"trained threshold ({TRAINED:g})", limits=(0.4, 2.0),
    )
    setup = f"""
Task: `GaussianMixtureScore(seed=0)`: 2-D mixture of 3 equal-weight Gaussians (means on a circle of
radius 2, random covariances); {len(x)} train / {len(fixed['val'][0])} val / {len(fixed['test'][0])} test points.
Denoising score matching at one noise level sigma = {SIGMA}: loss = mean_b ||s(x_b + sigma eps_b) + eps_b / sigma||^2
(`models.denoising_score_matching_loss`, computed per run); fresh noise every training step, fixed noise
on validation and test. Model: `DeepMLP(2, 2, width={WIDTH}, depth={DEPTH})` (31 Linear layers, Leaky ReLU
slope {SLOPE}, biases start at 0).

Test metric: relative score error mean_b ||s(x~_b) - s*(x~_b)||^2 / mean_b ||s*(x~_b)||^2 on the noisy
test points x~ = x + sigma eps, with s* the exact score of the noised mixture (`GaussianMixtureScore.score`);
the zero predictor scores 1. The DSM loss itself (column "test DSM median") has an irreducible floor, so
it is used only to choose the learning rate (on validation, as a practitioner would, without s*).
"Trained": final relative score error below {TRAINED:g}.

Schemes, seeds and protocol as in `deep_narrow_regression`: He, Glorot, orthogonal, Lyapunov Gaussian /
orthogonal, network-level and layer-wise sampled Lyapunov (K = ceil(2 sqrt(31)) = 12 candidates, probe:
the first {PROBE_SIZE} noisy training inputs), fractional s = 1 (Gaussian), Stiefel; seeds
{seeds[0]}..{seeds[-1]} ({len(seeds)} per scheme). Adam (L2 weight decay {WEIGHT_DECAY:g}), {steps} steps of
minibatches of {BATCH_SIZE} ({steps * BATCH_SIZE / len(x):.0f} epochs), learning rate per scheme from
{{{', '.join(f'{lr:g}' for lr in LRS)}}} by the median final validation DSM loss over seeds; all
{len(LRS) * len(SCHEMES) * len(seeds)} runs trained at once (`benchmarks/training.py`).
"init log-gain": mean over the probe of log r(output) - log r(input), r(v) = ||v|| / sqrt(dim).
The figure's loss axis is cut at [0.4, 2]: larger values (initial errors up to ~1e7, a few diverged
seeds) are drawn at its edge; the table has the unclipped numbers.
Timing: init {comparison.init_seconds:.0f} s, training {comparison.train_seconds:.0f} s.
"""
    findings = describe(rows, "relative score error") + "\n\nNotes:\n\n" + "\n".join(f"- {note}" for note in (
        f"A width-2 network is a weak score model: the best median relative error is "
        f"{min(float(r['test median']) for r in rows):.2f} (1 = the zero predictor). The comparison is about "
        "which initializations leave the network trainable at all.",
        "Schemes whose initial log-gain is far below 0 output almost nothing at initialization; their runs "
        "that do not train stay at relative error 1 (the DSM loss of the zero predictor, d / sigma^2 = 8).",
        STIEFEL_WIDTH_2,
    ))
    return Report("score_learning", "Score learning: 3-Gaussian mixture, width 2, depth 30",
                  setup, rows, findings, figure)


if __name__ == "__main__":
    import sys

    from benchmarks.__main__ import main

    main(["score_learning", *sys.argv[1:]])
