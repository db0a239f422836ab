"""The :class:`LyapunovInit` Lightning callback: initialize by theory, then watch the signal.

What it logs (a summary, a few layers, a custom-scalars layout, histograms and a depth-profile
figure) is described in :mod:`lightning_lyapunov.dashboard`. On the console it prints the plan once
(compact), one warning per measured step that finds something new, and a closing summary at the
end of ``fit``. Its warnings have the category :class:`LyapunovWarning` and are printed without a
``file:line:`` prefix. A logger or writer that fails (a full disk, a logger that rejects the
``lyapunov/...`` keys) never stops training: the callback warns once and stops writing that output
to that logger. A statistic that a measurement cannot define (a batch of one sample, a
one-layer model, a layer not called) is not logged rather than logged as NaN, and one warning
says why.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lightning_lyapunov import dashboard
from lightning_lyapunov._checks import check_bool, check_choice, check_int
from lightning_lyapunov._lifecycle import check_single, check_strategy, checkpoint_to_restore
from lightning_lyapunov.calibration import DEFAULT_TARGET, calibrate_, check_calibrate
from lightning_lyapunov.diagnostics import STAT_KEYS, SignalMonitor, SignalStats
from lightning_lyapunov.surgery import InitPlan, apply_init, check_plan_arguments

__all__ = ["LyapunovInit", "LyapunovWarning"]


class LyapunovWarning(UserWarning):
    """Category of :class:`LyapunovInit`'s warnings, printed as the bare message (no ``file:line:``).

    Silence them with ``warnings.filterwarnings("ignore", category=LyapunovWarning)``.
    """


_format_other_warnings = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' signature
    if isinstance(category, type) and issubclass(category, LyapunovWarning):
        return f"{message}\n"
    return _format_other_warnings(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning

#: The plan and the closing summary go to this logger (INFO, rank zero; a child of Lightning's, so
#: they print where Lightning's messages do). Quiet it with ``log.setLevel(logging.WARNING)``.
log = logging.getLogger("lightning.pytorch.callbacks.lyapunov")


@rank_zero_only
def _info(message: str) -> None:
    log.info(message)


def _resolve_calibrate(calibrate: Any, scheme: str) -> Any:
    if calibrate == "auto":
        return "layers" if scheme == "lyapunov" else None
    return calibrate


class LyapunovInit(Callback):
    r"""Initialize every weight layer by theory at the start of ``fit`` and log the signal live.

    At ``setup(stage="fit")``, once (never when ``fit(ckpt_path=...)`` restores a checkpoint, on a
    second ``fit``, or in validate/test/predict), the callback plans the scheme per layer
    (:func:`~lightning_lyapunov.plan_init`), prints the plan and writes the weights. The Lyapunov
    scheme sets each layer's scale so that the log-norm of the signal has zero drift:
    ``E log r(x_{l+1}) = log r(x_l)`` with ``r(x) = ||x|| / sqrt(d)``. While training, forward hooks
    measure per layer the log-norm, empirical variance, kurtosis and dead units on logging steps.

    Args:
        scheme: ``"lyapunov"``, ``"fractional"``, ``"stiefel"``, ``"he"``, ``"glorot"``,
            ``"orthogonal"`` or ``"zero"``.
        distribution: ``"gaussian"`` or ``"orthogonal"`` weights (for ``lyapunov`` and ``fractional``).
        moment: the moment order ``s`` in (0, 2] for ``scheme="fractional"`` (``s = 2`` is He).
        sampled: ``False``; ``True`` or ``"network"`` to keep the best of ``ceil(2 sqrt(L))``
            candidate networks on a training batch; ``"layerwise"`` to choose each layer's draw.
        negative_slope: ``None`` (detect the activation after each layer), a slope in [0, 1] for
            every layer, or a mapping ``{regex: slope}`` on qualified module names.
        include: regex or list of regexes: only these layers (qualified names, ``re.search``).
        exclude: regex or list of regexes: leave these layers alone.
        diagnostics: measure and log the signal statistics.
        initialize: ``False`` leaves the weights alone (pretrained weights, fine-tuning): the plan
            is made for the diagnostics' predictions only.
        all_layers: log every layer's statistics as scalars and histograms; by default only the
            first, middle and last planned layer's (the summary and the depth figure cover all).
        log_every_n_steps: measuring cadence; ``None`` uses the Trainer's ``log_every_n_steps``.
        seed: seed of the weights' generator; ``None`` draws one from torch's global generator
            (so ``seed_everything`` makes runs reproducible).
        conv: how convolutions are drawn: ``"full"`` kernel or ``"delta"`` (a matrix at the centre
            tap); ``None``: ``"delta"`` for Stiefel, ``"full"`` otherwise (see ``plan_init``).
        calibrate: after the draw, rescale the planned layers on the first training batch:
            ``"layers"`` (each layer's output to root-mean-square 1, the last to
            ``calibrate_target``), ``"output"`` (one factor spread over all layers so the output's
            root-mean-square is ``calibrate_target``) or ``None`` (theory's draw only). The default
            ``"auto"`` is ``"layers"`` for ``scheme="lyapunov"`` and ``None`` for the other schemes
            (the baselines stay the published ones). Skipped when no training batch is available
            (with a warning when asked for explicitly). Under DDP every rank calibrates in
            ``setup`` and DDP then copies rank 0's weights to all ranks.
        calibrate_target: the output's root-mean-square after calibration (``0.1`` starts near
            the zero function: more deep narrow nets train with Adam, plain SGD starts slower).

    Attributes:
        plan: the :class:`~lightning_lyapunov.InitPlan` applied (or, after a resume, planned).
        first_stats: the :class:`~lightning_lyapunov.diagnostics.SignalStats` of the first
            measured step (the signal at initialization); ``last_stats``: of the latest one.

    Example::

        trainer = Trainer(callbacks=[LyapunovInit(scheme="lyapunov", distribution="orthogonal")])

    In a LightningCLI config::

        trainer:
          callbacks:
            - class_path: lightning_lyapunov.LyapunovInit
              init_args: {scheme: lyapunov, distribution: gaussian}
    """

    def __init__(
        self,
        scheme: Literal["lyapunov", "fractional", "stiefel", "he", "glorot", "orthogonal", "zero"] = "lyapunov",
        distribution: Literal["gaussian", "orthogonal"] = "orthogonal",
        moment: float | None = None,
        sampled: bool | Literal["network", "layerwise"] = False,
        negative_slope: float | dict[str, float] | None = None,
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
        diagnostics: bool = True,
        log_every_n_steps: int | None = None,
        seed: int | None = None,
        conv: Literal["full", "delta"] | None = None,
        calibrate: Literal["auto", "layers", "output"] | None = "auto",
        calibrate_target: float = DEFAULT_TARGET,
        all_layers: bool = False,
        initialize: bool = True,
    ) -> None:
        super().__init__()
        check_plan_arguments(scheme, distribution, moment, negative_slope, include, exclude, conv)
        check_choice("sampled", sampled, (False, True, "network", "layerwise"))
        check_calibrate(_resolve_calibrate(calibrate, scheme), calibrate_target)
        if sampled and scheme == "zero":
            raise ValueError("sampled needs a random scheme; 'zero' is deterministic: use sampled=False")
        check_bool("diagnostics", diagnostics)
        check_int("log_every_n_steps", log_every_n_steps, minimum=1, allow_none=True,
                  allowed="an integer >= 1 or None (None: the Trainer's log_every_n_steps)")
        check_int("seed", seed, minimum=0, maximum=2**63 - 1, allow_none=True,
                  allowed="an integer in [0, 2**63) or None (None: drawn from torch's global generator)")
        self.scheme = scheme
        self.distribution = distribution
        self.moment = moment
        self.sampled: str | None = "network" if sampled is True else (sampled or None)
        self.negative_slope = negative_slope
        self.include = include
        self.exclude = exclude
        self.diagnostics = diagnostics
        self.log_every_n_steps = log_every_n_steps
        check_bool("all_layers", all_layers)
        check_bool("initialize", initialize)
        if not initialize and (sampled or calibrate not in ("auto", None)):
            raise ValueError(f"initialize=False leaves the weights alone, so sampled={sampled!r} and "
                             f"calibrate={calibrate!r} would do nothing: drop them, or use initialize=True")
        self.seed = seed
        self.conv = conv
        self.calibrate = calibrate
        self.calibrate_target = calibrate_target
        self.all_layers = all_layers
        self.initialize = initialize
        self.initialized = False
        self.plan: InitPlan | None = None
        self.monitor: SignalMonitor | None = None
        self._announced = False
        self._last_step: int | None = None
        self.first_stats: SignalStats | None = None
        self.last_stats: SignalStats | None = None
        self._warned: set[tuple[str, str]] = set()
        self._no_observation: str | None = None
        self._off: set[tuple[int, str]] = set()  # (id(logger), output) switched off after a failure
        self._distribution_steps: set[int] = set()
        self._scalars: tuple[InitPlan | None, dashboard.StepScalars] | None = None  # for this plan, built once
        self._collapsed: dict[str, int] = {}  # layer -> first step its empirical variance collapsed
        self._input_log_norm: torch.Tensor | None = None
        self._input_hook: Any = None
        self._used_seed: int | None = None
        self._sampling: str = ""
        self._initialized_here = False

    @property
    def calibration(self) -> str | None:
        """The calibration ``calibrate`` resolves to: ``"auto"`` is ``"layers"`` for the Lyapunov
        scheme, ``None`` for the others."""
        return _resolve_calibrate(self.calibrate, self.scheme)

    # ------------------------------------------------------------------ state

    @property
    def state_key(self) -> str:
        return self._generate_state_key(scheme=self.scheme, distribution=self.distribution, moment=self.moment)

    def state_dict(self) -> dict[str, Any]:
        return {"initialized": bool(self.initialized), "scheme": str(self.scheme)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.initialized = bool(state_dict.get("initialized", False))
        if self.initialized:
            self._announced = True  # resumed: the plan was logged by the run that initialized

    # ------------------------------------------------------------------ setup

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_single(trainer.callbacks, LyapunovInit, lambda cb: f"scheme={cb.scheme!r}")
        if stage != "fit":
            return
        check_strategy(trainer.strategy, "LyapunovInit")
        plan_kwargs = dict(
            scheme=self.scheme, distribution=self.distribution, moment=self.moment,
            negative_slope=self.negative_slope, include=self.include, exclude=self.exclude, conv=self.conv,
        )
        checkpoint = None if self.initialized else checkpoint_to_restore(trainer)
        if checkpoint is not None:
            # the checkpoint's weights overwrite the model right after setup: draw nothing (the
            # global generator stays untouched) and never initialize this model later
            _info(f"LyapunovInit: weights come from the checkpoint {checkpoint}, not initialized")
            self.initialized = True
        elif not self.initialize and not self.initialized:
            _info("LyapunovInit(initialize=False): weights left as they are, diagnostics only")
            self.initialized = True
        if not self.initialized or self.plan is None:
            plan_kwargs.update(self._observation(trainer, pl_module))
        if not self.initialized:
            self._used_seed = self._seed()
            calibrate = self.calibration if "example_input" in plan_kwargs else None
            if self.calibration and calibrate is None and self.calibrate != "auto":
                self._warn(f"no training batch, so calibrate={self.calibrate!r} is skipped")
            try:
                self.plan = self._initialize(pl_module, plan_kwargs, calibrate)
            except ValueError as error:
                if calibrate is None or self.calibrate != "auto":
                    raise
                self._warn(f"calibrate='auto' skipped, theory's draw kept: {error}")
                self.plan = self._initialize(pl_module, plan_kwargs, None)
            self.initialized = self._initialized_here = True
        elif self.plan is None:
            from lightning_lyapunov.surgery import plan_init

            self.plan = plan_init(pl_module, **plan_kwargs)  # for the diagnostics' predictions only
        if self._no_observation is not None:
            self.plan.warnings.append(self._no_observation)
            self._no_observation = None
        if self.diagnostics and self.monitor is None:
            # eager: hooks attached only for measured steps (zero cost otherwise); compiled:
            # registered once and gated, since attaching hooks would change the compiled graph
            self.monitor = SignalMonitor(pl_module, self.plan.layer_names, persistent=_is_compiled(pl_module))

    def _observation(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """``example_input``/``forward`` for planning: the first training batch, run the way the
        module takes it (``forward``, else ``training_step``); ``{}`` (torch.fx) with a warning if none."""
        from lightning_lyapunov.training_batch import training_batch, training_call

        self._no_observation = None
        batch, why = training_batch(trainer, pl_module)
        call = None
        if batch is not None:
            call, why = training_call(pl_module, batch)
        if call is None:
            self._no_observation = (
                f"LyapunovInit observed no training pass ({why}): slopes from torch.fx tracing, or module "
                "registration order where tracing fails"
            )
            rank_zero_warn(self._no_observation, category=LyapunovWarning)
            return {}
        return {"example_input": batch, "forward": call}

    def _initialize(self, pl_module: LightningModule, plan_kwargs: dict[str, Any], calibrate: str | None) -> InitPlan:
        """Draw (sampled or not) from the seed's generator, then ``calibrate`` on the observed batch."""
        generator = torch.Generator().manual_seed(self._used_seed)
        if self.sampled:
            return self._sample(pl_module, generator, dict(plan_kwargs), calibrate)
        if calibrate:
            return apply_init(pl_module, generator=generator, calibrate=calibrate,
                              calibrate_target=self.calibrate_target, **plan_kwargs)
        return apply_init(pl_module, generator=generator, **plan_kwargs)

    def _sample(self, pl_module: LightningModule, generator: torch.Generator, plan_kwargs: dict[str, Any],
                calibrate: str | None) -> InitPlan:
        """The sampled scheme on the observed batch, then the calibration; on any error every
        parameter is restored."""
        from lightning_lyapunov.sampling import sample_lyapunov_
        from lightning_lyapunov.training_batch import network_output

        batch, call = plan_kwargs.pop("example_input", None), plan_kwargs.pop("forward", None)
        saved = {name: p.detach().clone() for name, p in pl_module.named_parameters()}
        try:
            report = sample_lyapunov_(
                pl_module, batch, forward=None if call is None else network_output(call),
                layerwise=self.sampled == "layerwise", generator=generator, **plan_kwargs,
            )
            self._sampling = _describe_sampling(report, self.sampled)
            if calibrate and batch is not None:
                calibrate_(pl_module, report.plan, batch, calibrate, self.calibrate_target, call)
        except BaseException:
            with torch.no_grad():
                for name, p in pl_module.named_parameters():
                    p.copy_(saved[name])
            raise
        return report.plan

    def _seed(self) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(torch.randint(0, 2**62, (1,)).item())

    # ------------------------------------------------------------------ logging

    def _layers(self) -> list[str]:
        """The layers whose statistics are logged one by one (scalars, histograms)."""
        names = self.plan.layer_names if self.plan is not None else []
        return list(names) if self.all_layers else dashboard.featured_layers(names)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._announced or self.plan is None:
            return
        self._announced = True
        plan_text = self.plan.describe(warnings=False)  # plan_init has emitted its warnings already
        _info(f"LyapunovInit plan:\n{plan_text}" + (f"\n{self._sampling}" if self._sampling else ""))
        if not trainer.loggers:
            self._warn("no logger, so the signal diagnostics are measured but not logged")
            return
        boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        for logger in boards:
            self._emit(logger, "plan text", lambda w: w.add_text("lyapunov/plan", _markdown(plan_text), 0))
            if self.diagnostics:
                layout = dashboard.layout(self._layers())
                self._emit(logger, "custom-scalars layout", lambda w: w.add_custom_scalars(layout))
        if self.diagnostics and not boards:
            self._warn(
                "the plan text, the log-norm histograms and the depth figure need a TensorBoardLogger; "
                "the other loggers get the scalars only"
            )

    def _emit(self, logger: Any, output: str, write: Callable[[Any], None]) -> None:
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

    def _should_measure(self, trainer: Trainer) -> bool:
        every = self.log_every_n_steps or trainer.log_every_n_steps
        step = trainer.global_step
        return (
            self.monitor is not None
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and step % every == 0
            and step != self._last_step
        )

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # the hooks stay attached from one measured step to the next (attaching them costs ~0.1 ms);
        # they are detached at the start of a step that is not measured, so that one pays nothing
        if self.monitor is not None:
            measure = self._should_measure(trainer)
            if measure:
                self.monitor.reset()  # nothing captured between steps is kept
                self._last_step = trainer.global_step
                if self.first_stats is None and self._input_hook is None and self.plan and self.plan.layers:
                    module = self.plan.layers[0].module
                    if module is not None:
                        self._input_hook = module.register_forward_pre_hook(self._capture_input)
            self.monitor.active = measure

    def _capture_input(self, module: torch.nn.Module, args: tuple) -> None:
        """Mean over the batch of ``log(||x_b|| / sqrt(d))`` of the first planned layer's input, once."""
        self._input_hook.remove()
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is not None and x.dim() > 0 and x.numel() > 0:
            with torch.no_grad():
                flat = x.detach().float().reshape(x.shape[0], -1)
                self._input_log_norm = (torch.linalg.vector_norm(flat, dim=1) / math.sqrt(flat.shape[1])).log().mean()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        monitor = self.monitor
        if monitor is None or not monitor.active:
            return
        if not monitor.captured:
            return
        try:
            stats = monitor.compute()
        except Exception as error:  # noqa: BLE001 - diagnostics must never stop training
            self._warn(f"the signal statistics failed ({type(error).__name__}: {error}); diagnostics switched "
                       "off for the rest of the run, training continues")
            self._remove_hooks()
            return
        monitor.reset()
        first = self.first_stats is None
        if first:
            self.first_stats = stats
        self.last_stats = stats
        step = self._last_step or 0
        self._warn_about(stats, step, first=first)
        self._warn_undefined(stats)
        if self._scalars is None or self._scalars[0] is not self.plan or self._scalars[1].names != stats.names:
            self._scalars = (self.plan, dashboard.StepScalars(self.plan, stats.names, self._layers()))
        scalars = self._scalars[1](stats)
        for logger in trainer.loggers:
            self._emit(logger, "scalars", lambda lg: lg.log_metrics(scalars, step=step))
        if first:
            self._log_distributions(trainer, stats, step)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.active = False
        if self.last_stats is not None and dashboard.figure_due(trainer.current_epoch):
            self._log_distributions(trainer, self.last_stats, self._last_step or 0)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.last_stats is not None:
            self._log_distributions(trainer, self.last_stats, self._last_step or 0)
        if self.plan is not None and trainer.is_global_zero:
            _info(self.summary())

    def _log_distributions(self, trainer: Trainer, stats: SignalStats, step: int) -> None:
        """Histograms of the logged layers and the depth figure, once per step."""
        boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not boards or step in self._distribution_steps:
            return
        self._distribution_steps.add(step)
        layers = self._layers()

        def histograms(writer: Any) -> None:
            for name in layers:
                values = stats.log_norms.get(name, np.zeros(0))
                finite = values[np.isfinite(values)]
                if finite.size:
                    writer.add_histogram(f"lyapunov/log_norm_hist/{name}", finite, step)

        figure = None
        if (-1, "depth figure") not in self._off:
            try:
                figure = dashboard.depth_figure(stats, self.plan, f"{_run_name(boards[0])}, scheme={self.plan.scheme!r}: step {step}")
            except Exception as error:  # noqa: BLE001 - a plotting failure must not stop training
                self._off.add((-1, "depth figure"))
                self._warn(f"the depth figure failed ({type(error).__name__}: {error}); no more figures")
        for logger in boards:
            self._emit(logger, "histograms", histograms)
            if figure is not None:
                self._emit(logger, "depth figure",
                           lambda w: w.add_figure("lyapunov/depth_profile", figure, step, close=False))
        if figure is not None:
            import matplotlib.pyplot as plt

            plt.close(figure)

    # ------------------------------------------------------------------ console

    def _warn(self, message: str) -> None:
        rank_zero_warn(f"LyapunovInit: {message}", category=LyapunovWarning)

    def _warn_about(self, stats: SignalStats, step: int, first: bool) -> None:
        """One warning per measured step that finds something new: NaN/Inf (each layer once per
        run) and, at the first measured step, collapsed empirical variance, an exponent far from
        the plan and an output scale far from the input's. Later collapses go to :meth:`summary`."""
        column = {key: stats.column(key) for key in ("nonfinite", "emp_var_collapsed")}
        problems = []
        nonfinite = [n for n, v in zip(stats.names, column["nonfinite"]) if v > 0 and (n, "nonfinite") not in self._warned]
        self._warned.update((n, "nonfinite") for n in nonfinite)
        if nonfinite:
            problems.append(f"NaN/Inf activations in {_layer_list(nonfinite)}: lower the learning rate or check "
                            "the inputs")
        collapsed = [n for n, v in zip(stats.names, column["emp_var_collapsed"]) if v >= 0.5 and n not in self._collapsed]
        self._collapsed.update((n, step) for n in collapsed)
        if first and collapsed:
            problems.append(
                "the empirical variance of at least half of the units collapsed (below 1e-3 of the layer's mean "
                f"second moment) in {_layer_list(collapsed)}"
            )
        if first:
            problems += [p for p in (self._exponent_problem(stats), self._scale_problem(stats)) if p]
        if problems:
            body = f" {problems[0]}" if len(problems) == 1 else "".join(f"\n  - {p}" for p in problems)
            self._warn(f"at step {step}:{body}")

    def _exponent_problem(self, stats: SignalStats) -> str | None:
        plan = self.plan
        if plan is None or plan.predicted_drift is None or len(plan.layers) < 4:
            return None
        depth = len(plan.layers)
        measured, predicted = stats.exponent_estimate, plan.predicted_drift / depth
        # the least-squares slope of a random walk over L steps has variance ~ 1.2 s^2 / L
        tolerance = max(0.05, 4.0 * math.sqrt(1.2 * plan.predicted_spread**2 / depth**2))
        if math.isfinite(measured) and abs(measured - predicted) > tolerance:
            return (f"measured Lyapunov exponent {measured:+.3f} per layer is far from the predicted "
                    f"{predicted:+.3f} (tolerance {tolerance:.3f}): check the detected slopes in the plan")
        return None

    def _warn_undefined(self, stats: SignalStats) -> None:
        """One warning for the reasons not yet given why some statistics are not logged."""
        by_reason: dict[str, set[str]] = {}
        for key, reason in stats.undefined().items():
            by_reason.setdefault(reason, set()).add(key.split("/")[0])
        new = {reason: keys for reason, keys in by_reason.items() if ("undefined", reason) not in self._warned}
        if new:
            self._warned.update(("undefined", reason) for reason in new)
            listed = "; ".join(f"{', '.join(sorted(keys))} ({reason})" for reason, keys in new.items())
            self._warn(f"not logging statistics that are undefined here, rather than NaN: {listed}")

    def _scale_problem(self, stats: SignalStats) -> str | None:
        """The output's scale against the input's at step 0, with what the plan predicts about it;
        nothing after a calibration, which set the output's scale (``calibrate_target``) on purpose."""
        gap = self._start_gap(stats)
        if gap is None or abs(gap) <= math.log(10.0) or getattr(self.plan, "calibration", None):
            return None
        plan, depth = self.plan, len(self.plan.layers)
        message = (f"the output's scale is {math.exp(gap):.3g} times the input's (mean log-norm "
                   f"{gap:+.1f} from the first layer's input to the last layer's output), so "
                   f"{'the loss and its gradients start large' if gap > 0 else 'the output starts near 0'}. ")
        drift, spread = plan.predicted_drift, plan.predicted_spread
        if drift is not None and abs(drift) > math.log(10.0):
            return message + (f"The plan predicts this: scheme={plan.scheme!r} drifts by {drift:+.1f} over "
                              f"{depth} layers; scheme='lyapunov' keeps the log-norm's drift at 0")
        if spread is None:
            return message.rstrip()
        return message + (
            "The median log-norm is preserved, not the scale of one draw: the plan predicts that the output's scale "
            f"varies by a factor of e^(+-2 sqrt(L) s) = e^(+-{2 * spread:.1f}) ~ {math.exp(2 * spread):.0e} between "
            f"random draws (L = {depth} layers). To start at the input's scale, use the calibrated mode "
            "(LyapunovInit(calibrate='output') or 'layers': rescaled on the first training batch) or keep the best of "
            "several draws (sampled=True)"
        )

    def _start_gap(self, stats: SignalStats | None) -> float | None:
        if stats is None or self._input_log_norm is None or self.plan is None:
            return None
        last = stats.values[-1, STAT_KEYS.index("log_norm_mean")]
        gap = float(last) - float(self._input_log_norm)
        return gap if math.isfinite(gap) else None

    def summary(self) -> str:
        """The closing summary printed at the end of ``fit``: what was initialized, the measured
        exponent against the plan's at the first and last measured step, the layers that collapsed."""
        plan = self.plan
        draws = "/".join(sorted({layer.init.distribution for layer in plan.layers}))
        if self._initialized_here:
            what = f"initialized {len(plan.layers)} layers: scheme={plan.scheme!r}, {draws} weights, seed {self._used_seed}"
            what += f"; {self._sampling}" if self._sampling else ""
            if getattr(plan, "calibration", None):
                what += f"; calibrated ({plan.calibration!r}) on the first training batch"
        else:
            why = "initialize=False" if not self.initialize else "weights from a checkpoint or an earlier fit"
            what = f"did not initialize ({why}); plan: scheme={plan.scheme!r}"
        lines = [f"LyapunovInit summary: {what}"]
        exponents = plan.layer_log_gains
        if self.first_stats is not None:
            predicted = _signed(sum(exponents) / len(exponents)) if None not in exponents else "n/a"
            measured = f"{_signed(self.first_stats.exponent_estimate)} at the first measured step"
            if self.last_stats is not self.first_stats:
                measured += f", {_signed(self.last_stats.exponent_estimate)} at step {self._last_step}"
            lines.append(f"  exponent per layer: plan {predicted}; measured {measured}")
            gap = self._start_gap(self.first_stats)
            if gap is not None:
                lines.append(f"  output scale at the first measured step: {math.exp(gap):.3g} x the input's")
            if self._collapsed:
                by_step: dict[int, list[str]] = {}
                for name, step in self._collapsed.items():
                    by_step.setdefault(step, []).append(name)
                steps = "; ".join(f"step {step}: {_layer_list(names)}" for step, names in sorted(by_step.items()))
                lines.append(f"  empirical variance collapsed in {len(self._collapsed)} of {len(plan.layers)} "
                             f"layers ({steps})")
            else:
                lines.append("  empirical variance: no layer collapsed")
        return "\n".join(lines)

    # ------------------------------------------------------------------ cleanup

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        if self._input_hook is not None:
            self._input_hook.remove()
        if self.monitor is not None:
            self.monitor.remove()
            self.monitor = None


