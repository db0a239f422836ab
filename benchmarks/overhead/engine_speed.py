"""``overhead`` group ``engine``: what the benchmark engine saves. The same seeds trained as one stacked
model (``benchmarks._lib.engine.fit``) and one by one (a plain ``torch.optim`` loop per seed on the same
batches), process CPU time per step, interleaved in rounds."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._lib.engine import Adam, Epochs, Stack, cross_entropy, fit, mse
from benchmarks._lib.package import DeepMLP, PlainCNN

#: name -> (build, input sample shape, classes (0: regression))
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "width-2 depth-40 MLP (deep_narrow_regression)": (lambda: DeepMLP(1, 1, width=2, depth=40), (1,), 0),
    "width-64 depth-20 ReLU MLP (fractional)": (lambda: DeepMLP(40, 10, 64, 20, activation="relu"), (40,), 10),
    "depth-12 width-16 plain CNN, 16x16 (cifar)": (lambda: PlainCNN(3, 10, width=16, depth=12), (3, 16, 16), 10),
}


def _data(shape: tuple[int, ...], classes: int, n: int = 512):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=generator)
    y = torch.randint(classes, (n,), generator=generator) if classes else x.flatten(1).sum(1, keepdim=True)
    return x, y


def _separate(nets: list[nn.Module], x, y, steps: int, batch: int, classes: int) -> float:
    """CPU seconds per step of training every net alone (its own Adam, its seed's batch order)."""
    loss_fn = F.cross_entropy if classes else F.mse_loss
    start = time.process_time()
    for seed, net in enumerate(nets):
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x), generator=generator)
        per_epoch = len(x) // batch
        for step in range(steps):
            if step % per_epoch == 0 and step > 0:
                order = torch.randperm(len(x), generator=generator)
            idx = order[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]
            loss = loss_fn(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return (time.process_time() - start) / steps


def _stacked(nets: list[nn.Module], x, y, steps: int, batch: int, classes: int) -> float:
    seeds = list(range(len(nets)))
    stack = Stack(nets, sample_dims=x.dim() - 1)
    result = fit(stack, cross_entropy if classes else mse, (x, y), optimizer=Adam(1e-3), steps=steps,
                 order=Epochs(batch, seeds=seeds, streams=seeds))
    return result.seconds / steps


def measure(cases: tuple[str, ...], seeds: int, steps: int, rounds: int, batch: int = 64) -> list[dict[str, object]]:
    """One row per case: median CPU ms per step of the stacked and of the separate training of ``seeds``
    runs, and the median over rounds of their ratio (stacked / separate)."""
    rows = []
    for case in cases:
        build, shape, classes = CASES[case]
        x, y = _data(shape, classes)
        nets = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            nets.append(build())
        times: dict[str, list[float]] = {"stacked": [], "separate": []}
        for r in range(rounds):
            for key in (("stacked", "separate") if r % 2 == 0 else ("separate", "stacked")):
                run = _stacked if key == "stacked" else _separate
                times[key].append(run(copy.deepcopy(nets), x, y, steps, batch, classes))
        ratios = [a / b for a, b in zip(times["stacked"], times["separate"])]
        rows.append({"case": case, "seeds": seeds, "steps": steps, "stacked_ms": 1e3 * statistics.median(times["stacked"]),
                     "separate_ms": 1e3 * statistics.median(times["separate"]), "ratio": statistics.median(ratios),
                     "rounds": rounds})
    return rows
