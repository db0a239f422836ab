"""Tests for lightning_lyapunov.examples.models: structure, fx tracing, argument checks, training smoke runs."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_lyapunov.examples.data import CIFAR10, MNIST1D, Digits, GaussianMixtureScore, PolynomialRegression
from lightning_lyapunov.examples.models import (
    ClassificationModule,
    DeepMLP,
    PlainCNN,
    RegressionModule,
    ScoreModule,
    SmallResNet,
    denoising_score_matching_loss,
    make_activation,
)


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


# ------------------------------------------------------------------------------ torch modules


def test_deep_mlp_layout_names_and_shapes():
    net = DeepMLP(in_features=3, out_features=2, width=5, depth=4, negative_slope=0.2)
    linear_names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    assert linear_names == [f"net.{2 * i}" for i in range(5)]
    acts = [m for m in net.net if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 4 and all(a.negative_slope == 0.2 for a in acts)
    assert isinstance(net.net[-1], nn.Linear)  # no activation after the last layer
    shapes = [tuple(net.net[2 * i].weight.shape) for i in range(5)]
    assert shapes == [(5, 3), (5, 5), (5, 5), (5, 5), (2, 5)]
    assert net(torch.randn(7, 3)).shape == (7, 2)
    # images are flattened
    assert DeepMLP(12, 4, width=3, depth=1)(torch.randn(2, 3, 2, 2)).shape == (2, 4)


def test_deep_mlp_without_bias():
    net = DeepMLP(2, 2, width=2, depth=3, bias=False)
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize(
    "name, cls", [("leaky_relu", nn.LeakyReLU), ("relu", nn.ReLU), ("tanh", nn.Tanh), ("gelu", nn.GELU), ("linear", nn.Identity)]
)
def test_make_activation(name, cls):
    act = make_activation(name, 0.3)
    assert type(act) is cls
    x = torch.tensor([-2.0, 3.0])
    if name == "leaky_relu":
        torch.testing.assert_close(act(x), torch.tensor([-0.6, 3.0]))


def test_plain_cnn_layout_and_batch_norm():
    net = PlainCNN(in_channels=3, num_classes=10, width=4, depth=5)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(c.bias is not None for c in convs)
    assert [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)][:2] == ["features.0", "features.2"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)

    bn = PlainCNN(width=4, depth=3, batch_norm=True, activation="relu")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 3
    assert all(m.bias is None for m in bn.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(bn.features[1], nn.BatchNorm2d) and isinstance(bn.features[2], nn.ReLU)


def test_small_resnet_shapes_and_shortcuts():
    net = SmallResNet(width=4, blocks_per_stage=[2, 1, 1])
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert net.head.in_features == 16  # width * 2**(stages - 1)
    assert isinstance(net.blocks[0].shortcut, nn.Identity)
    assert isinstance(net.blocks[2].shortcut, nn.Sequential)  # stride 2, 4 -> 8 channels
    assert net.blocks[2].conv1.stride == (2, 2)
    no_bn = SmallResNet(width=4, blocks_per_stage=[1], batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())
    # the residual path is used: zeroing the block's second conv leaves act(x)
    block = no_bn.blocks[0]
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(block(x), block.act2(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda: DeepMLP(3, 2, width=4, depth=6),
        lambda: PlainCNN(width=3, depth=4),
        lambda: PlainCNN(width=3, depth=2, batch_norm=True),
        lambda: SmallResNet(width=4, blocks_per_stage=[1, 1]),
    ],
    ids=["mlp", "cnn", "cnn-bn", "resnet"],
)
def test_fx_traceable(make):
    torch.manual_seed(0)
    net = make().eval()
    traced = torch.fx.symbolic_trace(net)
    x = torch.randn(2, 3) if isinstance(net, DeepMLP) else torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(traced(x), net(x))
    called = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    weight_layers = {n for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert weight_layers <= called


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: DeepMLP(1, 1, width=2, depth=0), "depth"),
        (lambda: DeepMLP(1, 1, width=0, depth=3), "width"),
        (lambda: DeepMLP(0, 1), "in_features"),
        (lambda: DeepMLP(1, 1, depth=2.5), "depth"),
        (lambda: DeepMLP(1, 1, activation="swish"), "activation"),
        (lambda: DeepMLP(1, 1, negative_slope=1.5), "negative_slope"),
        (lambda: DeepMLP(1, 1, negative_slope=-0.1), "negative_slope"),
        (lambda: PlainCNN(depth=0), "depth"),
        (lambda: PlainCNN(activation="elu"), "activation"),
        (lambda: SmallResNet(blocks_per_stage=[]), "blocks_per_stage"),
        (lambda: SmallResNet(blocks_per_stage=[2, 0]), "blocks_per_stage[1]"),
        (lambda: RegressionModule(DeepMLP(1, 1), lr=0.0), "lr"),
        (lambda: RegressionModule(DeepMLP(1, 1), optimizer="rmsprop"), "optimizer"),
        (lambda: RegressionModule(DeepMLP(1, 1), weight_decay=-1.0), "weight_decay"),
        (lambda: RegressionModule("DeepMLP"), "model"),
        (lambda: ClassificationModule(DeepMLP(1, 1), num_classes=1), "num_classes"),
        (lambda: ClassificationModule(DeepMLP(1, 2), num_classes=2, momentum=1.5), "momentum"),
        (lambda: ScoreModule(DeepMLP(2, 2), sigma=0.0), "sigma"),
    ],
)
def test_bad_arguments_raise_an_error_naming_the_argument(build, argument):
    with pytest.raises((ValueError, TypeError)) as info:
        build()
    assert str(info.value).startswith(f"{argument}=")


def test_optimizers():
    net = DeepMLP(2, 1, width=3, depth=1)
    sgd = RegressionModule(net, lr=0.1, optimizer="sgd", momentum=0.5, weight_decay=1e-4).configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.5 and sgd.defaults["weight_decay"] == 1e-4 and sgd.defaults["lr"] == 0.1
    assert type(RegressionModule(net).configure_optimizers()) is torch.optim.Adam
    assert type(RegressionModule(net, optimizer="adamw").configure_optimizers()) is torch.optim.AdamW


def test_hyperparameters_saved_without_the_model():
    module = ClassificationModule(DeepMLP(4, 3), num_classes=3, lr=0.01)
    assert dict(module.hparams) == dict(num_classes=3, lr=0.01, weight_decay=0.0, optimizer="adam", momentum=0.9)
    assert dict(ScoreModule(DeepMLP(2, 2), sigma=0.3).hparams)["sigma"] == 0.3


def test_regression_shape_mismatch_is_a_clear_error():
    module = RegressionModule(DeepMLP(1, 2, width=2, depth=1))
    with pytest.raises(ValueError, match="out_features"):
        module.training_step((torch.randn(4, 1), torch.randn(4, 1)), 0)


# ------------------------------------------------------------------------------ score matching


def test_denoising_score_matching_loss_matches_its_identity():
    """E||s(x~) + eps/sigma||^2 = E||s - s*||^2 + 2/sigma^2 - E||s*||^2 (d = 2), s* = true noised score."""
    data = GaussianMixtureScore(seed=3)
    gen = torch.Generator().manual_seed(0)
    sigma = 0.5
    x = data.sample(100_000, gen).double()
    eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    def true_score(z):
        return data.score(z, sigma)

    fisher = true_score(x + sigma * eps).pow(2).sum(1).mean()
    loss_true = denoising_score_matching_loss(true_score, x, sigma, eps)
    loss_zero = denoising_score_matching_loss(torch.zeros_like, x, sigma, eps)
    loss_scaled = denoising_score_matching_loss(lambda z: 0.8 * true_score(z), x, sigma, eps)
    torch.testing.assert_close(loss_zero, torch.tensor(2 / sigma**2, dtype=torch.float64), rtol=0.01, atol=0)
    # tolerances: about 4.5 Monte Carlo standard errors (0.022 and 0.0036 at this n)
    torch.testing.assert_close(loss_true, 2 / sigma**2 - fisher, rtol=0, atol=0.1)
    torch.testing.assert_close(loss_scaled - loss_true, 0.04 * fisher, rtol=0, atol=0.016)
    # the true score at the wrong noise level is worse
    assert denoising_score_matching_loss(lambda z: data.score(z, 0.3), x, sigma, eps) > loss_true + 1.0


def test_score_module_validation_noise_is_fixed():
    torch.manual_seed(0)
    module = ScoreModule(DeepMLP(2, 2, width=8, depth=2), sigma=0.5)
    data = GaussianMixtureScore(n_train=64, n_val=64, n_test=64, batch_size=32)
    trainer = _trainer()
    first = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    second = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    assert first == second


# ------------------------------------------------------------------------------ training smoke runs


@pytest.mark.parametrize(
    "make_module, make_data, keys",
    [
        (
            lambda: RegressionModule(DeepMLP(1, 1, width=2, depth=40)),
            lambda: PolynomialRegression(n_train=64, n_val=32, n_test=32),
            {"train/loss", "val/loss"},
        ),
        (
            lambda: ScoreModule(DeepMLP(2, 2, width=8, depth=4), sigma=0.5),
            lambda: GaussianMixtureScore(n_train=64, n_val=32, n_test=32),
            {"train/loss", "val/loss"},
        ),
        (
            lambda: ClassificationModule(DeepMLP(40, 10, width=8, depth=4), num_classes=10),
            lambda: MNIST1D(num_samples=200, val_size=20),
            {"train/loss", "train/acc", "val/loss", "val/acc"},
        ),
        (
            lambda: ClassificationModule(DeepMLP(64, 10, width=8, depth=4), num_classes=10, optimizer="sgd"),
            lambda: Digits(),
            {"train/loss", "train/acc", "val/loss", "val/acc"},
        ),
        (
            lambda: ClassificationModule(PlainCNN(width=4, depth=3), num_classes=10),
            lambda: CIFAR10(synthetic=True, synthetic_size=64, val_size=16, batch_size=16),
            {"train/loss", "train/acc", "val/loss", "val/acc"},
        ),
        (
            lambda: ClassificationModule(SmallResNet(width=4, blocks_per_stage=[1, 1]), num_classes=10),
            lambda: CIFAR10(synthetic=True, synthetic_size=64, val_size=16, batch_size=16),
            {"train/loss", "train/acc", "val/loss", "val/acc"},
        ),
    ],
    ids=["poly", "score", "mnist1d", "digits", "cifar-cnn", "cifar-resnet"],
)
def test_fast_dev_run(make_module, make_data, keys):
    torch.manual_seed(0)
    module, data = make_module(), make_data()
    before = copy.deepcopy(module.model.state_dict())
    trainer = _trainer(fast_dev_run=True)
    trainer.fit(module, datamodule=data)
    assert keys <= set(trainer.callback_metrics)
    assert all(torch.isfinite(trainer.callback_metrics[k]) for k in keys)
    changed = [not torch.equal(before[k], v) for k, v in module.model.state_dict().items()]
    assert any(changed)  # an optimizer step happened
    test_keys = {k.replace("val/", "test/") for k in keys if k.startswith("val/")}
    assert test_keys <= set(trainer.test(module, datamodule=data, verbose=False)[0])


def test_classification_learns_digits():
    pl.seed_everything(0, verbose=False)
    module = ClassificationModule(DeepMLP(64, 10, width=32, depth=2), num_classes=10, lr=3e-3)
    data = Digits(batch_size=64)
    trainer = _trainer(max_epochs=4)
    trainer.fit(module, datamodule=data)
    assert trainer.callback_metrics["val/acc"] > 0.9  # chance is 0.1
    predictions = trainer.predict(module, datamodule=data)
    assert torch.cat(predictions).shape == (300, 10)


def test_regression_learns_polynomial():
    pl.seed_everything(0, verbose=False)
    data = PolynomialRegression(n_train=512, batch_size=64)
    data.setup()
    baseline = data.splits["val"][1].var(unbiased=False).item()  # MSE of the best constant (about)
    module = RegressionModule(DeepMLP(1, 1, width=32, depth=2, activation="tanh"), lr=1e-2)
    trainer = _trainer(max_epochs=15)
    trainer.fit(module, datamodule=data)
    assert trainer.callback_metrics["val/loss"] < 0.1 * baseline


# ------------------------------------------------------------------------------ LightningCLI / jsonargparse


def _cli_config(**mlp_args):
    mlp = {"in_features": 64, "out_features": 10, "width": 8, "depth": 3, **mlp_args}
    return {
        "model": {
            "class_path": "lightning_lyapunov.examples.models.ClassificationModule",
            "init_args": {
                "num_classes": 10,
                "optimizer": "sgd",
                "model": {"class_path": "lightning_lyapunov.examples.models.DeepMLP", "init_args": mlp},
            },
        },
        "data": {"class_path": "lightning_lyapunov.examples.data.Digits", "init_args": {"batch_size": 32}},
        "trainer": {"accelerator": "cpu", "logger": False, "enable_checkpointing": False},
    }


def _cli(args, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["lightning-lyapunov"])
    return LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=args,
        save_config_callback=None,
        parser_kwargs={"exit_on_error": False},
    )


def test_lightning_cli_builds_nested_module_from_config(monkeypatch):
    cli = _cli(_cli_config(activation="relu"), monkeypatch)
    assert isinstance(cli.model, ClassificationModule) and isinstance(cli.datamodule, Digits)
    net = cli.model.model
    assert isinstance(net, DeepMLP) and net.depth == 3 and net.width == 8
    assert isinstance(net.net[1], nn.ReLU)
    assert cli.model.hparams.optimizer == "sgd" and cli.datamodule.batch_size == 32


def test_lightning_cli_rejects_bad_activation_readably(monkeypatch):
    from argparse import ArgumentError

    with pytest.raises(ArgumentError) as info:
        _cli(_cli_config(activation="swish"), monkeypatch)
    message = str(info.value)
    assert "activation" in message and "swish" in message and "leaky_relu" in message
