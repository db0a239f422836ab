"""Data calibration after the draw (``apply_init(..., calibrate=...)``, lightning_lyapunov.calibration)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_lyapunov import apply_init
from lightning_lyapunov.log_norm import log_gain


def chain(depth: int = 12, width: int = 3, d_in: int = 2, d_out: int = 2, slope: float = 0.1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, width), nn.LeakyReLU(slope)]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.LeakyReLU(slope)]
    return nn.Sequential(*layers, nn.Linear(width, d_out))


def init(model: nn.Module, seed: int = 0, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return apply_init(model, generator=torch.Generator().manual_seed(seed), **kwargs)


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


X = torch.randn(128, 2, generator=torch.Generator().manual_seed(1))


def test_layers_gives_unit_rms_pre_activations_and_target_output() -> None:
    model = chain()
    plain = chain()
    init(plain)
    plan = init(model, example_input=X, calibrate="layers", calibrate_target=2.5)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    h = X
    for i, (layer, plain_layer, factor) in enumerate(zip(linears, [m for m in plain if isinstance(m, nn.Linear)],
                                                         plan.calibration.factors)):
        pre = layer(h)
        goal = 2.5 if i == len(linears) - 1 else 1.0
        assert float(pre.pow(2).mean().sqrt()) == pytest.approx(goal, rel=1e-4)
        # the factor multiplied theory's draw (same seed) and nothing else
        torch.testing.assert_close(layer.weight, factor * plain_layer.weight)
        h = F.leaky_relu(pre, 0.1)
    assert plan.calibration.method == "layers"


def test_output_spreads_one_factor_and_scales_the_function_by_its_product() -> None:
    model, plain = chain(depth=20), chain(depth=20)
    init(plain)
    plan = init(model, example_input=X, calibrate="output", calibrate_target=0.5)
    factors = plan.calibration.factors
    assert max(factors) == pytest.approx(min(factors))
    with torch.no_grad():
        out = model(X)
        assert float(out.pow(2).mean().sqrt()) == pytest.approx(0.5, rel=1e-4)
        # zero biases, Leaky ReLU: positively homogeneous, so f = prod(factors) * f_plain exactly
        torch.testing.assert_close(out, math.prod(factors) * plain(X), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["layers", "output"])
def test_measured_log_gains_add_up_to_the_network_log_gain(method: str) -> None:
    model = chain()
    plan = init(model, example_input=X, calibrate=method)
    with torch.no_grad():
        total = log_gain(X, model(X))
    gains = plan.calibration.log_gains
    assert sum(gains) == pytest.approx(total, abs=1e-4)
    assert "calibration" in str(plan) and "log-gain" in str(plan)
    assert plan.to_dict()["calibration"]["factors"] == plan.calibration.factors


def test_same_seed_same_weights_and_train_mode_and_buffers_restored() -> None:
    def make() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.LeakyReLU(0.1), nn.Dropout(0.5), nn.Linear(4, 1))

    first, second = make(), make()
    init(first, seed=3, example_input=X, calibrate="layers")
    init(second, seed=3, example_input=X, calibrate="layers")
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert first.training and first[1].training
    assert torch.equal(first[1].running_mean, torch.zeros(4)) and int(first[1].num_batches_tracked) == 0


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(2, 3), nn.Linear(1, 3), nn.Linear(3, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(F.leaky_relu(self.a(x) + self.b(z), 0.1))


@pytest.mark.parametrize("batch", [
    (X, X[:, :1]),
    {"x": X, "z": X[:, :1]},
])
def test_tuple_and_dict_batches(batch) -> None:
    model = TwoInputs()
    init(model, example_input=batch, calibrate="output")
    with torch.no_grad():
        out = model(*batch) if isinstance(batch, tuple) else model(**batch)
    assert float(out.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-3)  # the default target


def test_forward_argument_picks_the_output() -> None:
    model = chain()
    init(model, example_input={"inputs": X}, calibrate="output", forward=lambda m, batch: {"y": m(batch["inputs"])})
    with torch.no_grad():
        assert float(model(X).pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("method", ["layers", "output"])
def test_failure_restores_every_weight_and_bias(method: str) -> None:
    model = chain()
    for p in model.parameters():
        nn.init.uniform_(p, 0.5, 1.0)  # non-zero biases: apply_init would zero them
    before = weights(model)
    calls = []

    def flaky(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return m(batch)

    with pytest.raises(RuntimeError, match="boom"):
        init(model, example_input=X, calibrate=method, forward=flaky)
    for a, b in zip(before, weights(model)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["layers", "output"])
def test_all_zero_batch_is_a_clear_error_and_changes_nothing(method: str) -> None:
    model = chain()
    before = weights(model)
    with pytest.raises(ValueError, match="all-zero input; pass a batch of real inputs"):
        init(model, example_input=torch.zeros(8, 2), calibrate=method)
    for a, b in zip(before, weights(model)):
        assert torch.equal(a, b)


def dying_relu_chain() -> nn.Sequential:
    """ReLU chain whose 4th Linear (``6``, excluded from the plan) has only negative weights: every
    unit after its ReLU is zero, so the planned layers from ``8`` on get an all-zero input."""
    model = nn.Sequential(*[m for _ in range(7) for m in (nn.Linear(3, 3), nn.ReLU())], nn.Linear(3, 1))
    with torch.no_grad():
        model[6].weight.copy_(-model[6].weight.abs() - 0.1)
        model[6].bias.fill_(-1.0)
    return model


def test_dead_layers_keep_factor_one_with_a_warning_and_the_rest_is_calibrated() -> None:
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    model, plain = dying_relu_chain(), dying_relu_chain()
    plain.load_state_dict(model.state_dict())
    init(plain, exclude=["6"])
    with pytest.warns(UserWarning, match=r"calibrate='layers': the output of layer '8' and 3 layer\(s\) after it is all zero"):
        plan = apply_init(model, example_input=x, calibrate="layers", exclude=["6"],
                          generator=torch.Generator().manual_seed(0))
    factors = dict(zip(plan.layer_names, plan.calibration.factors))
    assert [factors[name] for name in ("8", "10", "12", "14")] == [1.0] * 4
    for name in ("8", "10", "12", "14"):  # theory's draw, untouched
        torch.testing.assert_close(model.get_submodule(name).weight, plain.get_submodule(name).weight)
    with torch.no_grad():  # the layers before the dead one are calibrated: rms 1 pre-activations
        h = x
        for i in range(0, 6, 2):
            h = model[i](h)
            assert float(h.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-4)
            h = model[i + 1](h)
    assert any("all zero" in message for message in plan.warnings)


def test_dead_network_output_keeps_theorys_draw_with_calibrate_output() -> None:
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    model, plain = dying_relu_chain(), dying_relu_chain()
    plain.load_state_dict(model.state_dict())
    init(plain, exclude=["6"])
    with pytest.warns(UserWarning, match="calibrate='output': the output of layer '14' is all zero"):
        plan = apply_init(model, example_input=x, calibrate="output", exclude=["6"],
                          generator=torch.Generator().manual_seed(0))
    assert plan.calibration.factors == [1.0] * len(plan.layers)
    for a, b in zip(weights(model), weights(plain)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    ({"calibrate": "lsuv", "example_input": X}, "calibrate='lsuv' is invalid.*'layers', 'output'"),
    ({"calibrate": "layers"}, "needs example_input"),
    ({"calibrate": "output", "example_input": X, "calibrate_target": 0.0}, "calibrate_target"),
])
def test_bad_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    model = chain()
    before = weights(model)
    with pytest.raises(ValueError, match=match):
        init(model, **kwargs)
    for a, b in zip(before, weights(model)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- callback


def test_callback_calibrates_on_the_first_training_batch(tmp_path) -> None:
    import lightning.pytorch as pl
    from helpers import DeepNarrow, loader, trainer_kwargs

    from lightning_lyapunov import LyapunovInit

    torch.manual_seed(0)
    module = DeepNarrow()
    callback = LyapunovInit(seed=0, calibrate="output", calibrate_target=0.5, diagnostics=False)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, logger=False, max_steps=0))
    trainer.fit(module, loader())
    x, _ = next(iter(loader()))
    with torch.no_grad():
        assert float(module(x).pow(2).mean().sqrt()) == pytest.approx(0.5, rel=1e-3)
    assert callback.plan.calibration.method == "output"
    assert len(callback.plan.calibration.log_gains) == len(callback.plan.layers)


def test_sampled_then_calibrated_in_one_call_and_bad_argument() -> None:
    # apply_init(sampled=..., calibrate=...) is the engine the callback uses: selection, then calibration
    from helpers import DeepNarrow, loader

    from lightning_lyapunov import LyapunovInit

    with pytest.raises(ValueError, match="calibrate='yes' is invalid"):
        LyapunovInit(calibrate="yes")
    module = DeepNarrow()
    x, _ = next(iter(loader()))
    plan = apply_init(module, sampled=True, calibrate="layers", example_input=x,
                      generator=torch.Generator().manual_seed(0))
    assert plan.calibration.method == "layers" and plan.sampling.mode == "network"
    assert plan.sampling.chosen_score == min(plan.sampling.scores)
    with torch.no_grad():
        assert float(module(x).pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-4)


def test_cli_config_sets_calibrate() -> None:
    from pathlib import Path

    from helpers import the_callback

    from lightning_lyapunov.lightning_cli import LyapunovCLI

    config = Path(__file__).parent.parent / "configs" / "polynomial.yaml"
    cli = LyapunovCLI(args=["-c", str(config), "--trainer.callbacks.calibrate=output",
                            "--trainer.callbacks.calibrate_target=2.0", "--trainer.logger=false"], run=False)
    callback = the_callback(cli.trainer.callbacks)
    assert (callback.spec.calibrate, callback.spec.calibrate_target) == ("output", 2.0)


# ------------------------------------------------------------------------------------ callback default


def fit_callback(tmp_path, data=None, depth: int = 12, steps: int = 0, **kwargs):
    import lightning.pytorch as pl
    from helpers import DeepNarrow, loader, trainer_kwargs

    from lightning_lyapunov import LyapunovInit

    module, callback = DeepNarrow(depth=depth), LyapunovInit(**{"seed": 0, "diagnostics": False, **kwargs})
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, logger=False, max_steps=steps))
    trainer.fit(module, data if data is not None else loader())
    return module, callback


def test_callback_default_calibrates_lyapunov_but_not_the_baselines(tmp_path) -> None:
    from helpers import DeepNarrow, loader

    x, _ = next(iter(loader()))
    for scheme, calibrated in (("lyapunov", "layers"), ("he", None)):
        module, callback = fit_callback(tmp_path, scheme=scheme)
        assert callback.spec.calibrate == "auto" and callback.spec.calibration_method == calibrated
        assert (callback.plan.calibration and callback.plan.calibration.method) == calibrated
        reference = DeepNarrow()
        init(reference, seed=0, scheme=scheme, **({"example_input": x, "calibrate": "layers"} if calibrated else {}))
        for a, b in zip(weights(module), weights(reference)):
            torch.testing.assert_close(a, b)
        if calibrated:  # the predictions follow the calibration: the measured drift, not theory's 0
            plan = callback.plan
            with torch.no_grad():  # the default target
                assert float(module(x).pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-4)
            assert plan.predicted_drift == pytest.approx(sum(plan.calibration.log_gains))
            assert abs(plan.predicted_drift - sum(layer.init.exponent for layer in plan.layers)) > 1e-3


def test_callback_auto_calibration_falls_back_to_theorys_draw_on_a_nonfinite_batch(tmp_path) -> None:
    from helpers import DeepNarrow

    x = torch.full((16, 4), float("nan"))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(16, 1)), batch_size=8)
    with pytest.raises(ValueError, match="non-finite"):  # asked for explicitly: a clear error
        fit_callback(tmp_path, data, depth=5, calibrate="output")
    with pytest.warns(UserWarning, match="calibrate='auto' skipped, theory's draw kept: .*non-finite"):
        module, callback = fit_callback(tmp_path, data, depth=5)
    reference = DeepNarrow(depth=5)
    init(reference, seed=0)
    for a, b in zip(weights(module), weights(reference)):
        assert torch.equal(a, b)
    assert callback.plan.calibration is None


def test_plan_text_folds_calibrated_layers_with_the_range_of_their_log_gains() -> None:
    model = chain(depth=20)
    plan = init(model, example_input=X, calibrate="output")
    text = plan.describe(warnings=False)
    folded = next(line for line in text.splitlines() if "(x18)" in line)
    gains = plan.calibration.log_gains[1:19]
    assert f"{min(gains):.4f} .. {max(gains):.4f}" in folded
    assert f"{plan.calibration.factors[1]:.4f}" in folded  # 'output': one factor, shown once
    assert "before calibration, theory's log-norm drift" in text
    assert len(plan.describe(warnings=False, fold=0).splitlines()) == len(text.splitlines()) + 17


def test_batchnorm_nets_are_calibrated_on_batch_statistics_as_in_training() -> None:
    # in eval mode a fresh BatchNorm is the identity (running mean 0, var 1): calibrating that net
    # would scale a function training never sees; the first training step normalizes by the batch
    def make() -> nn.Sequential:
        return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8),
                             nn.ReLU(), nn.Linear(8, 1))

    x = 5.0 + 3.0 * X  # far from the running statistics
    model = make()
    init(model, example_input=x, calibrate="output", calibrate_target=0.5)
    assert model.training and float(model[1].running_mean.abs().max()) == 0.0  # buffers untouched
    with torch.no_grad():
        assert float(model(x).pow(2).mean().sqrt()) == pytest.approx(0.5, rel=1e-3)


def test_one_default_target_everywhere() -> None:
    import inspect

    from lightning_lyapunov import InitSpec, LyapunovInit
    from lightning_lyapunov.calibration import calibrate_
    from lightning_lyapunov.settings import DEFAULT_TARGET

    assert DEFAULT_TARGET == 1.0
    for function, name in ((InitSpec, "calibrate_target"), (LyapunovInit.__init__, "calibrate_target"),
                           (calibrate_, "target")):
        assert inspect.signature(function).parameters[name].default == DEFAULT_TARGET


def test_callback_predicted_line_is_the_measured_log_norm_on_the_calibration_batch(tmp_path) -> None:
    # after a calibration the dashboard's predicted line (first layer's measured mean + the next
    # layers' log-gains) must be what the diagnostics measure at step 0 on that same batch
    import lightning.pytorch as pl
    from helpers import DeepNarrow, loader, trainer_kwargs

    from lightning_lyapunov import LyapunovInit
    from lightning_lyapunov.dashboard import predicted_log_norm
    from lightning_lyapunov.diagnostics import STAT_KEYS

    for calibrate in ("layers", "output"):
        callback = LyapunovInit(seed=0, calibrate=calibrate, log_every_n_steps=1)
        trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, logger=False, max_steps=1))
        trainer.fit(DeepNarrow(width=2, depth=16), loader(width=2))
        stats = callback.report.first
        measured = stats.values[:, STAT_KEYS.index("log_norm_mean")]
        predicted = predicted_log_norm(stats, callback.plan)
        assert predicted is not None
        assert abs(predicted - measured).max() < 1e-4, (calibrate, predicted - measured)


def test_callback_does_not_warn_about_the_output_scale_a_calibration_chose(tmp_path) -> None:
    # inputs of scale 100, outputs calibrated to 1: a gap of e^-4.6 that the calibration made on purpose
    # (before, the warning blamed the scheme: "the plan predicts this: scheme='lyapunov' drifts by -4.6")
    from helpers import loader

    from lightning_lyapunov import LyapunovWarning

    x, y = loader().dataset.tensors
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(100.0 * x, y), batch_size=16)
    for calibrate, warned in (("auto", False), (None, True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit_callback(tmp_path, data, steps=1, calibrate=calibrate, diagnostics=True, log_every_n_steps=1)
        scale = [w for w in caught if issubclass(w.category, LyapunovWarning) and "times the input's" in str(w.message)]
        assert bool(scale) == warned, (calibrate, [str(w.message) for w in scale])


# ------------------------------------------------------------------------------ layers the forward skips


class WithAux(nn.Module):
    """A chain plus an auxiliary layer that the forward never calls (registered first and last)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(2, 2)
        self.chain = chain(depth=6)
        self.aux = nn.Linear(3, 3)

    def forward(self, x):
        return self.chain(x)


