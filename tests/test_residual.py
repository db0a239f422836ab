"""Residual blocks by theory (lightning_lyapunov.residual) and their calibration (calibrate_'s
``stream_growth``): the branch scale, the stream's predicted log-norm against Monte Carlo, the
recognition of ``x + f(x)`` and the stream's measured growth after calibration."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lightning_lyapunov import apply_init
from lightning_lyapunov.calibration import calibrate_
from lightning_lyapunov.examples.models import SmallResNet
from lightning_lyapunov.residual import STREAM_GROWTH, branch_scale, find_residual_blocks, stream_log_norm


class Block(nn.Module):
    """Pre-norm residual block; ``how`` spells the sum."""

    def __init__(self, width: int, how: str = "x + f") -> None:
        super().__init__()
        self.norm, self.how = nn.LayerNorm(width), how
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.fc2(torch.relu(self.fc1(self.norm(x))))
        if self.how == "f + x":
            return f + x
        if self.how == "torch.add":
            return torch.add(x, f)
        if self.how == "+=":  # torchvision's ResNet: out += identity
            f += x
            return f
        if self.how == "projection":  # both operands new: not a residual block
            return f + self.fc1(x)
        return x + f


class PreNorm(nn.Module):
    def __init__(self, d_in: int = 20, width: int = 16, blocks: int = 24, how: str = "x + f") -> None:
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.Sequential(*[Block(width, how) for _ in range(blocks)])
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.stem(x))))


def weight_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def blocks_of(model: nn.Module, x: torch.Tensor) -> list[str]:
    with torch.no_grad():
        return [b.layer for b in find_residual_blocks(model, weight_layers(model), lambda: model(x))]


X = torch.randn(1024, 20, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- theory


@pytest.mark.parametrize("blocks", [1, 2, 24, 1000])
@pytest.mark.parametrize("growth", [STREAM_GROWTH, 3.0])
def test_branch_scale_grows_the_stream_by_exactly_the_growth(blocks: int, growth: float) -> None:
    alpha = branch_scale(blocks, growth)
    assert (1 + alpha**2) ** (blocks / 2) == pytest.approx(growth, rel=1e-12)
    # alpha ~ c / sqrt(B), c^2 = 2 log G: the growth stays bounded at any depth
    assert alpha * math.sqrt(blocks) == pytest.approx(math.sqrt(2 * math.log(growth)), rel=1.2 / blocks + 1e-3)


@pytest.mark.parametrize("bad, what", [(dict(blocks=0), "blocks"), (dict(blocks=3, growth=1.0), "growth"),
                                       (dict(blocks=3, growth=math.nan), "growth")])
def test_branch_scale_rejects_bad_input(bad, what) -> None:
    with pytest.raises(ValueError, match=what):
        branch_scale(**bad)


@pytest.mark.parametrize("width", [2, 3, 8])
@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_stream_log_norm_matches_monte_carlo_of_isotropic_branches(width: int, alpha: float) -> None:
    # x_{b+1} = x_b + alpha ||x_b|| u_b, u_b uniform on the sphere: the branch of an isotropic last layer
    gen = torch.Generator().manual_seed(width)
    n, blocks = 200_000, 3
    x = torch.randn(n, width, generator=gen, dtype=torch.float64)
    start = x.norm(dim=1).log()
    for _ in range(blocks):
        u = torch.randn(n, width, generator=gen, dtype=torch.float64)
        x = x + alpha * x.norm(dim=1, keepdim=True) * u / u.norm(dim=1, keepdim=True)
    change = x.norm(dim=1).log() - start
    predicted = stream_log_norm([alpha] * blocks, width)
    assert predicted.shape == (blocks,)
    # 5 standard errors; the cosine term is 0.02 .. 0.6 here, so dropping it (or halving it) fails
    assert float(change.mean()) == pytest.approx(predicted[-1], abs=5 * float(change.std()) / math.sqrt(n))
    naive = 1.5 * math.log1p(alpha**2)
    assert abs(naive - predicted[-1]) > 20 * float(change.std()) / math.sqrt(n)


def test_stream_log_norm_at_width_two_is_zero_below_unit_scale() -> None:
    # log|1 + a e^{i theta}| is harmonic: its circle mean is 0 for a < 1
    assert stream_log_norm([0.2, 0.5, 0.9], 2) == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    with pytest.raises(ValueError, match="width"):
        stream_log_norm([0.5], 1)


# ---------------------------------------------------------------- recognition


@pytest.mark.parametrize("how", ["x + f", "f + x", "torch.add", "+="])
def test_every_spelling_of_x_plus_f_is_a_block_ending_in_the_branch_last_layer(how: str) -> None:
    model = PreNorm(blocks=3, how=how)
    assert blocks_of(model, X[:8]) == ["blocks.0.fc2", "blocks.1.fc2", "blocks.2.fc2"]


def test_sums_of_two_new_paths_and_plain_chains_are_not_blocks() -> None:
    assert blocks_of(PreNorm(blocks=3, how="projection"), X[:8]) == []
    assert blocks_of(nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3)), X[:8]) == []


def test_resnet_identity_blocks_are_found_and_projection_shortcuts_are_not() -> None:
    model = SmallResNet(3, 10, width=4, blocks_per_stage=(2, 2), batch_norm=False)
    found = blocks_of(model, torch.randn(2, 3, 8, 8))
    assert found == ["blocks.0.conv2", "blocks.1.conv2", "blocks.3.conv2"]  # blocks.2: 1x1 projection shortcut
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_find_residual_blocks_measures_both_operands() -> None:
    model = PreNorm(blocks=1)
    with torch.no_grad():
        (block,) = find_residual_blocks(model, weight_layers(model), lambda: model(X))
        stream = model.stem(X)
        branch = model.blocks[0](stream) - stream
    assert block.stream_rms == pytest.approx(float(stream.pow(2).mean().sqrt()), rel=1e-5)
    assert block.ratio == pytest.approx(float(branch.pow(2).mean().sqrt() / stream.pow(2).mean().sqrt()), rel=1e-4)


# ---------------------------------------------------------------- calibration


def calibrated(seed: int, blocks: int = 24, **kwargs):
    torch.manual_seed(seed)
    model = PreNorm(blocks=blocks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = apply_init(model, example_input=X, generator=torch.Generator().manual_seed(seed))
        result = calibrate_(model, plan, X, "layers", **kwargs)
    with torch.no_grad():
        start = model.stem(X)
        growth = float(model.blocks(start).pow(2).mean().sqrt() / start.pow(2).mean().sqrt())
    return model, plan, result, growth


@pytest.mark.parametrize("blocks", [6, 24])
def test_calibrated_stream_grows_by_the_chosen_growth_at_any_depth(blocks: int) -> None:
    # per draw the stream/branch cross terms are ~1/width; their mean over draws is 0 (zero-mean last layer)
    squares = []
    for seed in range(8):
        _, _, result, growth = calibrated(seed, blocks)
        assert result.branch_scale == pytest.approx(branch_scale(blocks))
        assert result.branch_ratios == pytest.approx([result.branch_scale] * blocks, rel=1e-4)
        squares.append(growth**2)
    assert sum(squares) / len(squares) == pytest.approx(STREAM_GROWTH**2, rel=0.1)


def test_without_stream_growth_every_branch_is_at_rms_one_and_the_stream_grows_with_depth() -> None:
    # pre-norm branches at rms 1 add a unit of mean square each: r(x_B)^2 ~ r(x_0)^2 + B
    squares = []
    for seed in range(6):
        _, _, result, growth = calibrated(seed, 24, stream_growth=None)
        assert result.branch_scale is None and result.branches == []
        squares.append(growth**2)
    assert sum(squares) / len(squares) == pytest.approx(1 + 24, rel=0.2)


@pytest.mark.parametrize("growth", [3.0, None])
def test_the_stream_growth_setting_reaches_the_calibration(growth) -> None:
    # apply_init(stream_growth=...) / LyapunovInit(stream_growth=...) do what calibrate_'s argument does
    torch.manual_seed(0)
    model = PreNorm(blocks=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = apply_init(model, example_input=X, calibrate="layers", stream_growth=growth,
                          generator=torch.Generator().manual_seed(0))
    assert plan.spec.stream_growth == growth
    expected = branch_scale(6, growth) if growth else None
    assert plan.calibration.branch_scale == (pytest.approx(expected) if growth else None)
    if growth:
        assert plan.calibration.branch_ratios == pytest.approx([expected] * 6, rel=1e-4)


def test_the_plan_shows_the_branch_scale_and_bad_growth_is_refused() -> None:
    _, plan, _, _ = calibrated(0, 6)
    assert (f"residual blocks: 6 (branches ending in blocks.0.fc2 .. blocks.5.fc2), each branch calibrated to branch "
            f"scale {branch_scale(6):.4g}") in str(plan)
    with pytest.raises(ValueError, match="stream_growth"):
        calibrated(0, 2, stream_growth=0.5)


def test_a_branch_ending_in_batchnorm_is_scaled_by_its_weight() -> None:
    model = SmallResNet(3, 10, width=4, blocks_per_stage=(3,), batch_norm=True)
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = apply_init(model, example_input=x, calibrate="layers", generator=torch.Generator().manual_seed(0))
    result = plan.calibration
    assert result.branches == ["blocks.0.bn2", "blocks.1.bn2", "blocks.2.bn2"]
    assert result.branch_ratios == pytest.approx([branch_scale(3)] * 3, rel=1e-4)
    weight = model.blocks[0].bn2.weight.detach()
    assert torch.allclose(weight, weight[0].expand_as(weight)) and float(weight[0]) < 1.0
    assert not any("branch scale" in str(w.message) for w in caught)
    assert model.blocks[0].bn1.weight.eq(1).all()  # only the branch ends' normalizations


def test_an_error_puts_the_scaled_normalizations_back() -> None:
    model = SmallResNet(3, 10, width=4, blocks_per_stage=(2,), batch_norm=True)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = apply_init(model, example_input=x, generator=torch.Generator().manual_seed(0))
    calls = {"n": 0}

    def failing(module, batch):  # fails on the last pass, after the normalizations were scaled
        calls["n"] += 1
        if calls["n"] > 12:
            raise RuntimeError("boom")
        return module(batch)

    with pytest.raises(RuntimeError, match="boom"):
        calibrate_(model, plan, x, "layers", forward=failing)
    assert model.blocks[0].bn2.weight.eq(1).all() and model.blocks[1].bn2.weight.eq(1).all()


def test_the_output_calibration_and_plain_chains_have_no_branch_scale() -> None:
    model = PreNorm(blocks=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = apply_init(model, example_input=X, calibrate="output", generator=torch.Generator().manual_seed(0))
        assert plan.calibration.branch_scale is None and "residual blocks" not in str(plan)
        chain = nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        plan = apply_init(chain, example_input=X, calibrate="layers", generator=torch.Generator().manual_seed(0))
    assert plan.calibration.branch_scale is None and plan.calibration.branches == []
