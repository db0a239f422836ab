"""The LyapunovInit callback inside real (CPU) Lightning runs."""

import copy
import glob
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from helpers import DeepNarrow, loader, trainer_kwargs
from lightning_lyapunov import LyapunovInit, LyapunovWarning, apply_init, theory
from lightning_lyapunov.diagnostics import STAT_KEYS


class WeightsAtTrainStart(pl.Callback):
    """Records a copy of the weights when training starts (after setup and any restore)."""

    def on_train_start(self, trainer, pl_module):
        self.state = copy.deepcopy(pl_module.state_dict())


def fit(module, tmp_path, callbacks, ckpt_path=None, **overrides):
    probe = WeightsAtTrainStart()
    trainer = pl.Trainer(callbacks=[*callbacks, probe], **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return trainer, probe.state


def test_weights_after_setup_follow_the_scheme(deep_narrow, tmp_path):
    reference = copy.deepcopy(deep_narrow)
    apply_init(reference, scheme="lyapunov", distribution="orthogonal", generator=torch.Generator().manual_seed(5))
    _, state = fit(deep_narrow, tmp_path, [LyapunovInit(seed=5, calibrate=None)], logger=False)
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key
    w = state["net.2.weight"].double()
    gain = theory.critical_scale(4, 4, 0.1, "orthogonal")
    torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.count_nonzero(state["net.2.bias"]) == 0


def test_tensorboard_event_files_hold_the_documented_tags(deep_narrow, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    callback = LyapunovInit(seed=0)
    fit(deep_narrow, tmp_path, [callback], logger=logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for stat in STAT_KEYS:  # first, middle and last layer only, by default
        for layer in ("net.0", "net.10", "net.22"):  # no unit can die before a LeakyReLU(0.1) or none
            assert (f"lyapunov/{stat}/{layer}" in tags["scalars"]) == (stat != "dead_fraction"), stat
        assert f"lyapunov/{stat}/net.4" not in tags["scalars"], stat
    for key in ("verdict", "input_depth", "centred_exponent", "exponent_estimate", "predicted/exponent",
                "predicted/log_norm/net.10", "max/kurtosis_median"):
        assert f"lyapunov/{key}" in tags["scalars"], key
    assert "lyapunov/log_norm_hist/net.0" in tags["histograms"]
    assert "lyapunov/log_norm_hist/net.4" not in tags["histograms"]
    assert "lyapunov/depth/1_signal" in tags["images"] and "lyapunov/depth/4_kurtosis" in tags["images"]
    assert any("lyapunov/plan" in tag for tag in tags["tensors"])
    # measured on steps 0, 2, 4 (log_every_n_steps=2) and the early step 1; the plan's exponent and the
    # verdict next to each measurement
    steps = [event.step for event in events.Scalars("lyapunov/log_norm_mean/net.0")]
    assert steps == [0, 1, 2, 4]
    predicted = events.Scalars("lyapunov/predicted/exponent")
    assert [event.step for event in predicted] == [0, 1, 2, 4]
    assert [event.value for event in events.Scalars("lyapunov/verdict")] == [0, 0, 0, 0]
    # after the default calibration: the mean of the log-gains measured on the first batch
    gains = callback.plan.layer_log_gains
    assert callback.plan.calibration.method == "layers"
    assert predicted[0].value == pytest.approx(sum(gains) / len(gains), abs=1e-5)


def test_csv_logger_and_own_cadence(deep_narrow, tmp_path):
    logger = CSVLogger(tmp_path, name="csv")
    with pytest.warns(UserWarning, match="need a TensorBoardLogger"):
        fit(deep_narrow, tmp_path, [LyapunovInit(seed=0, log_every_n_steps=3, all_layers=True)], logger=logger)
    header = Path(logger.log_dir, "metrics.csv").read_text().splitlines()[0]
    assert "lyapunov/kurtosis_median/net.4" in header and "lyapunov/exponent_estimate" in header


def test_no_logger_warns_and_trains(deep_narrow, tmp_path):
    with pytest.warns(UserWarning, match="no logger"):
        fit(deep_narrow, tmp_path, [LyapunovInit(seed=0)], logger=False)


def test_resume_keeps_the_checkpoint_weights(deep_narrow, tmp_path):
    trainer, _ = fit(deep_narrow, tmp_path, [LyapunovInit(seed=1)], logger=False)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert any(s.get("initialized") is True for s in saved["callbacks"].values())
    callback = LyapunovInit(seed=2)  # another seed: a re-init would change the weights
    _, state = fit(DeepNarrow(), tmp_path, [callback], ckpt_path=ckpt, max_steps=8, logger=False)
    for key, value in saved["state_dict"].items():
        assert torch.equal(state[key], value), key
    assert callback.initialized


def test_second_fit_and_test_do_not_reinitialize(deep_narrow, tmp_path):
    callback = LyapunovInit(seed=3)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, logger=False))
    trainer.fit(deep_narrow, loader())
    after_fit = copy.deepcopy(deep_narrow.state_dict())
    trainer.test(deep_narrow, loader(), verbose=False)
    for key, value in after_fit.items():
        assert torch.equal(deep_narrow.state_dict()[key], value), key
    trainer2 = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, logger=False, max_steps=1))
    probe = WeightsAtTrainStart()
    trainer2.callbacks.append(probe)
    trainer2.fit(deep_narrow, loader())
    for key, value in after_fit.items():
        assert torch.equal(probe.state[key], value), key


