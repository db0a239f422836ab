"""Tests of lightning_lyapunov.activations: the activation after each layer, by torch.fx or module order."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_lyapunov import plan_init
from lightning_lyapunov.activations import classify_call, module_slope


def test_module_and_function_policies_agree() -> None:
    # one activation kind, one slope, whichever way it was found (module or function, fx or observed)
    for module, function in ((nn.ReLU(), F.relu), (nn.GELU(), F.gelu), (nn.Tanh(), torch.tanh), (nn.SiLU(), F.silu)):
        by_module = module_slope(module, "x", "observed")
        verdict, by_function = classify_call(function, (), {}, "x", "observed")
        assert verdict == "act" and by_module.slope == by_function.slope, module
    assert module_slope(nn.LeakyReLU(-0.3), "x", "fx").slope == 0.3  # the theory sees a**2
    assert module_slope(nn.LeakyReLU(3.0), "x", "fx").slope == 1.0  # |a| > 1 clipped, with a warning
    assert "clipped" in module_slope(nn.LeakyReLU(3.0), "x", "fx").warning
    assert module_slope(nn.Linear(2, 2), "x", "fx") is None


def test_activation_detection_with_fx() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
            self.d, self.e, self.f = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.norm, self.prelu, self.gelu = nn.BatchNorm1d(4), nn.PReLU(init=0.3), nn.GELU()

        def forward(self, x):
            x = F.leaky_relu(F.dropout(self.a(x), 0.1), negative_slope=0.2)
            x = self.b(x).view(-1, 4).relu()
            x = self.prelu(self.norm(self.c(x)))
            x = torch.tanh(self.d(x))
            x = self.gelu(self.e(x))
            return self.f(x)

    model = Net()
    plan = plan_init(model, scheme="he")
    got = {l.name: (round(l.negative_slope, 6), l.slope_source) for l in plan.layers}
    assert got == {"a": (0.2, "fx"), "b": (0.0, "fx"), "c": (0.3, "fx"), "d": (1.0, "Tanh"),
                   "e": (0.0, "GELU"), "f": (1.0, "no activation")}
    # tanh and GELU are exact by the scale chain (no policy warning); He keeps its slope-based scale
    assert [l.theory for l in plan.layers] == ["closed form"] * 3 + [
        "tanh exact at s=1 (stable)", "gelu exact at s=1 (stable)", "closed form"]  # GELU: stable at width 4
    assert plan.layers[4].init.scale == pytest.approx((2 / 4) ** 0.5)
    assert ("norm", "BatchNorm1d: not a Linear/Conv weight layer, left alone") in plan.skipped

    with pytest.warns(UserWarning, match="per-channel PReLU"):
        plan = plan_init(nn.Sequential(nn.Linear(3, 4), nn.PReLU(4, init=0.2), nn.Linear(4, 1)))
    assert plan.layers[0].negative_slope == pytest.approx(0.2)


def test_layers_treated_by_policy_get_one_warning_naming_them_all() -> None:
    # 7 layers followed by GELU or SiLU where the scale chain cannot plan (transposed convs): one warning, not 7
    import warnings

    from lightning_lyapunov import LyapunovWarning
    from lightning_lyapunov.activations import policy_warning

    layers = [m for i in range(7) for m in (nn.ConvTranspose1d(8, 8, 3, padding=1), nn.GELU() if i % 2 else nn.SiLU())]
    model = nn.Sequential(*layers, nn.Conv1d(8, 1, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = plan_init(model, example_input=torch.randn(16, 8, 5))
    assert any("the scale chain cannot plan this model (transposed convolutions" in str(w.message) for w in caught)
    assert [layer.theory for layer in plan.layers] == ["policy"] * 7 + ["closed form"]
    policy = [str(w.message) for w in caught if "by policy" in str(w.message)]
    assert all(issubclass(w.category, LyapunovWarning) for w in caught)
    assert len(policy) == 1 and policy == [m for m in plan.warnings if "by policy" in m]
    message = policy[0]
    assert message.startswith("7 layers are followed by activations that are not Leaky ReLUs, treated by policy as "
                              "ReLU (slope 0): SiLU after '0', '4', '8', '12'; GELU after '2', '6', '10'. ")
    for kind, names in (("SiLU", ["0", "4", "8", "12"]), ("GELU", ["2", "6", "10"])):
        assert f"{kind} after " + ", ".join(repr(n) for n in names) in message
    assert "negative_slope={regex: slope}" in message
    # one layer: the layer's own override
    assert policy_warning([("fc", "GELU", 0.0)]) == ("layer 'fc' is followed by GELU, which is not a Leaky ReLU: "
                                                     "treated as ReLU (slope 0) by policy; pass "
                                                     "negative_slope={'fc': ...} to override")
    # a plain chain of them: exact, no policy warning
    dense = nn.Sequential(*[m for i in range(7) for m in (nn.Linear(8, 8), nn.GELU() if i % 2 else nn.SiLU())],
                          nn.Linear(8, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = plan_init(dense, example_input=torch.randn(16, 8))
    assert not [w for w in caught if "policy" in str(w.message)]
    assert all("exact at s=" in layer.theory for layer in plan.layers[:-1])


def test_a_layer_feeding_two_different_exact_activations_warns_and_uses_the_first() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 1)

        def forward(self, x):
            h = self.a(x)
            return self.b(F.gelu(h) + F.silu(h))

    with pytest.warns(UserWarning, match=r"layer 'a' feeds several different activations \[0 \(GELU\), 0 \(SiLU\)\]"):
        plan = plan_init(Two())
    assert plan.layers[0].activation.name == "gelu"
