"""The package's shape: modules in stages along the data path, no import cycle, no module importing a
later stage, small classes, every init setting declared once, `plan` and `fit` agreeing on each."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
from pathlib import Path

import pytest
import yaml

import lightning_lyapunov
from lightning_lyapunov import InitSpec, LyapunovInit

PACKAGE = Path(lightning_lyapunov.__file__).parent

#: The stages, first to last: a module imports only modules of earlier stages.
STAGES: list[list[str]] = [
    ["_checks", "_warn", "_cli_text"],
    ["theory"],
    ["chain_theory"],
    ["init"],
    ["settings", "log_norm", "_forward", "halving", "candidates", "chain_init"],
    ["activations"],
    ["observe"],
    ["residual"],
    ["plan"],
    ["surgery", "swap"],
    ["calibration", "sampling"],
    ["initialize"],
    ["lookahead"],
    ["_reduce"],
    ["diagnostics"],
    ["dashboard"],
    ["diagnosis"],
    ["_events"],
    ["_writers", "_lifecycle", "training_batch"],
    ["lookahead_fit"],
    ["callbacks"],
    ["lightning_cli"],
    ["cli"],
    ["__init__"],
    ["examples.models"],
    ["examples.data"],
    ["examples.demo", "examples.__init__"],
]
STAGE = {module: i for i, stage in enumerate(STAGES) for module in stage}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (type-only imports: no runtime dependency)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports anywhere at run time (module level or inside functions)."""
    name = _module_name(path)
    package = name.rsplit(".", 1)[0] if "." in name else ""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = ".".join(filter(None, [package] + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("lightning_lyapunov"):
                base = node.module.removeprefix("lightning_lyapunov").lstrip(".")
            else:
                continue
            if base and base in STAGE:
                found.add(base)
            for alias in node.names:  # from lightning_lyapunov import theory
                candidate = f"{base}.{alias.name}" if base else alias.name
                if candidate in STAGE:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lightning_lyapunov."):
                    found.add(alias.name.removeprefix("lightning_lyapunov."))
    found.discard(name)
    return found


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def test_every_module_has_a_stage() -> None:
    assert set(MODULES) == set(STAGE), set(MODULES) ^ set(STAGE)


#: modules whose tests live in another module's test file: the command's two halves and its words
TESTED_WITH = {"_cli_text": "cli", "lightning_cli": "cli", "__init__": "package", "examples.__init__": "package"}


def test_the_tests_mirror_the_package() -> None:
    tests = Path(__file__).parent
    for name in MODULES:
        stem = TESTED_WITH.get(name, name).lstrip("_").replace(".", "_")
        assert (tests / f"test_{stem}.py").exists(), f"no test module for lightning_lyapunov.{name}"


def test_no_module_imports_a_later_stage_so_there_is_no_cycle() -> None:
    climbing = [(name, other) for name, path in MODULES.items() for other in _imports(path)
                if STAGE[other] >= STAGE[name] and name != "__init__"]
    assert climbing == []


def test_no_class_over_250_lines() -> None:
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                long.append((name, node.name, node.end_lineno - node.lineno + 1))
    assert long == []


def test_every_export_imports() -> None:
    for name in lightning_lyapunov.__all__:
        assert getattr(lightning_lyapunov, name) is not None
    assert {"LyapunovWarning", "SamplingReport", "CalibrationResult", "InitSpec", "SignalReport", "look_ahead_",
            "LookAheadReport"} <= set(lightning_lyapunov.__all__)


def test_the_callback_takes_every_init_setting_with_its_type_and_default() -> None:
    # the settings are declared once (InitSpec); the callback lists them flat for LightningCLI
    callback = inspect.signature(LyapunovInit.__init__).parameters
    spec = inspect.signature(InitSpec).parameters
    for name, parameter in spec.items():
        assert name in callback, name
        assert callback[name].annotation == parameter.annotation, name
        if name == "calibrate":  # the callback has a batch: its default calibrates the Lyapunov scheme
            assert (parameter.default, callback[name].default) == (None, "auto")
        else:
            assert callback[name].default == parameter.default, name
    assert LyapunovInit(scheme="he", distribution="gaussian").spec == InitSpec(scheme="he", distribution="gaussian",
                                                                               calibrate="auto")


def test_setup_walks_down_the_stages(tmp_path) -> None:
    # every call from one package module to another, during LyapunovInit.setup (sampled and
    # calibrated: every stage of the engine), goes to an earlier stage: nothing climbs back
    import lightning.pytorch as pl
    from helpers import DeepNarrow, loader, trainer_kwargs

    climbs: set[tuple[str, str, str]] = set()

    def module_of(frame) -> str | None:
        filename = frame.f_code.co_filename
        if not filename.startswith(str(PACKAGE)):
            return None
        return _module_name(Path(filename))

    def handed_down(caller, code) -> bool:
        """Whether the caller calls a function it was given (an argument, or an attribute of one):
        a ``forward=`` callable or a ``run`` closure passed down is the giver's code, not a climb."""
        for value in caller.f_locals.values():
            for item in (value, *getattr(value, "__dict__", {}).values()):
                function = getattr(item, "__func__", item)
                if getattr(function, "__code__", None) is code:
                    return True
        return False

    def profile(frame, event, arg) -> None:
        if event != "call" or frame.f_back is None:
            return
        callee, caller = module_of(frame), module_of(frame.f_back)
        if callee and caller and callee != caller and STAGE[callee] > STAGE[caller] \
                and not handed_down(frame.f_back, frame.f_code):
            climbs.add((caller, callee, frame.f_code.co_name))

    callback = LyapunovInit(seed=0, sampled=True, candidates=2, calibrate="layers")
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, logger=False, max_steps=0))
    module = DeepNarrow(depth=6)
    trainer.strategy.connect(module)
    trainer._data_connector.attach_data(module, train_dataloaders=loader())
    sys.setprofile(profile)
    try:
        callback.setup(trainer, module, "fit")
    finally:
        sys.setprofile(None)
    assert callback.plan is not None and callback.plan.sampling and callback.plan.calibration
    assert climbs == set()