def test_bf16_autocast_gives_finite_statistics(deep_narrow, tmp_path):
    logger = CSVLogger(tmp_path, name="bf16")
    fit(deep_narrow, tmp_path, [LyapunovInit(seed=0)], logger=logger, precision="bf16-mixed")
    rows = [line.split(",") for line in Path(logger.log_dir, "metrics.csv").read_text().splitlines()]
    column = rows[0].index("lyapunov/log_norm_mean/net.0")
    measured = [float(row[column]) for row in rows[1:] if row[column]]
    assert len(measured) == 4 and all(math.isfinite(v) for v in measured)  # steps 0, 1, 2, 4


def test_compiled_module_gives_finite_statistics(tmp_path):
    torch.manual_seed(0)
    module = DeepNarrow(depth=5)
    callback = LyapunovInit(seed=0, log_every_n_steps=1)
    module.net = torch.compile(module.net, backend="aot_eager")  # hooks sit inside the compiled graph
    persistent = []

    class RecordMonitorMode(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            persistent.append(callback.monitor.persistent)

    trainer = pl.Trainer(callbacks=[callback, RecordMonitorMode()],
                         **trainer_kwargs(tmp_path, logger=False, max_steps=3))
    trainer.fit(module, loader())
    assert persistent == [True]  # compiled graphs keep their hooks; eager runs attach them per step
    assert callback._last_step == 2
    assert callback.report.last is not None
    assert all(math.isfinite(v) for v in callback.report.last.as_dict()["log_norm_mean"].values())


def test_nonfinite_activations_warn_once_naming_layer_and_step(tmp_path):
    torch.manual_seed(0)
    module = DeepNarrow(depth=5)
    x = torch.full((16, 4), float("nan"))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(16, 1)), batch_size=8)
    trainer = pl.Trainer(callbacks=[LyapunovInit(seed=0, log_every_n_steps=1)],
                         **trainer_kwargs(tmp_path, logger=CSVLogger(tmp_path), max_steps=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, data)
    messages = [str(w.message) for w in caught if "NaN/Inf" in str(w.message)]
    assert any("layers 'net.0', 'net.2'" in m and "step 0" in m for m in messages)
    assert sum("'net.0'" in m for m in messages) == 1  # once, not every step


def test_hooks_are_removed_after_fit(deep_narrow, tmp_path):
    fit(deep_narrow, tmp_path, [LyapunovInit(seed=0)], logger=False)
    assert all(not m._forward_hooks for m in deep_narrow.modules())


def test_sampled_scheme_uses_a_training_batch(deep_narrow, tmp_path):
    callback = LyapunovInit(sampled=True, seed=0)
    fit(deep_narrow, tmp_path, [callback], logger=False)
    assert callback.initialized and callback.plan is not None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scheme="kaiming"), "unknown scheme"),
        (dict(distribution="uniform"), "distribution"),
        (dict(scheme="fractional"), "moment"),
        (dict(scheme="fractional", moment=2.5), r"\(0, 2\]"),
        (dict(negative_slope=1.5), r"\[0, 1\]"),
        (dict(negative_slope={"net\\.0": -1.0}), r"\[0, 1\]"),
        (dict(include="net.(("), "regular expression"),
        (dict(log_every_n_steps=0), "log_every_n_steps"),
        (dict(sampled="maybe"), "sampled"),
        (dict(scheme="zero", sampled=True), "deterministic"),
    ],
)
def test_bad_arguments_are_rejected_in_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LyapunovInit(**kwargs)


def test_state_dict_is_plain_python(deep_narrow, tmp_path):
    callback = LyapunovInit(seed=0)
    fit(deep_narrow, tmp_path, [callback], logger=False)
    state = callback.state_dict()
    assert {k: state[k] for k in ("initialized", "scheme")} == {"initialized": True, "scheme": "lyapunov"}
    plain = (bool, int, float, str, type(None))

    def is_plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(is_plain(v) for v in value)
        return type(value) in plain

    assert is_plain(state) and state["calibration"]["method"] == "layers"


