"""The :class:`LyapunovInit` Lightning callback: initialize by theory, then watch the signal.

A thin adapter, as Lightning's ``ModelSummary`` and ``ThroughputMonitor`` are: the initialization is
the engine's (:func:`lightning_lyapunov.initialize.initialize_`), the statistics the monitor's
(:class:`~lightning_lyapunov.SignalMonitor`), their interpretation the report's
(:class:`~lightning_lyapunov.SignalReport`) and the writing the writers'
(:mod:`lightning_lyapunov._writers`). The callback owns what only a callback can: when to initialize
(once, never over a checkpoint), which batch to observe, when to measure, and where the results go.

On the console it prints the plan once (compact), at most one warning per measured step that finds
something new (on a line of its own, not glued to the progress bar), and a closing summary at the end
of ``fit``. Its warnings have the category :class:`~lightning_lyapunov.LyapunovWarning`, are printed
without a ``file:line:`` prefix and are attributed to the user's ``trainer.fit(...)`` line.

In a LightningCLI config::

    trainer:
      callbacks:
        - class_path: lightning_lyapunov.LyapunovInit
          init_args: {scheme: lyapunov, distribution: gaussian}
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, Callable, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from ._checks import check_bool, check_int
from ._lifecycle import check_single, check_strategy, checkpoint_to_restore
from ._warn import warn
from ._writers import Writers
from .dashboard import featured_layers, figure_due
from .diagnosis import SignalReport
from .diagnostics import SignalMonitor
from .initialize import measured_state, restore_measured
from .lookahead import DEFAULT_STEPS
from .lookahead_fit import LookAheadFit
from .plan import InitPlan
from .settings import DEFAULT_TARGET, STREAM_GROWTH, InitSpec
from .surgery import plan_init
from .training_batch import NO_RERUN_FIX, check_observation, observation

__all__ = ["LyapunovInit"]

#: The plan and the closing summary go to this logger (INFO, rank zero; a child of Lightning's, so
#: they print where Lightning's messages do). Quiet it with ``log.setLevel(logging.WARNING)``.
log = logging.getLogger("lightning.pytorch.callbacks.lyapunov")


@rank_zero_only
def _info(message: str) -> None:
    log.info(message)


@rank_zero_only
def _warn_rank_zero(message: str) -> None:
    warn(message)


class LyapunovInit(Callback):
    r"""Initialize every weight layer by theory at the start of ``fit`` and log the signal live.

    At ``setup(stage="fit")``, once (never over a checkpoint ``fit(ckpt_path=...)`` restores, nor on a
    second ``fit``), the callback plans the scheme per layer on the first training batch, writes the
    weights and, by default, calibrates them on that batch. The Lyapunov scheme sets each layer's
    scale so that the log-norm ``log r(x)``, ``r(x) = ||x|| / sqrt(d)``, has zero drift. While
    training, forward hooks measure per layer the log-norm, empirical variance, kurtosis and dead
    units on logging steps.

    Args (the initialization settings are :class:`~lightning_lyapunov.InitSpec`'s, which says more):
        scheme: ``"lyapunov"``, ``"fractional"``, ``"stiefel"``, ``"he"``, ``"glorot"``,
            ``"orthogonal"`` or ``"zero"``.
        distribution: ``"gaussian"`` or ``"orthogonal"`` weights (for ``lyapunov`` and ``fractional``).
        moment: the moment order ``s`` in (0, 2] for ``scheme="fractional"`` (``s = 2`` is He).
        negative_slope: ``None`` (detect the activation after each layer), a slope in [0, 1] for
            every layer, or a mapping ``{regex: slope}`` on qualified module names.
        include: regex or list of regexes: only these layers (qualified names, ``re.search``).
        exclude: regex or list of regexes: leave these layers alone.
        conv: ``"full"`` kernel or ``"delta"`` (a matrix at the centre tap); ``None``: the scheme's.
        sampled: ``True``/``"network"``: keep the best of ``candidates`` draws on the training
            batch; ``"layerwise"``: choose each layer's draw in turn.
        candidates: how many draws ``sampled`` compares (``None``: ``ceil(2 sqrt(layers))``).
        calibrate: rescale the draw on the first training batch: ``"layers"`` (each layer's output to rms 1,
            the last to ``calibrate_target``), ``"output"`` (one factor on every layer), ``None``, or ``"auto"``:
            ``"layers"`` for ``scheme="lyapunov"`` (theory's draw kept, with a warning, if the batch cannot
            calibrate it), ``None`` for the baselines. Under DDP every rank calibrates alike.
        calibrate_target: the output's root-mean-square after calibration. A small one (``0.001``) trains more
            deep narrow nets with Adam but slowed two standard classifiers (a CNN with SGD for 20+ epochs; README).
        stream_growth: with ``calibrate="layers"``, a residual stream's rms growth ``G`` over its ``B`` blocks
            ``x + f(x)``: each branch at ``sqrt(G^(2/B) - 1)`` times the stream; ``None``: at rms 1.
        diagnostics: measure and log the signal statistics.
        log_every_n_steps: measuring cadence; ``None`` uses the Trainer's ``log_every_n_steps``.
        seed: seed of the weights' generator; ``None``: drawn from torch's global one (``seed_everything``).
        all_layers: every layer's scalars and histograms (default: first, middle and last; the figure shows all).
        initialize: ``False`` leaves the weights alone (fine-tuning): the plan only serves the diagnostics.
        example_input: observe, sample and calibrate on this batch instead of the first training
            batch: a tensor, or a tuple, list or dict of them (what ``forward`` takes). Python only:
            a tensor cannot come from a YAML config.
        forward: ``forward(module, batch)`` runs the network on the batch, e.g. ``lambda module,
            batch: module.net(batch["image"])``; ``None``: found once (the module's ``forward`` with
            the batch mapped to its arguments, else one neutralized ``training_step``; see
            :mod:`lightning_lyapunov.training_batch`). In a YAML config: the import path of a function.
        look_ahead: ``K`` draws trained in turn, the best kept with its progress (:mod:`.lookahead_fit`); ``None``: off.
        look_ahead_steps: the look-ahead's training steps in all (they count towards ``max_steps``).

    Attributes:
        spec: the :class:`~lightning_lyapunov.InitSpec` built from the initialization settings.
        plan: the :class:`~lightning_lyapunov.InitPlan` applied (or, after a resume, planned).
        report: the :class:`~lightning_lyapunov.SignalReport` of the measured steps
            (``report.first``: the statistics at initialization; ``report.last``: the latest).

    Example::

        trainer = Trainer(callbacks=[LyapunovInit(scheme="lyapunov", distribution="orthogonal")])
    """

    def __init__(
        self,
        scheme: Literal["lyapunov", "fractional", "stiefel", "he", "glorot", "orthogonal", "zero"] = "lyapunov",
        distribution: Literal["gaussian", "orthogonal"] = "orthogonal",
        moment: float | None = None,
        negative_slope: float | dict[str, float] | None = None,
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
        conv: Literal["full", "delta"] | None = None,
        sampled: bool | Literal["network", "layerwise"] = False,
        candidates: int | None = None,
        calibrate: Literal["auto", "layers", "output"] | None = "auto",
        calibrate_target: float = DEFAULT_TARGET,
        stream_growth: float | None = STREAM_GROWTH,
        diagnostics: bool = True,
        log_every_n_steps: int | None = None,
        seed: int | None = None,
        all_layers: bool = False,
        initialize: bool = True,
        example_input: Any = None,
        forward: Callable[[torch.nn.Module, Any], Any] | None = None,
        look_ahead: int | None = None,
        look_ahead_steps: int = DEFAULT_STEPS,
    ) -> None:
        super().__init__()
        self.spec = InitSpec(scheme=scheme, distribution=distribution, moment=moment, negative_slope=negative_slope,
                             include=include, exclude=exclude, conv=conv, sampled=sampled, candidates=candidates,
                             calibrate=calibrate, calibrate_target=calibrate_target, stream_growth=stream_growth)
        self.diagnostics = check_bool("diagnostics", diagnostics)
        self.log_every_n_steps = check_int("log_every_n_steps", log_every_n_steps, minimum=1, allow_none=True,
                                           allowed="an integer >= 1 or None (None: the Trainer's log_every_n_steps)")
        self.seed = check_int("seed", seed, minimum=0, maximum=2**63 - 1, allow_none=True,
                              allowed="an integer in [0, 2**63) or None (None: drawn from torch's global generator)")
        self.all_layers = check_bool("all_layers", all_layers)
        self.initialize = check_bool("initialize", initialize)
        check_observation(example_input, forward)
        self.example_input, self.forward = example_input, forward
        if not initialize:
            _refuse_unused(sampled=(sampled, False), candidates=(candidates, None), calibrate=(calibrate, "auto"),
                           calibrate_target=(calibrate_target, DEFAULT_TARGET),
                           stream_growth=(stream_growth, STREAM_GROWTH), look_ahead=(look_ahead, None))
        self.initialized = False
        self.plan: InitPlan | None = None
        self.monitor: SignalMonitor | None = None
        self.report: SignalReport | None = None
        self._console = _Console()
        self._writers = Writers(self._console.warn)
        self.look_ahead = LookAheadFit(look_ahead, look_ahead_steps, self.spec, self._writers, _info, self._warn)
        self._announced = False
        self._last_step: int | None = None
        self._used_seed: int | None = None
        self._initialized_here = False
        self._observed = "the first training batch"  # what the initialization ran the network on
        self._rescale_fix: str | None = None  # the report's advice on the output's scale (None: its default)
        self._measured: dict[str, Any] | None = None  # a loaded state, until there is a plan to restore it on

    # ------------------------------------------------------------------ state

    @property
    def state_key(self) -> str:
        spec = self.spec
        return self._generate_state_key(scheme=spec.scheme, distribution=spec.distribution, moment=spec.moment)

    def state_dict(self) -> dict[str, Any]:
        """``initialized``, the scheme and what the plan measured (the calibration's factors and
        log-gains, the sampling's scores), as plain Python values."""
        state = {"initialized": bool(self.initialized), "scheme": str(self.spec.scheme), **self.look_ahead.state_dict()}
        return {**state, **measured_state(self.plan)} if self.plan is not None else state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initialized = bool(state_dict.get("initialized", False))
        self.look_ahead.load_state_dict(state_dict)
        if self.initialized:
            self._announced = True  # resumed: the plan was logged by the run that initialized
        self._measured = state_dict  # Lightning restores callbacks after setup has planned
        _restore(self)

    # ------------------------------------------------------------------ setup

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_single(trainer.callbacks, LyapunovInit, lambda cb: f"scheme={cb.spec.scheme!r}")
        self._console.trainer = trainer
        if stage != "fit":
            return
        check_strategy(trainer.strategy, "LyapunovInit", pl_module)
        if self.plan is None or not self.initialized:
            self.plan = _initialize_or_plan(self, trainer, pl_module)
            _restore(self)
        if self.diagnostics and self.monitor is None:
            # eager: hooks attached only for measured steps (zero cost otherwise); compiled:
            # registered once and gated, since attaching hooks would change the compiled graph
            self.monitor = SignalMonitor(pl_module, self.plan.layer_names, persistent=_is_compiled(pl_module))
            self.report = SignalReport(self.plan, None if not self.all_layers else self.plan.layer_names,
                                       self._rescale_fix)

    # ------------------------------------------------------------------ measuring and logging

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.look_ahead.on_train_start(trainer, pl_module)
        self._writers.figures.start()  # the depth figures' share of the run's time counts from here
        if self._announced or self.plan is None:
            return
        self._announced = True
        plan_text = self.plan.describe(warnings=False) + self.look_ahead.planned()  # warnings: emitted by plan_init
        _info(f"LyapunovInit plan:\n{plan_text}")
        relu = [layer.name for layer in self.plan.layers if layer.negative_slope == 0.0]  # units can die there
        logged = _logged_layers(self.plan, self.all_layers) if self.diagnostics else None
        self._writers.plan(trainer.loggers, plan_text, logged, relu, look_ahead=bool(self.look_ahead.planned()))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # the hooks stay attached from one measured step to the next (attaching them costs ~0.1 ms);
        # they are detached at the start of a step that is not measured, so that one pays nothing
        if self.monitor is not None:
            step = trainer.global_step
            measure = (trainer.is_global_zero and not trainer.sanity_checking and step != self._last_step
                       and measured_step(step, self.log_every_n_steps or trainer.log_every_n_steps))
            if measure:
                self.monitor.reset()  # nothing captured between steps is kept
                self.monitor.measure_input = self.report.first is None  # the output's scale at step 0
                self._last_step = trainer.global_step
            self.monitor.active = measure

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.look_ahead.on_train_batch_end(trainer, pl_module, outputs)
        monitor = self.monitor
        if monitor is None or not monitor.active or not monitor.captured:
            return
        with self._console.step():  # what this step finds goes out as one warning
            try:
                stats = monitor.compute()
            except Exception as error:  # noqa: BLE001 - diagnostics must never stop training
                self._warn(f"the signal statistics failed ({type(error).__name__}: {error}); diagnostics switched "
                           "off for the rest of the run, training continues")
                self._remove_hooks()
                return
            monitor.reset()
            step = self._last_step or 0
            first = self.report.first is None
            message = self.report.update(stats, step)
            if message:
                self._warn(message)
            self._writers.scalars(trainer.loggers, self.report.scalars(stats), step)
            if first:
                self._distributions(trainer)
            else:
                self._writers.deferred(trainer.loggers)  # the first depth figure, once the budget allows

    def _distributions(self, trainer: Trainer, final: bool = False) -> None:
        """The latest statistics' histograms and depth figure (once per measured step; the figure
        within its time budget, the ``final`` one always)."""
        if self.report is not None and self.report.last is not None:
            self._writers.distributions(trainer.loggers, self.report.last, self.plan,
                                        _logged_layers(self.plan, self.all_layers), self._last_step or 0,
                                        self.report.verdict, final=final)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.active = False
        if figure_due(trainer.current_epoch):
            self._distributions(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.look_ahead.on_train_end(trainer, pl_module)
        self._distributions(trainer, final=True)
        if self.plan is not None and trainer.is_global_zero:
            _info(self.summary())

    def summary(self) -> str:
        """The closing summary printed at the end of ``fit``: what was initialized, then the report's
        (the measured exponent against the plan's, the output's scale, the layers that collapsed)."""
        if self._initialized_here:
            what = self.plan.applied(f"seed {self._used_seed}", self._observed)
        else:
            why = "initialize=False" if not self.initialize else "weights from a checkpoint or an earlier fit"
            what = f"did not initialize ({why}); plan: scheme={self.plan.scheme!r}"
        return (self.report or SignalReport(self.plan)).summary(what + self.look_ahead.summary())

    def _warn(self, message: str) -> None:
        self._console.warn(message)

    # ------------------------------------------------------------------ cleanup

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        if self.monitor is not None:
            self.monitor.remove()
            self.monitor = None


def measured_step(step: int, every: int) -> bool:
    """Whether the callback measures ``step``: every ``every``-th step, and steps 1, 2, 4, 8, ... below
    ``every``: the first optimizer steps are when a deep narrow net is most easily thrown out (Adam's
    first steps move every weight by the full learning rate; a calibrated width-2, depth-40 net's
    output was measured to jump by e^16 at step 1)."""
    return step % every == 0 or (step < every and step & (step - 1) == 0)


class _Console:
    """The callback's warnings: ``LyapunovWarning`` s on rank zero, on a line of their own under a
    progress bar; inside :meth:`step`, held and emitted as one warning at its end."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self._held: list[str] | None = None

    def warn(self, message: str) -> None:
        if self._held is not None:
            self._held.append(message)
            return
        with _clear_progress_bar(self.trainer):
            _warn_rank_zero(f"LyapunovInit: {message}")

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held:
                self.warn("\n".join(held))


def _clear_progress_bar(trainer: Trainer | None) -> contextlib.AbstractContextManager:
    """Lightning's tqdm bar writes a line without its newline: clear it around a warning (and redraw it
    after), so that the warning starts on a line of its own."""
    bar = getattr(trainer, "progress_bar_callback", None) if trainer is not None else None
    if bar is None or not getattr(bar, "is_enabled", False):
        return contextlib.nullcontext()
    try:
        from tqdm import tqdm
    except Exception:  # noqa: BLE001 - no tqdm: Lightning's rich bar redirects the console itself
        return contextlib.nullcontext()
    return tqdm.external_write_mode(file=sys.stderr)


def _logged_layers(plan: InitPlan | None, all_layers: bool) -> list[str]:
    """The layers whose statistics are logged one by one: all, or the first, middle and last."""
    names = plan.layer_names if plan is not None else []
    return list(names) if all_layers else featured_layers(names)


def _initialize_or_plan(callback: LyapunovInit, trainer: Trainer, pl_module: LightningModule) -> InitPlan:
    """Initialize the model on what the callback observes (the first training batch), once; or, when
    its weights come from a checkpoint or stay as they are, plan it for the diagnostics' predictions only."""
    checkpoint = None if callback.initialized else checkpoint_to_restore(trainer)
    if checkpoint is not None:
        # the checkpoint's weights overwrite the model right after setup: draw nothing (the
        # global generator stays untouched) and never initialize this model later
        _info(f"LyapunovInit: weights come from the checkpoint {checkpoint}, not initialized")
        callback.initialized = True
    elif not callback.initialize and not callback.initialized:
        _info("LyapunovInit(initialize=False): weights left as they are, diagnostics only")
        callback.initialized = True
    seen = observation(trainer, pl_module, callback.spec, callback.example_input, callback.forward)
    callback._rescale_fix = None if seen.example is not None else NO_RERUN_FIX  # nothing to calibrate or sample on
    if seen.missing is not None:
        _warn_rank_zero(seen.missing)
    spec = callback.spec
    if callback.initialized:
        with seen.planning(pl_module):
            plan = plan_init(pl_module, spec, example_input=seen.example, forward=seen.forward)
    else:
        if seen.example is None and spec.calibration_method is not None:  # nothing to calibrate on
            if not spec.calibration_optional:
                callback._warn(f"no training pass to run again, so calibrate={spec.calibrate!r} is skipped")
            spec = spec.replace(calibrate=None, calibrate_target=DEFAULT_TARGET, stream_growth=STREAM_GROWTH)
        seed = callback.seed if callback.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        with seen.planning(pl_module):
            plan = callback.look_ahead.initialize(pl_module, spec, seen.example, seen.forward, seed)
        callback.initialized = callback._initialized_here = True
        callback._used_seed, callback._observed = seed, seen.how
    if seen.missing is not None:
        plan.warnings.append(seen.missing)
    return plan


def _restore(callback: LyapunovInit) -> None:
    """A resumed run predicts from what the initializing run measured (its state), not theory's draw."""
    if callback.plan is not None and callback._measured is not None:
        message = restore_measured(callback.plan, callback._measured)
        callback._measured = None
        if message:
            callback._warn(message)


def _refuse_unused(**settings: tuple[Any, Any]) -> None:
    """``initialize=False``: a setting away from its default (``name=(value, default)``) would do nothing."""
    unused = [f"{name}={value!r}" for name, (value, default) in settings.items() if value != default]
    if unused:
        raise ValueError(f"initialize=False leaves the weights alone, so {', '.join(unused)} would do nothing: "
                         f"drop {'it' if len(unused) == 1 else 'them'}, or use initialize=True")


def _is_compiled(module: torch.nn.Module) -> bool:
    """Whether ``module`` is, contains or will be run as a ``torch.compile``d module."""
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except Exception:  # torch without dynamo
        return False
    compiled_by_lightning = getattr(module, "_compiler_ctx", None) is not None
    return compiled_by_lightning or any(isinstance(m, OptimizedModule) for m in module.modules())
