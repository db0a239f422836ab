"""What the console shows: the compact plan, grouped warnings, the closing summary."""

import warnings

from torch import nn

from lightning_lyapunov import plan_init


def deep_mlp(depth: int = 40, width: int = 2, slope: float = 0.1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(1, width), nn.LeakyReLU(slope)]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.LeakyReLU(slope)]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def test_plan_folds_runs_of_identical_layers_and_names_what_is_drawn():
    plan = plan_init(deep_mlp(), scheme="he", distribution="orthogonal")
    lines = str(plan).splitlines()
    assert lines[0].startswith("InitPlan: scheme='he', distribution='gaussian'; 40 layers")  # He draws Gaussian
    assert len(lines) == 3 + 3 + 1  # header, column names, rule; first, 38 folded, last; drift
    assert lines[4].split()[:5] == ["1-38", "2", "...", "76", "(x38)"]
    assert "shared with" not in lines[1]  # no tied weights: no column for them
    full = plan.describe(fold=0).splitlines()
    assert len(full) == 3 + 40 + 1 and full[-2].split()[:2] == ["39", "78"]


def test_plan_moment_only_for_the_fractional_scheme():
    model = deep_mlp(depth=4)
    assert "moment" not in str(plan_init(model)).splitlines()[0]
    header = str(plan_init(model, scheme="fractional", moment=1.0, distribution="gaussian")).splitlines()[0]
    assert "scheme='fractional', distribution='gaussian', moment=1.0;" in header


def test_describe_can_leave_out_the_warnings():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 1))
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
    printed = [line for line in out.splitlines() if line.startswith("warning: ") and "GELU" in line]
    assert len(printed) >= 1
    assert not [w for w in caught if "GELU" in str(w.message)]  # not a second time as a Python warning
