"""The ``lightning-lyapunov`` command: every config trains one fast_dev_run step, ``plan`` and
``theory`` print, the callback is switched and tuned from the command line, bad values are
rejected readably, and the installed console script runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.trainer.states import TrainerStatus

from lightning_lyapunov import theory
from lightning_lyapunov.callbacks import LyapunovInit
from lightning_lyapunov.cli import main
from lightning_lyapunov.lightning_cli import LyapunovCLI
from helpers import the_callback

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# per config: overrides that make fast_dev_run fast, (number of planned layers, hidden slope, hidden width)
FAST = {
    "polynomial": ([], (41, 0.1, 2)),
    "score": (["--data.init_args.n_train=256"], (31, 0.1, 2)),
    "mnist1d": (["--data.init_args.num_samples=200", "--data.init_args.val_size=20"], (21, 0.0, 64)),
    "digits": ([], (21, 0.1, 16)),
    "cifar10": (
        [
            "--data.init_args.synthetic=true",
            "--data.init_args.synthetic_size=64",
            "--data.init_args.val_size=16",
            "--data.init_args.batch_size=16",
        ],
        (21, 0.1, 16 * 9),  # 3x3 convs: d_in = 16 channels * 9 taps
    ),
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to a relative path (runs/, data/) lands here


def _fast_args(tmp_path: Path) -> list[str]:
    return [
        "--trainer.fast_dev_run=true",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def _plan(capsys, *args: str) -> str:
    main(["plan", *args])
    return capsys.readouterr().out


def _rejected(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(FAST))
def test_every_config_fits_one_step_with_the_callback(name, tmp_path):
    overrides, (n_layers, slope, d_hidden) = FAST[name]
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    callback_args = config["trainer"]["callbacks"][0]["init_args"]
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "runs"

    cli = LyapunovCLI(args=["fit", "-c", str(CONFIGS / f"{name}.yaml"), *_fast_args(tmp_path), *overrides])

    assert cli.trainer.state.status == TrainerStatus.FINISHED
    assert cli.trainer.global_step == 1
    callback = the_callback(cli.trainer.callbacks)
    assert callback.initialized
    plan = callback.plan
    assert (plan.scheme, plan.spec.distribution) == (callback_args["scheme"], callback_args["distribution"])
    assert len(plan.layers) == n_layers
    hidden = plan.layers[1]
    assert (hidden.d_in, hidden.negative_slope) == (d_hidden, slope)
    expected = theory.critical_scale(hidden.d_in, hidden.d_out, slope, callback_args["distribution"])
    assert hidden.init.scale == pytest.approx(expected, rel=1e-6)
    assert not (tmp_path / "lightning_logs").exists()


def test_validate_subcommand_runs(tmp_path):
    args = ["validate", "-c", str(CONFIGS / "digits.yaml"), *_fast_args(tmp_path)]
    cli = LyapunovCLI(args=args)
    assert cli.trainer.state.status == TrainerStatus.FINISHED
    assert not the_callback(cli.trainer.callbacks).initialized  # initializes in fit only


def test_plan_prints_the_table_of_the_config_callback(capsys):
    out = _plan(capsys, "-c", str(CONFIGS / "polynomial.yaml"))
    assert "InitPlan: scheme='lyapunov', distribution='orthogonal'; 41 Linear layers" in out
    assert "model.net.80" in out  # the output layer of the depth-40 net
    scale = theory.critical_scale(2, 2, 0.1, "orthogonal")
    assert f"  {scale:.4f}  " in out
    assert max(map(len, out.splitlines())) <= 120 and "d_in" not in out
    detailed = _plan(capsys, "-c", str(CONFIGS / "polynomial.yaml"), "--details=true")
    assert "d_in  d_out" in detailed and "model.net.2 ... model.net.78 (x39)" in detailed


def test_plan_overrides(capsys):
    config = str(CONFIGS / "polynomial.yaml")
    out = _plan(capsys, "-c", config, "--scheme", "he", "--distribution=gaussian")
    assert "scheme='he'" in out
    assert f"  {theory.he_scale(2, 0.1):.4f}  " in out
    out = _plan(capsys, "-c", config, "--trainer.callbacks.scheme=fractional", "--trainer.callbacks.moment=1.0")
    assert "scheme='fractional', distribution='orthogonal', moment=1.0" in out
    scale = theory.critical_scale(2, 2, 0.1, "orthogonal", moment=1.0)
    assert f"  {scale:.4f}  " in out


def _config_without_callback(tmp_path: Path) -> str:
    config = yaml.safe_load((CONFIGS / "digits.yaml").read_text())
    del config["trainer"]["callbacks"]
    path = tmp_path / "no_callback.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("class_path", ["LyapunovInit", "lightning_lyapunov.LyapunovInit"])
def test_callback_added_and_tuned_from_the_command_line(class_path, tmp_path, capsys):
    config = _config_without_callback(tmp_path)
    args = ["-c", config, f"--trainer.callbacks+={class_path}", "--trainer.callbacks.scheme=he",
            "--trainer.callbacks.init_args.distribution=gaussian"]
    cli = LyapunovCLI(args=args, run=False)
    callback = the_callback(cli.trainer.callbacks)
    assert isinstance(callback, LyapunovInit)
    assert (callback.spec.scheme, callback.spec.distribution) == ("he", "gaussian")

    out = _plan(capsys, *args)
    assert "scheme='he', distribution='gaussian'" in out
    assert f"  {theory.he_scale(16, 0.1):.4f}  " in out


def test_a_config_names_the_callbacks_forward_by_its_import_path(tmp_path):
    from helpers import net_on_inputs

    config = yaml.safe_load((CONFIGS / "polynomial.yaml").read_text())
    config["trainer"]["callbacks"][0]["init_args"]["forward"] = "helpers.net_on_inputs"
    path = tmp_path / "forward.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LyapunovCLI(args=["-c", str(path), "--trainer.logger=false"], run=False)
    assert the_callback(cli.trainer.callbacks).forward is net_on_inputs


def test_help_lists_the_commands_and_the_callback_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "{fit,validate,test,predict,plan,theory}" in out

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--trainer.callbacks.help", "LyapunovInit"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.callbacks.scheme {lyapunov,fractional,stiefel,he,glorot,orthogonal,zero}" in out
    for argument in ("distribution", "moment", "sampled", "negative_slope", "include", "exclude", "seed", "calibrate",
                     "calibrate_target", "example_input", "forward"):
        assert f"--trainer.callbacks.{argument}" in out


@pytest.mark.parametrize(
    "command, override, expected",
    [
        ("fit", "--trainer.callbacks.init_args.scheme=kaiming",
         "error: invalid value 'kaiming' for LyapunovInit's 'scheme': expected one of 'lyapunov', 'fractional', "),
        ("fit", "--trainer.callbacks.moment=abc", "error: invalid value 'abc' for LyapunovInit's 'moment': "
                                                  "expected a float or None"),
        ("fit", "--model.init_args.lr=-1", "invalid configuration: lr=-1.0 is invalid"),
        ("fit", "--trainer.callbacks+=LyapunovInit", "the Trainer has 2 LyapunovInit callbacks"),
        ("fit", "--trainer.callbacks.moment=5", "moment=5.0 is invalid"),
        ("plan", "--scheme=kaiming", "error: invalid value 'kaiming' for 'scheme': expected one of 'lyapunov'"),
        ("fit", "--trainer.callbacks.distributon=gaussian",
         "error: unknown argument 'distributon' of LyapunovInit, did you mean 'distribution'?"),
        ("fit", "--trainer.callbacks.example_input=[1.0, 2.0]", "example_input=[1.0, 2.0] (list) holds no tensor"),
    ],
)
def test_bad_values_are_rejected_readably(command, override, expected, capsys):
    err = _rejected(capsys, [command, "-c", str(CONFIGS / "polynomial.yaml"), override])
    assert expected in err
    assert "Traceback" not in err
    assert len(err.splitlines()) < 20  # the message is not buried under the full usage


def test_a_typo_in_a_config_file_names_the_argument_and_the_fix(tmp_path, capsys):
    config = (CONFIGS / "polynomial.yaml").read_text().replace("distribution:", "distributon:")
    path = tmp_path / "typo.yaml"
    path.write_text(config)
    err = _rejected(capsys, ["fit", "-c", str(path)])
    assert "error: unknown argument 'distributon' of LyapunovInit, did you mean 'distribution'?" in err
    assert "Union" not in err and len(err.splitlines()) <= 3


def test_a_misspelt_value_in_a_config_file_is_one_line_with_the_allowed_values(tmp_path, capsys):
    config = (CONFIGS / "polynomial.yaml").read_text().replace("scheme: lyapunov", "scheme: lyapunv")
    path = tmp_path / "typo.yaml"
    path.write_text(config)
    err = _rejected(capsys, ["fit", "-c", str(path)])
    assert ("error: invalid value 'lyapunv' for LyapunovInit's 'scheme': expected one of 'lyapunov', 'fractional', "
            "'stiefel', 'he', 'glorot', 'orthogonal', 'zero'") in err
    assert "Union" not in err and len(err.splitlines()) <= 3


def test_missing_data_ends_the_command_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/cifar10 here
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(CONFIGS / "cifar10.yaml"), *_fast_args(tmp_path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith("lightning-lyapunov fit: error: CIFAR-10 not found") and "synthetic=True" in line


def test_theory_help_describes_its_flags_and_columns(capsys):
    with pytest.raises(SystemExit):
        main(["theory", "--help"])
    out = capsys.readouterr().out
    for flag, words in (("--widths", "layer widths"), ("--slopes", "negative slopes"), ("--depth", "number of layers")):
        assert flag in out and words in out, flag
    for column in ("lambda He", "sigma He", "sigma Lyap", "eta Lyap", "s^2 gauss", "He drift over depth"):
        assert f"\n  {column}" in out, column
    assert "gain of Haar orthogonal weights" in out  # eta


def test_help_and_theory_start_without_lightning():
    code = (
        "import sys\n"
        "from lightning_lyapunov.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "main(['theory', '--widths', '2', '--slopes', '0.1', '--depth', '3'])\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'jsonargparse') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "{fit,validate,test,predict,plan,theory}" in result.stdout and "| 2 | 0.1 |" in result.stdout


def test_theory_command_prints_the_table(capsys):
    main(["theory", "--widths", "2", "--slopes", "0.1", "--depth", "10"])
    assert capsys.readouterr().out == theory.theory_table([2], [0.1], 10) + "\n"


def test_console_script_runs():
    script = Path(sys.executable).with_name("lightning-lyapunov")
    command = str(script) if script.exists() else shutil.which("lightning-lyapunov")
    assert command, "the lightning-lyapunov console script is not installed (pip install -e .)"
    result = subprocess.run(
        [command, "theory", "--widths", "2", "--slopes", "0.1"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == theory.theory_table([2], [0.1]) + "\n"


def test_cifar10_config_runs_with_synthetic_true_alone(tmp_path):
    """`--data.init_args.synthetic=true` is the only override the smoke run needs (issue 10)."""
    cli = LyapunovCLI(args=["fit", "-c", str(CONFIGS / "cifar10.yaml"), *_fast_args(tmp_path),
                            "--data.init_args.synthetic=true"])
    assert cli.trainer.state.status == TrainerStatus.FINISHED and cli.trainer.global_step == 1
    assert {k: len(v[0]) for k, v in cli.datamodule.splits.items()} == {"train": 1844, "val": 204, "test": 409}


def test_plan_describes_the_look_ahead_of_the_config_callback(tmp_path, capsys):
    config = yaml.safe_load((CONFIGS / "polynomial.yaml").read_text())
    config["trainer"]["callbacks"][0]["init_args"].update(look_ahead=4, look_ahead_steps=60)
    path = tmp_path / "look_ahead.yaml"
    path.write_text(yaml.safe_dump(config))
    out = " ".join(_plan(capsys, "-c", str(path)).split())
    # cost(4) = 4 + 2 = 6 steps per first-rung step: cuts at 10 and 20, 60 steps in all, 20 the kept one's own
    assert ("look-ahead (look_ahead=4, look_ahead_steps=60): fit draws 4 candidates as this plan says" in out
            and "in its first 60 training steps" in out and "at steps 10/20 of each candidate" in out
            and "(20 of those steps are its own, 40 extra)" in out), out
    assert "look-ahead" not in _plan(capsys, "-c", str(CONFIGS / "polynomial.yaml"))
