"""Successive halving among candidate draws, one candidate trained at a time: the look-ahead's schedule.

``K`` candidates; at each *cut* every candidate still in has trained the same number of steps, and
the better half (``ceil(n / 2)`` of ``n``) by training loss goes on. The cut points double:

    cuts = (n1, 2 n1, 4 n1, ...),   ceil(log2 K) cuts,   n1 = floor(steps / cost(K)),
    cost(K) = K + sum_{r >= 1} alive_r 2^(r-1)       (alive_0 = K, alive_{r+1} = ceil(alive_r / 2))

so the look-ahead takes at most ``steps`` training steps in all (``cost(K) n1``), of which the kept
candidate's ``n1 2^(c-1)`` are its own and continue: for ``K = 8``, ``cost = 16`` and the kept
candidate keeps a quarter of them (``steps=256``: cuts at 16, 32, 64).

A candidate's loss at a cut (:data:`WINDOW`): the mean training loss over the last half of its steps
in that rung (the rung: its steps since the previous cut); a non-finite loss among them makes it
``inf``. Ties go to the lower candidate index, so the decision is a function of the losses alone.

Seeds (:func:`candidate_seeds`): candidate 0 is the run's own seed (the draw without a look-ahead),
candidate ``k >= 1`` a seed drawn from ``torch.Generator().manual_seed(seed)``; the list for ``K``
is a prefix of the list for ``K + 1``.

Example::

    >>> halving_cuts(8, 256)
    (16, 32, 64)
    >>> h = Halving.start(4, (1, 2))
    >>> for loss in (3.0, 1.0, 2.0, 4.0):   # one step each of candidates 0, 1, 2, 3: a cut is due
    ...     due = h.record(loss)
    >>> due, h.cut(h.rung_losses()), h.alive
    ('cut', None, [1, 2])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ._checks import check_int

if TYPE_CHECKING:  # the kept candidate's plan, attached by the look-ahead
    from .plan import InitPlan

__all__ = ["WINDOW", "Halving", "LookAheadReport", "candidate_seeds", "halving_cost", "halving_cuts"]

#: The share of a candidate's steps in a rung whose mean training loss ranks it (the last half).
WINDOW = 0.5


def candidate_seeds(seed: int, candidates: int) -> list[int]:
    """``[seed, s_1, ..., s_{K-1}]``: the run's seed, then ``K - 1`` seeds drawn from it (module docstring)."""
    check_int("seed", seed, minimum=0, maximum=2**63 - 1)
    check_int("candidates", candidates, minimum=1)
    drawn = torch.randint(0, 2**62, (candidates - 1,), generator=torch.Generator().manual_seed(seed))
    return [seed, *(int(s) for s in drawn)]


def _alive(candidates: int) -> list[int]:
    """How many candidates train in each rung: ``K, ceil(K/2), ...`` down to 2 (one rung for ``K = 2``)."""
    alive = [candidates]
    while math.ceil(alive[-1] / 2) > 1:
        alive.append(math.ceil(alive[-1] / 2))
    return alive


def halving_cost(candidates: int) -> int:
    """The look-ahead's steps per step of the first rung: ``K + sum_{r>=1} alive_r 2^(r-1)``."""
    alive = _alive(check_int("candidates", candidates, minimum=2))
    return alive[0] + sum(n * 2 ** (r - 1) for r, n in enumerate(alive) if r)


def halving_steps(candidates: int, cuts: Sequence[int]) -> tuple[int, int]:
    """The look-ahead's training steps in all (``halving_cost(K) * cuts[0]``) and the kept
    candidate's own (``cuts[-1]``); the difference is what the look-ahead adds to a run."""
    return halving_cost(candidates) * cuts[0], cuts[-1]


def halving_cuts(candidates: int, steps: int) -> tuple[int, ...]:
    """The cut points (each candidate's cumulative steps at each cut) of ``candidates`` draws in at
    most ``steps`` training steps (module docstring); ``ValueError`` naming the minimum if too few."""
    cost = halving_cost(candidates)
    check_int("steps", steps, minimum=1)
    if steps < cost:
        raise ValueError(f"{steps} look-ahead steps are too few for {candidates} candidates: successive halving "
                         f"needs at least {cost} (each candidate one step before the first cut); pass at least "
                         f"{cost} steps, or fewer candidates")
    first = steps // cost
    return tuple(first * 2**r for r in range(len(_alive(candidates))))


