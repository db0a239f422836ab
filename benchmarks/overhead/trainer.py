"""``overhead`` groups ``lightning`` and ``memory``: ``LyapunovInit`` inside a real Lightning ``Trainer``.

``lightning``: per case (model) and logger (``TensorBoardLogger``, what the README tells users to
watch, and ``CSVLogger``), three configurations fitted in turn, the order rotating per round:

    every    LyapunovInit(seed=0, log_every_n_steps=1)   diagnostics on every step
    default  LyapunovInit(seed=0)                        the Trainer's cadence (50; steps 1, 2, 4, ... before)
    off      LyapunovInit(seed=0, diagnostics=False)     the reference: initialization only

Per-step time = process CPU time (the TensorBoard writer's thread included) from the start of step
``SKIP`` to the end of the last step, per step; ``ratio`` = the median over rounds of (config / off)
of the same logger and round. The end of ``fit`` (the epoch's end, the final depth figure and
histograms: a fixed cost per fit) is timed apart.

``memory``: one long fit with TensorBoard, diagnostics on every step; the resident memory (VmRSS)
half-way and at the end of the last step, and the size of the event file.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks._lib.stats import med_iqr
from benchmarks.overhead.raw_loop import make_mlp

SKIP = 5  # per fit: the first SKIP steps are warm-up
CONFIGS = {"every step": dict(log_every_n_steps=1), "default cadence (50)": {}, "off": dict(diagnostics=False)}
LOGGERS = ("TensorBoardLogger", "CSVLogger")


@dataclass(frozen=True)
class Case:
    """A model, its batch and optimizer, fitted ``steps`` steps per fit, ``rounds`` rounds."""

    label: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    optimizer: Callable[..., torch.optim.Optimizer]
    steps: int
    rounds: int


def make_cnn(depth: int = 8, channels: int = 32, classes: int = 10) -> nn.Sequential:
    """Issue 26's CNN: ``depth`` 3x3 convs of ``channels`` channels (padding 1, Leaky ReLU 0.1), pool, head."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(3 if i == 0 else channels, channels, 3, padding=1), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def mlp_case(steps: int, rounds: int) -> Case:
    return Case("MLP depth 32, width 64, batch 128", lambda: make_mlp(32, 64),
                lambda g: (torch.randn(128, 64, generator=g), torch.randint(0, 10, (128,), generator=g)),
                lambda params: torch.optim.SGD(params, lr=1e-4), steps, rounds)


def issue_mlp_case(steps: int, rounds: int) -> Case:
    """The MLP issue 26 states its every-step goal on: 16 x Linear(32, 32) + Leaky ReLU, a head, batch 64, Adam."""
    return Case("MLP 16 x Linear(32, 32), batch 64, Adam", lambda: make_mlp(17, 32),
                lambda g: (torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g)),
                lambda params: torch.optim.Adam(params, lr=1e-3), steps, rounds)


def cnn_case(image: int, steps: int, rounds: int) -> Case:
    return Case(f"CNN 8 conv x 32 ch, {image}x{image}, batch 128", make_cnn,
                lambda g: (torch.randn(128, 3, image, image, generator=g), torch.randint(0, 10, (128,), generator=g)),
                lambda params: torch.optim.SGD(params, lr=1e-3), steps, rounds)


