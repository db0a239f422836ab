"""``overhead`` groups ``raw-mlp`` and ``raw-cnn``: the ``SignalMonitor``'s cost on a raw training step.

Step = forward + backward + SGD step (+ ``compute()``, ``to_scalars()`` and ``reset()`` on the steps the
monitor is active). Configurations, timed in interleaved blocks of ``CADENCE`` steps so that machine
noise hits all of them alike:

    every               monitor active on every step
    cadence             monitor active on every 50th step (Lightning's default ``log_every_n_steps``)
    cadence_persistent  the same with the hooks registered once (what ``LyapunovInit`` does for compiled models)
    off                 no monitor (no hooks registered)

Targets (issue 4): every/off <= 1.5, cadence/off <= 1.03. The step time of each configuration is the
median over blocks; the ratios are the medians of the per-round ratios. ``clock``: process CPU time on
the CPU (neighbours on a shared machine affect it less than wall time), :func:`cuda_clock` on a GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from benchmarks._lib.package import SignalMonitor

CADENCE = 50
Clock = Callable[[], float]


def make_mlp(depth: int = 32, width: int = 64, classes: int = 10) -> nn.Sequential:
    """Depth-``depth`` Leaky ReLU MLP of width ``width`` (the last layer maps to ``classes``)."""
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.LeakyReLU(0.1)]
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def make_cnn(depth: int = 8, channels: int = 16, classes: int = 10) -> nn.Sequential:
    """``depth`` 3x3 convs with ``channels`` channels (padding 1), global average pool, linear head."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(3 if i == 0 else channels, channels, 3, padding=1), nn.LeakyReLU(0.1)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


def weight_layer_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def run_block(model: nn.Module, x: torch.Tensor, y: torch.Tensor, monitor: SignalMonitor | None, every: int,
              clock: Clock, steps: int = CADENCE) -> float:
    """Seconds per step over ``steps`` steps; the monitor is active on steps ``s % every == 0``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    start = clock()
    for step in range(steps):
        logging = monitor is not None and step % every == 0
        if logging:
            monitor.active = True
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if logging:
            monitor.active = False
            monitor.compute().to_scalars()
            monitor.reset()
    return (clock() - start) / steps


def cuda_clock() -> float:
    """Wall time once the GPU has finished (CPU time does not see GPU work)."""
    torch.cuda.synchronize()
    return time.perf_counter()


def measure(build: Callable[[], nn.Module], x: torch.Tensor, rounds: int, device: str = "cpu",
            clock: Clock = time.process_time, steps: int = CADENCE) -> dict[str, object]:
    """Interleaved blocks of every configuration: median ms per step and median ratio to "off".

    ``every`` and ``cadence`` attach the hooks only while measuring (``persistent=False``, what
    ``LyapunovInit`` does in eager mode); ``cadence_persistent`` keeps them registered and gated by the flag.
    """
    torch.manual_seed(0)
    y = torch.randint(0, 10, (x.shape[0],)).to(device)
    model = build().to(device)
    x = x.to(device)
    names = weight_layer_names(model)
    configs = {"every": (1, False), "cadence": (CADENCE, False), "cadence_persistent": (CADENCE, True), "off": None}
    times: dict[str, list[float]] = {key: [] for key in configs}
    run_block(model, x, y, None, 1, clock, steps)  # warm-up
    for r in range(rounds):
        order = list(configs)[r % len(configs):] + list(configs)[: r % len(configs)]
        for key in order:
            if configs[key] is None:
                times[key].append(run_block(model, x, y, None, 1, clock, steps))
                continue
            every, persistent = configs[key]
            with SignalMonitor(model, names, persistent=persistent) as monitor:
                times[key].append(run_block(model, x, y, monitor, every, clock, steps))
    ratio = {key: statistics.median(a / c for a, c in zip(times[key], times["off"])) for key in configs if key != "off"}
    return {"ms": {key: 1e3 * statistics.median(v) for key, v in times.items()}, "ratio": ratio, "rounds": rounds}