@dataclass
class Halving:
    """The schedule's state: which candidates are in, who trains now, the losses of the current rung.

    Plain Python values only (``state_dict``/``from_state`` for checkpoints). The owner trains
    :attr:`current` one step, calls :meth:`record` with its training loss, and acts on the answer:
    ``"stay"`` (train it again), ``"next"`` (swap :attr:`current` in), ``"cut"`` (every candidate in
    has finished the rung: pass the rung losses, reduced across processes if need be, to :meth:`cut`).
    """

    cuts: tuple[int, ...]
    alive: list[int]
    steps: list[int]
    losses: list[list[float]]
    history: list[dict[int, float]] = field(default_factory=list)
    position: int = 0

    @classmethod
    def start(cls, candidates: int, cuts: Sequence[int]) -> Halving:
        return cls(tuple(cuts), list(range(candidates)), [0] * candidates, [[] for _ in range(candidates)])

    @property
    def candidates(self) -> int:
        return len(self.steps)

    @property
    def done(self) -> bool:
        return len(self.alive) == 1

    @property
    def current(self) -> int:
        """The candidate to train now (the kept one once :attr:`done`)."""
        return self.alive[self.position]

    @property
    def total_steps(self) -> int:
        return sum(self.steps)

    def record(self, loss: float) -> str:
        """One step of :attr:`current`, whose training loss was ``loss``: ``"stay"``, ``"next"`` or ``"cut"``."""
        if self.done:
            raise RuntimeError("the look-ahead is over: no candidate to record a step for")
        k = self.current
        self.steps[k] += 1
        self.losses[k].append(float(loss))
        if self.steps[k] < self.cuts[len(self.history)]:
            return "stay"
        self.position += 1
        return "next" if self.position < len(self.alive) else "cut"

    def rung_losses(self) -> list[float]:
        """Each candidate's loss in this rung, in :attr:`alive` order (module docstring; ``inf`` with
        no step or a non-finite loss in its window)."""
        out = []
        for k in self.alive:
            losses = self.losses[k]
            window = losses[len(losses) - max(1, math.ceil(WINDOW * len(losses))):] if losses else []
            out.append(sum(window) / len(window) if window and all(map(math.isfinite, window)) else math.inf)
        return out

    def cut(self, losses: Sequence[float], keep: int | None = None) -> None:
        """Keep the best ``keep`` (default ``ceil(n / 2)``) of the ``n`` candidates in, by ``losses``
        (in :attr:`alive` order; NaN counts as ``inf``; ties to the lower index); a new rung starts."""
        if len(losses) != len(self.alive):
            raise ValueError(f"{len(losses)} losses for {len(self.alive)} candidates")
        clean = [math.inf if not math.isfinite(x) else float(x) for x in losses]
        self.history.append(dict(zip(self.alive, clean)))
        keep = math.ceil(len(self.alive) / 2) if keep is None else keep
        ranked = sorted(zip(clean, self.alive))[:keep]
        self.alive = sorted(k for _, k in ranked)
        self.position = 0
        for k in range(self.candidates):
            self.losses[k] = []

    def state_dict(self) -> dict[str, Any]:
        return {"cuts": list(self.cuts), "alive": list(self.alive), "steps": list(self.steps),
                "losses": [list(x) for x in self.losses], "position": self.position,
                "history": [[[k, v] for k, v in cut.items()] for cut in self.history]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Halving:
        return cls(tuple(int(c) for c in state["cuts"]), [int(k) for k in state["alive"]],
                   [int(s) for s in state["steps"]], [[float(v) for v in x] for x in state["losses"]],
                   [{int(k): float(v) for k, v in cut} for cut in state["history"]], int(state["position"]))


@dataclass
class LookAheadReport:
    """What a look-ahead did: the candidates' ``seeds``, the ``cuts`` (each candidate's cumulative
    steps at each cut), ``history`` (per cut, each candidate's loss there; after an early end, the
    last entry is the final ranking by the latest losses), the ``kept`` candidate, the ``steps``
    taken in all and by each candidate (``candidate_steps``), ``ended_early`` (why the look-ahead
    ended before its last cut, or None) and the kept candidate's ``plan`` (its sampling and
    calibration record; not in checkpoints).
    """

    seeds: list[int]
    cuts: tuple[int, ...]
    history: list[dict[int, float]]
    kept: int
    steps: int
    candidate_steps: list[int]
    ended_early: str | None = None
    plan: InitPlan | None = field(default=None, repr=False, compare=False)

    @property
    def kept_seed(self) -> int:
        return self.seeds[self.kept]

    @property
    def kept_steps(self) -> int:
        """The kept candidate's own steps in the look-ahead (they continue)."""
        return self.candidate_steps[self.kept]

    def summary(self) -> str:
        """One line: ``look-ahead kept candidate 3 of 8 (seed ...), ...``."""
        line = (f"look-ahead kept candidate {self.kept} of {len(self.seeds)} (seed {self.kept_seed}) after "
                f"{self.steps} steps by successive halving at steps {'/'.join(map(str, self.cuts))}")
        return line + (f"; ended early: {self.ended_early}" if self.ended_early else "")

    def describe(self) -> str:
        """:meth:`summary` and a table: each candidate's training loss at each cut, and which was kept."""
        columns = [f"loss at {c}" for c in self.cuts[:len(self.history)]]
        if self.ended_early and columns:
            columns[-1] = "latest loss"
        header = ("candidate", "seed", "steps", *columns, "")
        rows = [header]
        for k, seed in enumerate(self.seeds):
            losses = tuple(f"{cut[k]:.4g}" if k in cut else "-" for cut in self.history)
            rows.append((str(k), str(seed), str(self.candidate_steps[k]), *losses, "kept" if k == self.kept else ""))
        widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
        table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        why = (f"training loss: mean over the last {WINDOW:.0%} of each candidate's steps since the previous cut; "
               f"the better half goes on")
        return "\n".join([self.summary(), why, *table])

    def state_dict(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "cuts": list(self.cuts), "kept": self.kept, "steps": self.steps,
                "candidate_steps": list(self.candidate_steps), "ended_early": self.ended_early,
                "history": [[[k, v] for k, v in cut.items()] for cut in self.history]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LookAheadReport:
        return cls([int(s) for s in state["seeds"]], tuple(int(c) for c in state["cuts"]),
                   [{int(k): float(v) for k, v in cut} for cut in state["history"]], int(state["kept"]),
                   int(state["steps"]), [int(s) for s in state["candidate_steps"]], state["ended_early"])