@pytest.mark.parametrize("calibrate", [[], pytest.param(["layers"], marks=pytest.mark.slow)])
def test_ddp_two_cpu_processes_have_identical_weights(tmp_path, calibrate):
    script = Path(__file__).parent / "scripts" / "ddp_weights.py"
    here = Path(__file__).parent  # the tests (conftest) and this checkout's package, not an installed one
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here), str(here.parent)]))
    result = subprocess.run([sys.executable, str(script), str(tmp_path), *calibrate], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    sums = sorted(glob.glob(str(tmp_path / "rank*.pt")))
    assert len(sums) == 2
    first, second = (torch.load(p, weights_only=True) for p in sums)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_a_collapse_warns_once_naming_the_layer_and_step(tmp_path):
    torch.manual_seed(0)
    module = DeepNarrow(depth=4)
    x = torch.ones(16, 4)
    x[:, 0] += 1e-5 * torch.linspace(-1, 1, 16)  # identity (ZerO) weights pass an input that hardly varies
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(16, 1)), batch_size=16)
    callback = LyapunovInit(scheme="zero", log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, logger=CSVLogger(tmp_path), max_steps=3,
                                                                log_every_n_steps=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, data)
    messages = [str(w.message) for w in caught if "collapsed" in str(w.message)]
    assert len(messages) == 1, messages
    assert "at step 0" in messages[0] and "collapsed from layer 'net.0' (#0)" in messages[0]
    assert callback.report.collapsed == {"net.0": 0, "net.2": 0, "net.4": 0, "net.6": 0}


def test_units_with_a_collapsed_variance_are_charted_not_a_verdict(tmp_path):
    # identity weights pass 3 constant features: 3 of 4 units have no variance, but the layer's
    # input-dependent part (its one varying unit) reaches the output
    torch.manual_seed(0)
    x = torch.ones(16, 4)
    x[:, 0] = torch.linspace(-1, 1, 16)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(16, 1)), batch_size=16)
    logger = CSVLogger(tmp_path)
    callback = LyapunovInit(scheme="zero", log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, logger=logger, max_steps=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DeepNarrow(depth=4), data)
    assert not [w for w in caught if "collapsed" in str(w.message)]
    assert callback.report.verdict.label == "healthy"
    rows = Path(logger.log_dir, "metrics.csv").read_text().splitlines()
    header, values = rows[0].split(","), rows[1].split(",")
    assert float(values[header.index("lyapunov/max/emp_var_collapsed")]) == 0.75


class HooksPerStep(pl.Callback):
    """The forward hooks on the first layer at each training forward pass."""

    def __init__(self):
        self.seen = []

    def on_train_start(self, trainer, pl_module):
        def record(module, inputs):
            if module.training:
                self.seen.append(tuple(module._forward_hooks.values()))

        pl_module.net[0].register_forward_pre_hook(record)


@pytest.mark.parametrize("every", [1, 3])
def test_hooks_attached_only_on_measured_steps_and_kept_between_consecutive_ones(deep_narrow, tmp_path, every):
    spy = HooksPerStep()
    fit(deep_narrow, tmp_path, [LyapunovInit(seed=0, log_every_n_steps=every), spy], logger=False, max_steps=7)
    assert len(spy.seen) == 7
    # every `every`-th step, and the early steps 1, 2, 4, ... below it
    measured = {1: [0, 1, 2, 3, 4, 5, 6], 3: [0, 1, 2, 3, 6]}[every]
    assert [bool(hooks) for hooks in spy.seen] == [step in measured for step in range(7)]
    if every == 1:  # attached once per epoch (4 batches; detached at its end), not once per step
        assert len(set(spy.seen)) == 2
    assert all(not m._forward_hooks for m in deep_narrow.modules())


def test_initialize_false_leaves_pretrained_weights_alone_and_still_measures(deep_narrow, tmp_path):
    before = copy.deepcopy(deep_narrow.state_dict())
    callback = LyapunovInit(initialize=False, log_every_n_steps=1)
    _, state = fit(deep_narrow, tmp_path, [callback], logger=False, max_steps=1)
    for key, value in before.items():
        assert torch.equal(state[key], value), key
    assert callback.plan is not None and callback.plan.calibration is None
    assert callback.report.first is not None  # the diagnostics ran
    assert "did not initialize (initialize=False)" in callback.summary()
    with pytest.raises(ValueError, match="initialize=False leaves the weights alone"):
        LyapunovInit(initialize=False, sampled=True)
    with pytest.raises(ValueError, match="initialize=False leaves the weights alone"):
        LyapunovInit(initialize=False, calibrate="output")
    with pytest.raises(TypeError, match="initialize"):
        LyapunovInit(initialize="no")


def test_measured_steps_are_the_cadence_and_the_early_powers_of_two():
    from lightning_lyapunov.callbacks import measured_step

    assert [step for step in range(120) if measured_step(step, 50)] == [0, 1, 2, 4, 8, 16, 32, 50, 100]
    assert all(measured_step(step, 1) for step in range(20))


