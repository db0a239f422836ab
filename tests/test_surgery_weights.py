"""Tests of the weights side of lightning_lyapunov.surgery: transposed and delta convs against Monte
Carlo, shared (tied) weights, weight_norm / spectral_norm, and all-or-nothing writes."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lightning_lyapunov.surgery import apply_init, plan_init


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def log_r(v: torch.Tensor) -> torch.Tensor:
    flat = v.flatten(1)
    return flat.norm(dim=1).log() - 0.5 * math.log(flat.shape[1])


def conv_gain(make, draws: int, size: int, seed: int = 0, **kwargs) -> tuple[float, float]:
    """Mean over ``draws`` fresh inits of the measured log-gain of ``make()`` (a layer + activation)
    on Gaussian inputs, and the plan's exponent for that layer."""
    generator, gains = gen(seed), []
    for _ in range(draws):
        model = make()
        plan = quiet(apply_init, model, generator=generator, **kwargs)
        x = torch.randn(8, model[0].in_channels, size, size, generator=generator)
        with torch.no_grad():
            gains.append(float((log_r(model(x)) - log_r(x)).mean()))
    return sum(gains) / draws, plan.layers[0].init.exponent


# --------------------------------------------------------------------------- transposed convs


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(
    "scheme, distribution",
    [("lyapunov", "gaussian"), ("lyapunov", "orthogonal"), ("orthogonal", "orthogonal"), ("he", "gaussian")],
)
def test_transposed_conv_measured_gain_matches_plan(stride: int, scheme: str, distribution: str) -> None:
    # stride 2, kernel 4: each output location sees a quarter of the drawn (16, 16*16) matrix's
    # columns; the orthogonal exponent used max(d_in=64, d_out) and was off by -log 2 = -0.69
    kernel, padding = (3, 1) if stride == 1 else (4, 1)

    def make() -> nn.Sequential:
        return nn.Sequential(nn.ConvTranspose2d(16, 16, kernel, stride=stride, padding=padding), nn.LeakyReLU(0.1))

    measured, exponent = conv_gain(make, draws=12, size=10, scheme=scheme, distribution=distribution)
    assert measured == pytest.approx(exponent, abs=0.1), (measured, exponent)
