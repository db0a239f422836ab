"""Slopes observed in one real forward pass (lightning_lyapunov.observe), checked by Monte Carlo.

For each model the per-layer log-gain at init is measured per location (a Linear's token, a conv's
patch): ``log r(phi(W p)) - log r(p)`` with ``r(v) = ||v|| / sqrt(dim v)`` and ``phi`` the model's
TRUE activation (written down per test), over Gaussian Lyapunov draws from several seeds. It must
match the plan's exponent (0): a plan with a wrong slope has a wrong scale and is off by ~0.3-0.7.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import HelperNet, gen, quiet
from lightning_lyapunov.observe import find_slopes
from lightning_lyapunov import apply_init, plan_init

SEEDS = (0, 1, 2, 3)
TOLERANCE = 0.1  # measured s.e. <= 0.02 below; a wrong slope (0 or 0.1 <-> 1) moves the gain by >= 0.3


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs per output location: rows of a Linear, patches of a conv, pixels of a k = s
    transposed conv (each output location of tap (u, v) sees one input pixel)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if isinstance(module, nn.ConvTranspose2d):
        k = module.kernel_size[0]
        assert module.stride == (k, k) and module.padding == (0, 0) and module.groups == 1
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    assert isinstance(module, nn.Conv2d) and module.groups == 1
    p = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return p.transpose(1, 2).reshape(-1, p.shape[1])


def _matrices(module: nn.Module, scale: float, draws: int, generator: torch.Generator) -> torch.Tensor:
    """``draws`` Gaussian weights at the plan's scale as (draws, d_out, d_in) per-location maps
    (a transposed conv: one tap's (C_out, C_in) map; every tap is distributed alike)."""
    if isinstance(module, nn.ConvTranspose2d):
        d_out, d_in = module.out_channels, module.in_channels
    else:
        d_out, d_in = module.weight.shape[0], module.weight[0].numel()
    return scale * torch.randn(draws, d_out, d_in, generator=generator)


def measured_gains(build, example, truth: dict[str, float], draws: int = 128, **plan_kwargs):
    """Per planned layer: (mean, s.e.) of the per-location log-gain ``log r(phi(W p)) - log r(p)``.

    The inputs ``p`` are what each layer receives in the network at init (Gaussian Lyapunov draws,
    network seeds ``SEEDS``); for each, ``draws`` fresh weights at the plan's scale give
    independent samples (averaged over up to 256 locations), so the s.e. is over
    ``len(SEEDS) * draws`` draws. ``phi`` is Leaky ReLU with the TRUE slope ``truth[name]``.
    """
    samples: dict[str, list[torch.Tensor]] = {name: [] for name in truth}
    for seed in SEEDS:
        torch.manual_seed(100 + seed)
        model = build()
        plan = quiet(apply_init, model, scheme="lyapunov", distribution="gaussian", generator=gen(seed),
                     **plan_kwargs)
        assert set(plan.layer_names) == set(truth)
        captured, handles = {}, []
        for name, module in model.named_modules():
            if name in truth:
                def keep_first(m, args, name=name) -> None:
                    captured.setdefault(name, args[0].detach().float())

                handles.append(module.register_forward_pre_hook(keep_first))
        with torch.no_grad():
            model(*example) if isinstance(example, tuple) else model(example)
        for handle in handles:
            handle.remove()
        modules = dict(model.named_modules())
        for layer in plan.layers:
            p = _patches(modules[layer.name], captured[layer.name])
            p = p[p.norm(dim=1) > 0][:256]
            w = _matrices(modules[layer.name], layer.init.scale, draws, gen(1000 + seed))
            q = F.leaky_relu(torch.einsum("koi,mi->kmo", w, p), truth[layer.name])
            gain = (q.norm(dim=2).log() - 0.5 * math.log(q.shape[2])) - (p.norm(dim=1).log() - 0.5 * math.log(p.shape[1]))
            gain = torch.where(torch.isfinite(gain), gain, torch.nan)  # ReLU: conditional on Q > 0
            samples[layer.name].append(gain.nanmean(dim=1))
    stats = {}
    for name, values in samples.items():
        t = torch.cat(values)
        stats[name] = (t.mean().item(), (t.std() / math.sqrt(t.numel())).item())
    return stats, plan


def check_against_plan(stats, plan, label: str) -> None:
    exponents = {layer.name: layer.init.exponent for layer in plan.layers}
    rows = [f"{label} {name}: measured {m:+.3f} +- {se:.3f}, predicted {exponents[name]:+.3f}"
            for name, (m, se) in stats.items()]
    print("\n".join(rows))
    for name, (mean, se) in stats.items():
        assert se < 0.03, rows
        assert abs(mean - exponents[name]) < TOLERANCE, rows


# --------------------------------------------------------------------------- models


class ControlFlow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x):
        h = F.leaky_relu(self.a(x), 0.2)
        if h.sum() > 0:  # data-dependent: torch.fx cannot trace this
            h = torch.relu(self.b(h))
        else:
            h = torch.relu(self.b(-h))
        return self.c(h)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class UNet(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU())
        self.mid = ResidualBlock(2 * c)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec = nn.Conv2d(2 * c, c, 3, padding=1)
        self.out = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        skip = self.enc1(x)
        h = self.mid(self.enc2(F.max_pool2d(skip, 2)))
        h = torch.cat([self.up(h), skip], dim=1)
        return self.out(F.leaky_relu(self.dec(h), 0.1))


