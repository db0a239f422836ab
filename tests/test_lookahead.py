"""The look-ahead in a plain PyTorch loop: it keeps a draw that trains, with exactly that draw's progress."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import gen, quiet, snapshot
from lightning_lyapunov import apply_init
from lightning_lyapunov.halving import candidate_seeds
from lightning_lyapunov.lookahead import LookAhead, draw_candidates_, look_ahead_
from lightning_lyapunov.settings import InitSpec

X = torch.linspace(-1, 1, 128)[:, None]
Y = (2 * X).sin() + X.abs()
LR = 1e-2


def _model(depth: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[m for i in range(depth) for m in (nn.Linear(2 if i else 1, 2), nn.LeakyReLU(0.1))],
                         nn.Linear(2, 1))


class Loop:
    """A model, Adam, a warm-up schedule and a full-batch step returning the MSE / var(y)."""

    def __init__(self, model: nn.Module, warmup: bool = False) -> None:
        self.model = model
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / 5))] \
            if warmup else []
        self.calls = 0

    def step(self, batch) -> torch.Tensor:
        x, y = batch
        self.calls += 1
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self.model(x), y) / Y.var()
        loss.backward()
        self.optimizer.step()
        for scheduler in self.schedulers:
            scheduler.step()
        return loss

    def train(self, steps: int) -> float:
        for _ in range(steps):
            self.step((X, Y))
        with torch.no_grad():
            return float(nn.functional.mse_loss(self.model(X), Y) / Y.var())

    def look_ahead(self, **kwargs):
        kwargs = {"candidates": 4, "steps": 24, "calibrate": "layers", "example_input": X, **kwargs}
        return quiet(look_ahead_, self.model, self.optimizer, self.step, [(X, Y)], schedulers=self.schedulers, **kwargs)


def _alone(seed: int, warmup: bool = False, model: nn.Module | None = None) -> Loop:
    loop = Loop(model or _model(), warmup)
    quiet(apply_init, loop.model, calibrate="layers", example_input=X, generator=gen(seed))
    return loop


@pytest.mark.parametrize("seed", [3, 8])
def test_the_look_ahead_keeps_a_draw_that_trains_where_some_draws_fail(seed):
    # width 2, depth 10, 150 Adam steps in all: with seed 3 the default draw (candidate 0) stays at
    # the zero predictor's loss; with seed 8 two of the four candidates do
    steps = 150
    loop = Loop(_model())
    report = loop.look_ahead(generator=gen(seed))
    final = loop.train(steps - report.steps)
    alone = [_alone(s).train(steps) for s in report.seeds]
    assert sum(loss > 0.5 for loss in alone) >= 1 + (seed == 8)
    assert final < 0.05
    assert alone[report.kept] < 0.05


def test_the_kept_candidate_continues_exactly_as_if_it_had_trained_alone():
    loop = Loop(_model(), warmup=True)
    report = loop.look_ahead(generator=gen(1))
    assert loop.calls == report.steps == 24 and report.cuts == (4, 8) and report.kept_steps == 8
    assert loop.schedulers[0].last_epoch == 8
    alone = _alone(report.kept_seed, warmup=True)
    alone.train(report.kept_steps)
    assert snapshot(loop.model).keys() == snapshot(alone.model).keys()
    for (name, a), b in zip(snapshot(loop.model).items(), snapshot(alone.model).values()):
        assert torch.equal(a, b), name
    for p, q in zip(loop.model.parameters(), alone.model.parameters()):
        assert torch.equal(loop.optimizer.state[p]["exp_avg_sq"], alone.optimizer.state[q]["exp_avg_sq"])
    assert loop.optimizer.param_groups[0]["lr"] == alone.optimizer.param_groups[0]["lr"]
    assert report.plan is not None and report.plan.calibration is not None


def test_the_same_generator_gives_the_same_result_and_a_report():
    first, second = Loop(_model()), Loop(_model())
    a, b = first.look_ahead(generator=gen(5)), second.look_ahead(generator=gen(5))
    assert a == b and a.seeds == candidate_seeds(a.seeds[0], 4)
    assert all(torch.equal(p, q) for p, q in zip(first.model.parameters(), second.model.parameters()))
    text = a.describe()
    assert f"kept candidate {a.kept} of 4" in text and "loss at 4" in text and "loss at 8" in text
    assert text.count("kept") == 2  # the summary and the kept row


def test_frozen_parameters_are_never_touched():
    model = _model()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    loop = Loop(model)
    report = loop.look_ahead(generator=gen(0))
    assert torch.equal(model[0].weight, frozen) and not model[0].weight.requires_grad
    assert "0" not in report.plan.layer_names and "2" in report.plan.layer_names


class Boom(Exception):
    pass


def test_an_error_during_the_look_ahead_restores_everything():
    loop = Loop(_model(), warmup=True)
    loop.train(3)  # some optimizer and scheduler state to restore
    before = snapshot(loop.model)
    adam = {k: v.clone() for k, v in loop.optimizer.state[loop.model[0].weight].items()}
    schedule = loop.schedulers[0].state_dict()
    generator = gen(2)
    rng = generator.get_state()
    step = loop.step

    def failing(batch):
        if loop.calls == 10:  # after a swap: the model holds another candidate
            raise Boom
        return step(batch)

    loop.step = failing
    with pytest.raises(Boom):
        loop.look_ahead(generator=generator)
    assert all(torch.equal(v, before[k]) for k, v in snapshot(loop.model).items())
    assert all(torch.equal(v, adam[k]) for k, v in loop.optimizer.state[loop.model[0].weight].items())
    assert loop.schedulers[0].state_dict() == schedule and torch.equal(generator.get_state(), rng)


def test_batches_that_run_out_end_it_early_with_the_best_so_far():
    loop = Loop(_model())
    report = loop.look_ahead(generator=gen(0))
    loop2 = Loop(_model())
    short = quiet(look_ahead_, loop2.model, loop2.optimizer, loop2.step, iter([(X, Y)] * 20), candidates=4, steps=24,
                  calibrate="layers", example_input=X, generator=gen(0))
    assert short.ended_early == "the batches ran out" and short.steps == 20
    assert short.history[0] == report.history[0]  # the first cut (4 x 4 steps) was made, then 4 more steps
    assert short.kept in report.history[0] and short.kept in sorted(report.history[0],
                                                                     key=report.history[0].get)[:2]


def test_the_decision_follows_the_reduced_losses():
    # under DDP each process sees its own batches: the losses are averaged over the processes first
    model = _model()
    spec = InitSpec(calibrate="layers")
    seeds = candidate_seeds(0, 4)
    plans, drawn, targets = quiet(draw_candidates_, model, spec, seeds, example_input=X)
    loop = Loop(model)
    look = LookAhead(seeds, (1, 2), plans)
    look.begin(model, [loop.optimizer], [], drawn, targets)
    reversed_ = lambda losses: [-x for x in losses]  # noqa: E731 - ranks the worst first
    while look.running:
        look.step(float(loop.step((X, Y)).detach()), reduce=reversed_)
    first = look.report.history[0]  # the reduced (negated) losses
    assert set(first) == {0, 1, 2, 3} and all(v < 0 for v in first.values())
    worst_two = sorted(first, key=first.get)[:2]
    assert look.report.kept in worst_two


def test_draw_candidates_are_the_draws_of_their_seeds():
    model = _model()
    seeds = candidate_seeds(4, 3)
    plans, drawn, targets = quiet(draw_candidates_, model, InitSpec(calibrate="layers"), seeds, example_input=X)
    for k, seed in enumerate(seeds):
        alone = _model()
        quiet(apply_init, alone, calibrate="layers", example_input=X, generator=gen(seed))
        alone_targets = [t for layer in plans[k].layers for t in (alone.get_submodule(layer.name).weight,
                                                                   alone.get_submodule(layer.name).bias)]
        assert all(torch.equal(a, b) for a, b in zip(drawn[k], alone_targets))
        assert plans[k].calibration.factors == quiet(apply_init, _model(), calibrate="layers", example_input=X,
                                                     generator=gen(seed)).calibration.factors
    assert all(torch.equal(t, v) for t, v in zip(targets, drawn[0]))  # candidate 0 is left in the model


@pytest.mark.parametrize("kwargs, error, match", [
    ({"candidates": 1}, ValueError, "candidates=1 is invalid: it must be an integer >= 2"),
    ({"steps": 5}, ValueError, "5 look-ahead steps are too few for 4 candidates: .* at least 6"),
    ({"scheme": "zero", "calibrate": None}, ValueError, "needs a random scheme"),
    ({"calibrate": "output", "example_input": None}, ValueError, "needs example_input"),
])
def test_bad_settings_are_refused_before_anything_is_drawn(kwargs, error, match):
    loop = Loop(_model())
    before = snapshot(loop.model)
    with pytest.raises(error, match=match):
        loop.look_ahead(**kwargs)
    assert all(torch.equal(v, before[k]) for k, v in snapshot(loop.model).items())


def test_bad_arguments_name_the_fix():
    loop = Loop(_model())
    with pytest.raises(TypeError, match="step_fn\\(batch\\)=None is invalid: .* return the loss"):
        look_ahead_(loop.model, loop.optimizer, lambda batch: None, [(X, Y)], candidates=2, steps=4)
    with pytest.raises(TypeError, match="optimizer=.* a torch.optim.Optimizer"):
        look_ahead_(loop.model, "adam", loop.step, [(X, Y)], candidates=2, steps=4)
    with pytest.raises(ValueError, match="batches is empty"):
        look_ahead_(loop.model, loop.optimizer, loop.step, [], candidates=2, steps=4)
