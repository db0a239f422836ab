"""Benchmark models: deep narrow nets in plain torch, wrapped in small LightningModules.

The torch modules (:class:`DeepMLP`, :class:`PlainCNN`, :class:`SmallResNet`) are plain
``nn.Module`` s that ``torch.fx`` can trace, so the init surgery finds every weight layer and the
activation after it. The LightningModules (:class:`RegressionModule`,
:class:`ClassificationModule`, :class:`ScoreModule`) take the torch module as their ``model``
argument, which LightningCLI builds from YAML::

    model:
      class_path: lightning_lyapunov.examples.models.ClassificationModule
      init_args:
        num_classes: 10
        model:
          class_path: lightning_lyapunov.examples.models.DeepMLP
          init_args: {in_features: 40, out_features: 10, width: 16, depth: 20}

Example::

    import lightning.pytorch as pl
    from lightning_lyapunov.examples.models import DeepMLP, RegressionModule
    from lightning_lyapunov.examples.data import PolynomialRegression

    net = DeepMLP(in_features=1, out_features=1, width=2, depth=40)
    pl.Trainer(max_epochs=5).fit(RegressionModule(net), PolynomialRegression())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_lyapunov._checks import check_bool, check_choice, check_float, check_int, invalid

__all__ = [
    "ACTIVATIONS",
    "OPTIMIZERS",
    "make_activation",
    "DeepMLP",
    "PlainCNN",
    "SmallResNet",
    "RegressionModule",
    "ClassificationModule",
    "ScoreModule",
    "denoising_score_matching_loss",
]

Activation = Literal["leaky_relu", "relu", "tanh", "gelu", "linear"]
Optimizer = Literal["adam", "adamw", "sgd"]
ACTIVATIONS: tuple[str, ...] = ("leaky_relu", "relu", "tanh", "gelu", "linear")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")


def _positive_ints(**values: Any) -> None:
    """``check_int(name, value, minimum=1)`` for every keyword argument."""
    for name, value in values.items():
        check_int(name, value, minimum=1)


# ---------------------------------------------------------------------------------------------
# torch modules


def make_activation(activation: str, negative_slope: float = 0.1) -> nn.Module:
    """A fresh activation module: ``phi(x) = max(x, a x)`` for "leaky_relu" (a = negative_slope),
    ``max(x, 0)`` for "relu", ``tanh``, ``gelu`` or the identity for "linear".

    ``negative_slope`` is only used by "leaky_relu" and must lie in [0, 1] (the theory's range).

    Example::

        act = make_activation("leaky_relu", 0.1)   # nn.LeakyReLU(0.1)
    """
    check_choice("activation", activation, ACTIVATIONS)
    if activation == "leaky_relu":
        return nn.LeakyReLU(check_float("negative_slope", negative_slope, minimum=0.0, maximum=1.0))
    factories: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "gelu": nn.GELU,
        "linear": nn.Identity,
    }
    return factories[activation]()


class DeepMLP(nn.Module):
    """Deep fully connected net ``x -> W_{L+1} phi(W_L ... phi(W_1 x))`` with ``depth`` hidden layers.

    ``self.net`` is a flat ``nn.Sequential`` of Linear, activation, ..., Linear (no activation after
    the last Linear), so the weight layers are ``net.0, net.2, ..., net.{2 * depth}``. Inputs with
    more than one feature dimension (images) are flattened first.

    Args:
        in_features: input dimension (after flattening).
        out_features: output dimension.
        width: hidden width (the same for every hidden layer).
        depth: number of hidden layers (>= 1); the net has ``depth + 1`` Linear layers.
        activation: "leaky_relu", "relu", "tanh", "gelu" or "linear".
        negative_slope: Leaky ReLU slope in [0, 1] (only for "leaky_relu").
        bias: whether the Linear layers have biases.

    Example::

        net = DeepMLP(in_features=1, out_features=1, width=2, depth=40)
        y = net(torch.randn(8, 1))          # shape (8, 1)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int = 16,
        depth: int = 10,
        activation: Activation = "leaky_relu",
        negative_slope: float = 0.1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _positive_ints(in_features=in_features, out_features=out_features, width=width, depth=depth)
        check_bool("bias", bias)
        layers: list[nn.Module] = []
        d_in = in_features
        for _ in range(depth):
            layers += [nn.Linear(d_in, width, bias=bias), make_activation(activation, negative_slope)]
            d_in = width
        layers.append(nn.Linear(d_in, out_features, bias=bias))
        self.net = nn.Sequential(*layers)
        self.in_features, self.out_features = in_features, out_features
        self.width, self.depth = width, depth

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.flatten(x, 1))


