"""The look-ahead inside Lightning's training loop: :class:`LookAheadFit`, the part of
:class:`~lightning_lyapunov.LyapunovInit` behind ``look_ahead=``.

Where each part runs (no user code runs outside the loop; the candidates train in the real steps):

* ``setup`` (before DDP wraps the model): the ``K`` candidates are drawn and calibrated on the first
  training batch, from the seeds :func:`~lightning_lyapunov.halving.candidate_seeds` derives from
  the run's seed; candidate 0 stays in the model (:func:`~lightning_lyapunov.lookahead.draw_candidates_`).
* ``on_train_start`` (optimizers, schedulers and DDP ready): rank 0's candidates and seeds are
  broadcast, so every process holds the same ones whatever its seed and batch; each candidate gets
  the optimizers' and schedulers' fresh state.
* ``on_train_batch_end`` after every batch that ended with an optimizer step (``global_step``
  advanced; with gradient accumulation, the last batch of the window): the step's training loss (the
  loss ``training_step`` returned, averaged over the accumulated batches) is recorded for the
  candidate in the model and, when due, the next candidate is swapped in (weights, buffers,
  optimizer and LR-scheduler state; see :mod:`lightning_lyapunov.candidates`), or a cut is made.
  At a cut the candidates' losses are averaged over the processes (``trainer.strategy.reduce``), so
  every process keeps the same ones. This hook runs after the LR schedulers' step and before
  validation and ``ModelCheckpoint`` (which Lightning runs last): they see a consistent candidate.

What it guarantees:

* **steps**: the look-ahead's steps are training steps: they count towards ``max_steps``,
  ``global_step`` and epochs; the kept candidate continues with its own weights, optimizer state and
  schedule position (its ``kept_steps``), as if it had trained alone on the batches it saw.
* **logging**: during the look-ahead, ``lyapunov/lookahead/candidate`` (the candidate trained at
  that step) and ``lyapunov/lookahead/loss/<k>`` (its training loss); at each cut
  ``lyapunov/lookahead/cut/<k>`` (the ranked losses); at the end ``lyapunov/lookahead/kept``, the
  report on the console and, for TensorBoard, the plan text with the report. Your own logged
  metrics are those of the candidate that trained at that step.
* **checkpoints**: :meth:`state_dict` holds the schedule and the candidates not in the model (plain
  Python values and CPU tensors): a run resumed from a checkpoint taken during the look-ahead
  continues it exactly (the checkpoint's schedule, whatever ``look_ahead=`` says now). Validation
  and checkpoints during the look-ahead see the candidate in the model at that step: a "best"
  checkpoint can be a candidate that was later cut.
* **manual optimization**: supported when ``training_step`` returns the loss (a tensor or a dict
  with ``"loss"``); a step is a batch with at least one optimizer step; every optimizer and
  scheduler is swapped. With automatic optimization a batch whose ``training_step`` returns None
  (Lightning skips it) does not count.
* not supported: sharded strategies (refused by the callback anyway); callbacks that keep their
  own copy of the weights (EMA, SWA) see every candidate. Shared by the candidates, not swapped:
  the data order, the mixed-precision loss scaler, and epoch-interval schedulers step for the
  candidate that trains the epoch's last batch.
* **training ends during the look-ahead** (``max_steps`` too small): the best candidate so far is
  kept, with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from ._checks import check_int
from ._writers import Writers, tensorboards
from .initialize import initialize_
from .halving import candidate_seeds, halving_steps
from .lookahead import DEFAULT_STEPS, LookAhead, check_look_ahead, draw_candidates_
from .plan import InitPlan
from .settings import InitSpec

__all__ = ["LookAheadFit"]


class LookAheadFit:
    """``look_ahead`` candidates (``None``: no look-ahead) in at most ``steps`` training steps, for
    :class:`~lightning_lyapunov.LyapunovInit` (module docstring). ``writers``, ``info`` and ``warn``
    are the callback's outputs."""

    def __init__(self, look_ahead: int | None, steps: int, spec: InitSpec, writers: Writers,
                 info: Callable[[str], None], warn: Callable[[str], None]) -> None:
        check_int("look_ahead", look_ahead, minimum=2, allow_none=True,
                  allowed="an integer >= 2 (the number of candidate draws) or None (no look-ahead)")
        self.candidates, self.steps = look_ahead, steps
        if look_ahead is None:
            check_int("look_ahead_steps", steps, minimum=1)
            if steps != DEFAULT_STEPS:
                raise ValueError(f"look_ahead_steps={steps} is only used with look_ahead=: pass look_ahead=8 (the "
                                 "number of candidates), or drop look_ahead_steps=")
            self.cuts: tuple[int, ...] = ()
        else:
            try:
                self.cuts = check_look_ahead(look_ahead, steps, spec)
            except ValueError as error:
                raise ValueError(f"look_ahead={look_ahead}, look_ahead_steps={steps}: {error}") from None
        self.look: LookAhead | None = None
        self._writers, self._info, self._warn = writers, info, warn
        self._drawn: tuple[list[list[torch.Tensor]], list[torch.Tensor]] | None = None
        self._step_seen = 0  # global_step after the look-ahead's last step
        self._losses: list[float] = []

    # ------------------------------------------------------------------ setup

    def initialize(self, model: LightningModule, spec: InitSpec, batch: Any, call: Any, seed: int) -> InitPlan:
        """``initialize_`` with the run's seed; with a look-ahead, draw every candidate (candidate 0,
        that draw, stays in the model) and return candidate 0's plan."""
        if self.candidates is None:
            return initialize_(model, spec, example_input=batch, forward=call, generator=torch.Generator().manual_seed(seed))
        seeds = candidate_seeds(seed, self.candidates)
        plans, drawn, targets = draw_candidates_(model, spec, seeds, example_input=batch, forward=call)
        self.look = LookAhead(seeds, self.cuts, plans)
        self._drawn = (drawn, targets)
        return plans[0]

    def configured(self) -> str:
        """What ``fit`` will do with the configured look-ahead, before anything is drawn (the text
        ``lightning-lyapunov plan`` adds to the plan); empty without one.

        Example::

            >>> from lightning_lyapunov import LyapunovInit
            >>> print(LyapunovInit(look_ahead=8).look_ahead.configured())  # doctest: +NORMALIZE_WHITESPACE
            look-ahead (look_ahead=8, look_ahead_steps=256): fit draws 8 candidates as this plan says (candidate 0
            from the run's seed) and trains them in turn in its first 256 training steps, by successive halving:
            the better half by training loss goes on at steps 16/32/64 of each candidate; the best is kept with its
            progress (64 of those steps are its own, 192 extra)
        """
        if self.candidates is None:
            return ""
        used, own = halving_steps(self.candidates, self.cuts)
        return (f"look-ahead (look_ahead={self.candidates}, look_ahead_steps={self.steps}): fit draws {self.candidates} "
                f"candidates as this plan says (candidate 0 from the run's seed) and trains them in turn in its first "
                f"{used} training steps, by successive halving: the better half by training loss goes on at steps "
                f"{'/'.join(map(str, self.cuts))} of each candidate; the best is kept with its progress ({own} of "
                f"those steps are its own, {used - own} extra)")

    def planned(self) -> str:
        """The plan text's look-ahead line (empty without one)."""
        look = self.look
        if look is None or not (look.running or self._drawn is not None or look.resumable):
            return ""
        cuts = look.halving.cuts
        used, own = halving_steps(len(look.seeds), cuts)
        return (f"\nlook-ahead: {len(look.seeds)} candidate draws as above (seeds {look.seeds[0]}, ...), trained in "
                f"turn in the first {used} training steps; successive halving by training loss at steps "
                f"{'/'.join(map(str, cuts))} of each candidate; the best one is kept with its progress "
                f"({own} of those steps are its own, {used - own} extra)")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        look = self.look
        if look is None:
            return
        self._step_seen = trainer.global_step
        optimizers, schedulers = trainer.optimizers, [c.scheduler for c in trainer.lr_scheduler_configs]
        if look.resumable:
            look.resume(pl_module, optimizers, schedulers)
            h = look.halving
            self._info(f"LyapunovInit: resuming the look-ahead at candidate {h.current} ({h.steps[h.current]} of its "
                       f"steps taken, {h.total_steps} look-ahead steps in all)")
        elif self._drawn is not None:
            seeds, drawn = trainer.strategy.broadcast((look.seeds, self._drawn[0]), src=0)
            look.seeds = [int(s) for s in seeds]
            look.begin(pl_module, optimizers, schedulers, drawn, self._drawn[1])
            self._drawn = None

    # ------------------------------------------------------------------ the steps

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any) -> None:
        look = self.look
        if look is None or not look.running:
            return
        loss = self._loss(trainer, pl_module, outputs)
        if loss is None:  # training_step returned None: Lightning skipped the batch, so does the look-ahead
            self._step_seen = trainer.global_step
            return
        self._losses.append(loss)
        if trainer.global_step == self._step_seen:
            return  # accumulating gradients: the candidate's step is not over
        loss = sum(self._losses) / len(self._losses)
        k, step, self._losses, self._step_seen = look.current, self._step_seen, [], trainer.global_step
        event = look.step(loss, reduce=lambda losses: _reduce(trainer, pl_module, losses))
        scalars = {"lyapunov/lookahead/candidate": float(k), f"lyapunov/lookahead/loss/{k}": loss}
        if event in ("cut", "kept"):
            scalars.update({f"lyapunov/lookahead/cut/{c}": v for c, v in look.halving.history[-1].items()
                            if math.isfinite(v)})
        if event == "kept":
            self._kept(trainer, step, scalars)
        else:
            self._writers.scalars(trainer.loggers, scalars, step)

    def _loss(self, trainer: Trainer, pl_module: LightningModule, outputs: Any) -> float | None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None and pl_module.automatic_optimization:
            return None
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise RuntimeError(
                f"LyapunovInit(look_ahead={self.candidates}) ranks the candidates by their training loss, but "
                f"training_step returned {type(loss).__name__} at step {trainer.global_step}: return the loss (a "
                "tensor, or a dict with 'loss'), also with manual optimization; or drop look_ahead=")
        scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        return float(loss.detach()) * scale  # Lightning divides the loss by the accumulated batches

    def _kept(self, trainer: Trainer, step: int, scalars: dict[str, float]) -> None:
        """The look-ahead is over: the summary's plan records the kept draw; the report is printed and
        logged (with ``scalars``)."""
        report = self.look.report
        scalars["lyapunov/lookahead/kept"] = float(report.kept)
        self._writers.scalars(trainer.loggers, scalars, step)
        if report.plan is not None and self.look.plans:  # the applied plan records the kept draw
            self.look.plans[0].calibration, self.look.plans[0].sampling = report.plan.calibration, report.plan.sampling
        text = report.describe()
        self._info(f"LyapunovInit {text}")
        block = "\n".join("    " + line for line in text.splitlines())
        for logger in tensorboards(trainer.loggers):
            self._writers.emit(logger, "look-ahead text", lambda w: w.add_text("lyapunov/lookahead", block, step))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        look = self.look
        if look is not None and look.running:
            why = f"training ended at step {trainer.global_step}, before the look-ahead's last cut"
            look.end(why, reduce=lambda losses: _reduce(trainer, pl_module, losses))
            self._warn(f"{why}: kept candidate {look.report.kept}, the best by its latest training loss; give the "
                       "run more steps than look_ahead_steps, or fewer look_ahead_steps")
            self._kept(trainer, trainer.global_step, {})

    def summary(self) -> str:
        """The closing summary's look-ahead part (empty without one)."""
        report = self.look.report if self.look is not None else None
        return "" if report is None else "\n" + report.describe()

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {} if self.look is None else {"look_ahead": self.look.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("look_ahead") is not None:
            self.look = LookAhead([], ())
            self.look.load_state_dict(state["look_ahead"])
            self._drawn = None


def _reduce(trainer: Trainer, pl_module: LightningModule, losses: list[float]) -> list[float]:
    """The candidates' losses averaged over the processes (the same list on every process)."""
    if trainer.world_size == 1:
        return losses
    values = torch.tensor(losses, dtype=torch.float64, device=pl_module.device).nan_to_num(nan=math.inf)
    return [float(v) for v in trainer.strategy.reduce(values, reduce_op="mean").cpu()]
