"""``overhead`` group ``init``: the init-time cost (issue 3), ``apply_init`` (which includes ``plan_init``) against torch's defaults.

Two models: a 100-layer width-1024 Leaky ReLU MLP and a ResNet-50-shaped conv net (bottleneck
blocks [3, 4, 6, 3], Conv2d/BatchNorm2d/ReLU, 25.6 M parameters) built from plain torch modules.
Baseline: torch's own default initialization, every module's ``reset_parameters()``. Measured,
interleaved in rounds (the order rotates per round): the baseline, ``plan_init`` alone, and
``apply_init`` for He and Lyapunov Gaussian (Gaussian draws), Lyapunov orthogonal and Stiefel
(QR per layer), and ``torch.nn.init.orthogonal_`` on every weight (torch's own QR cost, for
reference). Process CPU time.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from benchmarks._lib.package import apply_init, plan_init
from benchmarks._lib.stats import med_iqr

#: the models by name (``Size.init_models`` picks them)
MODELS: dict[str, Callable[[], nn.Module]] = {}


def make_mlp(depth: int = 100, width: int = 1024, slope: float = 0.1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.LeakyReLU(slope)]
    layers.append(nn.Linear(width, width))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4 channels), BN after each, ReLU, skip."""

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def make_resnet50(scale: int = 1, classes: int = 1000) -> nn.Sequential:
    """ResNet-50 layout (widths divided by ``scale``): stem 7x7, blocks [3, 4, 6, 3], fc."""
    stem = 64 // scale
    layers: list[nn.Module] = [nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    c_in = stem
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        width //= scale
        for b in range(blocks):
            layers.append(Bottleneck(c_in, width, stride=2 if b == 0 and stage > 0 else 1))
            c_in = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes)]
    return nn.Sequential(*layers)


def torch_default_(model: nn.Module) -> None:
    """torch's own default init: ``reset_parameters()`` of every module that has one."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


@torch.no_grad()
def torch_orthogonal_(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(module.weight)


def _configs(model: nn.Module) -> dict[str, Callable[[], object]]:
    def apply(scheme: str, distribution: str = "orthogonal") -> Callable[[], object]:
        return lambda: apply_init(model, scheme=scheme, distribution=distribution,
                                  generator=torch.Generator().manual_seed(0))

    configs = {
        "torch default": lambda: torch_default_(model),
        "plan_init only": lambda: plan_init(model, scheme="lyapunov", distribution="orthogonal"),
        "he": apply("he"),
        "lyapunov gaussian": apply("lyapunov", "gaussian"),
        "lyapunov orthogonal": apply("lyapunov", "orthogonal"),
        "stiefel": apply("stiefel"),
        "torch orthogonal_": lambda: torch_orthogonal_(model),
    }
    return configs


def measure(models: dict[str, Callable[[], nn.Module]], rounds: int) -> list[dict[str, object]]:
    """One row per (model, method): median CPU seconds and the ratio to torch's default init (median over
    ``rounds`` of the per-round ratio, with its 25-75% spread); the methods interleaved, the order rotating."""
    torch.manual_seed(0)
    rows = []
    for model_name, make in models.items():
        model = make()
        configs = _configs(model)
        times: dict[str, list[float]] = {key: [] for key in configs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the plan's warnings (residual adds, BatchNorm) are expected
            for key in ("torch default", "plan_init only", "he"):  # warm-up (imports, fx, allocator)
                configs[key]()
            for r in range(rounds):
                keys = list(configs)
                for key in keys[r % len(keys):] + keys[: r % len(keys)]:
                    start = time.process_time()
                    configs[key]()
                    times[key].append(time.process_time() - start)
        params = sum(p.numel() for p in model.parameters())
        for key, values in times.items():
            ratio = med_iqr([v / b for v, b in zip(values, times["torch default"])])
            rows.append({"model": model_name, "params_M": params / 1e6, "method": key,
                         "seconds": statistics.median(values), "ratio": ratio[0],
                         "ratio_q25": ratio[1], "ratio_q75": ratio[2], "rounds": rounds})
    return rows


MODELS.update({
    "MLP 100 x 1024": lambda: make_mlp(100, 1024),
    "ResNet-50 shape (25.6 M params)": make_resnet50,
    "MLP 20 x 512": lambda: make_mlp(20, 512),
    "ResNet-50 shape, widths / 4": lambda: make_resnet50(scale=4),
    "MLP 4 x 64": lambda: make_mlp(4, 64),
    "ResNet-50 shape, widths / 16": lambda: make_resnet50(scale=16),
})