def test_a_warning_starts_on_a_line_of_its_own_under_the_progress_bar(tmp_path, capsys, monkeypatch):
    from lightning.pytorch.callbacks import TQDMProgressBar

    torch.manual_seed(0)
    # the bar first: at step 0 it is drawn before the callback's warning
    callbacks = [TQDMProgressBar(), LyapunovInit(scheme="he", seed=0)]
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, logger=False, max_steps=2,
                                                                enable_progress_bar=True))
    monkeypatch.setattr(sys, "stdout", sys.stderr)  # the bar and the warning on one stream, as in a terminal
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # printed to stderr, as outside pytest (which records them); catch_warnings restores its own
        warnings._showwarnmsg_impl = lambda msg: sys.stderr.write(warnings._formatwarnmsg(msg))
        trainer.fit(DeepNarrow(width=2, depth=20), loader(width=2))
    err = capsys.readouterr().err
    before, found, _ = err.partition("LyapunovInit: at step 0:")
    assert found and "it/s]" in before  # the bar was drawn before the warning
    # the bar's line was cleared ("\r", spaces, "\r"): the warning starts at the beginning of the line
    assert before.endswith("\r") and before.rstrip("\r").endswith(" "), repr(before[-80:])


def test_fast_dev_run_does_not_ask_for_the_tensorboard_logger_it_replaced(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = pl.Trainer(callbacks=[LyapunovInit(seed=0)], **trainer_kwargs(tmp_path, logger=logger,
                                                                                 fast_dev_run=True))
        trainer.fit(DeepNarrow(), loader())
    assert trainer.loggers and type(trainer.loggers[0]).__name__ == "DummyLogger"
    assert not [w for w in caught if "TensorBoardLogger" in str(w.message) or "no logger" in str(w.message)]


def test_the_callbacks_warnings_are_attributed_to_the_fit_call(tmp_path):
    torch.manual_seed(0)
    trainer = pl.Trainer(callbacks=[LyapunovInit(scheme="he", seed=0)], **trainer_kwargs(tmp_path, logger=False,
                                                                                          max_steps=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DeepNarrow(width=2, depth=20), loader(width=2)); line = sys._getframe().f_lineno  # noqa: E702
    ours = [w for w in caught if issubclass(w.category, LyapunovWarning)]
    assert any("at step 0" in str(w.message) for w in ours)
    assert all((w.filename, w.lineno) == (__file__, line) for w in ours), [(w.filename, w.lineno) for w in ours]


def test_resume_restores_what_the_plan_measured(tmp_path):
    # a calibrated run saves its factors and log-gains (plain Python, weights_only loading); the
    # resumed run predicts from them, and does not advise the calibration it already has
    settings = dict(calibrate="layers", calibrate_target=0.01, log_every_n_steps=1)
    first = LyapunovInit(seed=1, **settings)
    trainer, _ = fit(DeepNarrow(depth=6), tmp_path, [first], logger=False, max_steps=2)
    ckpt = tmp_path / "calibrated.ckpt"
    trainer.save_checkpoint(ckpt)
    (state,) = [s for s in torch.load(ckpt, weights_only=True)["callbacks"].values() if "initialized" in s]
    assert state["calibration"]["factors"] == first.plan.calibration.factors
    resumed = LyapunovInit(seed=2, **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(DeepNarrow(depth=6), tmp_path, [resumed], ckpt_path=ckpt, logger=False, max_steps=3)
    assert resumed.plan.calibration == first.plan.calibration
    assert resumed.plan.predicted_drift == first.plan.predicted_drift
    assert not [w for w in caught if "calibrate=" in str(w.message)]
    assert "calibrated ('layers')" in resumed.plan.describe()


def test_resume_ignores_a_measurement_of_other_layers(tmp_path):
    callback = LyapunovInit(seed=0)
    fit(DeepNarrow(depth=6), tmp_path, [callback], logger=False, max_steps=1)
    state = callback.state_dict()
    other = LyapunovInit(seed=0, calibrate=None)
    fit(DeepNarrow(depth=4), tmp_path, [other], logger=False, max_steps=1)
    with pytest.warns(UserWarning, match="checkpoint's calibration .* other layers"):
        other.load_state_dict(state)
    assert other.plan.calibration is None


def test_calibrate_auto_is_spelt_in_lower_case_and_initialize_false_refuses_a_target():
    with pytest.raises(ValueError, match=r"calibrate='Auto' is invalid .*'auto', 'layers', 'output', None; "
                                         r"did you mean 'auto'\?"):
        LyapunovInit(calibrate="Auto")
    with pytest.raises(ValueError, match=r"initialize=False leaves the weights alone, so calibrate_target=0.1 "
                                         r"would do nothing"):
        LyapunovInit(initialize=False, calibrate_target=0.1)