@pytest.mark.parametrize("calibrate", ["layers", "output", "auto"])
def test_layers_the_forward_never_calls_keep_theorys_draw_and_the_others_are_calibrated(calibrate: str) -> None:
    model, plain = WithAux(), WithAux()
    init(plain)
    with pytest.warns(UserWarning, match=r"'pre', 'aux'.*not called.*theory's draw"):
        plan = apply_init(model, example_input=X, calibrate=calibrate, generator=torch.Generator().manual_seed(0))
    result = plan.calibration
    assert result is not None and result.uncalled == ["pre", "aux"]
    names = plan.layer_names
    for name in ("pre", "aux"):
        index = names.index(name)
        assert result.factors[index] == 1.0 and math.isnan(result.log_gains[index])
        assert torch.equal(getattr(model, name).weight, getattr(plain, name).weight)
    with torch.no_grad():
        assert float(model(X).pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-3)
    text = plan.describe()
    assert "not called" in text.split("calibrated (")[1]
    assert plan.predicted_drift == pytest.approx(sum(g for g in result.log_gains if math.isfinite(g)))


def test_no_planned_layer_called_is_still_an_error_for_an_explicit_calibration() -> None:
    with pytest.raises(ValueError, match="no planned layer was called"):
        init(WithAux(), example_input=X, calibrate="layers", forward=lambda m, x: x, include="aux")


