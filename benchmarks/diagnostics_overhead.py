"""Overhead of the SignalMonitor on a training step (CPU), printed as a markdown table.

Step = forward + backward + SGD step (+ ``compute()``, ``to_scalars()`` and ``reset()`` on the
steps the monitor is active). Three configurations, timed in interleaved blocks of ``CADENCE``
steps so that machine noise hits all of them alike:

    every    monitor active on every step
    cadence  monitor active on every 50th step (Lightning's default ``log_every_n_steps``)
    off      no monitor (no hooks registered)

Targets (issue 4): every/off <= 1.5, cadence/off <= 1.03. The reported step time of each
configuration is the median over blocks; the ratios are the medians of the per-round ratios.
Times are process CPU time (``time.process_time``) with one torch thread by default: on a shared
machine wall-clock ratios mostly measure the neighbours (``--clock wall`` and ``--threads`` to
change that).

Usage: ``python benchmarks/diagnostics_overhead.py [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed
from lightning_lyapunov.diagnostics import SignalMonitor  # noqa: E402

CADENCE = 50
CLOCK = [time.process_time]


def make_mlp(depth: int = 32, width: int = 64, classes: int = 10) -> nn.Sequential:
    """Depth-``depth`` Leaky ReLU MLP of width ``width`` (the last layer maps to ``classes``)."""
    layers: list[nn.Module] = []
    for i in range(depth - 1):
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


def run_block(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, monitor: SignalMonitor | None, every: int
) -> float:
    """Seconds per step over ``CADENCE`` steps; the monitor is active on steps ``s % every == 0``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    start = CLOCK[0]()
    for step in range(CADENCE):
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
    return (CLOCK[0]() - start) / CADENCE


def cuda_clock() -> float:
    """Wall time once the GPU has finished (CPU time does not see GPU work)."""
    torch.cuda.synchronize()
    return time.perf_counter()


def measure(
    name: str, build: Callable[[], nn.Module], x: torch.Tensor, rounds: int, device: str = "cpu"
) -> dict[str, object]:
    """Interleaved blocks of every configuration; median ms per step and median ratio to "off".

    ``every`` and ``cadence`` attach the hooks only while measuring (``persistent=False``, what
    ``LyapunovInit`` does in eager mode); ``cadence_persistent`` keeps them registered and gated
    by the flag (what it does for compiled models).
    """
    torch.manual_seed(0)
    y = torch.randint(0, 10, (x.shape[0],)).to(device)
    model = build().to(device)
    x = x.to(device)
    names = weight_layer_names(model)
    configs = {"every": (1, False), "cadence": (CADENCE, False), "cadence_persistent": (CADENCE, True), "off": None}
    times: dict[str, list[float]] = {key: [] for key in configs}
    run_block(model, x, y, None, 1)  # warm-up
    for r in range(rounds):
        order = list(configs)[r % len(configs) :] + list(configs)[: r % len(configs)]
        for key in order:
            if configs[key] is None:
                times[key].append(run_block(model, x, y, None, 1))
                continue
            every, persistent = configs[key]
            with SignalMonitor(model, names, persistent=persistent) as monitor:
                times[key].append(run_block(model, x, y, monitor, every))
    ratio = {
        key: statistics.median(a / c for a, c in zip(times[key], times["off"])) for key in configs if key != "off"
    }
    return {
        "name": name,
        "ms": {key: 1e3 * statistics.median(v) for key, v in times.items()},
        "ratio": ratio,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier ratios)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--only", choices=("mlp", "cnn"), help="run one model only")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="process CPU or wall time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    cases = [
        ("MLP depth 32, width 64, batch 128", make_mlp, torch.randn(128, 64), 4 if args.quick else 20),
        ("CNN 8 conv x 16 ch, 32x32, batch 128", make_cnn, torch.randn(128, 3, 32, 32), 1 if args.quick else 3),
    ]
    print(
        f"torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s), {args.clock} time, "
        f"{CADENCE} steps per block\n"
    )
    print("| model | off ms/step | every ms/step | cadence ms/step | every/off | cadence/off "
          "| cadence/off, persistent hooks | rounds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, build, x, rounds in cases:
        if args.only and not name.lower().startswith(args.only):
            continue
        r = measure(name, build, x, rounds)
        ms, ratio = r["ms"], r["ratio"]
        print(
            f"| {name} | {ms['off']:.2f} | {ms['every']:.2f} | {ms['cadence']:.2f} "
            f"| {ratio['every']:.2f}x | {ratio['cadence']:.3f}x | {ratio['cadence_persistent']:.3f}x | {rounds} |",
            flush=True,
        )
    print("\nTargets: every/off <= 1.5x, cadence/off <= 1.03x.")


if __name__ == "__main__":
    main()
