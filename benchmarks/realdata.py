"""Shared pieces of the real-data benchmarks (MNIST and CIFAR-10, issue 10).

* Data: MNIST from ``$LYAPUNOV_MNIST_DIR`` (default ``../shared/data/mnist`` beside the repository)
  and CIFAR-10 from ``$LYAPUNOV_CIFAR_DIR`` (default ``data/cifar10``), read by
  ``lightning_lyapunov.examples.data``; nothing is downloaded. A missing data set raises a
  ``FileNotFoundError`` that says how to get it (these benchmarks have no synthetic fallback).
* Schemes: every scheme of ``benchmarks.classification.ALL_SCHEMES``, plus LSUV (the ``lsuv``
  package, the data-driven peer) and the project's default init, what ``LyapunovInit()`` does:
  Lyapunov orthogonal, calibrated on a training batch by the callback's default calibration.
* Training many small nets at once: :class:`StackedConvMLP` (an optional shared-input conv layer
  in front of a :class:`benchmarks.training.StackedMLP`) and :func:`fit_stacked` (one
  ``torch.optim`` optimizer over the stacked parameters: SGD and Adam are elementwise, so with the
  summed per-run losses every run trains exactly as if alone). Per-run accuracy curves.

CIFAR results say "CIFAR-10, JPEG q75 copy": the offline copy of the data set on the benchmark
machine is stored as JPEGs (quality 75), so its pixels differ slightly from the original release.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.classification import ALL_SCHEMES
from benchmarks.training import StackedMLP
from lightning_lyapunov import apply_init
from lightning_lyapunov.examples.data import CIFAR10_MEAN, CIFAR10_STD, MNIST_ENV, MNIST_MEAN, MNIST_STD, read_cifar10, read_mnist

Split = tuple[Tensor, Tensor]
CIFAR_ENV = "LYAPUNOV_CIFAR_DIR"
CIFAR_NOTE = "CIFAR-10, JPEG q75 copy"
_REPO = Path(__file__).resolve().parents[1]
_DEFAULT_MNIST = _REPO.parent / "shared" / "data" / "mnist"
_DEFAULT_CIFAR = "data/cifar10"


# ----------------------------------------------------------------------------------------- data


def mnist(n_train: int | None = None, seed: int = 0) -> dict[str, Split]:
    """MNIST ``{"train", "test"}`` as float32 ``(N, 1, 28, 28)`` standardized (mean 0.1307, std 0.3081);
    ``n_train``: a random subset of the 60,000 training images (drawn with ``seed``)."""
    directory = os.environ.get(MNIST_ENV) or (str(_DEFAULT_MNIST) if _DEFAULT_MNIST.is_dir() else None)
    arrays = read_mnist(directory)
    out = {k: ((x.float().unsqueeze(1) / 255 - MNIST_MEAN) / MNIST_STD, y) for k, (x, y) in arrays.items()}
    return _subsample(out, n_train, seed)


def cifar10(n_train: int | None = None, n_test: int | None = None, pool: int = 1, seed: int = 0,
            standardize: str = "cifar") -> dict[str, Split]:
    """CIFAR-10 ``{"train", "test"}`` float32 ``(N, 3, 32 / pool, 32 / pool)`` from ``$LYAPUNOV_CIFAR_DIR``
    (default ``data/cifar10``). ``standardize="cifar"``: the usual channel mean/std constants;
    ``"train"``: the channel mean/std of the (subsampled) training images themselves. ``pool``:
    average pooling ``pool x pool`` (CPU budget). Random subsets of ``n_train`` / ``n_test`` images."""
    arrays = read_cifar10(os.environ.get(CIFAR_ENV, _DEFAULT_CIFAR))
    out = _subsample({k: (x.float() / 255, y) for k, (x, y) in arrays.items()}, n_train, seed, n_test)
    if standardize == "cifar":
        mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    else:
        x = out["train"][0]
        mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    out = {k: ((x - mean) / std, y) for k, (x, y) in out.items()}
    if pool > 1:
        out = {k: (F.avg_pool2d(x, pool), y) for k, (x, y) in out.items()}
    return out


def _subsample(data: dict[str, Split], n_train: int | None, seed: int, n_test: int | None = None) -> dict[str, Split]:
    gen = torch.Generator().manual_seed(seed)
    out = dict(data)
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = data[split]
        if n is not None and n < len(x):
            idx = torch.randperm(len(x), generator=gen)[:n]
            out[split] = (x[idx], y[idx])
    return out


# -------------------------------------------------------------------------------------- schemes


@dataclass(frozen=True)
class LSUV:
    """The LSUV peer (Mishkin & Matas 2016, package ``lsuv``): orthogonal init, then each layer
    rescaled in turn until its output has unit variance on one data batch. Draws from the global
    torch RNG, seeded with the run's seed."""

    label: str = "lsuv"

    def apply(self, model: nn.Module, seed: int, probe: Tensor | None = None) -> None:
        import lsuv

        if probe is None:
            raise ValueError("LSUV needs a data batch: pass probe=<a batch of inputs>.")
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lsuv.lsuv_with_singlebatch(model, probe, verbose=False)


