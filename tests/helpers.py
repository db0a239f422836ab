"""Shared test helpers: a deep, narrow regression LightningModule, its data, Trainer settings, and
the one LyapunovInit of a callback list. Imported by test modules (conftest holds fixtures only)."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_lyapunov import LyapunovInit


class DeepNarrow(pl.LightningModule):
    """Linear -> LeakyReLU(0.1) blocks of width ``width``, ``depth`` weight layers in all."""

    def __init__(self, width: int = 4, depth: int = 12, slope: float = 0.1, lr: float = 1e-3):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.LeakyReLU(slope)]
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loader(width: int = 4, n: int = 64, batch_size: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    y = x.sum(1, keepdim=True).sin()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class HelperNet(nn.Module):
    """Width 4, F.leaky_relu(0.1) in forward: invisible to module order."""

    def __init__(self, width: int = 4, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.1)
        return self.head(x)


def trainer_kwargs(tmp_path, **overrides):
    kwargs = dict(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, max_steps=6, log_every_n_steps=2,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    kwargs.update(overrides)
    return kwargs


def gen(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def quiet(function, *args, **kwargs):
    """``function(*args, **kwargs)`` with every warning silenced (plans warn about expected things)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def changed(model: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    """The names of the parameters and buffers that differ from ``before`` (a :func:`snapshot`)."""
    return [k for k, v in model.state_dict(keep_vars=True).items() if not torch.equal(v.detach(), before[k])]


def the_callback(callbacks: list[Any]) -> LyapunovInit:
    """The one LyapunovInit among ``callbacks``."""
    (callback,) = [c for c in callbacks if isinstance(c, LyapunovInit)]
    return callback


def measured(model: nn.Module, x: torch.Tensor, names: list[str] | None = None):
    """The SignalStats of one forward pass of ``model`` on ``x`` (default: every Linear layer)."""
    from lightning_lyapunov import SignalMonitor

    names = names or [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    with SignalMonitor(model, names) as monitor:
        monitor.active = True
        model(x)
        return monitor.compute()


def net_on_inputs(module: Any, batch: Any) -> Any:
    """A ``forward=`` a config can name (``helpers.net_on_inputs``): the module on the batch's inputs."""
    return module(batch[0])
