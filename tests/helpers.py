"""Shared test helpers: a deep, narrow regression LightningModule, its data, Trainer settings, and
the one LyapunovInit of a callback list. Imported by test modules (conftest holds fixtures only)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
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


def trainer_kwargs(tmp_path, **overrides):
    kwargs = dict(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, max_steps=6, log_every_n_steps=2,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    kwargs.update(overrides)
    return kwargs


def the_callback(callbacks: list[Any]) -> LyapunovInit:
    """The one LyapunovInit among ``callbacks``."""
    (callback,) = [c for c in callbacks if isinstance(c, LyapunovInit)]
    return callback
