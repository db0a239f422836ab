"""Shared pieces of the classification benchmarks (``fractional``, ``stiefel_depth``, ``cifar``).

A plain PyTorch training loop on in-memory tensors (no Trainer: hundreds of short runs must fit in
minutes on a 2-core CPU), the schemes compared, initialization through the project's own
:func:`lightning_lyapunov.apply_init`, the data loaders (MNIST-1D generated locally, MNIST read from
local idx files, never downloaded) and the curve plot with median and interquartile band.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import Scheme, spread
from lightning_lyapunov.examples.data import MNIST1D, MNIST_ENV, MNIST_MEAN, MNIST_STD, read_mnist

Split = tuple[Tensor, Tensor]


HE = Scheme("he", "he")
GLOROT = Scheme("glorot", "glorot")
ORTHOGONAL = Scheme("orthogonal", "orthogonal", "orthogonal")
LYAPUNOV_GAUSS = Scheme("lyapunov-gauss", "lyapunov", "gaussian")
LYAPUNOV_ORTH = Scheme("lyapunov-orth", "lyapunov", "orthogonal")
FRACTIONAL_1 = Scheme("fractional s=1", "fractional", "gaussian", 1.0)
STIEFEL = Scheme("stiefel", "stiefel", "orthogonal")
ZERO = Scheme("zero", "zero", "orthogonal")
ALL_SCHEMES = (HE, GLOROT, ORTHOGONAL, LYAPUNOV_GAUSS, LYAPUNOV_ORTH, FRACTIONAL_1, STIEFEL, ZERO)


def setup_torch() -> None:
    """One torch thread (the suite shares 2 cores with other runs)."""
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------- data


def mnist1d(num_samples: int = 5000, seed: int = 0) -> dict[str, Split]:
    """MNIST-1D generated locally (``lightning_lyapunov.examples.data.MNIST1D``; already standardized to
    mean 0, std 1): ``{"train", "val", "test"}`` (3500 / 500 / 1000 for 5000 samples)."""
    data = MNIST1D(num_samples=num_samples, val_size=num_samples // 10, seed=seed)
    data.setup()
    assert data.splits is not None
    return dict(data.splits)


def mnist_from_env() -> dict[str, Split] | None:
    """MNIST from the idx files in ``$LYAPUNOV_MNIST_DIR`` (None when the variable is unset), read by
    ``lightning_lyapunov.examples.data.read_mnist``, pixels scaled to [0, 1] and standardized with the usual
    mean 0.1307 and std 0.3081, flattened to 784. Nothing is downloaded."""
    if not os.environ.get(MNIST_ENV):
        return None
    return {split: ((x.float().flatten(1) / 255 - MNIST_MEAN) / MNIST_STD, y) for split, (x, y) in read_mnist().items()}


# ------------------------------------------------------------------------------------- training


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, batch_size: int = 1000) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``data`` (eval mode, in chunks)."""
    model.eval()
    x, y = data
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        correct += int((logits.argmax(1) == y[i : i + batch_size]).sum())
        loss += float(F.cross_entropy(logits, y[i : i + batch_size], reduction="sum"))
    model.train()
    return correct / len(x), loss / len(x)


