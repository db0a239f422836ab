"""``vev_kurtosis``: the VEV paper's Fig. 1 (Grzejdziak-Zdziarski, Tax & Loog): the kurtosis of a
network's output at initialization against its test accuracy after 500 Adam steps at learning rate
1e-4, for He-scaled Bernoulli, uniform and normal weights, ReLU MLPs of widths and depths 5-50, on MNIST
and CIFAR-10 (JPEG q75 copy).

All nets of one (data set, width, depth) are trained together by the benchmark engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from benchmarks._lib import stats
from benchmarks._lib.data import CIFAR_NOTE, cifar10, mnist
from benchmarks._lib.engine import Adam
from benchmarks._lib.package import DeepMLP
from benchmarks._lib.protocol import classify
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import init_modules

TITLE = "VEV paper Fig. 1: output kurtosis at init vs accuracy after 500 Adam steps (MNIST, CIFAR-10)"
LR, BATCH, KURTOSIS_INPUTS = 1e-4, 64, 5000


@dataclass(frozen=True)
class WeightLaw:
    """He-scaled i.i.d. weights (variance 2 / fan_in) of one law, biases 0, on every Linear layer:
    ``"normal"`` N(0, 2/n), ``"uniform"`` U(-sqrt(6/n), sqrt(6/n)), ``"bernoulli"`` +-sqrt(2/n) with
    probability 1/2 each. Drawn from ``torch.Generator().manual_seed(seed)``."""

    label: str
    lyapunov: bool = False

    def apply(self, model: nn.Module, seed: int, probe: Tensor | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
                std = math.sqrt(2.0 / layer.in_features)
                w = layer.weight
                if self.label == "normal":
                    w.normal_(0.0, std, generator=generator)
                elif self.label == "uniform":
                    w.uniform_(-math.sqrt(3) * std, math.sqrt(3) * std, generator=generator)
                elif self.label == "bernoulli":
                    w.copy_((torch.randint(0, 2, w.shape, generator=generator) * 2 - 1).to(w.dtype) * std)
                else:
                    raise ValueError(f"unknown weight law {self.label!r}: use 'normal', 'uniform' or 'bernoulli'")
                if layer.bias is not None:
                    layer.bias.zero_()


LAWS = (WeightLaw("bernoulli"), WeightLaw("uniform"), WeightLaw("normal"))


@dataclass(frozen=True)
class Size:
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    seeds: int  # nets per (law, width, depth)
    steps: int
    n_train: int | None
    n_test: int | None
    datasets: tuple[str, ...] = ("mnist", "cifar10")


SIZES = Sizes(quick=Size(widths=(5,), depths=(5, 10), seeds=2, steps=5, n_train=256, n_test=128),
              full=Size(widths=(5, 10, 20, 50), depths=(5, 10, 20, 50), seeds=5, steps=500, n_train=32000,
                        n_test=None))


def output_kurtosis(model: nn.Module, x: Tensor) -> float:
    """Kurtosis ``E (z - mean)^4 / var^2`` of output unit 0 over the inputs ``x`` (NaN when constant)."""
    with torch.no_grad():
        z = model(x)[:, 0].double()
    c = z - z.mean()
    var = c.pow(2).mean()
    return float(c.pow(4).mean() / var**2) if var > 0 else math.nan


def _dataset(name: str, size: Size) -> dict:
    if name == "mnist":
        return mnist(n_train=size.n_train, n_test=size.n_test, seed=0)
    return cifar10(n_train=size.n_train, n_test=size.n_test, seed=0)


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    runs, cpu = [], {}
    for name in size.datasets:
        data = _dataset(name, size)
        features = int(np.prod(data["train"][0].shape[1:]))
        probe = data["train"][0][:KURTOSIS_INPUTS]
        cpu[name] = 0.0
        for width in size.widths:
            for depth in size.depths:
                def build(width=width, depth=depth):
                    return DeepMLP(features, 10, width, depth, activation="relu")

                kurt = {law.label: [output_kurtosis(m, probe) for m in init_modules(build, law, seeds)] for law in LAWS}
                grid = classify(build, LAWS, seeds, data, evals=(), optimizer=Adam, lrs=(LR,), steps=size.steps,
                                batch_size=BATCH, final_evals=("test",))
                cpu[name] += grid.init_seconds + grid.train_seconds
                acc = grid.final("test_acc")
                for law in LAWS:
                    for k, seed in enumerate(seeds):
                        runs.append({"data": name, "scheme": law.label, "width": width, "depth": depth, "seed": seed,
                                     "output kurtosis at init": kurt[law.label][k],
                                     "test acc": float(acc[law.label][k])})
    return _report(size, runs, cpu)


def _report(size: Size, runs: list[dict], cpu: dict[str, float]) -> Report:
    rows, findings = [], []
    for name in size.datasets:
        sub = [r for r in runs if r["data"] == name]
        for width in size.widths:
            for depth in size.depths:
                for law in LAWS:
                    cell = [r for r in sub if (r["width"], r["depth"], r["scheme"]) == (width, depth, law.label)]
                    kurt = [r["output kurtosis at init"] for r in cell]
                    rows.append({"data": name, "width": width, "depth": depth, "law": law.label,
                                 "constant output at init": sum(math.isnan(v) for v in kurt),
                                 "output kurtosis median [IQR]": stats.cell(kurt),
                                 "test acc (%) median [IQR]": stats.percent([r["test acc"] for r in cell])})
        k = np.log10(np.array([r["output kurtosis at init"] for r in sub]))
        a = np.array([r["test acc"] for r in sub])
        dead = {law.label: sum(math.isnan(r["output kurtosis at init"]) for r in sub if r["scheme"] == law.label)
                for law in LAWS}
        findings.append(stats.correlation_sentence(k, a, f"{name}, all {len(sub)} nets, log output kurtosis at init vs "
                                                         "test accuracy") + "; nets with a constant output at init "
                        "(no kurtosis, left out): " + ", ".join(f"{law} {n}" for law, n in dead.items()) + ".")
        for law in LAWS:
            idx = [i for i, r in enumerate(sub) if r["scheme"] == law.label]
            findings.append(stats.correlation_sentence(k[idx], a[idx], f"{name}, {law.label} weights") + ".")
        # within one architecture: does the kurtosis still predict the accuracy once depth and width are fixed?
        ranks_k, ranks_a = [], []
        for width in size.widths:
            for depth in size.depths:
                idx = [i for i, r in enumerate(sub) if (r["width"], r["depth"]) == (width, depth)]
                ranks_k += list(_centred_ranks(k[idx]))
                ranks_a += list(_centred_ranks(a[idx]))
        findings.append(stats.correlation_sentence(ranks_k, ranks_a, f"{name}, within architecture (ranks centred per "
                                                   "width and depth, so depth and width are held fixed)") + ".")
        by_law = {law.label: np.array([r["test acc"] for r in sub if r["scheme"] == law.label]) for law in LAWS}
        findings.append(f"{name}, median test accuracy over all architectures [IQR]: "
                        + stats.ranking(by_law, True, "percent") + ".")
    findings.append("Paper (VEV, Fig. 1): nets with a large output kurtosis at init reach a lower accuracy after "
                    "500 Adam steps at lr 1e-4, for all three weight laws.")
    summary = [f for f in findings if f.split(", ")[1].startswith(("all ", "within architecture"))]
    fig = _figure(size, runs)
    n_nets = len(LAWS) * len(size.widths) * len(size.depths) * size.seeds
    setup = f"""
