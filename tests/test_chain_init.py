"""Tests of lightning_lyapunov.chain_init: a plan's scales and predictions by the exact scale chain."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_lyapunov import apply_init, chain_theory, init, plan_init
from lightning_lyapunov.chain_init import chain_inits, exact_label, uses_chain

GELU = chain_theory.activation("gelu")


def test_lyapunov_inits_are_predict_chains_scales_mean_and_variance():
    layers = [(12, 12, GELU, 0.0)] * 6 + [(12, 3, None, 1.0)]
    result = chain_inits(layers, "lyapunov", "gaussian", operating_scale=0.5)
    expected = chain_theory.predict_chain([(a, b, act) for a, b, act, _ in layers], "gaussian", 0.5, input_scale=0.5)
    np.testing.assert_allclose([i.scale for i in result.inits], expected.weight_scales, rtol=1e-12)
    # the running sums are the chain's mean (from the input's log-norm, log 0.5) and variance at every depth
    np.testing.assert_allclose(math.log(0.5) + np.cumsum([i.exponent for i in result.inits]), expected.mean_log_norm,
                               atol=1e-12)
    np.testing.assert_allclose(np.sqrt(np.cumsum([i.variance for i in result.inits])), expected.std_log_norm, rtol=1e-9)
    assert result.stability == [chain_theory.stability(GELU, 12, 12, "gaussian", 0.5).kind] * 6 + [None]
    assert {i.distribution for i in result.inits} == {"gaussian"} and result.inits[0].scheme == "lyapunov"


def test_other_schemes_keep_their_scales_and_get_the_chains_prediction():
    layers = [(8, 8, chain_theory.activation("tanh"), 1.0)] * 4 + [(8, 1, None, 1.0)]
    result = chain_inits(layers, "he")
    he = [init.resolve_init("he", a, b, slope).scale for a, b, _, slope in layers]
    np.testing.assert_allclose([i.scale for i in result.inits], he)
    given = chain_theory.predict_chain([(a, b, act) for a, b, act, _ in layers], "gaussian", weight_scales=he)
    np.testing.assert_allclose(np.cumsum([i.exponent for i in result.inits]), given.mean_log_norm, atol=1e-12)
    # He for slope 1 (tanh as linear) is sigma = 1/sqrt(d_in): tanh compresses, the chain says by how much
    assert result.prediction.mean_log_norm[-2] < -0.5
    with pytest.raises(ValueError, match="scheme='stiefel' is invalid"):
        chain_inits(layers, "stiefel")


def test_which_plans_need_the_chain_and_how_the_table_says_it():
    assert not uses_chain([None, chain_theory.activation("leaky_relu", negative_slope=0.1)])
    assert uses_chain([None, GELU])
    assert exact_label(GELU, 1.0, "unstable") == "gelu exact at s=1 (unstable)"
    assert exact_label(chain_theory.activation("gelu", approximate="tanh"), 0.25, None) == "gelu(tanh) exact at s=0.25"


def _chain(module, width=16, depth=30):
    layers = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), module()]
    return nn.Sequential(*layers, nn.Linear(width, width))


def _log_norms(model, plan, seeds, seed=0):
    """Per-unit log-norm of every Linear output (depth, seeds), one fixed-norm input per drawn network:
    ``scripts/chain_goal.py``'s measurement, the one the goal in docs/theory.md section 8 was measured with."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "chain_goal.py"
    spec = importlib.util.spec_from_file_location("chain_goal", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.measure(model, plan, seeds, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("module", [nn.GELU, nn.SiLU])
def test_the_lyapunov_draw_keeps_the_expected_log_norm_flat_monte_carlo(module):
    model = _chain(module).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # width 16: no warning, no policy
        plan = apply_init(model, scheme="lyapunov", distribution="orthogonal", generator=torch.Generator().manual_seed(0))
    assert all("exact at s=1 (unstable)" in layer.theory for layer in plan.layers[:-1])
    seeds = 300
    measured = _log_norms(model, plan, seeds)
    mean, std = measured.mean(1), measured.std(1)
    slope = np.polyfit(np.arange(mean.size), mean, 1)[0]
    assert abs(slope) < 0.03, slope  # the policy ("treated as ReLU") drifts by -0.27 (GELU) / -0.32 (SiLU) per layer
    predicted_mean = np.cumsum([layer.init.exponent for layer in plan.layers])
    predicted_std = np.sqrt(np.cumsum([layer.init.variance for layer in plan.layers]))
    z = (mean - predicted_mean) / np.maximum(std / math.sqrt(seeds), 1e-12)
    assert np.abs(z).max() < 4.0, z
    np.testing.assert_allclose(std[1:], predicted_std[1:], rtol=0.2)  # the band: sd of an sd ~ 1/sqrt(2n) 4%, kurtosis
    # the old policy, as an override, drifts: the tolerance above catches it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = apply_init(model, scheme="lyapunov", negative_slope=0.0, generator=torch.Generator().manual_seed(0))
    policy_mean = _log_norms(model, policy, 40).mean(1)
    assert np.polyfit(np.arange(policy_mean.size), policy_mean, 1)[0] < -0.15


class LightningStyle(nn.Module):
    """What a Lightning user writes: nn.GELU modules and a functional F.gelu / F.silu in forward."""

    def __init__(self, width=16, depth=6):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.act = nn.GELU()
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            x = self.act(block(x)) if i % 3 == 0 else F.gelu(block(x), approximate="tanh") if i % 3 == 1 else F.silu(block(x))
        return self.head(x)


@pytest.mark.parametrize("example", [False, True])
def test_functional_and_module_activations_are_exact_observed_or_traced(example):
    model = LightningStyle()
    x = torch.randn(32, 16) * 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_init(model, example_input=x if example else None)
    scale = float(x.pow(2).mean().sqrt()) if example else 1.0
    assert plan.operating_scale == pytest.approx(scale)
    labels = [layer.theory.split(" exact")[0] for layer in plan.layers]
    assert labels == ["gelu", "gelu(tanh)", "silu"] * 2 + ["closed form"]
    assert f"exact at s={scale:.3g}" in plan.describe()
    # the plan keeps the chain's whole prediction: flat at the input's log-norm, every network alive at width 16
    np.testing.assert_allclose(plan.chain.mean_log_norm, math.log(scale), atol=1e-9)
    assert plan.chain.alive[-1] > 0.99 and plan.chain.operating_scale[0] == pytest.approx(scale)


def test_a_users_own_activation_module_is_exact_once_registered_and_bad_functions_say_why():
    from lightning_lyapunov import register_activation
    from lightning_lyapunov.activations import _REGISTERED

    class Swish(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    model = nn.Sequential(nn.Linear(8, 8), Swish(), nn.Linear(8, 8), Swish(), nn.Linear(8, 1))
    try:
        act = register_activation(Swish, lambda x: x / (1.0 + np.exp(-x)))
        for example in (None, torch.randn(16, 8)):
            plan = plan_init(model, example_input=example)
            assert [layer.activation for layer in plan.layers] == [act, act, None]
            assert plan.layers[0].theory.startswith("Swish exact at s=")
        # the same numbers as the built-in SiLU: the theory sees the function, not its name
        silu = plan_init(nn.Sequential(nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 1)))
        np.testing.assert_allclose([l.init.scale for l in plan_init(model).layers], [l.init.scale for l in silu.layers],
                                   rtol=1e-6)
        with pytest.raises(ValueError, match="must map a float64 array"):
            register_activation(Swish, lambda x: x.sum())
        with pytest.raises(TypeError, match="nn.Module subclass"):
            register_activation(Swish(), "silu")
    finally:
        _REGISTERED.pop(Swish, None)


@pytest.mark.parametrize("module, label", [
    (nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu(tanh)"), (nn.SiLU(), "silu"), (nn.Mish(), "mish"),
    (nn.ELU(), "elu"), (nn.CELU(0.5), "celu(0.5)"), (nn.SELU(), "selu"), (nn.Softplus(beta=2.0), "softplus(2)"),
    (nn.ReLU6(), "relu6"), (nn.Hardswish(), "hardswish"), (nn.Tanh(), "tanh"), (nn.Hardtanh(-2.0, 2.0), "hardtanh(-2,2)"),
    (nn.Softsign(), "softsign"), (nn.Sigmoid(), "sigmoid"), (nn.Hardsigmoid(), "hardsigmoid"),
])
def test_every_listed_activation_is_exact_in_the_plan(module, label):
    model = nn.Sequential(nn.Linear(8, 8), module, nn.Linear(8, 8), module, nn.Linear(8, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no policy warning
        plan = plan_init(model, distribution="gaussian")
    assert [layer.theory.split(" (")[0] for layer in plan.layers] == [f"{label} exact at s=1"] * 2 + ["closed form"]
    assert f"{label} exact at s=1" in str(plan)
    np.testing.assert_allclose(plan.chain.mean_log_norm, 0.0, atol=1e-9)


def test_the_plan_table_gives_no_slope_to_a_layer_planned_by_its_activation():
    model = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    plan = plan_init(model, example_input=torch.randn(64, 16))
    lines = plan.describe(warnings=False).splitlines()
    rows = [line.split() for line in lines[3:6]]
    slope = lines[1].split().index("slope")
    assert [row[slope] for row in rows] == ["-", "0.2", "1"]  # GELU: the scale chain, no slope
