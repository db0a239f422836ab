"""``residual``: residual networks by theory (issue 23 part 3): a 24-block pre-norm residual MLP on MNIST
and a residual CNN (without and with BatchNorm) on CIFAR-10, trained from torch's default init, torch's default with every
branch's last layer zeroed, the project's calibrated init with every branch at rms 1 (before the branch
scale) and the default calibrated init (branches at ``alpha = sqrt(2^{1/B} - 1)`` times the stream).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from benchmarks._lib import plots, stats
from benchmarks._lib.data import CIFAR_NOTE, cifar10, mnist
from benchmarks._lib.engine import Adam
from benchmarks._lib.package import SmallResNet, apply_init, branch_scale, calibrate_, find_residual_blocks
from benchmarks._lib.protocol import Grid, classify, non_finite_note, stopped_note
from benchmarks._lib.report import Report, Sizes
from benchmarks._lib.schemes import Calibrated, default_calibration

LR, BATCH, WIDTH, BLOCKS, POOL, CNN_WIDTH = 1e-3, 128, 64, 24, 4, 8
TITLE = f"Residual nets by theory: {BLOCKS}-block pre-norm MLP on MNIST, residual CNNs on {CIFAR_NOTE}"


class Block(nn.Module):
    """Pre-norm residual block ``x + fc2(relu(fc1(LayerNorm(x))))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class PreNormMLP(nn.Module):
    """Flatten, Linear stem, ``blocks`` pre-norm residual blocks, final LayerNorm, Linear head."""

    def __init__(self, d_in: int = 784, width: int = WIDTH, blocks: int = BLOCKS, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(blocks)])
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.stem(x.flatten(-3)))))


def _resnet(batch_norm: bool) -> Callable[[], nn.Module]:
    return lambda: SmallResNet(3, 10, width=CNN_WIDTH, blocks_per_stage=(3, 3, 3), batch_norm=batch_norm)


MLP, CNN, CNN_BN = (f"pre-norm MLP ({BLOCKS} blocks)", "ResNet-20, no BatchNorm (7 identity blocks)",
                    "ResNet-20 with BatchNorm (7 identity blocks)")
MODELS = {MLP: PreNormMLP, CNN: _resnet(False), CNN_BN: _resnet(True)}


def _weight_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _blocks(model: nn.Module, probe: torch.Tensor) -> list:
    with torch.no_grad():
        return find_residual_blocks(model, _weight_layers(model), lambda: model(probe))


@dataclass(frozen=True)
class TorchDefault:
    """torch's own init (the build's, under ``torch.manual_seed(seed)``)."""

    label: str = "torch default"
    lyapunov: bool = False

    def apply(self, model: nn.Module, seed: int, probe: torch.Tensor | None = None) -> None:
        pass