# ------------------------------------------------------------------ plan and fit agree on every setting

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "polynomial.yaml"
#: one non-default value per setting of InitSpec (with what it needs), for a depth-6 width-2 MLP
CASES = {
    "scheme": {"scheme": "he"},
    "distribution": {"distribution": "gaussian"},
    "moment": {"scheme": "fractional", "moment": 0.8},
    "negative_slope": {"negative_slope": 0.3},
    "include": {"include": r"net\.(0|2|4)$"},
    "exclude": {"exclude": r"net\.2$"},
    "conv": {"conv": "delta"},
    "sampled": {"sampled": "layerwise"},
    "candidates": {"sampled": True, "candidates": 3},
    "calibrate": {"calibrate": "output"},
    "calibrate_target": {"calibrate": "layers", "calibrate_target": 0.5},
    "stream_growth": {"calibrate": "layers", "stream_growth": 2.0},
}


def test_every_setting_has_a_case() -> None:
    assert set(CASES) == {f.name for f in dataclasses.fields(InitSpec) if f.init}


@pytest.mark.parametrize("setting", sorted(CASES))
def test_plan_and_fit_agree_on_every_setting(setting: str, tmp_path, monkeypatch, capsys) -> None:
    from lightning_lyapunov.cli import main
    from lightning_lyapunov.lightning_cli import LyapunovCLI, PlanCLI

    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(CONFIG.read_text())
    config["model"]["init_args"]["model"]["init_args"]["depth"] = 6
    config["trainer"]["callbacks"][0]["init_args"].update(CASES[setting], seed=0)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    planned = PlanCLI(args=["-c", str(path)])
    fit = LyapunovCLI(args=["fit", "-c", str(path), "--trainer.fast_dev_run=true", "--trainer.logger=false",
                            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    (callback,) = [c for c in fit.trainer.callbacks if isinstance(c, LyapunovInit)]
    applied = callback.plan
    assert planned.spec == callback.spec == applied.spec
    assert getattr(planned.spec, setting) == CASES[setting][setting]
    assert [(layer.name, layer.negative_slope, layer.init, layer.taps) for layer in planned.plan.layers] == \
        [(layer.name, layer.negative_slope, layer.init, layer.taps) for layer in applied.layers]
    assert [name for name, _ in planned.plan.skipped] == [name for name, _ in applied.skipped]
    # what fit does beyond theory's draw, the plan command says
    main(["plan", "-c", str(path)])
    out = capsys.readouterr().out
    assert ("calibrates" in out) == (applied.calibration is not None)
    assert ("selects among" in out) == (applied.sampling is not None)


@pytest.mark.parametrize("module", ["_checks", "theory", "chain_theory", "init", "settings", "log_norm"])
def test_the_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    failures, tried = doctest.testmod(importlib.import_module(f"lightning_lyapunov.{module}"),
                                      optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
