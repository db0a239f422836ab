"""Tests of lightning_lyapunov.training_batch: what the callback observes in setup, a real training batch."""

import pytest
import torch
import torch.nn.functional as F

from helpers import HelperNet, gen, quiet
from lightning_lyapunov import apply_init


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