def default_calibration() -> tuple[str, float]:
    """``(calibrate, calibrate_target)`` of ``LyapunovInit()`` (its ``"auto"`` for the Lyapunov scheme)."""
    from lightning_lyapunov import LyapunovInit

    default = LyapunovInit()
    return default.spec.calibration_method, default.spec.calibrate_target


@dataclass(frozen=True)
class Calibrated:
    """The project's default init (``LyapunovInit()``, issue 14): Lyapunov orthogonal draw, then the
    callback's default calibration (:func:`default_calibration`) on a training batch
    (``example_input=probe``)."""

    label: str = "lyapunov-calibrated"

    def apply(self, model: nn.Module, seed: int, probe: Tensor | None = None) -> None:
        if probe is None:
            raise ValueError("the calibrated init needs a data batch: pass probe=<a batch of inputs>.")
        method, target = default_calibration()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            apply_init(model, scheme="lyapunov", distribution="orthogonal", calibrate=method, calibrate_target=target,
                       example_input=probe, generator=torch.Generator().manual_seed(seed))


CALIBRATION_TEXT = {"layers": "each layer's output to root-mean-square 1 in forward order, the last one's to the target",
                    "output": "one factor spread over all layers so that the output's root-mean-square is the target"}


def schemes(include: Sequence[str] | None = None) -> list:
    """Every scheme (``ALL_SCHEMES``), LSUV and the calibrated init; ``include``: only those labels
    (in this order)."""
    out: list = [*ALL_SCHEMES, LSUV(), Calibrated()]
    if include is not None:
        by_label = {s.label: s for s in out}
        out = [by_label[label] for label in include if label in by_label]
    return out


def scheme_note() -> str:
    """A setup sentence on the scheme list."""
    method, target = default_calibration()
    return ("Schemes: " + ", ".join(f"`{s.label}`" for s in ALL_SCHEMES) + " through the project's `apply_init` "
            "(`lyapunov-*`: moment 0, Gaussian / Haar orthogonal; `stiefel` is our reconstruction), "
            "`lsuv` (package `lsuv` 0.3.0: orthogonal, then layer-wise rescaling to unit output variance on one "
            "training batch) as the data-driven peer, and `lyapunov-calibrated`: the project's default init "
            f"(`LyapunovInit()`): Lyapunov orthogonal, then `calibrate=\"{method}\"` with "
            f"`calibrate_target={target:g}` on the first 256 training inputs (" + CALIBRATION_TEXT[method] + ").")


def init_modules(build: Callable[[], nn.Module], scheme, seeds: Sequence[int], probe: Tensor) -> list[nn.Module]:
    """One freshly built module per seed, initialized by ``scheme`` (``probe``: a data batch for LSUV
    and data-calibrated/sampled schemes)."""
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build()
        scheme.apply(model, seed, probe)
        out.append(model)
    return out


# ----------------------------------------------------------------------------- stacked training


