"""Tests of lightning_lyapunov.plan: the plan's table, and its all-or-nothing write and restore."""

import warnings

import pytest
import torch
from torch import nn

from helpers import changed, gen, quiet, snapshot
from lightning_lyapunov import apply_init, plan_init


def deep_mlp(depth: int = 40, width: int = 2, slope: float = 0.1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(1, width), nn.LeakyReLU(slope)]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.LeakyReLU(slope)]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def test_plan_folds_runs_of_identical_layers_and_names_what_is_drawn():
    plan = plan_init(deep_mlp(), scheme="he", distribution="orthogonal")
    lines = str(plan).splitlines()
    assert lines[0].startswith("InitPlan: scheme='he', distribution='gaussian'; 40 Linear layers")  # He draws Gaussian
    assert len(lines) == 3 + 3 + 1  # header, column names, rule; first, 38 folded, last; drift
    assert lines[4].split()[:5] == ["1-38", "2", "...", "76", "(x38)"]
    assert "shared with" not in lines[1]  # no tied weights: no column for them
    full = plan.describe(fold=0).splitlines()
    assert len(full) == 3 + 40 + 1 and full[-2].split()[:2] == ["39", "78"]


def test_the_plan_table_fits_120_columns_and_gives_every_column_on_request():
    model = nn.Sequential(deep_mlp(), nn.Sequential(nn.Linear(1, 2), nn.LeakyReLU(0.1), nn.Linear(2, 1)))
    plan = quiet(apply_init, model, example_input=torch.linspace(-1, 1, 64)[:, None], calibrate="layers",
                 generator=gen(0))
    text = str(plan)
    assert max(map(len, text.splitlines())) <= 120, text
    header = text.splitlines()[1].split()
    assert "d_in" not in header and "type" not in header and "draw" not in header  # in the header line
    assert "0.1    observed" in text and "41 Linear layers" not in text and "42 Linear layers" in text
    assert "0.2 ... 76 (x38)" in text  # a folded run names its last layer after the prefix they share
    detailed = plan.describe(details=True)
    assert {"type", "d_in", "d_out", "draw"} <= set(detailed.splitlines()[1].split())
    assert "0.2 ... 0.76 (x38)" in detailed and "no activation (observed)" in detailed
    # one value per quantity: the drift per layer is the sum of the log-gains over the layers
    gains = plan.calibration.log_gains
    assert f"({sum(gains) / len(gains):+.4f} per layer): the diagnostics' prediction" in text


def test_plan_moment_only_for_the_fractional_scheme():
    model = deep_mlp(depth=4)
    assert "moment" not in str(plan_init(model)).splitlines()[0]
    header = str(plan_init(model, scheme="fractional", moment=1.0, distribution="gaussian")).splitlines()[0]
    assert "scheme='fractional', distribution='gaussian', moment=1.0;" in header


def test_describe_can_leave_out_the_warnings():
    model = nn.Sequential(nn.Linear(4, 4), nn.RReLU(), nn.Linear(4, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = plan_init(model)
    assert plan.warnings and "warning: " in str(plan)
    assert "warning: " not in plan.describe(warnings=False)


def test_plan_command_prints_each_plan_warning_once(tmp_path, capsys):
    from pathlib import Path

    import yaml

    from lightning_lyapunov.cli import main

    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "polynomial.yaml").read_text())
    config["model"]["init_args"]["model"]["init_args"].update(activation="gelu", depth=4)
    path = tmp_path / "gelu.yaml"
    path.write_text(yaml.safe_dump(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["plan", "-c", str(path)])
    out = capsys.readouterr().out
    printed = [line for line in out.splitlines() if line.startswith("warning: ") and "gelu" in line]
    assert len(printed) >= 1  # width 2: the scale chain is approximate there
    assert not [w for w in caught if "gelu" in str(w.message)]  # not a second time as a Python warning


def chain() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 2))


def inference_second() -> nn.Sequential:
    model = chain()
    with torch.inference_mode():
        model[2] = nn.Linear(4, 4)  # an inference tensor: writing it outside inference mode raises
    return model


def expanded_second() -> nn.Sequential:
    model = chain()
    model[2].weight = nn.Parameter(torch.randn(1, 4).expand(4, 4))  # 4 rows on one memory location
    return model


@pytest.mark.parametrize(
    "make, match", [(inference_second, "inference tensor"), (expanded_second, "single memory location")]
)
def test_a_failed_write_restores_every_weight_and_the_generator(make, match: str) -> None:
    model, generator = make(), gen(5)
    before, state = snapshot(model), generator.get_state()
    with pytest.raises(RuntimeError, match=match):
        quiet(apply_init, model, generator=generator)
    assert changed(model, before) == []
    assert torch.equal(generator.get_state(), state)  # a failed apply_init does not advance it


def test_a_failed_write_with_the_default_generator_restores_its_state() -> None:
    model = expanded_second()
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError):
        quiet(apply_init, model)
    assert torch.equal(torch.get_rng_state(), state)


def test_an_interrupt_between_writes_restores_every_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    model = chain()
    before, target, real_zero = snapshot(model), model[2].bias, torch.Tensor.zero_

    def interrupted(tensor: torch.Tensor) -> torch.Tensor:
        if tensor is target:  # layer 0 written, layer 2's weight written, its bias not yet
            raise KeyboardInterrupt
        return real_zero(tensor)

    monkeypatch.setattr(torch.Tensor, "zero_", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quiet(apply_init, model, generator=gen(0))
    monkeypatch.undo()
    assert changed(model, before) == []


def test_plan_write_refuses_wrong_shapes_and_counts_before_writing() -> None:
    model = chain()
    plan = quiet(plan_init, model)
    before, weights = snapshot(model), plan.draw(gen(0))
    with pytest.raises(ValueError, match="3 planned layers"):
        plan.write(weights[:2])
    with pytest.raises(ValueError, match=r"shape \(4, 1\) for layer '2'"):
        plan.write([weights[0], torch.zeros(4, 1), weights[2]])  # would broadcast silently
    assert changed(model, before) == []
    plan.write(weights)
    assert all(torch.equal(layer.module.weight, w) for layer, w in zip(plan.layers, weights))


def test_restored_on_error_puts_back_each_tensor_once_and_the_generator() -> None:
    from lightning_lyapunov.plan import restored_on_error

    a, b = torch.ones(3), torch.zeros(2)
    rng = torch.Generator().manual_seed(5)
    expected = torch.rand(4, generator=torch.Generator().manual_seed(5))
    with pytest.raises(KeyboardInterrupt):
        with restored_on_error([a, b, a], rng):  # `a` listed twice: saved once, restored to its entry value
            a.add_(1.0)
            b.fill_(7.0)
            torch.rand(4, generator=rng)
            raise KeyboardInterrupt
    assert torch.equal(a, torch.ones(3)) and torch.equal(b, torch.zeros(2))
    assert torch.equal(torch.rand(4, generator=rng), expected)
    with restored_on_error([a]):  # no error: the changes stay
        a.add_(1.0)
    assert torch.equal(a, torch.full((3,), 2.0))