UNET_TRUTH = {"enc1.0": 0.0, "enc1.2": 0.0, "enc2.0": 0.0, "mid.conv1": 0.0, "mid.conv2": 0.0, "up": 1.0,
              "dec": 0.1, "out": 1.0}


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (2-2-2-2 BasicBlocks, 7x7 stem, max pool), narrow."""

    def __init__(self, widths=(8, 16, 16, 32), classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, c_in = [], widths[0]
        for i, c in enumerate(widths):
            blocks.append(nn.Sequential(BasicBlock(c_in, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)))
            c_in = c
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_truth(model: nn.Module) -> dict[str, float]:
    return {name: 1.0 if name == "fc" else 0.0 for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


# --------------------------------------------------------------------------- tests


def test_functional_leaky_relu_is_observed_and_measures_zero_gain() -> None:
    x = torch.randn(256, 4, generator=gen(7))
    truth = {f"layers.{i}": 0.1 for i in range(4)} | {"head": 1.0}
    plan = quiet(plan_init, HelperNet(), example_input=x)
    assert [(l.negative_slope, l.slope_found_by, l.calls) for l in plan.layers][:4] == [(0.1, "observed", 1)] * 4
    assert plan.layers[0].init.scale == pytest.approx(1.862, abs=1e-3)  # orthogonal, width 4, a = 0.1
    stats, plan = measured_gains(HelperNet, x, truth, draws=512, example_input=x)
    check_against_plan(stats, plan, "helper net")
    # the test can fail: the same measurement with slopes from fx (not given a chance: slope 1 everywhere)
    wrong, _ = measured_gains(HelperNet, x, truth, negative_slope=1.0)
    print("helper net, slope 1 everywhere:", {name: f"{m:+.3f} +- {se:.3f}" for name, (m, se) in wrong.items()})
    assert all(wrong[f"layers.{i}"][0] < -0.3 for i in range(4)), wrong


def test_data_dependent_control_flow_is_observed() -> None:
    x = torch.randn(256, 8, generator=gen(8))
    with pytest.warns(UserWarning, match="registration order"):
        fx_plan = plan_init(ControlFlow())
    assert {l.slope_found_by for l in fx_plan.layers} == {"module order"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # observed: no warning at all
        plan = plan_init(ControlFlow(), example_input=x)
    assert [(l.name, l.negative_slope, l.slope_found_by) for l in plan.layers] == [
        ("a", 0.2, "observed"), ("b", 0.0, "observed"), ("c", 1.0, "observed")]
    stats, plan = measured_gains(ControlFlow, x, {"a": 0.2, "b": 0.0, "c": 1.0}, example_input=x)
    check_against_plan(stats, plan, "control flow")


def test_demo_transformer_ffn_gets_relu() -> None:
    from lightning.pytorch.demos import Transformer

    def build():
        return Transformer(vocab_size=32, ninp=16, nhead=2, nhid=32, nlayers=1, dropout=0.0)

    tokens = torch.randint(0, 32, (4, 12), generator=gen(9))
    plan = quiet(plan_init, build(), example_input=(tokens, tokens))
    slopes = {l.name: (l.negative_slope, l.slope_found_by) for l in plan.layers}
    assert slopes["transformer.encoder.layers.0.linear1"] == (0.0, "observed")
    assert slopes["transformer.decoder.layers.0.linear1"] == (0.0, "observed")
    assert slopes["transformer.encoder.layers.0.linear2"] == (1.0, "observed")
    assert slopes["decoder"] == (1.0, "observed")
    truth = {name: 0.0 if name.endswith("linear1") else 1.0 for name in slopes}
    stats, plan = measured_gains(build, (tokens, tokens), truth, example_input=(tokens, tokens))
    check_against_plan(stats, plan, "transformer")


def test_unet_with_transposed_conv_concat_and_residual_block() -> None:
    x = torch.randn(4, 3, 16, 16, generator=gen(10))
    plan = quiet(plan_init, UNet(), example_input=x)
    assert {l.name: l.negative_slope for l in plan.layers} == UNET_TRUTH
    assert {l.slope_found_by for l in plan.layers} == {"observed"}
    stats, plan = measured_gains(UNet, x, UNET_TRUTH, example_input=x)
    check_against_plan(stats, plan, "U-Net")


def test_resnet18_shaped_net() -> None:
    x = torch.randn(2, 3, 32, 32, generator=gen(11))
    model = ResNet18()
    truth = resnet_truth(model)
    plan = quiet(plan_init, model, example_input=x)
    assert {l.name: l.negative_slope for l in plan.layers} == truth and len(truth) == 21
    stats, plan = measured_gains(lambda: ResNet18().eval(), x, truth, example_input=x)
    check_against_plan(stats, plan, "ResNet-18")


def test_planning_restores_buffers_rng_and_training_flags() -> None:
    model = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.utils.spectral_norm(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 2),
    )
    model[6].eval()  # mixed flags must come back as they were
    x = torch.randn(32, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    plan = quiet(plan_init, model, example_input=x)
    assert torch.equal(torch.rand(5), expected)  # dropout's draws did not advance the generator
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert [(l.name, l.negative_slope) for l in plan.layers] == [("0", 0.0), ("6", 1.0)]


def test_module_order_guess_warns_once_naming_layers_and_fix() -> None:
    model = ControlFlow()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plan = plan_init(model)
    guessed = [str(w.message) for w in record if "registration order" in str(w.message)]
    assert len(guessed) == 1, guessed
    assert "3 layers ('a', 'b', 'c')" in guessed[0] and "could not trace" in guessed[0]
    assert "example_input=" in guessed[0]
    assert {l.slope_found_by for l in plan.layers} == {"module order"}

    class Skips(nn.Module):  # a layer the observed pass never calls
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    with pytest.warns(UserWarning, match=r"1 layer \('unused'\) guessed from module registration order"):
        plan = plan_init(Skips(), example_input=torch.randn(3, 4))
    assert [(l.name, l.slope_found_by, l.calls) for l in plan.layers] == [("used", "observed", 1),
                                                                      ("unused", "module order", None)]


def test_layer_called_with_different_activations_warns_with_the_fix() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(4, 4)
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            x = F.leaky_relu(self.block(x), 0.1)
            x = torch.relu(self.block(x))
            return self.head(x)

    with pytest.warns(UserWarning, match=r"'block' is called with several activations .* "
                                         r"negative_slope=\{'\^block\$': <slope>\}"):
        plan = plan_init(Shared(), example_input=torch.randn(3, 4))
    block = plan.layers[0]
    assert (block.name, block.calls, block.negative_slope) == ("block", 2, 0.1)
    assert "calls" in str(plan) and "observed" in str(plan)


def test_example_input_forms_and_failed_observation_falls_back() -> None:
    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, image, scale=1.0):
            return self.b(F.leaky_relu(self.a(image), 0.3)) * scale

    batch = {"image": torch.randn(5, 4), "scale": 2.0}
    plan = plan_init(Keywords(), example_input=batch)
    assert [(l.negative_slope, l.slope_found_by) for l in plan.layers] == [(0.3, "observed"), (1.0, "observed")]
    plan = plan_init(Keywords(), example_input=batch, forward=lambda m, b: m(b["image"]))
    assert plan.layers[0].negative_slope == 0.3
    slopes, order, _ = find_slopes(Keywords(), ["a", "b"], (torch.randn(5, 4), 3.0))
    assert (order, slopes["a"].slope) == (["a", "b"], 0.3)
    with pytest.warns(UserWarning, match="could not observe a forward pass: Keywords\\(example_input\\) raised "
                                         "TypeError"):
        plan = plan_init(Keywords(), example_input={"picture": torch.randn(5, 4)})
    assert {l.slope_found_by for l in plan.layers} == {"fx"}
    # a batch no weight layer can take is a wrong argument: a clear error, not a fallback
    with pytest.raises(ValueError, match=r"example_input gives layer 'a' \(Linear\) inputs of shape \(5, 7\); it "
                                         r"takes \(\.\.\., 4\)"):
        plan_init(Keywords(), example_input=torch.randn(5, 7))




def test_slopes_observed_in_a_pass_that_cannot_be_rerun_plan_that_model_only() -> None:
    from lightning_lyapunov.observe import observing, slopes_seen

    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 1))
    names = ["0", "1", "2"]
    with torch.no_grad(), observing(model, names) as observer:  # the model's layers driven by other code
        h = F.leaky_relu(model[0](torch.randn(8, 3, generator=gen(0))), 0.3)
        observer.output(model[2](F.gelu(model[1](h))))
    slopes, order = observer.slopes(names)
    assert [slopes[n].slope for n in names] == [0.3, 0.0, 1.0] and "GELU" in slopes["1"].source
    with slopes_seen(model, {"0": slopes["0"]}, ["0"], "the test's pass"):
        seen, _, warnings_ = find_slopes(model, names)
        other, _, _ = find_slopes(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)), ["0", "2"])
    assert seen["0"].slope == 0.3 and seen["0"].found_by == "observed"
    assert seen["1"].found_by == "module order" and "never called in the test's pass" in warnings_[0]
    assert other["0"].slope == 0.0 and other["0"].found_by == "fx"  # another model: traced as before
    assert find_slopes(model, names)[0]["0"].found_by == "fx"  # outside: as before