class StackedConvMLP(nn.Module):
    """``R`` nets ``x -> MLP(flatten(relu(conv(x))))`` (or just the MLP when ``conv`` is None) trained
    together: the first conv of every run is one conv with ``R * C`` output channels on the shared
    input; the rest is a :class:`StackedMLP`. Output ``(R, B, classes)``."""

    def __init__(self, mlp: StackedMLP, conv: tuple[Tensor, Tensor, int, int] | None = None) -> None:
        super().__init__()
        self.mlp = mlp
        self.conv_weight = self.conv_bias = None
        if conv is not None:
            weight, bias, self.stride, self.padding = conv
            self.conv_weight = nn.Parameter(weight.detach().clone())  # (R, C, c_in, k, k)
            self.conv_bias = nn.Parameter(bias.detach().clone())  # (R, C)

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module], negative_slope: float = 0.0) -> StackedConvMLP:
        """Stack ``R`` modules of the same shape: an optional leading ``nn.Conv2d`` (then activation,
        flatten) followed by a chain of Linear layers."""
        convs = [[m for m in module.modules() if isinstance(m, nn.Conv2d)] for module in modules]
        conv = None
        if convs[0]:
            if len(convs[0]) != 1:
                raise ValueError("StackedConvMLP stacks at most one conv layer per net")
            first = convs[0][0]
            conv = (torch.stack([c[0].weight.detach() for c in convs]),
                    torch.stack([c[0].bias.detach() for c in convs]), first.stride[0], first.padding[0])
        return cls(StackedMLP.from_modules(modules, negative_slope), conv)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv_weight is None:
            return self.mlp(x.flatten(1))
        runs, channels = self.conv_weight.shape[:2]
        h = F.conv2d(x, self.conv_weight.flatten(0, 1), self.conv_bias.flatten(), self.stride, self.padding)
        slope = self.mlp.negative_slope
        h = F.relu(h) if slope == 0 else F.leaky_relu(h, slope)
        h = h.view(len(x), runs, -1).transpose(0, 1)  # (R, B, C * H * W)
        return self.mlp(h)


@torch.no_grad()
def accuracy(model: nn.Module, data: Split, chunk: int = 1000) -> np.ndarray:
    """Per-run accuracy ``(R,)`` of a stacked model on ``data`` (in chunks)."""
    x, y = data
    correct = None
    for i in range(0, len(x), chunk):
        hits = (model(x[i:i + chunk]).argmax(-1) == y[i:i + chunk]).sum(-1).double()
        correct = hits if correct is None else correct + hits
    return (correct / len(x)).numpy()


@dataclass
class Curves:
    """Per-run accuracy curves: ``steps``; ``acc[name]``: array ``(len(steps), R)``; ``seconds``."""

    steps: np.ndarray
    acc: dict[str, np.ndarray]
    seconds: float


def fit_stacked(model: nn.Module, optimizer: torch.optim.Optimizer, train: Split, evals: dict[str, Split], *,
                steps: int, batch_size: int, eval_steps: Sequence[int], seed: int = 0) -> Curves:
    """Minibatch training of the stacked runs with the summed per-run cross-entropy; every run sees the
    same batches (consecutive slices of per-epoch permutations drawn from ``seed``). A run whose loss
    turns non-finite gets zero gradient from then on (its accuracy stays whatever it is). Records the
    accuracy on every set in ``evals`` at the steps in ``eval_steps`` (0 = at initialization)."""
    x, y = train
    per_epoch = max(1, len(x) // batch_size)
    gen = torch.Generator().manual_seed(seed)
    wanted = set(eval_steps)
    recorded, acc = [], {name: [] for name in evals}
    start = time.perf_counter()
    order = torch.randperm(len(x), generator=gen)
    for step in range(steps + 1):
        if step in wanted or step == steps:
            model.eval()
            for name, split in evals.items():
                acc[name].append(accuracy(model, split))
            recorded.append(step)
            model.train()
        if step == steps:
            break
        slot = step % per_epoch
        if slot == 0 and step > 0:
            order = torch.randperm(len(x), generator=gen)
        idx = order[slot * batch_size:(slot + 1) * batch_size]
        logits = model(x[idx])  # (R, B, classes)
        runs = logits.shape[0]
        loss = F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(runs), reduction="none").view(runs, -1).mean(1)
        optimizer.zero_grad(set_to_none=True)
        loss.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).sum().backward()
        for p in model.parameters():
            if p.grad is not None:
                p.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        optimizer.step()
    return Curves(np.array(recorded), {k: np.stack(v) for k, v in acc.items()}, time.perf_counter() - start)


