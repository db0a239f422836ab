"""Tests of lightning_lyapunov.training_batch: what the callback observes in setup, a real training batch."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from helpers import HelperNet, gen, quiet, trainer_kwargs
from lightning_lyapunov import LyapunovInit, LyapunovWarning, apply_init, plan_init


class NoForward(__import__("lightning.pytorch", fromlist=["LightningModule"]).LightningModule):
    """The common Lightning style: no forward; training_step calls a helper net with F.leaky_relu.

    ``dict_batch``: the loader yields {"x": ..., "y": ...}. ``logged`` records every self.log call.
    """

    def __init__(self, dict_batch: bool = False) -> None:
        super().__init__()
        self.net = HelperNet(width=4, depth=4)
        self.dict_batch = dict_batch
        self.logged: list[str] = []

    def log(self, name, *args, **kwargs):  # noqa: D102 - records, then logs as usual
        self.logged.append(name)
        return super().log(name, *args, **kwargs)

    def training_step(self, batch, batch_idx):
        x, y = (batch["x"], batch["y"]) if self.dict_batch else batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class AtTrainStart(__import__("lightning.pytorch", fromlist=["Callback"]).Callback):
    def on_train_start(self, trainer, pl_module):
        self.logged = list(pl_module.logged)
        self.grads = [p.grad for p in pl_module.parameters()]
        self.weights = [p.detach().clone() for p in pl_module.parameters()]


def _fit(module, tmp_path, callback, dict_batch: bool = False):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from helpers import trainer_kwargs

    g = gen(0)
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)
    data = [{"x": a, "y": b} for a, b in zip(x, y)] if dict_batch else list(zip(x, y))
    probe = AtTrainStart()
    trainer = pl.Trainer(callbacks=[callback, probe], **trainer_kwargs(tmp_path, max_steps=1, logger=False))
    trainer.fit(module, DataLoader(data, batch_size=16))
    return probe


def test_callback_observes_training_step_of_a_module_without_forward(tmp_path) -> None:
    from lightning_lyapunov import LyapunovInit

    module = NoForward()
    callback = LyapunovInit(diagnostics=False, seed=0, calibrate=None)
    probe = _fit(module, tmp_path, callback)
    layers = callback.plan.layers
    assert [(l.negative_slope, l.slope_found_by) for l in layers[:4]] == [(0.1, "observed")] * 4
    assert layers[0].init.scale == pytest.approx(1.862, abs=1e-3)  # the case: not 1.0
    assert probe.logged == [] and all(g is None for g in probe.grads)  # silent, nothing kept
    # the weights at train start are the plan's draw: no optimizer step happened during planning
    reference = NoForward()
    quiet(apply_init, reference, generator=gen(0), negative_slope={r"layers": 0.1, "head": 1.0})
    assert all(torch.equal(a, b) for a, b in zip(probe.weights, reference.parameters()))


@pytest.mark.parametrize("sampled", [True, "layerwise"])
def test_callback_sampled_with_a_dict_batch(tmp_path, sampled) -> None:
    from lightning_lyapunov import LyapunovInit

    module = NoForward(dict_batch=True)
    callback = LyapunovInit(diagnostics=False, seed=0, sampled=sampled)
    probe = _fit(module, tmp_path, callback, dict_batch=True)
    assert [l.negative_slope for l in callback.plan.layers] == [0.1] * 4 + [1.0]
    assert {l.slope_found_by for l in callback.plan.layers} == {"observed"}
    assert probe.logged == []


def test_callback_reading_the_batch_leaves_the_global_generator_alone(tmp_path) -> None:
    from lightning_lyapunov import LyapunovInit

    class Draw(__import__("lightning.pytorch", fromlist=["Callback"]).Callback):
        def on_train_start(self, trainer, pl_module):
            self.state = torch.get_rng_state()

    states = []
    for callbacks in ([], [LyapunovInit(diagnostics=False, seed=0)]):
        import lightning.pytorch as pl
        from torch.utils.data import DataLoader

        from helpers import trainer_kwargs

        torch.manual_seed(5)
        draw = Draw()
        trainer = pl.Trainer(callbacks=[*callbacks, draw], **trainer_kwargs(tmp_path, max_steps=1, logger=False))
        data = list(zip(torch.randn(32, 4, generator=gen(0)), torch.randn(32, 1, generator=gen(1))))
        trainer.fit(NoForward(), DataLoader(data, batch_size=16, shuffle=True))
        states.append(draw.state)
    assert torch.equal(states[0], states[1])


def test_callback_without_a_batch_falls_back_to_fx_and_the_plan_says_so(tmp_path) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from helpers import trainer_kwargs
    from lightning_lyapunov import LyapunovInit

    callback = LyapunovInit(diagnostics=False, seed=0)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_steps=1, logger=False))
    with pytest.warns(UserWarning, match=r"observed no training pass \(no training batch \(StopIteration\)\)"):
        trainer.fit(NoForward(), DataLoader([], batch_size=4))
    assert any("observed no training pass" in w for w in callback.plan.warnings)
    assert {l.slope_found_by for l in callback.plan.layers} == {"module order"}


def test_callback_with_forward_and_tuple_batch_observes(tmp_path) -> None:
    import lightning.pytorch as pl

    from helpers import DeepNarrow, loader, trainer_kwargs
    from lightning_lyapunov import LyapunovInit

    callback = LyapunovInit(diagnostics=False, seed=0)
    module = DeepNarrow(depth=4)  # forward(x), batches (x, y): runs through training_step
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_steps=1, logger=False))
    trainer.fit(module, loader())
    assert [(l.negative_slope, l.slope_found_by) for l in callback.plan.layers] == [(0.1, "observed")] * 3 + [
        (1.0, "observed")]

# ---------------------------------------------------------------------------------------------------------
# Adversarial training steps (issue 22): the callback finds the network's function once and never runs
# the user's training_step more than once outside the loop; what that one run changes is restored.


class Step(pl.LightningModule):
    """A HelperNet trained on ``(x, y)`` (or ``{"x", "y"}``) batches; ``step_calls`` records every call
    of ``training_step`` in place (so nothing can restore it), ``steps`` is a plain counter."""

    has_forward = False
    dict_batch = False

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = HelperNet(width=4, depth=4)
        self.step_calls: list[int] = []
        self.steps = 0

    def unpack(self, batch):
        return (batch["x"], batch["y"]) if isinstance(batch, dict) else batch

    def network(self, x):
        return self(x) if self.has_forward else self.net(x)

    def training_step(self, batch, batch_idx):
        self.step_calls.append(batch_idx)
        self.steps += 1
        x, y = self.unpack(batch)
        loss = F.mse_loss(self.network(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-2)


class WithForward(Step):
    """An ordinary model: ``forward(x)``, fed ``(x, y)`` batches."""

    has_forward = True

    def forward(self, x):
        return self.net(x)


class DictWithForward(WithForward):
    dict_batch = True


class Manual(Step):
    """Lightning's documented manual optimization: the optimizer is used before the network runs."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        self.step_calls.append(batch_idx)
        opt = self.optimizers()
        opt.zero_grad()
        x, y = self.unpack(batch)
        loss = F.mse_loss(self.network(x), y)
        self.manual_backward(loss)
        opt.step()
        self.log("train/loss", loss)