def train_classifier(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Split,
    evals: dict[str, Split],
    *,
    steps: int,
    eval_steps: Sequence[int],
    batch_size: int,
    seed: int,
    final_evals: dict[str, Split] | None = None,
) -> list[dict[str, float]]:
    """Minibatch training with cross-entropy; returns one record per step in ``eval_steps``.

    Batches are consecutive slices of per-epoch random permutations (seeded by ``seed``; an
    incomplete last batch is dropped). Step 0 in ``eval_steps`` evaluates the initialization.
    Each record: ``step``, ``epoch`` (= step / steps per epoch) and ``<split>_acc``,
    ``<split>_loss`` for every split in ``evals`` (accuracy on the whole split); the splits in
    ``final_evals`` are evaluated once, after training, into the last record. A non-finite
    loss stops training; the remaining records repeat the last evaluation (a diverged run).
    """
    x, y = train
    per_epoch = max(1, len(x) // batch_size)
    gen = torch.Generator().manual_seed(seed)
    wanted = sorted(set(eval_steps))
    records: list[dict[str, float]] = []

    def record(step: int) -> None:
        row: dict[str, float] = {"step": step, "epoch": step / per_epoch}
        for name, split in evals.items():
            row[f"{name}_acc"], row[f"{name}_loss"] = evaluate(model, split)
        records.append(row)

    model.train()
    order = torch.randperm(len(x), generator=gen)
    diverged = False
    for step in range(steps + 1):
        if step in wanted:
            record(step)
        if step == steps or diverged:
            break
        slot = step % per_epoch
        if slot == 0 and step > 0:
            order = torch.randperm(len(x), generator=gen)
        idx = order[slot * batch_size : (slot + 1) * batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            diverged = True
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for step in wanted[len(records) :]:  # diverged: carry the last record forward
        records.append({**records[-1], "step": step, "epoch": step / per_epoch})
    for name, split in (final_evals or {}).items():
        records[-1][f"{name}_acc"], records[-1][f"{name}_loss"] = evaluate(model, split)
    return records


def run_seeds(
    build: Callable[[], nn.Module],
    scheme: Scheme,
    seeds: Sequence[int],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    train: Split,
    evals: dict[str, Split],
    **loop: int | Sequence[int] | dict[str, Split],
) -> list[list[dict[str, float]]]:
    """Build, initialize (``scheme`` with the seed) and train one model per seed; the curves."""
    curves = []
    for seed in seeds:
        torch.manual_seed(seed)  # only the default init, which apply_init then overwrites
        model = build()
        scheme.apply(model, seed)
        curves.append(
            train_classifier(model, make_optimizer(model), train, evals, seed=seed, **loop)  # type: ignore[arg-type]
        )
    return curves


def at_init(
    build: Callable[[], nn.Module], measure: Callable[[nn.Module], object], seeds: Sequence[int]
) -> dict[str, list[object]]:
    """Per scheme (label) and seed: build a model, initialize it with the scheme, ``measure(model)``."""
    out: dict[str, list[object]] = {}
    for scheme in ALL_SCHEMES:
        out[scheme.label] = []
        for seed in seeds:
            model = build()
            scheme.apply(model, seed)
            out[scheme.label].append(measure(model))
    return out


def summarize(curves: list[list[dict[str, float]]], key: str, index: int = -1) -> tuple[float, float, float]:
    """(median, q25, q75) over seeds of ``key`` at record ``index``."""
    return spread(curve[index][key] for curve in curves)


def iqr(values: tuple[float, float, float], scale: float = 100.0, digits: int = 1) -> str:
    """``"median [q25, q75]"`` (multiplied by ``scale``: percent by default) for a table cell."""
    med, lo, hi = (v * scale for v in values)
    if math.isnan(med):
        return "nan"
    return f"{med:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def lyapunov_verdict(ranked: Sequence[str], what: str) -> str:
    """A plain sentence on where the Lyapunov schemes (labels starting with "lyapunov") rank in
    ``ranked`` (best first) by ``what``."""
    places = {label: ranked.index(label) + 1 for label in ranked if label.startswith("lyapunov")}
    where = ", ".join(f"{label} {place}" for label, place in places.items())
    if ranked[0] in places:
        return f"Lyapunov init is best by {what} here ({ranked[0]}); places of {len(ranked)}: {where}."
    return (f"**Lyapunov init does not win this benchmark** by {what}: {ranked[0]} is best; the Lyapunov "
            f"schemes place {where} of {len(ranked)}.")


def plot_curves(ax, curves_by_label: dict[str, list[list[dict[str, float]]]], key: str, x: str = "epoch",
                scale: float = 100.0) -> None:
    """Median over seeds of ``key`` against ``x`` with the interquartile band, one line per label."""
    for label, curves in curves_by_label.items():
        xs = [row[x] for row in curves[0]]
        stats = [spread(curve[i][key] * scale for curve in curves) for i in range(len(xs))]
        med, lo, hi = zip(*stats)
        (line,) = ax.plot(xs, med, label=label, lw=1.6)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
    ax.grid(alpha=0.3)
