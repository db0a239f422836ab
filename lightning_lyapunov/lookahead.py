"""Look-ahead selection: draw ``K`` calibrated candidates, train each briefly, keep the best with its progress.

The failures of deep narrow nets (a draw that sits on a plateau for thousands of steps) show after
10-100 training steps, but not in forward-only statistics (DESIGN section 10). So:

1. **draw** ``K`` candidates (:func:`draw_candidates_`): the plan is made once; candidate ``k`` is
   drawn (and sampled and calibrated, as the spec says) from its own seed
   (:func:`~lightning_lyapunov.halving.candidate_seeds`: candidate 0 is the run's seed, the draw
   without a look-ahead; every process that shares the run's seed holds the same candidates);
2. **train** them in turn with the user's own step (loss, backward, optimizer, scheduler), swapping
   each candidate's weights, buffers, optimizer and scheduler state in and out at step boundaries
   (:class:`~lightning_lyapunov.candidates.Candidates`), by **successive halving**
   (:class:`~lightning_lyapunov.halving.Halving`): every candidate trains ``n1`` steps, the better
   half by training loss (the mean over the last half of its steps since the previous cut) trains
   on to ``2 n1``, and so on until one is left;
3. **keep** it: its trained weights and its optimizer and scheduler state stay in the model, the
   others are discarded. Its steps count as training: it continues from where it is.

Defaults (:data:`DEFAULT_CANDIDATES`, :data:`DEFAULT_STEPS`): ``K = 8`` in at most 256 steps (cuts at
16, 32, 64 steps: 192 steps beyond the kept candidate's own 64, 10% of a 2000-step run). What it
buys, against one draw, LSUV, He, best-of-K restarts of them and GradInit at equal total steps (deep
narrow regression and score matching, 40 seeds, two shapes): ``benchmarks/results/lookahead.md``,
whose table the README's look-ahead section shows.

:func:`look_ahead_` runs it in a plain PyTorch loop; the :class:`~lightning_lyapunov.LyapunovInit`
callback runs it inside Lightning's training loop (``look_ahead=``). :class:`LookAhead` is the state
both drive, one step at a time.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ._checks import check_int, invalid
from ._forward import Forward
from .candidates import Candidates
from .halving import Halving, LookAheadReport, candidate_seeds, halving_cuts
from .initialize import initialize_, redraw_
from .plan import InitPlan, check_cpu_generator
from .settings import InitSpec
from .surgery import spec_of

__all__ = ["DEFAULT_CANDIDATES", "DEFAULT_STEPS", "LookAhead", "check_look_ahead", "draw_candidates_",
           "look_ahead_"]

#: The look-ahead's defaults: 8 candidates in at most 256 training steps (cuts at 16, 32, 64).
DEFAULT_CANDIDATES = 8
DEFAULT_STEPS = 256

Reduce = Callable[[list[float]], list[float]]


def check_look_ahead(candidates: Any, steps: Any, spec: InitSpec) -> tuple[int, ...]:
    """Validate a look-ahead's settings against ``spec``; its cut points (``ValueError`` naming the fix)."""
    check_int("candidates", candidates, minimum=2,
              allowed="an integer >= 2 (the number of candidate draws; 1 is no look-ahead)")
    check_int("steps", steps, minimum=1, allowed="an integer >= 1 (the look-ahead's training steps in all)")
    if spec.scheme == "zero":
        raise ValueError("a look-ahead needs a random scheme: every candidate of scheme='zero' (ZerO) is the same "
                         "network; use another scheme, or no look-ahead")
    return halving_cuts(candidates, steps)


def draw_candidates_(
    model: nn.Module,
    spec: InitSpec,
    seeds: Sequence[int],
    *,
    example_input: Any = None,
    forward: Forward | None = None,
) -> tuple[list[InitPlan], list[list[torch.Tensor]], list[torch.Tensor]]:
    """Draw one candidate per seed (module docstring, step 1) and leave the first in ``model``.

    Returns ``(plans, drawn, targets)``: each candidate's applied plan (its sampling and calibration
    record), the values it wrote (``drawn[k][i]`` for ``targets[i]``) and the tensors written (the
    planned weights and zeroed biases). All or nothing: on any error every parameter and buffer is
    as before.
    """
    store = Candidates(model, [])
    before = store.capture(clone=True)
    try:
        plans = [initialize_(model, spec, example_input=example_input, forward=forward,
                             generator=torch.Generator().manual_seed(seeds[0]))]
        targets = list({id(t): t for layer in plans[0].layers for t in layer.targets()}.values())
        drawn = [[t.detach().clone() for t in targets]]
        for seed in seeds[1:]:
            plans.append(redraw_(model, plans[0], example_input=example_input, forward=forward,
                                 generator=torch.Generator().manual_seed(seed)))
            drawn.append([t.detach().clone() for t in targets])
        with torch.no_grad():
            for target, value in zip(targets, drawn[0]):
                target.copy_(value)
    except BaseException:
        store.load(before)
        raise
    return plans, drawn, targets


