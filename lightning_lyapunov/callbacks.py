"""The :class:`LyapunovInit` Lightning callback: initialize by theory, then watch the signal.

Logged keys (every logger, as scalars):

- ``lyapunov/<stat>/<layer>`` for ``stat`` in :data:`~lightning_lyapunov.diagnostics.STAT_KEYS`
  (``log_norm_mean``, ``log_norm_std``, ``emp_var_mean``, ``emp_var_collapsed``,
  ``kurtosis_median``, ``kurtosis_pooled``, ``dead_fraction``, ``nonfinite``), measured on the
  outputs (pre-activations) of the planned layers;
- ``lyapunov/exponent_estimate``: the slope of the mean log-norm over depth;
- a statistic that a measurement cannot define (a batch of one sample, a one-layer model, a layer
  not called) is not logged rather than logged as NaN, and one warning says why;
- at step 0: ``lyapunov/predicted/exponent`` (mean per-layer exponent of the plan),
  ``lyapunov/predicted/drift`` and ``lyapunov/predicted/spread`` (whole network), and
  ``lyapunov/predicted/log_norm/<layer>`` (cumulative predicted drift up to the layer).

With a :class:`~lightning.pytorch.loggers.TensorBoardLogger` the plan is logged as text
(``lyapunov/plan``), and at the first measured step and at the end of every training epoch the
per-sample log-norms as histograms (``lyapunov/log_norm_hist/<layer>``) and a figure of the
log-norm against depth with the theory line and its +-2 sqrt(l) s band (``lyapunov/log_norm_vs_depth``,
needs matplotlib).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_lyapunov._checks import check_bool, check_choice, check_int
from lightning_lyapunov._lifecycle import check_single, check_strategy, checkpoint_to_restore
from lightning_lyapunov.calibration import calibrate_, check_calibrate
from lightning_lyapunov.diagnostics import SignalMonitor, SignalStats
from lightning_lyapunov.surgery import InitPlan, apply_init, check_plan_arguments, record_calibration

__all__ = ["LyapunovInit"]


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
        log_every_n_steps: measuring cadence; ``None`` uses the Trainer's ``log_every_n_steps``.
        seed: seed of the weights' generator; ``None`` draws one from torch's global generator
            (so ``seed_everything`` makes runs reproducible).
        conv: how convolutions are drawn: ``"full"`` kernel or ``"delta"`` (a matrix at the centre
            tap); ``None``: ``"delta"`` for Stiefel, ``"full"`` otherwise (see ``plan_init``).
        calibrate: after the draw, rescale the planned layers on the first training batch:
            ``"layers"`` (each layer's output to root-mean-square 1, the last to
            ``calibrate_target``), ``"output"`` (one factor spread over all layers so the output's
            root-mean-square is ``calibrate_target``) or ``None`` (theory's draw only). Skipped,
            with a warning, when no training batch is available. Under DDP every rank calibrates
            in ``setup`` and DDP then copies rank 0's weights to all ranks.
        calibrate_target: the output's root-mean-square after calibration.

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
        calibrate: Literal["layers", "output"] | None = None,
        calibrate_target: float = 1.0,
    ) -> None:
        super().__init__()
        check_plan_arguments(scheme, distribution, moment, negative_slope, include, exclude, conv)
        check_choice("sampled", sampled, (False, True, "network", "layerwise"))
        check_calibrate(calibrate, calibrate_target)
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
        self.seed = seed
        self.conv = conv
        self.calibrate = calibrate
        self.calibrate_target = calibrate_target
        self.initialized = False
        self.plan: InitPlan | None = None
        self.monitor: SignalMonitor | None = None
        self._announced = False
        self._last_step: int | None = None
        self.first_stats: SignalStats | None = None
        self.last_stats: SignalStats | None = None
        self._warned: set[tuple[str, str]] = set()
        self._no_observation: str | None = None

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
            rank_zero_info(f"LyapunovInit: weights come from the checkpoint {checkpoint}, not initialized")
            self.initialized = True
        if not self.initialized or self.plan is None:
            plan_kwargs.update(self._observation(trainer, pl_module))
        if not self.initialized:
            generator = torch.Generator().manual_seed(self._seed())
            if self.calibrate and "example_input" not in plan_kwargs:
                rank_zero_warn(f"LyapunovInit: no training batch, so calibrate={self.calibrate!r} is skipped")
            if self.sampled:
                self.plan = self._sample(pl_module, generator, plan_kwargs)
            elif self.calibrate and "example_input" in plan_kwargs:
                self.plan = apply_init(pl_module, generator=generator, calibrate=self.calibrate,
                                       calibrate_target=self.calibrate_target, **plan_kwargs)
            else:
                self.plan = apply_init(pl_module, generator=generator, **plan_kwargs)
            self.initialized = True
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
            rank_zero_warn(self._no_observation)
            return {}
        return {"example_input": batch, "forward": call}

    def _sample(self, pl_module: LightningModule, generator: torch.Generator, plan_kwargs: dict[str, Any]) -> InitPlan:
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
            rank_zero_info(f"LyapunovInit sampled ({self.sampled}): {report}")
            if self.calibrate and batch is not None:
                record_calibration(report.plan, calibrate_(pl_module, report.plan.layers, batch, self.calibrate,
                                                           self.calibrate_target, call))
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

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._announced or self.plan is None:
            return
        self._announced = True
        rank_zero_info(f"LyapunovInit plan:\n{self.plan}")
        if not trainer.loggers:
            rank_zero_warn("LyapunovInit: no logger, so the signal diagnostics are measured but not logged")
            return
        predicted = _predicted_scalars(self.plan)
        for logger in trainer.loggers:
            logger.log_metrics(predicted, step=0)
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("lyapunov/plan", _markdown(str(self.plan)), 0)
        if self.diagnostics and not any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            rank_zero_warn(
                "LyapunovInit: the plan text, the log-norm histograms and the depth figure need a "
                "TensorBoardLogger; the other loggers get the scalars only"
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
        if self.monitor is not None:
            self.monitor.active = self._should_measure(trainer)
            if self.monitor.active:
                self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        monitor = self.monitor
        if monitor is None or not monitor.active:
            return
        monitor.active = False
        if not monitor.captured:
            return
        stats = monitor.compute()
        monitor.reset()
        first = self.first_stats is None
        if first:
            self.first_stats = stats
        self.last_stats = stats
        step = self._last_step or 0
        self._warn_about(stats, step, check_exponent=first)
        self._warn_undefined(stats)
        scalars = stats.to_scalars(defined_only=True)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        if first:
            self._log_distributions(trainer, stats, step)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.last_stats is not None and self._last_step:
            self._log_distributions(trainer, self.last_stats, self._last_step)

    def _log_distributions(self, trainer: Trainer, stats: SignalStats, step: int) -> None:
        writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not writers:
            return
        figure = _depth_figure(stats, self.plan)
        for writer in writers:
            for name, values in stats.log_norms.items():
                finite = values[np.isfinite(values)]
                if finite.size:
                    writer.add_histogram(f"lyapunov/log_norm_hist/{name}", finite, step)
            if figure is not None:
                writer.add_figure("lyapunov/log_norm_vs_depth", figure, step, close=False)
        if figure is not None:
            import matplotlib.pyplot as plt

            plt.close(figure)

    def _warn_about(self, stats: SignalStats, step: int, check_exponent: bool) -> None:
        table = stats.as_dict()
        nonfinite = [n for n, v in table["nonfinite"].items() if v > 0]
        collapsed = [n for n, v in table["emp_var_collapsed"].items() if v >= 0.5]
        self._warn_layers(
            "nonfinite", nonfinite, f"NaN/Inf activations at step {step} in {{layers}}: lower the learning "
            "rate or check the inputs",
        )
        self._warn_layers(
            "collapse", collapsed, f"at step {step} the empirical variance of at least half of the units "
            "collapsed (below 1e-3 of the layer's mean second moment) in {layers}",
        )
        plan = self.plan
        if not check_exponent or plan is None or plan.predicted_drift is None or len(plan.layers) < 4:
            return
        depth = len(plan.layers)
        measured, predicted = stats.exponent_estimate, plan.predicted_drift / depth
        # the least-squares slope of a random walk over L steps has variance ~ 1.2 s^2 / L
        tolerance = max(0.05, 4.0 * math.sqrt(1.2 * plan.predicted_spread**2 / depth**2))
        if math.isfinite(measured) and abs(measured - predicted) > tolerance:
            self._warn_once(
                ("network", "exponent"),
                f"measured Lyapunov exponent {measured:+.3f} per layer at step {step} is far from the "
                f"predicted {predicted:+.3f} (tolerance {tolerance:.3f}): check the detected slopes in the plan",
            )

    def _warn_undefined(self, stats: SignalStats) -> None:
        """One warning for the reasons not yet given why some statistics are not logged."""
        by_reason: dict[str, set[str]] = {}
        for key, reason in stats.undefined().items():
            by_reason.setdefault(reason, set()).add(key.split("/")[0])
        new = {reason: keys for reason, keys in by_reason.items() if ("undefined", reason) not in self._warned}
        if new:
            self._warned.update(("undefined", reason) for reason in new)
            listed = "; ".join(f"{', '.join(sorted(keys))} ({reason})" for reason, keys in new.items())
            rank_zero_warn(f"LyapunovInit: not logging statistics that are undefined here, rather than NaN: {listed}")

    def _warn_once(self, key: tuple[str, str], message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(f"LyapunovInit: {message}")

    def _warn_layers(self, kind: str, layers: list[str], message: str) -> None:
        """One warning for the layers not yet warned about for ``kind`` (each layer once per run)."""
        new = [name for name in layers if (name, kind) not in self._warned]
        if not new:
            return
        self._warned.update((name, kind) for name in new)
        shown = ", ".join(repr(name) for name in new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        rank_zero_warn(f"LyapunovInit: {message.format(layers='layer' + ('s ' if len(new) > 1 else ' ') + shown)}")

    # ------------------------------------------------------------------ cleanup

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
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


def _predicted_scalars(plan: InitPlan) -> dict[str, float]:
    exponents = [layer.init.exponent for layer in plan.layers]
    if any(e is None for e in exponents):
        return {}
    scalars = {
        "lyapunov/predicted/exponent": float(np.mean(exponents)),
        "lyapunov/predicted/drift": float(plan.predicted_drift),
        "lyapunov/predicted/spread": float(plan.predicted_spread),
    }
    for name, cumulative in zip(plan.layer_names, np.cumsum(exponents)):
        scalars[f"lyapunov/predicted/log_norm/{name}"] = float(cumulative)
    return scalars


def _markdown(text: str) -> str:
    """Monospace block for TensorBoard's markdown text plugin."""
    return "\n".join("    " + line for line in text.splitlines())


def _depth_figure(stats: SignalStats, plan: InitPlan | None):
    """Mean log-norm (+- its batch std) against depth, the theory line and its +-2 sqrt(l) s band."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    table = stats.as_dict()
    mean = np.array([table["log_norm_mean"][n] for n in stats.names])
    std = np.array([table["log_norm_std"][n] for n in stats.names])
    depth = np.arange(1, len(mean) + 1)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.errorbar(depth, mean, yerr=std, fmt="o-", ms=3, label="measured (batch mean +- std)")
    if plan is not None and plan.predicted_drift is not None and np.isfinite(mean[0]):
        exponents = np.array([layer.init.exponent for layer in plan.layers])
        variances = np.array([layer.init.variance for layer in plan.layers])
        line = mean[0] + np.concatenate([[0.0], np.cumsum(exponents[1:])])
        band = 2.0 * np.sqrt(np.concatenate([[0.0], np.cumsum(variances[1:])]))
        axis.plot(depth, line, "k--", label="theory: sum of exponents")
        axis.fill_between(depth, line - band, line + band, color="k", alpha=0.12, label="+-2 sqrt(l) s")
    axis.set_xlabel("layer")
    axis.set_ylabel("log(||h|| / sqrt(d))")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