class ManualWithForward(Manual):
    has_forward = True

    def forward(self, x):
        return self.net(x)


class ManualClosure(Manual):
    """Manual optimization with a closure (the network runs inside ``opt.step(closure)``) and a scheduler."""

    def training_step(self, batch, batch_idx):
        self.step_calls.append(batch_idx)
        opt, scheduler = self.optimizers(), self.lr_schedulers()
        x, y = self.unpack(batch)

        def closure():
            loss = F.mse_loss(self.net(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            return loss

        opt.step(closure=closure)
        scheduler.step()

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=1e-2)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]


class TwoOptimizers(Manual):
    """Two optimizers unpacked at the top of the step, toggled in turn (a GAN-style step)."""

    def training_step(self, batch, batch_idx):
        self.step_calls.append(batch_idx)
        opt_a, opt_b = self.optimizers()
        x, y = self.unpack(batch)
        for opt in (opt_a, opt_b):
            self.toggle_optimizer(opt)
            loss = F.mse_loss(self.net(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            self.untoggle_optimizer(opt)

    def configure_optimizers(self):
        return (torch.optim.SGD(self.net.layers.parameters(), lr=1e-2),
                torch.optim.SGD(self.net.head.parameters(), lr=1e-2))


class EMATeacher(Step):
    """An EMA teacher (frozen: outside the plan) updated in place at the top of every step."""

    def __init__(self) -> None:
        super().__init__()
        self.teacher = HelperNet(width=4, depth=4).requires_grad_(False)
        self.ema_updates = 0

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.net.parameters()):
                t.mul_(0.5).add_(s, alpha=0.5)
        self.ema_updates += 1
        x, y = self.unpack(batch)
        return F.mse_loss(self.net(x), y) + F.mse_loss(self.teacher(x), y)


class Unreachable(Step):
    """A step that only works inside the loop (the Trainer's optimizers are set up after setup)."""

    def training_step(self, batch, batch_idx):
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        return super().training_step(batch, batch_idx) * lr


class LayerByLayer(Step):
    """No submodule call runs every layer: the step calls the layers one by one, F.gelu and
    F.leaky_relu(0.2) between them (module order would say slope 1: no activation modules)."""

    def __init__(self) -> None:
        super().__init__()
        del self.net
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
        self.head = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        self.step_calls.append(batch_idx)
        x, y = self.unpack(batch)
        for i, layer in enumerate(self.layers):
            x = F.gelu(layer(x)) if i % 2 == 0 else F.leaky_relu(layer(x), 0.2)
        return F.mse_loss(self.head(x), y)


class AtStart(pl.Callback):
    """What the module looks like when training starts (after the callback's setup); the batches trained on."""

    batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches += 1

    def on_train_start(self, trainer, pl_module):
        self.calls = len(pl_module.step_calls)
        self.steps = pl_module.steps
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.requires_grad = [p.requires_grad for p in pl_module.parameters()]


def _data(dict_batch: bool) -> DataLoader:
    g = gen(0)
    x, y = torch.randn(48, 4, generator=g), torch.randn(48, 1, generator=g)
    data = [{"x": a, "y": b} for a, b in zip(x, y)] if dict_batch else list(zip(x, y))
    return DataLoader(data, batch_size=16)


def fit_steps(module: Step, tmp_path, steps: int = 3, **settings):
    """Fit ``module`` for ``steps`` steps with LyapunovInit(**settings); the callback, the probe and
    the LyapunovWarnings raised."""
    import warnings

    callback, probe = LyapunovInit(**{"seed": 0, "diagnostics": False, **settings}), AtStart()
    trainer = pl.Trainer(callbacks=[callback, probe], **trainer_kwargs(tmp_path, max_steps=steps, logger=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, _data(module.dict_batch))
    return callback, probe, [str(w.message) for w in caught if issubclass(w.category, LyapunovWarning)]


def first_batch(dict_batch: bool = False):
    return next(iter(_data(dict_batch)))


def reference_weights(module: Step, **settings) -> dict[str, torch.Tensor]:
    """What apply_init does to ``module.net`` with the first batch and the callback's seed."""
    x, _ = Step.unpack(None, first_batch(module.dict_batch))
    reference = type(module)()
    quiet(apply_init, reference, example_input=x, forward=lambda m, b: m.net(b), generator=gen(0),
          **{"calibrate": "layers", **settings})
    return {k: v.detach().clone() for k, v in reference.state_dict().items()}


@pytest.mark.parametrize("model", [WithForward, DictWithForward, ManualWithForward])
def test_a_model_with_forward_is_observed_and_calibrated_without_running_training_step(tmp_path, model) -> None:
    module = model()
    callback, probe, _ = fit_steps(module, tmp_path)
    assert probe.calls == 0  # forward(x), with x taken from the (x, y) or {"x": ..., "y": ...} batch
    assert len(module.step_calls) == 3
    assert callback.plan.calibration is not None and callback.plan.calibration.method == "layers"
    assert {l.slope_found_by for l in callback.plan.layers} == {"observed"}
    reference = reference_weights(module)
    assert all(torch.equal(probe.state[k], v) for k, v in reference.items())


@pytest.mark.parametrize("model", [Step, Manual, ManualClosure, TwoOptimizers])
def test_training_step_runs_once_neutralized_and_the_network_is_found_in_it(tmp_path, model) -> None:
    module = model()
    requires_grad = [p.requires_grad for p in module.parameters()]
    callback, probe, messages = fit_steps(module, tmp_path)
    assert probe.calls == 1 and probe.steps == 0  # once, its counter restored
    assert len(module.step_calls) == probe.calls + probe.batches  # two optimizer steps per batch: 2 batches
    assert not any("observed no training pass" in m or "skipped" in m for m in messages), messages
    assert callback.plan.calibration is not None and {l.slope_found_by for l in callback.plan.layers} == {"observed"}
    assert probe.requires_grad == requires_grad  # toggle_optimizer did not leak
    reference = reference_weights(module)
    assert all(torch.equal(probe.state[k], v) for k, v in reference.items())


def test_a_step_counter_counts_the_training_steps_only(tmp_path) -> None:
    for model in (WithForward, Step):
        module = model()
        fit_steps(module, tmp_path, steps=3)
        assert module.steps == 3, model.__name__


def test_an_ema_teacher_outside_the_plan_is_restored_after_the_one_observed_step(tmp_path) -> None:
    module = EMATeacher()
    teacher = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    callback, probe, _ = fit_steps(module, tmp_path, steps=2)
    assert all(torch.equal(probe.state[f"teacher.{k}"], v) for k, v in teacher.items())
    assert module.ema_updates == 2
    assert not any(name.startswith("teacher") for name in callback.plan.layer_names)
    assert callback.plan.calibration is not None


def test_when_nothing_reaches_the_network_the_fit_runs_and_the_warning_says_what_was_tried(tmp_path) -> None:
    module = Unreachable()
    callback, probe, messages = fit_steps(module, tmp_path, steps=2)
    assert probe.calls <= 1 and len(module.step_calls) == probe.calls + 2
    (message,) = [m for m in messages if "observed no training pass" in m]
    assert "no forward of its own" in message and "training_step(batch, 0)" in message
    assert "IndexError" in message and "forward=" in message
    assert callback.plan.calibration is None
    _, _, messages = fit_steps(Unreachable(), tmp_path, steps=1, calibrate="layers")  # asked for: said
    assert any("no training pass to run again, so calibrate='layers' is skipped" in m for m in messages)


def test_the_callback_takes_forward_and_example_input(tmp_path) -> None:
    module = Step()
    callback, probe, _ = fit_steps(module, tmp_path, forward=lambda m, batch: m.net(batch[0]))
    assert probe.calls == 0 and callback.plan.calibration is not None
    assert all(torch.equal(probe.state[k], v) for k, v in reference_weights(module).items())
    x = torch.randn(32, 4, generator=gen(9))
    module = Step()
    callback, probe, _ = fit_steps(module, tmp_path, example_input=x, forward=lambda m, b: m.net(b))
    assert probe.calls == 0
    reference = Step()
    quiet(apply_init, reference, example_input=x, forward=lambda m, b: m.net(b), calibrate="layers",
          generator=gen(0))
    assert all(torch.equal(probe.state[k], v) for k, v in reference.state_dict().items())
    with pytest.raises(ValueError, match="forward=.*callable"):
        LyapunovInit(forward="net")
    with pytest.raises(ValueError, match="example_input=.*tensor"):
        LyapunovInit(example_input=[1.0, 2.0])


def test_layers_called_one_by_one_from_the_step_get_the_activations_seen_in_its_one_run(tmp_path) -> None:
    module = LayerByLayer()
    callback, probe, messages = fit_steps(module, tmp_path, steps=2)
    assert probe.calls == 1 and len(module.step_calls) == 3  # still once outside the loop
    layers = {l.name: l for l in callback.plan.layers}
    assert {l.slope_found_by for l in layers.values()} == {"observed"}
    assert layers["layers.1"].negative_slope == 0.2 and layers["head"].negative_slope == 1.0
    assert [layers[f"layers.{i}"].activation.name for i in (0, 2)] == ["gelu", "gelu"]  # by the scale chain
    assert callback.plan.operating_scale == pytest.approx(float(first_batch()[0].pow(2).mean().sqrt()))
    assert callback.plan.calibration is None  # nothing that can be run again
    (message,) = [m for m in messages if "observed the activations in one training_step" in m]
    assert "the step ran" not in message and "forward=" in message and "calibrate" in message
    assert "observed as it ran" in callback._observed
    plain = LayerByLayer()  # the same model planned by registration order: no activation seen
    assert {l.negative_slope for l in quiet(plan_init, plain).layers} == {1.0}


def test_without_a_pass_to_run_again_the_step_0_advice_is_how_to_give_one_not_to_calibrate(tmp_path) -> None:
    from lightning_lyapunov.diagnosis import RESCALE_FIX

    callback, _, _ = fit_steps(LayerByLayer(), tmp_path, steps=1, diagnostics=True)
    fix = callback.report.rescale_fix
    assert "found no pass that runs the network again" in fix and "forward=" in fix and "calibrate=" not in fix
    callback, _, _ = fit_steps(Step(), tmp_path, steps=1, diagnostics=True)  # a forward the callback can run again
    assert callback.report.rescale_fix == RESCALE_FIX and "calibrate='output'" in RESCALE_FIX
