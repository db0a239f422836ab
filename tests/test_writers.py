"""Tests of lightning_lyapunov._writers: no logger failure stops training; each output is switched off once."""

import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from helpers import DeepNarrow, loader, trainer_kwargs
from lightning_lyapunov import LyapunovInit, LyapunovWarning


def fit(module, tmp_path, callback, **overrides):
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(module, loader())
    return trainer


class BrokenWriter:
    """A SummaryWriter whose text, histogram, figure and layout writes fail, as on a full disk."""

    def __init__(self, writer):
        self.writer = writer

    def __getattr__(self, name):
        if name not in ("add_text", "add_histogram", "add_figure", "add_custom_scalars"):
            return getattr(self.writer, name)

        def fail(*args, **kwargs):
            raise OSError(28, "No space left on device")

        return fail


class FullDiskTensorBoard(TensorBoardLogger):
    @property
    def experiment(self):
        return BrokenWriter(super().experiment)


class PickyCSVLogger(CSVLogger):
    """A logger that rejects keys with a slash after the first (as some tracking services do)."""

    def log_metrics(self, metrics, step=None):
        if any(key.count("/") > 1 for key in metrics):
            raise ValueError("invalid metric name")
        super().log_metrics(metrics, step)


def test_failing_writers_and_loggers_never_stop_training(tmp_path):
    torch.manual_seed(0)
    board = FullDiskTensorBoard(tmp_path, name="tb")
    picky = PickyCSVLogger(tmp_path, name="csv")
    callback = LyapunovInit(seed=0, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(DeepNarrow(), tmp_path, callback, logger=[picky], max_steps=4, log_every_n_steps=1)
        trainer = fit(DeepNarrow(), tmp_path, LyapunovInit(seed=0), logger=[board], max_steps=4,
                      log_every_n_steps=1, max_epochs=3)
    assert trainer.global_step == 4
    # one warning per measured step: a step's failures are lines of one warning
    failures = [line for w in caught for line in str(w.message).splitlines() if "training continues" in line]
    outputs = sorted(m.split("failed to write the ")[1].split(" (")[0] for m in failures)
    # each output warns once, then is switched off: the CSV's scalars; TensorBoard's text, layout,
    # histograms and figure (its scalars still work)
    assert outputs == ["custom-scalars layout", "depth figure", "histograms", "plan text", "scalars"], failures
    assert all(issubclass(w.category, LyapunovWarning) for w in caught if "training continues" in str(w.message))
    assert callback.report.last is not None  # the diagnostics kept measuring
    assert "train/loss" in (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
