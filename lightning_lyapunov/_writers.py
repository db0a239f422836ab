"""What :class:`~lightning_lyapunov.LyapunovInit` writes to its loggers, each output isolated.

Scalars go to every logger: to a ``TensorBoardLogger`` as one event per measured step (one
``Summary`` holding every value: Lightning's ``log_metrics`` writes one event per scalar, 36 of them
cost longer than a small training step), to any other logger through Lightning's ``log_metrics``.
The plan text, the custom-scalars layout, the log-norm histograms and the depth figure need a
``TensorBoardLogger`` (its ``SummaryWriter``, whose records :mod:`._events` frames; the scalars'
events are handed to its thread about once a second). The depth figures (four panels, drawn and
encoded once for every logger, written as one event) take ~0.45 s each on a CPU core: they are
rendered within a share of the run's time (:class:`~.dashboard.FigureBudget`), the first one
deferred until that allows it (at the latest, with the final one), the final one always. A logger
or writer that fails (a full disk, a logger that rejects the ``lyapunov/...`` keys) never stops
training: the failure is reported once and that output is
switched off for that logger. Without matplotlib there is no depth figure, which is said once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loggers.logger import DummyLogger
from tensorboard.compat.proto.summary_pb2 import Summary

from . import dashboard
from .dashboard import FigureBudget
from ._events import add_scalars, speed_up
from .diagnostics import SignalStats

__all__ = ["Writers", "tensorboards"]


def tensorboards(loggers: Sequence[Any]) -> list[TensorBoardLogger]:
    """The TensorBoard loggers among ``loggers``."""
    return [logger for logger in loggers if isinstance(logger, TensorBoardLogger)]


class Writers:
    """The callback's outputs; ``warn(message)`` reports a failure (once per logger and output)."""

    def __init__(self, warn: Callable[[str], None], figures: FigureBudget | None = None) -> None:
        self._warn = warn
        self._off: set[tuple[int, str]] = set()  # (id(logger), output) switched off after a failure
        self._distribution_steps: set[int] = set()  # steps whose histograms were written
        self._figure_steps: set[int] = set()  # steps whose depth figure was rendered (or failed)
        self._pending: tuple[Any, ...] | None = None  # the first depth figure, deferred
        #: when the depth figures (~0.3 s each) are rendered; the first and the final one always are
        self.figures = figures if figures is not None else FigureBudget()

    def emit(self, logger: Any, output: str, write: Callable[[Any], None]) -> None:
        """``write(logger.experiment)`` (``write(logger)`` for scalars); a failure warns once and
        switches this output off for this logger: observability never stops training."""
        key = (id(logger), output)
        if key in self._off:
            return
        try:
            write(logger if output == "scalars" else logger.experiment)
        except Exception as error:  # noqa: BLE001 - any logger failure (full disk, rejected keys, ...)
            self._off.add(key)
            self._warn(
                f"{type(logger).__name__} failed to write the {output} ({type(error).__name__}: {error}); "
                f"LyapunovInit stops writing its {output} to this logger, training continues"
            )

    def scalars(self, loggers: Sequence[Any], scalars: dict[str, float], step: int) -> None:
        for logger in loggers:
            self.emit(logger, "scalars", lambda lg: _log_scalars(lg, scalars, step))

    def plan(self, loggers: Sequence[Any], text: str, layers: Sequence[str] | None,
             relu_layers: Sequence[str] | None = None, look_ahead: bool = False) -> None:
        """The plan as text and, with ``layers`` (diagnostics on) or a ``look_ahead``, the custom-scalars
        layout (dead-unit charts for ``relu_layers``, the look-ahead's charts); says when there is no logger, or no TensorBoard logger for what
        needs one. Lightning's ``DummyLogger`` (``fast_dev_run`` swaps it in for the configured
        loggers) is nobody's choice: nothing is said about it."""
        if not loggers:
            self._warn("no logger, so the signal diagnostics are measured but not logged")
            return
        if all(isinstance(logger, DummyLogger) for logger in loggers):
            return
        if layers is not None and not tensorboards(loggers):
            self._warn("the plan text, the log-norm histograms and the depth figure need a TensorBoardLogger; "
                       "the other loggers get the scalars only")
        block = "\n".join("    " + line for line in text.splitlines())  # monospace in TensorBoard's markdown
        for logger in tensorboards(loggers):
            self.emit(logger, "plan text", lambda w: w.add_text("lyapunov/plan", block, 0))
            if layers is not None or look_ahead:
                layout = dashboard.layout(layers, relu_layers, look_ahead)
                self.emit(logger, "custom-scalars layout", lambda w: w.add_custom_scalars(layout))

    def distributions(self, loggers: Sequence[Any], stats: SignalStats, plan: Any, layers: Sequence[str],
                      step: int, verdict: Any = None, final: bool = False) -> None:
        """Histograms of ``layers``' per-sample log-norms (once per step) and the depth figure (its title
        names the ``verdict``): the ``final`` one always, the others while :attr:`figures` allows
        (the first is kept until it does, then rendered with its step: :meth:`deferred`; at the latest with
        the final one, so that step 0 and the end are always there to compare)."""
        boards = tensorboards(loggers)
        if not boards:
            return
        if step not in self._distribution_steps:
            self._distribution_steps.add(step)

            def histograms(writer: Any) -> None:
                for name in layers:
                    values = stats.log_norms.get(name, np.zeros(0))
                    finite = values[np.isfinite(values)]
                    if finite.size:
                        writer.add_histogram(f"lyapunov/log_norm_hist/{name}", finite, step)

            for logger in boards:
                self.emit(logger, "histograms", histograms)
        if step in self._figure_steps:
            return
        figure = (stats, plan, step, verdict)
        if final:  # the first measured step's figure too, if the budget never allowed it
            pending, self._pending = self._pending, None
            if pending is not None and pending[2] != step:  # a one-step run: its first step is its last
                self._figure(boards, *pending)
            self._figure(boards, *figure)
        elif self.figures.allows():
            self._figure(boards, *(self._pending or figure))
            self._pending = None
        elif self._pending is None and not self._figure_steps:
            self._pending = figure  # the first figure: rendered as soon as the budget allows

    def deferred(self, loggers: Sequence[Any]) -> None:
        """Render the first depth figure, if it was deferred and the budget now allows it."""
        if self._pending is not None and self.figures.allows():
            pending, self._pending = self._pending, None
            self._figure(tensorboards(loggers), *pending)

    def _figure(self, boards: Sequence[Any], stats: SignalStats, plan: Any, step: int, verdict: Any) -> None:
        """The depth figure's panels, to every TensorBoard logger (timed against :attr:`figures`)."""
        self._figure_steps.add(step)
        if (-1, "depth figure") in self._off or not boards:
            return
        with self.figures.timed():
            try:
                title = f"{_run_name(boards[0])}, scheme={plan.scheme!r}: step {step}" + (
                    f", verdict: {verdict}" if verdict is not None else "")
                figures = dashboard.depth_figures(stats, plan, title)
                # encoded once for every logger, the four panels in one event
                images = Summary(value=[_image(f"lyapunov/depth/{panel}", figure) for panel, figure in figures.items()])
            except Exception as error:  # noqa: BLE001 - a plotting failure must not stop training
                self._off.add((-1, "depth figure"))
                self._warn(f"the depth figure failed ({type(error).__name__}: {error}); no more figures")
                return
            if not figures:  # matplotlib does not import: said once, not at every figure
                self._off.add((-1, "depth figure"))
                self._warn("the depth figure needs matplotlib, which does not import here: pip install "
                           "matplotlib (it is in the dev extra); the scalars and histograms are written without it")
                return

            def depth(writer: Any) -> None:
                speed_up(writer)
                writer._get_file_writer().add_summary(images, step)

            for logger in boards:
                self.emit(logger, "depth figure", depth)


def _log_scalars(logger: Any, scalars: dict[str, float], step: int) -> None:
    """``logger.log_metrics(scalars, step)``; for TensorBoard the same tags and values (the logger's
    prefix included) in one event, handed to its writer's thread with others (:func:`~._events.add_scalars`)."""
    if not isinstance(logger, TensorBoardLogger):
        logger.log_metrics(scalars, step=step)
        return
    add_scalars(logger.experiment, _add_prefix(scalars, logger._prefix, logger.LOGGER_JOIN_CHAR), step)


def _image(tag: str, figure: Any) -> Summary.Value:
    """``figure`` as TensorBoard's image value ``tag`` (what ``SummaryWriter.add_figure`` writes)."""
    encoded, width, height = dashboard.png(figure)
    return Summary.Value(tag=tag, image=Summary.Image(height=height, width=width, colorspace=3,
                                                      encoded_image_string=encoded))


def _run_name(logger: Any) -> str:
    version = logger.version
    return f"{logger.name}/{version if isinstance(version, str) else f'version_{version}'}"