The VEV paper's Fig. 1 protocol: `DeepMLP(d, 10, width, depth, activation="relu")` (depth hidden layers +
a Linear head) for every width in {list(size.widths)} and depth in {list(size.depths)}; weights i.i.d. with the He
variance 2 / fan_in on every Linear layer, from three laws (Bernoulli +-sqrt(2/n), uniform
U(-sqrt(6/n), sqrt(6/n)), normal N(0, 2/n)), biases 0; {size.seeds} nets (seeds 0..{size.seeds - 1}) per law
and architecture, {n_nets} nets per data set. "Output kurtosis at init": E (z - mean)^4 / var^2 of output unit 0
(logit 0) over the first {KURTOSIS_INPUTS} training inputs (fewer in quick runs); a net whose output is constant
on those inputs (every unit of some layer dead) has none: the table counts those nets and ranks them as
"inf" in its medians, the correlations leave them out. Training: Adam, learning
rate {LR:g}, {size.steps} steps of batch {BATCH} (our choice; the paper's batch size was not stated in the
issue), per-epoch shuffles shared by all nets; test accuracy on {'all' if size.n_test is None else size.n_test}
test images. Data: MNIST and {CIFAR_NOTE} (flattened, standardized), the training sets reduced to a random
{size.n_train} images ({size.steps} x {BATCH} = {size.steps * BATCH} draws: about one pass).

Correlations: Spearman's rho with a 95% percentile bootstrap interval over nets (`stats.rank_correlation`).
CPU time (init + training): {'; '.join(f'{k} {v:.0f} s' for k, v in cpu.items())}.
"""
    return Report("vev_kurtosis", TITLE, setup, rows, findings, fig, runs=runs, summary=summary)


def _centred_ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    out = np.full(len(values), np.nan)
    keep = ~np.isnan(values)
    if keep.any():
        r = rankdata(values[keep])
        out[keep] = (r - r.mean()) / keep.sum()
    return out


def _figure(size: Size, runs: list[dict]):
    fig, axes = plt.subplots(1, len(size.datasets), figsize=(6.2 * len(size.datasets), 4.6), squeeze=False)
    markers = {"bernoulli": "s", "uniform": "^", "normal": "o"}
    for ax, name in zip(axes[0], size.datasets):
        for j, law in enumerate(LAWS):
            sub = [r for r in runs if r["data"] == name and r["scheme"] == law.label]
            ax.scatter([r["output kurtosis at init"] for r in sub], [100 * r["test acc"] for r in sub], s=14,
                       marker=markers[law.label], color=f"C{j}", alpha=0.6, label=law.label)
        ax.set(xscale="log", xlabel="output kurtosis at init (unit 0)", ylabel="test accuracy (%)",
               title=f"{name}: after {size.steps} Adam steps, lr {LR:g}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
