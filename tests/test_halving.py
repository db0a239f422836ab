"""The look-ahead's schedule: seeds, cut points within the budget, the ranking rule, the report."""

from __future__ import annotations

import json
import math

import pytest

from lightning_lyapunov.halving import (Halving, LookAheadReport, candidate_seeds, halving_cost,
                                        halving_cuts)


def _run(candidates: int, cuts: tuple[int, ...], loss=lambda k, step: float(k)) -> Halving:
    """Drive a schedule to the end with ``loss(candidate, its step)``, checking who trains when."""
    h = Halving.start(candidates, cuts)
    while not h.done:
        k = h.current
        due = h.record(loss(k, h.steps[k]))
        if due == "cut":
            assert all(h.steps[c] == cuts[len(h.history)] for c in h.alive)  # equal steps at every cut
            h.cut(h.rung_losses())
    return h


@pytest.mark.parametrize("candidates", [2, 3, 4, 5, 8, 13, 16])
@pytest.mark.parametrize("steps", [40, 256, 1000])
def test_the_cuts_double_and_the_schedule_takes_at_most_the_budget(candidates, steps):
    if steps < halving_cost(candidates):
        pytest.skip("too few steps")
    cuts = halving_cuts(candidates, steps)
    assert len(cuts) == math.ceil(math.log2(candidates))
    assert all(b == 2 * a for a, b in zip(cuts, cuts[1:]))
    h = _run(candidates, cuts)
    assert h.total_steps == halving_cost(candidates) * cuts[0] <= steps
    assert steps - h.total_steps < halving_cost(candidates)  # the budget is used up to one first-rung step each
    assert h.current == 0 and h.steps[0] == cuts[-1]  # the lowest loss wins, with its steps


def test_the_default_shape():
    assert halving_cuts(8, 256) == (16, 32, 64)
    assert halving_cost(8) == 16


def test_too_few_steps_or_candidates_say_the_minimum():
    with pytest.raises(ValueError, match="needs at least 16"):
        halving_cuts(8, 15)
    with pytest.raises(ValueError, match="candidates=1 is invalid"):
        halving_cuts(1, 100)


def test_candidate_seeds_start_with_the_run_seed_and_nest():
    seeds = candidate_seeds(7, 8)
    assert seeds[0] == 7 and len(set(seeds)) == 8
    assert candidate_seeds(7, 8) == seeds and candidate_seeds(7, 4) == seeds[:4]
    assert candidate_seeds(8, 8)[1:] != seeds[1:]


def test_a_candidate_is_ranked_by_the_last_half_of_its_rung():
    h = Halving.start(2, (4,))
    for loss in (9.0, 9.0, 1.0, 1.0):  # candidate 0: bad start, good end (mean 5, last half 1)
        h.record(loss)
    for loss in (2.0, 2.0, 2.0, 2.0):  # candidate 1: mean 2
        h.record(loss)
    assert h.rung_losses() == [1.0, 2.0]
    h.cut(h.rung_losses())
    assert h.done and h.current == 0 and h.history == [{0: 1.0, 1: 2.0}]


def test_non_finite_losses_lose_and_ties_go_to_the_lower_index():
    h = Halving.start(4, (2, 4))
    for loss in (1.0, math.nan, 1.0, 1.0, 3.0, 3.0, 1.0, math.inf):
        h.record(loss)
    assert h.rung_losses() == [math.inf, 1.0, 3.0, math.inf]
    h.cut(h.rung_losses())
    assert h.alive == [1, 2]
    h2 = Halving.start(3, (1, 2))
    for _ in range(3):
        h2.record(0.5)
    h2.cut(h2.rung_losses())
    assert h2.alive == [0, 1]


def test_record_answers_stay_next_cut():
    h = Halving.start(2, (2,))
    assert [h.record(1.0), h.record(1.0), h.record(2.0), h.record(2.0)] == ["stay", "next", "stay", "cut"]
    h.cut(h.rung_losses())
    with pytest.raises(RuntimeError, match="over"):
        h.record(1.0)


def test_state_is_plain_python_and_round_trips():
    h = Halving.start(4, (1, 2))
    for loss in (3.0, 1.0, 2.0, 4.0):
        h.record(loss)
    h.cut(h.rung_losses())
    h.record(0.5)
    state = json.loads(json.dumps(h.state_dict()))
    assert Halving.from_state(state) == h


def test_the_report_shows_every_candidate_at_every_cut_and_the_kept_one():
    h = _run(4, (1, 2), loss=lambda k, step: [3.0, 1.0, 2.0, 4.0][k] / (step + 1))
    report = LookAheadReport(candidate_seeds(5, 4), h.cuts, h.history, h.current, h.total_steps, h.steps)
    text = report.describe()
    assert "kept candidate 1 of 4" in text and "6 steps" in text
    lines = text.splitlines()
    assert lines[2].split() == ["candidate", "seed", "steps", "loss", "at", "1", "loss", "at", "2"]
    assert lines[3].split() == ["0", "5", "1", "3", "-"]
    assert lines[4].split()[2:] == ["2", "1", "0.5", "kept"]
    assert lines[6].split()[2:] == ["1", "4", "-"]
    assert report.kept_steps == 2
    assert LookAheadReport.from_state(json.loads(json.dumps(report.state_dict()))) == report