@dataclass(frozen=True)
class ZeroBranchEnd:
    """torch's init, then every residual branch's last layer (weight and bias) zeroed: each block starts
    as the identity. The branches are the package's recognized ones (the same as the calibration's)."""

    label: str = "zeroed branch end"
    lyapunov: bool = False

    def apply(self, model: nn.Module, seed: int, probe: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            for block in _blocks(model, probe):
                layer = model.get_submodule(block.layer)
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()


@dataclass(frozen=True)
class RmsOne:
    """The default calibrated init as it was before the branch scale: every layer's output, branch ends
    included, to rms 1 (``calibrate_(..., stream_growth=None)``)."""

    label: str = "calibrated, branches rms 1 (before)"
    lyapunov: bool = True

    def apply(self, model: nn.Module, seed: int, probe: torch.Tensor | None = None) -> None:
        method, target = default_calibration()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = apply_init(model, scheme="lyapunov", distribution="orthogonal", example_input=probe,
                              generator=torch.Generator().manual_seed(seed))
            calibrate_(model, plan, probe, method, target, stream_growth=None)


DEFAULT = "calibrated, branch scale (default)"
SCHEMES = (TorchDefault(), ZeroBranchEnd(), RmsOne(), Calibrated(label=DEFAULT))


@dataclass(frozen=True)
class Size:
    seeds: int
    epochs: int
    mnist_train: int
    cifar_train: int
    n_test: int


SIZES = Sizes(quick=Size(seeds=2, epochs=1, mnist_train=256, cifar_train=128, n_test=64),
              full=Size(seeds=20, epochs=3, mnist_train=8000, cifar_train=3000, n_test=2000))


def _stream_growth(build, scheme, seeds, probe: torch.Tensor) -> np.ndarray:
    """Per seed, at init: the stream's rms where the last block adds up over its rms at the first."""
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build()
        scheme.apply(model, seed, probe)
        found = _blocks(model, probe)
        out.append(found[-1].stream_rms / found[0].stream_rms)
    return np.asarray(out)


def run(size: Size) -> Report:
    seeds = tuple(range(size.seeds))
    data = {MLP: mnist(n_train=size.mnist_train, n_test=size.n_test, seed=0),
            CNN: cifar10(n_train=size.cifar_train, n_test=size.n_test, pool=POOL, seed=0)}
    data[CNN_BN] = data[CNN]
    results: dict[str, Grid] = {}
    growth: dict[str, dict[str, np.ndarray]] = {}
    for name, build in MODELS.items():
        per_epoch = len(data[name]["train"][0]) // BATCH
        probe = data[name]["train"][0][:256]
        growth[name] = {s.label: _stream_growth(build, s, seeds, probe) for s in SCHEMES}
        results[name] = classify(build, SCHEMES, seeds, data[name], evals=("test",),
                                 optimizer=lambda lrs: Adam(lrs), lrs=(LR,), steps=size.epochs * per_epoch,
                                 batch_size=BATCH, record=[e * per_epoch for e in range(size.epochs + 1)])
    rows, runs = [], []
    for name, grid in results.items():
        acc, loss = grid.final("test_acc"), grid.final("test_loss")
        for label in grid.labels:
            rows.append({"model": name, "scheme": label,
                         "stream growth at init": stats.cell(growth[name][label]),
                         f"test acc after {size.epochs} epochs (%)": stats.percent(acc[label]),
                         "test loss": stats.cell(loss[label])})
        stream = {label: dict(zip(seeds, values)) for label, values in growth[name].items()}
        runs += [{"model": name, **row, "stream growth at init": float(stream[row["scheme"]][row["seed"]])}
                 for row in grid.run_rows()]
    method, target = default_calibration()
    mlp_alpha = branch_scale(BLOCKS)
    setup = f"""
Models: `PreNormMLP` (this file): flatten, `Linear(784, {WIDTH})` stem, {BLOCKS} pre-norm blocks
`x + fc2(relu(fc1(LayerNorm(x))))` of width {WIDTH}, final LayerNorm and `Linear({WIDTH}, 10)`, on MNIST (a random
{size.mnist_train}-image training subset and {size.n_test} test images, seed 0, standardized); and
`SmallResNet(width={CNN_WIDTH}, blocks_per_stage=(3, 3, 3), batch_norm=False)` (ResNet-20 without BatchNorm: 9
post-activation basic blocks `relu(x + conv2(relu(conv1(x))))`, 7 with an identity shortcut, 2 with a strided 1x1
projection) and the same with BatchNorm (`relu(x + bn2(conv2(relu(bn1(conv1(x))))))`, BatchNorm on the batch's
statistics per run) on
{CIFAR_NOTE}, per-channel standardized, average-pooled {POOL}x{POOL} to 8x8 pixels, a random
{size.cifar_train}-image training subset and {size.n_test} test images (seed 0). **Reduced to fit the shared
2-core CPU**: accuracies are far below full-data numbers. Adam (lr {LR:g}), batch {BATCH}, {size.epochs} epochs, no
augmentation, seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} per scheme; seed k draws the weights and the batch
order, so comparisons are paired by seed); all runs of a model trained together under `torch.vmap`.

Schemes: `{SCHEMES[0].label}` (the modules' own `reset_parameters`); `{SCHEMES[1].label}` (torch's, then the last
layer of every recognized residual branch, weight and bias, set to 0, with BatchNorm the branch's last BatchNorm
(`bn2`, the usual zero-init of its weight): every block starts as the identity; the projection blocks are not
residual blocks and keep theirs); `{SCHEMES[2].label}`: `LyapunovInit()`'s init before
this change, Lyapunov orthogonal then `calibrate="{method}"` with every layer's output, branch ends included, to rms 1
(`calibrate_(..., stream_growth=None)`); `{SCHEMES[3].label}`: `LyapunovInit()`'s init now, the same with each
branch's last layer calibrated to `alpha = sqrt(2^(1/B) - 1)` times the stream's rms where they add up
(alpha = {mlp_alpha:.4f} for the MLP's {BLOCKS} blocks, {branch_scale(7):.4f} for the CNN's 7; with BatchNorm `bn2`'s
weight and bias are scaled instead of `conv2`), so that the stream's
rms grows by sqrt 2 over the net (docs/theory.md section 9); the head to calibrate_target={target:g}. Calibrated
schemes see the first 256 training inputs. "stream growth at init": the stream's rms where the last residual block
adds up over its rms where the first does (median [IQR] over seeds, on those 256 inputs).
"""
    findings = _findings(results, growth, size.epochs)
    fig = _figure(results, size.epochs)
    summary = [line for line in findings
               if "test accuracy" in line and (SCHEMES[0].label in line or SCHEMES[1].label in line)]
    return Report("residual", TITLE, setup, rows, findings, fig, runs=runs, summary=summary)



def _findings(results: dict[str, Grid], growth: dict[str, dict[str, np.ndarray]], epochs: int) -> list[str]:
    lines = []
    for name, grid in results.items():
        acc, loss = grid.final("test_acc"), grid.final("test_loss")
        for other in (SCHEMES[0].label, SCHEMES[1].label, SCHEMES[2].label):
            lines.append(f"{name}: " + stats.compare(acc[DEFAULT], acc[other], DEFAULT, other, higher_is_better=True)
                         .sentence(f"test accuracy after {epochs} epochs", "percent") + ".")
        lines.append(f"{name}: " + stats.compare(loss[DEFAULT], loss[SCHEMES[0].label], DEFAULT, SCHEMES[0].label,
                                                 higher_is_better=False).sentence("test loss") + ".")
        lines.append(f"{name}, stream growth at init (median [IQR] over seeds): "
                     + "; ".join(f"{label} {stats.cell(values)}" for label, values in growth[name].items()) + ".")
    lines += [non_finite_note(results), stopped_note(results)]
    return [line for line in lines if line]


def _figure(results: dict[str, Grid], epochs: int):
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (name, grid) in zip(axes[0], results.items()):
        plots.curves(ax, range(epochs + 1), {label: grid.curve("test_acc", label) for label in grid.labels},
                     100.0, True)
        ax.set(title=name, xlabel="epoch", ylabel="test accuracy (%)")
        ax.title.set_fontsize(9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig

