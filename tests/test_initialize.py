"""Tests of lightning_lyapunov.initialize: the engine (plan -> draw or select -> write -> calibrate, all or nothing)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from helpers import changed, gen, quiet, snapshot
from lightning_lyapunov import InitSpec, LyapunovWarning, apply_init, sample_lyapunov_
from lightning_lyapunov.initialize import initialize_, redraw_


def chain(depth: int = 12, width: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(2, width), nn.LeakyReLU(0.1)]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers, nn.Linear(width, 1))


X = torch.randn(64, 2, generator=gen(7))


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_apply_init_and_sample_lyapunov_are_the_engine() -> None:
    a, b, c, d = chain(), chain(), chain(), chain()
    plan = quiet(apply_init, a, sampled=True, candidates=3, calibrate="layers", example_input=X, generator=gen(1))
    quiet(initialize_, b, InitSpec(sampled=True, candidates=3, calibrate="layers"), example_input=X, generator=gen(1))
    assert all(torch.equal(p, q) for p, q in zip(weights(a), weights(b)))
    assert plan.sampling.mode == "network" and len(plan.sampling.scores) == 3 and plan.calibration.method == "layers"
    # the calibration factors multiply the selected draw: sampling alone gives the same draw
    quiet(sample_lyapunov_, c, X, candidates=3, generator=gen(1))
    quiet(apply_init, d, InitSpec(sampled="network", candidates=3), example_input=X, generator=gen(1))
    assert all(torch.equal(p, q) for p, q in zip(weights(c), weights(d)))
    for p, q, factor in zip([m.weight for m in a if isinstance(m, nn.Linear)],
                            [m.weight for m in c if isinstance(m, nn.Linear)], plan.calibration.factors):
        torch.testing.assert_close(p, factor * q)


def test_auto_calibration_that_the_batch_cannot_do_keeps_the_draw_and_says_why() -> None:
    spec = InitSpec(calibrate="auto")
    drawn, kept = chain(), chain()
    quiet(apply_init, drawn, generator=gen(2))
    with pytest.warns(LyapunovWarning, match="calibrate='auto' skipped, theory's draw kept: .*all-zero input"):
        plan = initialize_(kept, spec, example_input=torch.zeros(8, 2), generator=gen(2))
    assert plan.calibration is None and any("skipped" in w for w in plan.warnings)
    assert all(torch.equal(p, q) for p, q in zip(weights(drawn), weights(kept)))
    # asked for explicitly, the same batch is an error, and nothing was written
    model = chain()
    before = snapshot(model)
    with pytest.raises(ValueError, match="all-zero input"):
        quiet(apply_init, model, calibrate="layers", example_input=torch.zeros(8, 2), generator=gen(2))
    assert changed(model, before) == []


def test_auto_calibration_without_a_batch_is_skipped_and_an_explicit_one_is_refused_before_drawing() -> None:
    model = chain()
    generator = gen(3)
    state = generator.get_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LyapunovWarning)  # nothing to say: there was no batch
        warnings.filterwarnings("ignore", message=".*no activation.*")
        plan = initialize_(model, InitSpec(calibrate="auto"), generator=generator)
    assert plan.calibration is None
    model = chain()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"calibrate='output' needs example_input="):
        apply_init(model, calibrate="output", generator=generator.set_state(state))
    assert changed(model, before) == [] and torch.equal(generator.get_state(), state)


def test_an_error_anywhere_restores_everything_and_the_generator() -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = chain()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 3:  # observed (1 pass), 2 candidates selected (2), then the calibration fails
                raise RuntimeError("boom")
            return self.net(x)

    model, generator = Boom(), gen(4)
    before, state = snapshot(model), generator.get_state()
    with pytest.raises(RuntimeError, match="boom"):
        quiet(apply_init, model, sampled=True, candidates=2, calibrate="layers", example_input=X, generator=generator)
    assert model.calls == 4  # it failed in the calibration, after a draw was selected and written
    assert changed(model, before) == [] and torch.equal(generator.get_state(), state)


def test_settings_are_validated_before_anything_runs() -> None:
    model = chain()
    before = snapshot(model)
    for settings in ({"scheme": "zero", "sampled": True}, {"calibrate_target": 0.1}, {"candidates": 2}):
        with pytest.raises(ValueError):
            apply_init(model, example_input=X, **settings)
    with pytest.raises(TypeError, match="spec='he' is invalid"):
        apply_init(model, "he")
    assert changed(model, before) == []


def test_a_batch_of_the_wrong_width_names_the_argument_and_the_shape_it_takes() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    cases = [
        (lambda m, x: apply_init(m, example_input=x), chain(), torch.randn(8, 3),
         r"example_input gives layer '0' \(Linear\) inputs of shape \(8, 3\); it takes \(\.\.\., 2\)"),
        (lambda m, x: apply_init(m, example_input=x, calibrate="layers"), chain(), torch.randn(8, 5),
         r"example_input gives layer '0' \(Linear\) inputs of shape \(8, 5\); it takes \(\.\.\., 2\)"),
        (lambda m, x: sample_lyapunov_(m, probe=x, candidates=2), chain(), torch.randn(8, 3),
         r"probe gives layer '0' \(Linear\) inputs of shape \(8, 3\); it takes \(\.\.\., 2\)"),
        (lambda m, x: apply_init(m, example_input=x), conv, torch.randn(2, 1, 8, 8),
         r"example_input gives layer '0' \(Conv2d\) inputs of shape \(2, 1, 8, 8\); it takes \(N, 3, H, W\)"),
    ]
    for run, model, x, match in cases:
        before = snapshot(model)
        with pytest.raises(ValueError, match=match):
            quiet(run, model, x)
        assert changed(model, before) == []


def test_what_a_plan_measured_survives_a_weights_only_checkpoint(tmp_path) -> None:
    from lightning_lyapunov.initialize import measured_state, restore_measured
    from lightning_lyapunov.surgery import plan_init

    plan = quiet(apply_init, chain(), sampled="layerwise", candidates=2, calibrate="layers", example_input=X,
                 generator=gen(3))
    torch.save(measured_state(plan), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    fresh = quiet(plan_init, chain())
    assert restore_measured(fresh, state) is None
    assert fresh.calibration == plan.calibration and fresh.sampling == plan.sampling
    assert fresh.predicted_drift == plan.predicted_drift and fresh.predicted_drift != 0.0
    other = quiet(plan_init, chain(depth=4))
    assert "other layers" in restore_measured(other, state) and other.calibration is None
    assert restore_measured(other, {"initialized": True}) is None  # a state from before it was recorded


def test_redraw_applies_a_plan_again_as_a_fresh_initialization_would() -> None:
    spec = InitSpec(sampled=True, candidates=2, calibrate="layers")
    model, fresh = chain(), chain()
    plan = quiet(initialize_, model, spec, example_input=X, generator=gen(1))
    factors = list(plan.calibration.factors)
    other = quiet(redraw_, model, plan, example_input=X, generator=gen(2))
    expected = quiet(initialize_, fresh, spec, example_input=X, generator=gen(2))
    assert all(torch.equal(p, q) for p, q in zip(weights(model), weights(fresh)))
    assert other.calibration.factors == expected.calibration.factors != factors
    assert other.sampling.scores == expected.sampling.scores
    assert plan.calibration.factors == factors and other.layers is plan.layers  # the plan itself is unchanged
    before, generator = snapshot(model), gen(3)
    with pytest.raises(ValueError, match="needs example_input"):
        redraw_(model, quiet(initialize_, chain(), InitSpec(calibrate="output"), example_input=X), generator=generator)
    assert changed(model, before) == []