def _module(case: Case):
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = case.build()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.model(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return case.optimizer(self.parameters())

    return Module()


def _step_timer(clock: Callable[[], float]):
    """A Lightning callback (placed after ``LyapunovInit``) recording ``clock()`` at every train batch
    start, at the end of the last batch and at the end of training: :meth:`step` is the time per step
    from step ``SKIP`` on, :meth:`end` the time from the last batch's end to the end of training
    (the epoch's end, the final depth figure)."""
    from lightning.pytorch import Callback

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.last_end = self.finish = float("nan")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.stamps.append(clock())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.last_end = clock()

        def on_train_end(self, trainer, pl_module) -> None:
            self.finish = clock()

        def step(self) -> float:
            return (self.last_end - self.stamps[SKIP]) / (len(self.stamps) - SKIP)

        def end(self) -> float:
            return self.finish - self.last_end

    return StepTimer()


def _fit(case: Case, logger: str, config: dict, root: str, steps: int, device: str, clock: Callable[[], float]):
    """One fit; returns the stamps callback and the logger."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from benchmarks._lib.package import LyapunovInit

    x, y = case.batch(torch.Generator().manual_seed(0))
    data = torch.utils.data.DataLoader([(x, y)] * steps, batch_size=None)  # the same batch, no collation
    stamps = _step_timer(clock)
    board = (TensorBoardLogger if logger == "TensorBoardLogger" else CSVLogger)(root, name=logger)
    trainer = pl.Trainer(
        accelerator="cpu" if device == "cpu" else "gpu", devices=1, max_steps=steps, logger=board,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        callbacks=[LyapunovInit(seed=0, **config), stamps],
    )
    trainer.fit(_module(case), train_dataloaders=data)
    return stamps, board


def _quiet(run: Callable[[], object]):
    """``run()`` with Lightning's banners and the callback's warnings silenced."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run()
    finally:
        logger.setLevel(level)


def measure(cases: list[Case], device: str = "cpu", clock: Callable[[], float] = time.process_time) -> list[dict]:
    """Per case, logger and configuration: median ms per step and at the end of ``fit``, and the ratios
    to ``off`` (median over rounds, with its quartiles)."""

    def run() -> list[dict]:
        rows = []
        with tempfile.TemporaryDirectory() as root:
            for case in cases:
                keys = [(logger, config) for logger in LOGGERS for config in CONFIGS]
                times: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
                ends: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
                _fit(case, "CSVLogger", CONFIGS["off"], root, min(case.steps, SKIP + 2), device, clock)  # warm-up
                for r in range(case.rounds):
                    for logger, config in keys[r % len(keys):] + keys[: r % len(keys)]:
                        timer = _fit(case, logger, CONFIGS[config], root, case.steps, device, clock)[0]
                        times[(logger, config)].append(timer.step())
                        ends[(logger, config)].append(timer.end())
                for logger, config in keys:
                    ratios = [a / b for a, b in zip(times[(logger, config)], times[(logger, "off")])]
                    rows.append({"case": case.label, "logger": logger, "config": config, "rounds": case.rounds,
                                 "steps": case.steps, "ms": 1e3 * statistics.median(times[(logger, config)]),
                                 "reference_ms": 1e3 * statistics.median(times[(logger, "off")]),
                                 "ratio": med_iqr(ratios), "end_ms": 1e3 * statistics.median(ends[(logger, config)]),
                                 "reference_end_ms": 1e3 * statistics.median(ends[(logger, "off")])})
        return rows

    return _quiet(run)


def _rss_mb() -> float:
    """Resident memory of this process (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(case: Case, steps: int) -> dict[str, float]:
    """One fit of ``steps`` steps with TensorBoard and diagnostics on every step: the resident memory (MB)
    at the start of step ``steps // 2`` and at the end of the last step (before the final depth figure,
    whose rendering takes what matplotlib keeps once), its largest value over the steps, the value
    after the final figure, and the event files' size (MB) and bytes per step."""

    def run() -> dict[str, float]:
        samples: list[float] = []  # at every batch start and end, then at the end of training
        with tempfile.TemporaryDirectory() as root:
            _, board = _fit(case, "TensorBoardLogger", CONFIGS["every step"], root, steps, "cpu",
                            lambda: samples.append(_rss_mb()) or time.process_time())
            size = sum(path.stat().st_size for path in Path(board.log_dir).rglob("events.out.tfevents.*"))
        half = steps // 2
        return {"steps": steps, "rss_half_MB": samples[2 * half], "rss_last_MB": samples[-2],
                "rss_max_MB": max(samples[:-1]), "rss_end_MB": samples[-1], "event_MB": size / 2**20,
                "bytes_per_step": size / steps, "at_step": half}

    return _quiet(run)