def _norm2d(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def _conv3x3(c_in: int, c_out: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=bias)


class PlainCNN(nn.Module):
    """Deep narrow plain CNN: ``depth`` x (3x3 conv, [BatchNorm], activation), global average
    pool, Linear head. No skip connections, stride 1 throughout (any image size works; made for
    32x32).

    ``self.features`` is a flat ``nn.Sequential``: without BatchNorm the convs are
    ``features.0, features.2, ...``; with it ``features.0, features.3, ...``.

    Args:
        in_channels: input channels (3 for CIFAR-10).
        num_classes: number of output logits.
        width: channels of every conv layer.
        depth: number of conv layers (>= 1).
        activation: "leaky_relu", "relu", "tanh", "gelu" or "linear".
        negative_slope: Leaky ReLU slope in [0, 1].
        batch_norm: insert BatchNorm2d after every conv (off by default: the point is to study
            the signal without normalization).
        bias: conv biases (ignored, i.e. off, with batch_norm).

    Example::

        net = PlainCNN(width=8, depth=20)
        logits = net(torch.randn(4, 3, 32, 32))   # shape (4, 10)
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 16,
        depth: int = 10,
        activation: Activation = "leaky_relu",
        negative_slope: float = 0.1,
        batch_norm: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _positive_ints(in_channels=in_channels, num_classes=num_classes, width=width, depth=depth)
        check_bool("batch_norm", batch_norm), check_bool("bias", bias)
        layers: list[nn.Module] = []
        c_in = in_channels
        for _ in range(depth):
            layers.append(_conv3x3(c_in, width, bias=bias and not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(make_activation(activation, negative_slope))
            c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: ``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or a strided 1x1 conv (+ BatchNorm) when the shape changes.

    Example::

        block = BasicBlock(16, 32, stride=2)
        y = block(torch.randn(2, 16, 32, 32))   # shape (2, 32, 16, 16)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activation: Activation = "relu",
        negative_slope: float = 0.1,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        _positive_ints(in_channels=in_channels, out_channels=out_channels, stride=stride)
        check_bool("batch_norm", batch_norm)
        self.conv1 = _conv3x3(in_channels, out_channels, stride, bias=not batch_norm)
        self.bn1 = _norm2d(out_channels, batch_norm)
        self.act1 = make_activation(activation, negative_slope)
        self.conv2 = _conv3x3(out_channels, out_channels, 1, bias=not batch_norm)
        self.bn2 = _norm2d(out_channels, batch_norm)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=not batch_norm)
            self.shortcut = nn.Sequential(conv, _norm2d(out_channels, batch_norm))
        self.act2 = make_activation(activation, negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Small CIFAR-style ResNet: 3x3 stem, stages of basic blocks with ``width * 2**i`` channels
    (stride 2 at the start of every stage after the first), global average pool, Linear head.

    Args:
        in_channels: input channels.
        num_classes: number of output logits.
        width: channels of the stem and the first stage.
        blocks_per_stage: number of basic blocks per stage, e.g. ``[2, 2, 2]`` (ResNet-14).
        activation: "leaky_relu", "relu", "tanh", "gelu" or "linear".
        negative_slope: Leaky ReLU slope in [0, 1].
        batch_norm: BatchNorm after every conv.

    Example::

        net = SmallResNet(width=8, blocks_per_stage=[1, 1, 1])
        logits = net(torch.randn(4, 3, 32, 32))   # shape (4, 10)
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 16,
        blocks_per_stage: Sequence[int] = (2, 2, 2),
        activation: Activation = "relu",
        negative_slope: float = 0.1,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        _positive_ints(in_channels=in_channels, num_classes=num_classes, width=width)
        check_bool("batch_norm", batch_norm)
        if isinstance(blocks_per_stage, (str, bytes)) or not isinstance(blocks_per_stage, Sequence):
            invalid("blocks_per_stage", blocks_per_stage, "a sequence of block counts, e.g. [2, 2, 2]")
        if len(blocks_per_stage) < 1:
            raise ValueError("blocks_per_stage=[] is invalid: give at least one stage, e.g. [2, 2, 2].")
        for i, n in enumerate(blocks_per_stage):
            check_int(f"blocks_per_stage[{i}]", n, minimum=1)
        make_activation(activation, negative_slope)  # validate once, before building
        self.stem = nn.Sequential(
            _conv3x3(in_channels, width, bias=not batch_norm),
            _norm2d(width, batch_norm),
            make_activation(activation, negative_slope),
        )
        blocks: list[nn.Module] = []
        c_in = width
        for stage, n_blocks in enumerate(blocks_per_stage):
            c_out = width * 2**stage
            for b in range(n_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride, activation, negative_slope, batch_norm))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


# ---------------------------------------------------------------------------------------------
# LightningModules


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """(inputs, targets or None) from a tensor or a (x,) / (x, y) tuple."""
    if isinstance(batch, Tensor):
        return batch, None
    return batch[0], (batch[1] if len(batch) > 1 else None)


class _TrainableModule(pl.LightningModule):
    """Shared optimizer set-up: Adam, AdamW or SGD (with momentum) on all parameters."""

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Optimizer = "adam",
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"model={model!r} is invalid: it must be a torch.nn.Module, e.g. DeepMLP(...) "
                "(in YAML: class_path + init_args)."
            )
        check_float("lr", lr, minimum=0.0, low_open=True)
        check_float("weight_decay", weight_decay, minimum=0.0)
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_float("momentum", momentum, minimum=0.0, maximum=1.0)
        self.model = model
        self.save_hyperparameters(ignore=["model"])

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "sgd":
            return torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        return cls(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(_split_batch(batch)[0])

    def _loss(self, batch: Any, stage: str, batch_idx: int) -> Tensor:
        """The loss of one batch; subclasses log their metrics under ``{stage}/...``."""
        raise NotImplementedError

    def _log_loss(self, stage: str, loss: Tensor) -> None:
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", on_epoch=True, on_step=on_step)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._loss(batch, "train", batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._loss(batch, "val", batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._loss(batch, "test", batch_idx)


class RegressionModule(_TrainableModule):
    """Mean squared error regression: ``loss = mean((model(x) - y)^2)``.

    Logs ``train/loss``, ``val/loss``, ``test/loss``.

    Args:
        model: the torch module (e.g. :class:`DeepMLP`); its output must have the targets' shape.
        lr: learning rate (> 0).
        weight_decay: weight decay (>= 0).
        optimizer: "adam", "adamw" or "sgd".
        momentum: SGD momentum in [0, 1] (ignored by Adam).

    Example::

        module = RegressionModule(DeepMLP(1, 1, width=2, depth=40), lr=1e-3)
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Optimizer = "adam",
        momentum: float = 0.9,
    ) -> None:
        super().__init__(model, lr, weight_decay, optimizer, momentum)

    def _loss(self, batch: Any, stage: str, batch_idx: int) -> Tensor:
        x, y = _split_batch(batch)
        pred = self(x)
        if y is None or pred.shape != y.shape:
            raise ValueError(
                f"RegressionModule: model output shape {tuple(pred.shape)} does not match target "
                f"shape {None if y is None else tuple(y.shape)}; set the model's out_features to "
                "the target dimension."
            )
        loss = F.mse_loss(pred, y)
        self._log_loss(stage, loss)
        return loss