class LookAhead:
    """A look-ahead's state between training steps: the candidates' ``seeds``, the schedule
    (:class:`~lightning_lyapunov.halving.Halving`) and, once begun, the stored candidates.

    The driver (:func:`look_ahead_`, or the callback) calls :meth:`begin` before the first step,
    :meth:`step` after each optimizer step with the training loss, and :meth:`end` if training stops
    first. :attr:`report` is set once a candidate is kept.

    Example::

        look = LookAhead(seeds, cuts=(4, 8))
        look.begin(model, [optimizer], [], drawn, targets)
        while look.running:
            look.step(float(train_step(next(batches))))
        look.report.kept
    """

    def __init__(self, seeds: Sequence[int], cuts: Sequence[int], plans: Sequence[InitPlan] | None = None) -> None:
        self.seeds = [int(s) for s in seeds]
        self.halving = Halving.start(len(self.seeds), cuts)
        self.plans = list(plans) if plans is not None else None
        self.store: Candidates | None = None
        self.report: LookAheadReport | None = None
        self._pending: dict[str, Any] | None = None  # stored candidates from a checkpoint, until resume()

    @property
    def running(self) -> bool:
        """Begun (or resumed) and no candidate kept yet."""
        return self.store is not None and self.report is None

    @property
    def current(self) -> int:
        return self.halving.current

    def begin(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], schedulers: Sequence[Any],
              drawn: Sequence[Sequence[torch.Tensor]], targets: Sequence[torch.Tensor]) -> None:
        """Before the first step: candidate 0 is in ``model``; every candidate starts from the
        optimizers' and schedulers' state as it is now."""
        self.store = Candidates(model, optimizers, schedulers)
        self.store.begin(drawn, targets)

    def resume(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], schedulers: Sequence[Any]) -> None:
        """After :meth:`load_state_dict` of a checkpoint taken during the look-ahead, once the model and
        optimizers hold the checkpoint's (the candidate that was training)."""
        self.store = Candidates(model, optimizers, schedulers, current=self.halving.current)
        self.store.load_state_dict(self._pending)
        self._pending = None

    def step(self, loss: float, reduce: Reduce | None = None) -> str:
        """Record one optimizer step of :attr:`current` with its training ``loss``; swap or cut as due.

        ``reduce`` maps the candidates' rung losses to the values to rank by (under DDP: their mean
        over the processes, so every process takes the same decision). Returns ``"stay"``,
        ``"next"`` (another candidate swapped in), ``"cut"`` (a cut, then the next candidate in) or
        ``"kept"`` (the last cut: the best candidate is in the model, the others discarded).
        """
        if not self.running:
            raise RuntimeError("LookAhead.step before begin(), or after a candidate was kept")
        due = self.halving.record(loss)
        if due == "cut":
            self._cut(self.halving.rung_losses(), reduce)
            if self.halving.done:
                return "kept"
        if due != "stay":
            self.store.swap(self.halving.current)
        return due

    def _cut(self, losses: list[float], reduce: Reduce | None, keep: int | None = None,
             ended_early: str | None = None) -> None:
        before = list(self.halving.alive)
        self.halving.cut(reduce(losses) if reduce is not None else losses, keep)
        self.store.discard([k for k in before if k not in self.halving.alive])
        if self.halving.done:
            self.store.keep(self.halving.current)
            h = self.halving
            self.report = LookAheadReport(self.seeds, h.cuts, h.history, h.current, h.total_steps, list(h.steps),
                                          ended_early, plan=self.plans[h.current] if self.plans else None)

    def end(self, why: str, reduce: Reduce | None = None) -> None:
        """Training stopped before the last cut: keep the best candidate by its latest loss (this
        rung's, or at the previous cut for one that has not trained in this rung yet)."""
        if not self.running:
            return
        h = self.halving
        latest = [loss if h.losses[k] or not h.history else h.history[-1].get(k, math.inf)
                  for k, loss in zip(h.alive, h.rung_losses())]
        self._cut(latest, reduce, keep=1, ended_early=why)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values and tensors: the schedule, and while running the stored candidates."""
        return {"seeds": list(self.seeds), "halving": self.halving.state_dict(),
                "candidates": self.store.state_dict() if self.running else None,
                "report": self.report.state_dict() if self.report is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seeds = [int(s) for s in state["seeds"]]
        self.halving = Halving.from_state(state["halving"])
        self.report = LookAheadReport.from_state(state["report"]) if state["report"] is not None else None
        self._pending = state["candidates"]
        self.store = None

    @property
    def resumable(self) -> bool:
        """Loaded from a checkpoint taken during the look-ahead: :meth:`resume` before the next step."""
        return self._pending is not None


def _batches(batches: Iterable[Any]) -> Iterator[Any]:
    """``batches`` once if it is an iterator, else again and again (epochs); refuses an empty one."""
    if isinstance(batches, Iterator):
        yield from batches
        return
    for epoch in itertools.count():
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            if epoch == 0:
                raise ValueError("batches is empty: pass the training batches (e.g. a DataLoader)")
            return


def _loss_value(loss: Any) -> float:
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return float(loss.detach())
    if isinstance(loss, numbers.Real) and not isinstance(loss, bool):
        return float(loss)
    invalid("step_fn(batch)", loss, "the step's training loss: a number or a one-element tensor",
            "return the loss from step_fn (after its backward and optimizer step)")


def look_ahead_(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    step_fn: Callable[[Any], Any],
    batches: Iterable[Any],
    spec: InitSpec | None = None,
    *,
    candidates: int = DEFAULT_CANDIDATES,
    steps: int = DEFAULT_STEPS,
    schedulers: Sequence[Any] = (),
    example_input: Any = None,
    forward: Forward | None = None,
    generator: torch.Generator | None = None,
    **settings: Any,
) -> LookAheadReport:
    """Initialize ``model`` by a look-ahead (module docstring) in a plain PyTorch loop; return the report.

    ``step_fn(batch)`` is one training step of yours, returning its loss: zero the gradients, compute
    the loss, backward, ``optimizer.step()``, ``scheduler.step()`` if you use one. The look-ahead
    calls it on ``batches`` (iterated again when it runs out, unless it is an iterator), at most
    ``steps`` times in all, and swaps the candidates' weights, buffers and the state of
    ``optimizer`` and ``schedulers`` between calls. When it returns, the kept candidate is in the
    model and its optimizer and scheduler state in them: keep training as usual; its steps in the
    look-ahead were :attr:`LookAheadReport.kept_steps`. Frozen parameters are never touched.

    ``spec``/``settings``: the initialization (as :func:`~lightning_lyapunov.apply_init`; with
    ``calibrate=``, pass ``example_input=``, e.g. the first batch's inputs). ``candidates``: ``K``.
    ``steps``: the look-ahead's steps in all (cuts: :func:`~lightning_lyapunov.halving.halving_cuts`).
    ``generator``: the run's seed is drawn from it (torch's default generator when None); the same
    state gives the same candidates, hence the same result for a deterministic ``step_fn``.
    All or nothing: on any error (``KeyboardInterrupt`` included) the model's parameters and
    buffers, the optimizers', schedulers' and generator's states are as before.

    Example::

        model = nn.Sequential(*[m for _ in range(40) for m in (nn.Linear(2, 2), nn.LeakyReLU(0.1))], nn.Linear(2, 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(batch):
            x, y = batch
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            return loss

        report = look_ahead_(model, optimizer, step, loader, calibrate="layers", example_input=x0,
                             generator=torch.Generator().manual_seed(0))
        print(report.describe())            # each candidate's loss at each cut, and the kept one
        for batch in loader: step(batch)    # go on training the kept candidate
    """
    spec = spec_of(spec, settings)
    cuts = check_look_ahead(candidates, steps, spec)
    optimizers = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    if not optimizers or not all(isinstance(o, torch.optim.Optimizer) for o in optimizers):
        invalid("optimizer", optimizer, "a torch.optim.Optimizer or a list of them (the ones step_fn steps)")
    if not callable(step_fn):
        invalid("step_fn", step_fn, "a callable: step_fn(batch) -> loss, one training step")
    check_cpu_generator(generator)
    rng = generator if generator is not None else torch.default_generator
    rng_state = rng.get_state()
    store = Candidates(model, optimizers, schedulers)
    before = store.capture(clone=True)
    try:
        seeds = candidate_seeds(int(torch.randint(0, 2**62, (1,), generator=generator)), candidates)
        plans, drawn, targets = draw_candidates_(model, spec, seeds, example_input=example_input, forward=forward)
        look = LookAhead(seeds, cuts, plans)
        look.begin(model, optimizers, schedulers, drawn, targets)
        for batch in _batches(batches):
            if look.step(_loss_value(step_fn(batch))) == "kept":
                break
        look.end("the batches ran out")
    except BaseException:
        Candidates(model, optimizers, schedulers).load(before)
        rng.set_state(rng_state)
        raise
    return look.report