def best_first(accuracies: dict[str, float]) -> str:
    """``"label 91.2%; label 88.0%; ..."``: median accuracies (fractions), best first, for a findings line."""
    ranked = sorted(accuracies, key=accuracies.get, reverse=True)
    return "; ".join(f"{k} {100 * accuracies[k]:.1f}%" for k in ranked)


def med_iqr(values: np.ndarray | Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"median [q25, q75]"`` of ``values`` times ``scale`` (percent by default)."""
    v = np.asarray(values, dtype=float) * scale
    q = np.quantile(v, [0.5, 0.25, 0.75])
    return f"{q[0]:.{digits}f} [{q[1]:.{digits}f}, {q[2]:.{digits}f}]"


@dataclass
class SchemeRuns:
    """Outcome of :func:`train_schemes`: ``acc[label][name]`` is ``(len(steps), seeds)``;
    ``non_finite[label]``: how many of its nets the init left with inf/NaN weights."""

    steps: np.ndarray
    acc: dict[str, dict[str, np.ndarray]]
    init_seconds: float
    seconds: float
    non_finite: dict[str, int]


def train_schemes(build: Callable[[], nn.Module], scheme_list: Sequence, seeds: Sequence[int], train: Split,
                  evals: dict[str, Split], optimizer: Callable[[nn.Module], torch.optim.Optimizer], *, steps: int,
                  batch_size: int, eval_steps: Sequence[int], negative_slope: float = 0.0) -> SchemeRuns:
    """Build and initialize one net per (scheme, seed) (probe: the first 256 training inputs), stack them
    all (:class:`StackedConvMLP`) and train them together with ``optimizer(stacked)``; per-scheme curves."""
    probe = train[0][:256]
    labels, modules, non_finite = [], [], {}
    start = time.perf_counter()
    for scheme in scheme_list:
        new = init_modules(build, scheme, seeds, probe)
        non_finite[scheme.label] = sum(not all(bool(p.isfinite().all()) for p in m.parameters()) for m in new)
        modules += new
        labels += [scheme.label] * len(seeds)
    init_seconds = time.perf_counter() - start
    model = StackedConvMLP.from_modules(modules, negative_slope)
    curves = fit_stacked(model, optimizer(model), train, evals, steps=steps, batch_size=batch_size,
                         eval_steps=eval_steps)
    acc = {}
    for label in dict.fromkeys(labels):
        cols = [i for i, lab in enumerate(labels) if lab == label]
        acc[label] = {k: v[:, cols] for k, v in curves.acc.items()}
    return SchemeRuns(curves.steps, acc, init_seconds, curves.seconds, non_finite)


def non_finite_note(runs: dict) -> str:
    """A findings line for ``{setting: SchemeRuns}``: which inits left nets with inf/NaN weights (``""``:
    none). ``lsuv`` 0.3.0 does when a layer's output is all zero on the batch: its further correction
    steps go to the first layer (see ``cifar_variance``)."""
    hits = [f"{label} at {setting}: {count}" for setting, r in runs.items() for label, count in r.non_finite.items()
            if count]
    if not hits:
        return ""
    return ("- Nets left with inf/NaN weights by their init (they predict class 0 throughout; counted in the medians): "
            + "; ".join(hits) + ". The `lsuv` package (0.3.0) does this when a layer's output is all zero on the "
            "batch: its further correction steps go to the first layer (see cifar_variance).")