class ClassificationModule(_TrainableModule):
    """Cross-entropy classification with its accuracy (the fraction of argmax predictions equal to the label).

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.

    Args:
        model: the torch module mapping inputs to ``num_classes`` logits.
        num_classes: number of classes (>= 2).
        lr: learning rate (> 0).
        weight_decay: weight decay (>= 0).
        optimizer: "adam", "adamw" or "sgd".
        momentum: SGD momentum in [0, 1] (ignored by Adam).

    Example::

        module = ClassificationModule(DeepMLP(40, 10, width=16, depth=20), num_classes=10)
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Optimizer = "adam",
        momentum: float = 0.9,
    ) -> None:
        super().__init__(model, lr, weight_decay, optimizer, momentum)
        check_int("num_classes", num_classes, minimum=2)
        self.num_classes = num_classes

    def _loss(self, batch: Any, stage: str, batch_idx: int) -> Tensor:
        x, y = _split_batch(batch)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy = (logits.argmax(-1) == y).float().mean()
        self._log_loss(stage, loss)
        # averaged over the epoch weighted by batch size: the epoch's accuracy
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val", on_epoch=True, on_step=False, batch_size=len(y))
        return loss


def denoising_score_matching_loss(
    score: Callable[[Tensor], Tensor], x: Tensor, sigma: float, noise: Tensor | None = None
) -> Tensor:
    """Denoising score matching at one noise level (Vincent 2011):

        loss = mean_b || s(x_b + sigma eps_b) + eps_b / sigma ||^2,   eps ~ N(0, I)

    (squared norm over the feature dimension, mean over the batch). Its minimizer is the score
    of the noised data distribution, grad log (p * N(0, sigma^2 I)).

    Example::

        loss = denoising_score_matching_loss(net, x, sigma=0.5)
    """
    eps = torch.randn_like(x) if noise is None else noise
    residual = score(x + sigma * eps) + eps / sigma
    return residual.pow(2).flatten(1).sum(1).mean()


class ScoreModule(_TrainableModule):
    """Denoising score matching with one fixed noise level ``sigma`` (see
    :func:`denoising_score_matching_loss`). The model maps a noisy point x (e.g. 2-D) to the
    score estimate (same shape). Logs ``train/loss``, ``val/loss``, ``test/loss``.

    Validation and test noise is drawn from a generator seeded with the batch index, so the
    evaluation loss is comparable between epochs.

    Args:
        model: the torch module mapping x to a vector of the same shape (e.g. ``DeepMLP(2, 2)``).
        sigma: noise level (> 0).
        lr, weight_decay, optimizer, momentum: as in :class:`RegressionModule`.

    Example::

        module = ScoreModule(DeepMLP(2, 2, width=16, depth=10), sigma=0.5)
    """

    def __init__(
        self,
        model: nn.Module,
        sigma: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Optimizer = "adam",
        momentum: float = 0.9,
    ) -> None:
        super().__init__(model, lr, weight_decay, optimizer, momentum)
        check_float("sigma", sigma, minimum=0.0, low_open=True)

    def _loss(self, batch: Any, stage: str, batch_idx: int) -> Tensor:
        x = _split_batch(batch)[0]
        noise = None
        if stage != "train":
            gen = torch.Generator(device=x.device).manual_seed(batch_idx)
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        loss = denoising_score_matching_loss(self.model, x, self.hparams.sigma, noise)
        self._log_loss(stage, loss)
        return loss
