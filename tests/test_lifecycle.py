"""LyapunovInit in the Lightning lifecycle: resuming from a checkpoint draws nothing, sharded
strategies (and their subclasses) and a second LyapunovInit are refused."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

import lightning_lyapunov.lookahead_fit as lookahead_fit_module  # initialize_, and the look-ahead's draws
import lightning_lyapunov.sampling as sampling_module  # select_: sampled draws
from helpers import DeepNarrow, loader, trainer_kwargs
from lightning_lyapunov import LyapunovInit


class RngAtSetup(pl.Callback):
    """Records torch's global generator state when its ``setup`` runs (callbacks run in list order)."""

    def setup(self, trainer, pl_module, stage):
        self.state = torch.get_rng_state()


class WeightsAtTrainStart(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint of a short run with LyapunovInit, and its state dict."""
    torch.manual_seed(0)
    trainer = pl.Trainer(callbacks=[LyapunovInit(seed=1)], **trainer_kwargs(tmp_path, logger=False, max_steps=2))
    trainer.fit(DeepNarrow(), loader())
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    return path, torch.load(path, weights_only=True)["state_dict"]


def spy(monkeypatch):
    """Count calls of the initializers the callback can use."""
    calls = []
    for module, name in ((lookahead_fit_module, "initialize_"), (lookahead_fit_module, "draw_candidates_"),
                         (sampling_module, "select_")):
        original = getattr(module, name)

        def recorded(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)
    return calls


def resume(tmp_path, callback, ckpt_path=None, managed=None, max_steps=4):
    before, after, weights = RngAtSetup(), RngAtSetup(), WeightsAtTrainStart()
    trainer = pl.Trainer(callbacks=[before, callback, after, weights],
                         **trainer_kwargs(tmp_path, logger=False, max_steps=max_steps))
    if managed is not None:
        trainer.ckpt_path = managed
    trainer.fit(DeepNarrow(), loader(), ckpt_path=ckpt_path)
    return before.state, after.state, weights.state


@pytest.mark.parametrize("settings", [{}, {"sampled": True}, {"look_ahead": 2, "look_ahead_steps": 2}])
def test_fit_with_ckpt_path_draws_nothing(checkpoint, tmp_path, monkeypatch, settings):
    path, saved = checkpoint
    calls = spy(monkeypatch)
    callback = LyapunovInit(seed=None, **settings)  # seed=None would draw from the global generator
    rng_before, rng_after, weights = resume(tmp_path, callback, ckpt_path=path)
    assert calls == []
    assert torch.equal(rng_before, rng_after)
    assert all(torch.equal(weights[k], v) for k, v in saved.items())
    assert callback.initialized and callback.plan is not None  # the plan still feeds the diagnostics


def test_user_managed_trainer_ckpt_path_draws_nothing(checkpoint, tmp_path, monkeypatch):
    path, saved = checkpoint
    calls = spy(monkeypatch)
    rng_before, rng_after, weights = resume(tmp_path, LyapunovInit(), managed=path)
    assert calls == [] and torch.equal(rng_before, rng_after)
    assert all(torch.equal(weights[k], v) for k, v in saved.items())


def test_checkpoint_without_the_callback_state_is_not_initialized_later(tmp_path, monkeypatch):
    trainer = pl.Trainer(**trainer_kwargs(tmp_path, logger=False, max_steps=1))  # a run without the callback
    trainer.fit(DeepNarrow(), loader())
    path = tmp_path / "plain.ckpt"
    trainer.save_checkpoint(path)
    calls = spy(monkeypatch)
    callback = LyapunovInit(seed=0)
    resume(tmp_path, callback, ckpt_path=path, max_steps=2)
    assert calls == [] and callback.initialized
    resume(tmp_path, callback, max_steps=1)  # a second fit of the same callback: still nothing drawn
    assert calls == []


def test_fit_without_checkpoint_still_initializes(tmp_path, monkeypatch):
    calls = spy(monkeypatch)
    callback = LyapunovInit(seed=None)
    rng_before, rng_after, _ = resume(tmp_path, callback, max_steps=1)
    assert calls == ["initialize_"] and callback.initialized
    assert not torch.equal(rng_before, rng_after)  # seed=None draws its seed from the global generator


@pytest.mark.parametrize("base", [FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy])
def test_subclasses_of_sharded_strategies_are_refused(base):
    subclass = type("MyStrategy", (base,), {})

    class FakeTrainer:
        strategy = subclass.__new__(subclass)  # no __init__: DeepSpeed need not be installed
        callbacks: list = []

    with pytest.raises(RuntimeError, match=f"MyStrategy \\(a {base.__name__}\\).*DDP") as refused:
        LyapunovInit().setup(FakeTrainer(), DeepNarrow(), "fit")
    message = str(refused.value)
    # true to Lightning's order (callbacks' setup, configure_model, then the strategy wraps the model)
    assert "sharded in setup" not in message
    assert "before configure_model" in message and "every rank" in message
    # the model is whole here: what supporting the strategy would take
    assert "would take" in message and "apply_init" in message


def test_a_sharded_strategy_with_a_model_built_in_configure_model_is_told_so() -> None:
    class Empty(pl.LightningModule):
        def configure_model(self):
            self.net = torch.nn.Linear(4, 1)

    class FakeTrainer:
        strategy = FSDPStrategy.__new__(FSDPStrategy)
        callbacks: list = []

    with pytest.raises(RuntimeError, match="no weight layer yet.*configure_model"):
        LyapunovInit().setup(FakeTrainer(), Empty(), "fit")


def test_a_class_merely_named_like_a_sharded_strategy_is_not_refused(tmp_path):
    from lightning.pytorch.strategies import SingleDeviceStrategy

    class FSDPStrategy(SingleDeviceStrategy):  # the name alone says nothing
        pass

    trainer = pl.Trainer(callbacks=[LyapunovInit(seed=0)], strategy=FSDPStrategy(device=torch.device("cpu")),
                         **trainer_kwargs(tmp_path, logger=False, max_steps=1, devices="auto"))
    trainer.fit(DeepNarrow(), loader())


def test_two_lyapunov_callbacks_are_refused_before_anything_is_drawn(tmp_path, monkeypatch):
    calls = spy(monkeypatch)
    model = DeepNarrow()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(callbacks=[LyapunovInit(seed=0), LyapunovInit(scheme="he", seed=0)],
                         **trainer_kwargs(tmp_path, logger=False, max_steps=1))
    with pytest.raises(ValueError, match=r"2 LyapunovInit callbacks \(scheme='lyapunov', scheme='he'\).*keep a single"):
        trainer.fit(model, loader())
    assert calls == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