# ---------------------------------------------------------------------- helpers


def _is_compiled(module: torch.nn.Module) -> bool:
    """Whether ``module`` is, contains or will be run as a ``torch.compile``d module."""
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except Exception:  # torch without dynamo
        return False
    compiled_by_lightning = getattr(module, "_compiler_ctx", None) is not None
    return compiled_by_lightning or any(isinstance(m, OptimizedModule) for m in module.modules())


def _layer_list(names: list[str], shown: int = 5) -> str:
    """``layers 'a', 'b' and 3 more``."""
    listed = ", ".join(repr(name) for name in names[:shown])
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"layer{'s' if len(names) > 1 else ''} {listed}{more}"


def _signed(value: float) -> str:
    """``+0.012``; ``+0.000`` rather than ``-0.000``; ``n/a`` for NaN (e.g. a one-layer model)."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f}" if abs(value) >= 5e-4 else "+0.000"


def _run_name(logger: Any) -> str:
    version = logger.version
    return f"{logger.name}/{version if isinstance(version, str) else f'version_{version}'}"


def _describe_sampling(report: Any, mode: str) -> str:
    """One line instead of the SamplingReport repr."""
    return (f"sampled ({mode}): kept candidate {report.chosen + 1} of {len(report.scores)}, |log-gain| "
            f"{report.chosen_score:.2f} on the probe batch (median of the candidates {report.median_score:.2f})")


def _markdown(text: str) -> str:
    """Monospace block for TensorBoard's markdown text plugin."""
    return "\n".join("    " + line for line in text.splitlines())


