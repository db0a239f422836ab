"""Tests of lightning_lyapunov._writers: no logger failure stops training; each output is switched off once."""

import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from helpers import DeepNarrow, loader, trainer_kwargs
from lightning_lyapunov import LyapunovInit, LyapunovWarning


def fit(module, tmp_path, callback, **overrides):
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(module, loader())
    return trainer


def _full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")


class BrokenWriter:
    """A SummaryWriter whose text, histogram, image and layout writes fail, as on a full disk (the
    images also where they go to the file writer as summaries, as the depth figure's do)."""

    def __init__(self, writer):
        self.writer = writer

    def __getattr__(self, name):
        if name == "_get_file_writer":
            return lambda: BrokenFileWriter(self.writer._get_file_writer())
        if name not in ("add_text", "add_histogram", "add_figure", "add_custom_scalars"):
            return getattr(self.writer, name)
        return _full_disk


class BrokenFileWriter:
    """A FileWriter that fails to write a summary holding an image (and writes the others)."""

    def __init__(self, writer):
        self.writer = writer

    def add_summary(self, summary, *args, **kwargs):
        if any(value.HasField("image") for value in summary.value):
            _full_disk()
        return self.writer.add_summary(summary, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.writer, name)


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


def test_tensorboard_gets_each_measured_step_in_one_event_with_the_tags_log_metrics_writes(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from lightning_lyapunov._writers import Writers

    scalars = {"lyapunov/a/0": 1.5, "lyapunov/b/net.2": -0.25, "lyapunov/exponent_estimate": 0.125}
    ours, lightning = TensorBoardLogger(tmp_path, name="ours", prefix="run"), TensorBoardLogger(tmp_path, name="pl", prefix="run")
    writers = Writers(lambda message: (_ for _ in ()).throw(AssertionError(message)))
    writers.scalars([ours], scalars, step=3)
    writers.scalars([ours], {"lyapunov/a/0": 2.0}, step=5)
    lightning.log_metrics(scalars, step=3)
    lightning.log_metrics({"lyapunov/a/0": 2.0}, step=5)

    from tensorboard.util.tensor_util import make_ndarray

    def value(v) -> float:  # the loader may upgrade simple_value to a tensor
        return float(make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value

    def events(logger):
        logger.experiment.flush()
        (path,) = list((tmp_path / logger.name).rglob("events.out.tfevents.*"))
        found = [e for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]
        return [(e.step, [(v.tag, value(v)) for v in e.summary.value]) for e in found]

    from lightning_lyapunov._events import FastRecordWriter

    # our records (and Lightning's own, through the same writer) are framed by the vectorized CRC
    assert type(ours.experiment._get_file_writer().event_writer._async_writer._writer) is FastRecordWriter
    mine, theirs = events(ours), events(lightning)
    assert [step for step, _ in mine] == [3, 5]  # one event per measured step
    assert sorted(v for _, values in mine for v in values) == sorted(v for _, values in theirs for v in values)
    assert ("run-lyapunov/b/net.2", -0.25) in mine[0][1]  # the logger's prefix, as log_metrics adds it


def test_without_matplotlib_the_missing_depth_figure_is_said_once(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    logger = TensorBoardLogger(tmp_path, name="tb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(DeepNarrow(depth=4), tmp_path, LyapunovInit(seed=0), logger=logger, max_steps=4)
    said = [str(w.message) for w in caught if "matplotlib" in str(w.message)]
    assert len(said) == 1 and "depth figure" in said[0] and "pip install matplotlib" in said[0]


@pytest.mark.parametrize(("jump", "max_steps", "steps"), [(30.0, 9, [0, 8]), (1.0, 9, [0, 8]), (1.0, 1, [0])],
                         ids=["budget allows it at step 6", "budget never allows it", "one step: one figure"])
def test_the_first_depth_figure_waits_for_the_budget_and_the_final_one_is_always_rendered(tmp_path, deep_narrow,
                                                                                         monkeypatch, jump,
                                                                                         max_steps, steps):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_lyapunov import dashboard
    from lightning_lyapunov.dashboard import FigureBudget

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    render = dashboard.depth_figures

    def slow_render(*args, **kwargs):  # each figure takes 0.3 s of the fake clock
        clock.now += 0.3
        return render(*args, **kwargs)

    monkeypatch.setattr(dashboard, "depth_figures", slow_render)
    callback = LyapunovInit(seed=0, log_every_n_steps=1)
    callback._writers.figures = FigureBudget(share=0.02, clock=clock, estimate=0.3)

    class Tick(pl.Callback):  # 1 s of the fake clock per step; a 30 s jump at step 6 allows the deferred figure
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.now += jump if trainer.global_step == 6 else 1.0

    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(callbacks=[callback, Tick()], **trainer_kwargs(tmp_path, logger=logger, max_steps=max_steps,
                                                                        log_every_n_steps=1))
    trainer.fit(deep_narrow, loader())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    # the first measured step's figure, rendered at step 6 (or with the final one) with its step; none other
    assert [image.step for image in events.Images("lyapunov/depth/1_signal")] == steps
    histograms = events.Histograms(f"lyapunov/log_norm_hist/{callback.plan.layer_names[0]}")
    assert [h.step for h in histograms][0] == 0  # the histograms are not deferred