def test_callback_calibrates_the_layers_that_ran_when_one_is_never_called(tmp_path) -> None:
    import lightning.pytorch as pl
    from helpers import DeepNarrow, loader, trainer_kwargs

    from lightning_lyapunov import LyapunovInit

    class Aux(DeepNarrow):
        def __init__(self) -> None:
            super().__init__(depth=6)
            self.aux = nn.Linear(4, 4)  # an auxiliary head the forward never calls

    module, callback = Aux(), LyapunovInit(seed=0, diagnostics=False)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, logger=False, max_steps=0))
    with pytest.warns(UserWarning, match=r"'aux'\) not called .* theory's draw"):
        trainer.fit(module, loader())
    assert callback.plan.calibration is not None and callback.plan.calibration.uncalled == ["aux"]
    x, _ = next(iter(loader()))
    with torch.no_grad():
        assert float(module(x).pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-4)
    assert "not calibrated, theory's draw kept: aux" in callback.plan.describe()


# ------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("method", ["layers", "output"])
def test_same_bits_whatever_the_number_of_threads(method: str) -> None:
    # a realistic batch: the whole-tensor reductions split over threads above 32768 elements
    x = torch.randn(1024, 96, generator=torch.Generator().manual_seed(1))
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            model = nn.Sequential(*[m for _ in range(5) for m in (nn.Linear(96, 96), nn.LeakyReLU(0.1))],
                                  nn.Linear(96, 1))
            plan = init(model, example_input=x, calibrate=method)
        finally:
            torch.set_num_threads(1)
        results.append((plan.calibration.factors, plan.calibration.log_gains, weights(model)))
    (factors1, gains1, weights1), (factors2, gains2, weights2) = results
    assert factors1 == factors2 and gains1 == gains2
    assert all(torch.equal(a, b) for a, b in zip(weights1, weights2))
