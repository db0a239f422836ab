"""Tests of lightning_lyapunov.surgery: plans, fans, activation detection, all-or-nothing writes,
the statistics of initialized deep narrow networks against the theory, transposed and delta convs
against Monte Carlo, shared (tied) weights and biases, weight_norm / spectral_norm."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import changed, gen, quiet, snapshot
from lightning_lyapunov import apply_init, plan_init, surgery, theory

SLOPE = 0.1


def mlp(widths: list[int], slope: float = SLOPE) -> nn.Sequential:
    """Linear + LeakyReLU after every layer (the last one included: a plain chain, no head)."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(d_in, d_out), nn.LeakyReLU(slope)]
    return nn.Sequential(*layers)


def quiet_apply(model: nn.Module, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return apply_init(model, **kwargs)


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# --------------------------------------------------------------------------- statistics vs theory


def per_layer_gains(widths: list[int], scheme: str, distribution: str, seeds: int, batch: int = 32,
                    first_seed: int = 0):
    """Per network (seed) and layer: mean over a batch of log r(h_l) - log r(h_{l-1}).

    ``seeds`` independent networks are initialized by apply_init and run side by side with a
    batched matmul; r(x) = ||x|| / sqrt(d). Returns (gains [seeds, layers], plan).
    """
    model = mlp(widths)
    stacks: list[list[torch.Tensor]] = [[] for _ in range(len(widths) - 1)]
    for seed in range(first_seed, first_seed + seeds):
        plan = quiet_apply(model, scheme=scheme, distribution=distribution, generator=gen(seed))
        for i, layer in enumerate(plan.layers):
            stacks[i].append(layer.module.weight.detach().clone())
    torch.manual_seed(1234)
    h = torch.randn(seeds, batch, widths[0])
    log_r = h.norm(dim=-1).log() - 0.5 * math.log(widths[0])
    gains = []
    for i, stack in enumerate(stacks):
        h = F.leaky_relu(torch.bmm(h, torch.stack(stack).transpose(1, 2)), SLOPE)
        norm = h.norm(dim=-1, keepdim=True)
        gains.append((norm.squeeze(-1).log() - 0.5 * math.log(widths[i + 1]) - log_r).mean(dim=1))
        h = h / norm  # positive homogeneity: renormalizing changes no later gain, avoids underflow
        log_r = torch.full_like(log_r, -0.5 * math.log(widths[i + 1]))
    return torch.stack(gains, dim=1).double(), plan


def check_gains(gains: torch.Tensor, predicted: torch.Tensor, max_se: float) -> tuple[float, float]:
    """Mean over layers per network, then mean and standard error over networks, vs the theory."""
    error = (gains - predicted).mean(dim=1)
    mean, se = error.mean().item(), error.std().item() / math.sqrt(len(error))
    print(f"measured - predicted = {mean:+.4f} +- {se:.4f} (predicted mean {predicted.mean().item():+.4f})")
    assert se < max_se, f"standard error {se:.4f} too large to catch a wrong constant"
    assert abs(mean) < 3.5 * se + 1e-3, f"measured - predicted = {mean:.4f} +- {se:.4f}"
    return mean, se


@pytest.mark.parametrize("distribution", ["gaussian", "orthogonal"])
def test_deep_narrow_mlp_lyapunov_has_zero_drift(distribution: str) -> None:
    gains, plan = per_layer_gains([4] * 121, "lyapunov", distribution, seeds=32)
    assert all(abs(layer.init.exponent) < 1e-9 and layer.negative_slope == SLOPE for layer in plan.layers)
    assert {layer.init.distribution for layer in plan.layers} == {distribution}
    check_gains(gains, torch.zeros(len(plan.layers), dtype=torch.float64), max_se=0.02)


def test_deep_narrow_mlp_he_drift_matches_negative_exponent() -> None:
    gains, plan = per_layer_gains([4] * 121, "he", "gaussian", seeds=32, first_seed=100)
    he = theory.lyapunov_exponent(4, 4, SLOPE, theory.he_scale(4, SLOPE), "gaussian")
    assert he < -0.3  # clearly negative at width 4: a zero-drift answer would fail below
    assert plan.layers[0].init.exponent == pytest.approx(he)
    check_gains(gains, torch.full((len(plan.layers),), he, dtype=torch.float64), max_se=0.02)
    assert gains.mean().item() == pytest.approx(he, abs=0.06)


def test_orthogonal_baseline_drift_matches_theory() -> None:
    gains, plan = per_layer_gains([4] * 121, "orthogonal", "orthogonal", seeds=24)
    predicted = torch.tensor([layer.init.exponent for layer in plan.layers], dtype=torch.float64)
    assert predicted[0] < -0.15
    check_gains(gains, predicted, max_se=0.02)


def test_varying_width_mlp_each_layer_type_matches_theory() -> None:
    widths = [4] + [8, 3, 5] * 40
    for scheme in ("lyapunov", "he"):
        gains, plan = per_layer_gains(widths, scheme, "gaussian", seeds=24)
        predicted = torch.tensor([layer.init.exponent for layer in plan.layers], dtype=torch.float64)
        assert [(l.d_in, l.d_out) for l in plan.layers[:4]] == [(4, 8), (8, 3), (3, 5), (5, 8)]
        # each kind of layer separately: a fan mix-up between layers would not cancel out
        for kind in range(1, 4):
            check_gains(gains[:, kind::3], predicted[kind::3], max_se=0.03)


def conv_patch_gains(scheme: str, seeds: int, depth: int = 60, channels: int = 4, kernel: int = 3):
    """Per network: mean over batch, positions and layers of log r(y_p) - log r(patch_p).

    1-D convs with circular padding: the output at position p is phi(W patch_p) with W independent
    of the patch, so the per-unit theory with d_in = C_in * kernel, d_out = C_out holds exactly.
    The seeds run side by side as groups of one grouped convolution.
    """
    model = nn.Sequential(*[m for _ in range(depth) for m in (
        nn.Conv1d(channels, channels, kernel, padding=kernel // 2, padding_mode="circular"), nn.LeakyReLU(SLOPE))])
    weights: list[list[torch.Tensor]] = [[] for _ in range(depth)]
    for seed in range(seeds):
        plan = quiet_apply(model, scheme=scheme, distribution="gaussian", generator=gen(seed))
        for i, layer in enumerate(plan.layers):
            weights[i].append(layer.module.weight.detach().clone())
    torch.manual_seed(99)
    h = torch.randn(16, seeds * channels, 24)
    total = torch.zeros(seeds, dtype=torch.float64)
    for stack in weights:
        padded = F.pad(h, (kernel // 2, kernel // 2), mode="circular")
        patches = padded.unfold(-1, kernel, 1).reshape(16, seeds, channels, 24, kernel)
        log_r_in = patches.pow(2).sum(dim=(2, 4)).sqrt().log() - 0.5 * math.log(channels * kernel)
        h = F.leaky_relu(F.conv1d(padded, torch.cat(stack), groups=seeds), SLOPE)
        log_r_out = h.reshape(16, seeds, channels, 24).norm(dim=2).log() - 0.5 * math.log(channels)
        total += (log_r_out - log_r_in).mean(dim=(0, 2)).double()
        h = h / h.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()  # rescale per sample: no underflow
    return (total / depth)[:, None], plan


@pytest.mark.parametrize("scheme", ["lyapunov", "he"])
def test_conv_net_drift_uses_channels_times_kernel(scheme: str) -> None:
    gains, plan = conv_patch_gains(scheme, seeds=24)
    assert (plan.layers[0].d_in, plan.layers[0].d_out) == (12, 4)
    predicted = plan.layers[0].init.exponent
    if scheme == "he":
        assert predicted < -0.3
    check_gains(gains, torch.tensor([predicted], dtype=torch.float64), max_se=0.03)


def test_stiefel_structure_and_no_dead_units() -> None:
    rect = quiet_apply(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)), scheme="stiefel",
                       generator=gen(0))
    for layer in rect.layers:
        w = layer.module.weight.detach().double()
        m, n = w.shape
        gram = w @ w.T if m <= n else w.T @ w
        assert torch.allclose(gram, torch.eye(min(m, n), dtype=torch.float64), atol=1e-5)
        assert torch.allclose(w.sum(dim=1), torch.full((m,), math.sqrt(n / m), dtype=torch.float64), atol=1e-5)
        assert torch.allclose(w.sum(dim=0), torch.full((n,), math.sqrt(m / n), dtype=torch.float64), atol=1e-5)

    def dead_units(scheme: str) -> int:
        model = mlp([32] * 201, slope=0.0)
        quiet_apply(model, scheme=scheme, generator=gen(1))
        h, dead = torch.randn(64, 32, generator=gen(2)).abs(), 0
        with torch.no_grad():
            for module in model:
                h = module(h)
                dead += int((h == 0).all(dim=0).sum()) if isinstance(module, nn.LeakyReLU) else 0
        assert torch.isfinite(h).all()
        return dead

    assert dead_units("stiefel") == 0
    assert dead_units("he") > 100  # the same check fails for He: the test can fail


# --------------------------------------------------------------------------- plan contents


def test_plan_table_fans_and_no_weight_change() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(),
        nn.ConvTranspose2d(6, 4, kernel_size=4, stride=2, groups=2), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(4, 3),
    )
    before = snapshot(model)
    plan = plan_init(model, scheme="lyapunov")
    assert_unchanged(model, before)
    conv, deconv, head = plan.layers
    assert (conv.d_in, conv.d_out, conv.groups, conv.negative_slope) == (2 * 9, 3, 2, 0.0)
    # transposed: C_in/groups * prod(kernel) / prod(stride) = 3 * 16 / 4
    assert (deconv.d_in, deconv.d_out, deconv.groups, deconv.negative_slope) == (12, 2, 2, 0.2)
    assert (head.negative_slope, head.slope_source) == (1.0, "no activation")
    assert plan.layer_names == ["0", "2", "5"]
    assert plan.predicted_drift == pytest.approx(sum(l.init.exponent for l in plan.layers))
    assert plan.predicted_spread == pytest.approx(math.sqrt(sum(l.init.variance for l in plan.layers)))
    text = str(plan)
    assert text.splitlines()[0].startswith("InitPlan: scheme='lyapunov'")
    assert "ConvTranspose2d g=2" in text and "biases of planned layers set to 0" in text
    assert "predicted log-norm drift" in text.splitlines()[-1]
    assert plan.to_dict()["layers"][1]["d_in"] == 12


def test_grouped_and_transposed_weights_drawn_per_group() -> None:
    model = nn.Sequential(nn.Conv1d(4, 6, 3, groups=2, bias=True), nn.ReLU(),
                          nn.ConvTranspose1d(6, 4, 4, stride=2, groups=2))
    nn.init.constant_(model[0].bias, 1.0)
    plan = quiet_apply(model, scheme="orthogonal", generator=gen(0))
    assert torch.all(model[0].bias == 0) and torch.all(model[2].bias == 0)
    conv_w = model[0].weight.detach().reshape(2, 3, 6)  # group, C_out/g, C_in/g * k
    gain = plan.layers[0].init.scale
    for block in conv_w:
        assert torch.allclose(block @ block.T, gain**2 * torch.eye(3), atol=1e-5)
    assert not torch.allclose(conv_w[0], conv_w[1])
    deconv_w = model[2].weight.detach()  # (C_in, C_out/g, k) -> per group (C_out/g, C_in/g * k)
    gain = plan.layers[1].init.scale
    for g in range(2):
        block = deconv_w[3 * g:3 * (g + 1)].transpose(0, 1).reshape(2, 12)
        assert torch.allclose(block @ block.T, gain**2 * torch.eye(2), atol=1e-5)


def test_slope_overrides_include_exclude() -> None:
    model = mlp([4, 4, 4, 4])
    plan = plan_init(model, negative_slope=0.3)
    assert {(l.negative_slope, l.slope_source) for l in plan.layers} == {(0.3, "override")}
    plan = plan_init(model, negative_slope={r"^2$": 0.5, r"\d": 0.7})
    assert [l.negative_slope for l in plan.layers] == [0.7, 0.5, 0.7]
    plan = plan_init(model, include=[r"^[02]$"], exclude="^2$")
    assert plan.layer_names == ["0"]
    assert ("2", "excluded by exclude=") in plan.skipped and ("4", "not matched by include=") in plan.skipped


def test_residual_and_untraceable_models_get_a_plan_and_a_warning() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.branch, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
            self.act = nn.LeakyReLU(0.1)

        def forward(self, x):
            h = self.act(self.inp(x))
            h = self.act(h + self.branch(h))
            return self.out(h)

    with pytest.warns(UserWarning, match="residual additions after layers \\['branch'\\]"):
        plan = plan_init(Residual())
    assert [l.negative_slope for l in plan.layers] == [0.1, 0.1, 1.0]

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.act, self.b = nn.Linear(4, 4), nn.LeakyReLU(0.2), nn.Linear(4, 1)

        def forward(self, x):
            h = self.act(self.a(x))
            return self.b(h) if h.sum() > 0 else self.b(-h)

    with pytest.warns(UserWarning, match="torch.fx could not trace Untraceable"):
        plan = plan_init(Untraceable())
    assert [(l.negative_slope, l.slope_source) for l in plan.layers] == [
        (0.2, "module order"), (1.0, "module order (no activation)")]


def test_frozen_lazy_and_attention_are_left_alone() -> None:
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.LazyLinear(3))
    model[3].weight.requires_grad_(False)
    attention = nn.MultiheadAttention(4, 2)
    model.append(attention)
    keys = ("0.weight", "3.weight", "3.bias", "5.in_proj_weight", "5.out_proj.weight", "1.weight")
    before = {key: model.state_dict()[key].clone() for key in keys}
    with pytest.warns(UserWarning) as record:
        plan = apply_init(model, scheme="he", generator=gen(0))
    assert plan.layer_names == ["1"]
    skipped = dict(plan.skipped)
    assert "frozen" in skipped["3"] and "lazy" in skipped["4"] and "Embedding" in skipped["0"]
    assert "attention" in skipped["5"] and "5.out_proj" not in skipped
    assert any("frozen" in str(w.message) for w in record) and any("lazy" in str(w.message) for w in record)
    for key in keys[:-1]:
        assert torch.equal(model.state_dict()[key], before[key]), key
    assert not torch.equal(model[1].weight, before["1.weight"])

    meta = nn.Sequential(nn.Linear(4, 4, device="meta"), nn.ReLU(), nn.Linear(4, 1))
    with pytest.warns(UserWarning, match="meta parameter"):
        assert plan_init(meta).layer_names == ["2"]
    normed = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)), nn.ReLU(), nn.Linear(4, 1))
    with pytest.warns(UserWarning, match="parametrized weight"):
        assert plan_init(normed).layer_names == ["2"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "kaiming"}, "scheme"),
        ({"negative_slope": 1.5}, "negative_slope"),
        ({"negative_slope": {"0": -0.1}}, "negative_slope"),
        ({"scheme": "fractional", "moment": 3.0}, "moment"),
        ({"scheme": "fractional"}, "moment"),
        ({"distribution": "uniform"}, "distribution"),
        ({"exclude": ".*"}, "no eligible layer.*exclude"),
        ({"include": "["}, "include"),
    ],
)
def test_errors_leave_weights_untouched(kwargs: dict, match: str) -> None:
    model = mlp([4, 4, 2])
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        apply_init(model, **kwargs)
    assert_unchanged(model, before)


def test_no_eligible_layer_message_lists_modules() -> None:
    with pytest.raises(ValueError, match="modules seen: .*Embedding"):
        plan_init(nn.Sequential(nn.Embedding(3, 4), nn.ReLU()))


def test_failure_while_drawing_second_layer_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp([4, 4, 4])
    before = snapshot(model)
    real, calls = surgery._init.init_weight_, []

    def failing(tensor, layer_init, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in layer 2")
        return real(tensor, layer_init, **kwargs)

    monkeypatch.setattr(surgery._init, "init_weight_", failing)
    with pytest.raises(RuntimeError, match="boom"):
        apply_init(model, generator=gen(0))
    assert len(calls) == 2
    assert_unchanged(model, before)


def test_same_generator_gives_identical_weights() -> None:
    def weights(seed: int, scheme: str) -> list[torch.Tensor]:
        model = nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
        quiet_apply(model, scheme=scheme, generator=gen(seed))
        return [p.detach().clone() for p in model.parameters()]

    for scheme in ("lyapunov", "he", "stiefel"):
        first, again, other = weights(7, scheme), weights(7, scheme), weights(8, scheme)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert not all(torch.equal(a, b) for a, b in zip(first, other))
    torch.manual_seed(3)
    a = quiet_apply(mlp([4, 4]))
    a_w = a.layers[0].module.weight.clone()
    torch.manual_seed(3)
    b = quiet_apply(mlp([4, 4]))
    assert torch.equal(a_w, b.layers[0].module.weight)
    double, single = mlp([4, 4]).double(), mlp([4, 4])
    quiet_apply(double, generator=gen(7))
    quiet_apply(single, generator=gen(7))
    assert double[0].weight.dtype == torch.float64
    assert torch.equal(double[0].weight.float(), single[0].weight)  # drawn in float32 for every dtype


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

    measured, exponent = conv_gain(make, draws=6, size=8, scheme=scheme, distribution=distribution)
    assert measured == pytest.approx(exponent, abs=0.1), (measured, exponent)


# --------------------------------------------------------------------------- shared (tied) weights


class TiedLM(nn.Module):
    """Embedding tied to the output Linear (the usual language-model weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.emb(tokens))))


def test_weight_tied_to_an_embedding_is_left_alone_and_the_plan_says_why() -> None:
    model = TiedLM()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="'head' skipped: its weight is shared with 'emb' which is left alone"):
        plan = apply_init(model, generator=gen(0))
    assert plan.layer_names == ["body"]
    assert ("head", "shared with 'emb' which is left alone") in plan.skipped
    assert "shared with 'emb' which is left alone" in str(plan)
    assert changed(model, before) == ["body.weight", "body.bias"]  # emb.weight (= head.weight) untouched


def test_two_layers_sharing_a_weight_are_drawn_once() -> None:
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    model = nn.Sequential(first, nn.LeakyReLU(0.1), second, nn.LeakyReLU(0.1))
    plan = quiet(apply_init, model, distribution="gaussian", generator=gen(3))
    assert plan.layer_names == ["0"] and plan.layers[0].shared_with == ("2",)
    assert plan.to_dict()["layers"][0]["shared_with"] == ["2"]
    header, _, row = str(plan).splitlines()[1:4]
    assert "shared with" in header and row.rstrip().endswith(" 2")
    once = plan.layers[0].draw(gen(3))  # one draw from a fresh generator: what apply_init wrote
    assert torch.equal(model[0].weight, once) and model[2].weight is model[0].weight
    assert not model[0].bias.any() and not model[2].bias.any()  # both biases zeroed


def test_layers_sharing_a_weight_with_different_slopes_warn() -> None:
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    model = nn.Sequential(first, nn.LeakyReLU(0.1), second, nn.ReLU())
    with pytest.warns(UserWarning, match="'2' shares its weight with '0' but is followed by slope 0"):
        plan_init(model)


# --------------------------------------------------------------------------- weight_norm / spectral_norm


@pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated:FutureWarning")
def test_legacy_weight_norm_is_skipped_and_left_unchanged() -> None:
    model = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(4, 4)), nn.ReLU(), nn.Linear(4, 2))
    before = snapshot(model)
    with pytest.warns(UserWarning, match="'0' skipped: parametrized weight"):
        plan = apply_init(model, generator=gen(0))
    assert plan.layer_names == ["2"]
    assert changed(model, before) == ["2.weight", "2.bias"]  # weight_g, weight_v and the bias of '0' kept


@pytest.mark.parametrize("legacy", [False, True])
def test_planning_a_spectral_norm_model_in_train_mode_changes_nothing(legacy: bool) -> None:
    spectral = torch.nn.utils.spectral_norm if legacy else torch.nn.utils.parametrizations.spectral_norm
    model = nn.Sequential(spectral(nn.Linear(6, 6)), nn.ReLU(), nn.Linear(6, 2)).train()
    before = snapshot(model)
    plan = quiet(plan_init, model)
    assert changed(model, before) == []  # the power iteration's u/v buffers included, bitwise
    assert plan.layer_names == ["2"]
    assert any(name == "0" and "parametrized weight" in reason for name, reason in plan.skipped)


# --------------------------------------------------------------------------- all-or-nothing writes


def chain() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 2))


@pytest.mark.parametrize("layerwise", [False, True])
def test_sampling_with_a_bad_probe_or_a_raising_forward_changes_nothing(layerwise: bool) -> None:
    from lightning_lyapunov import sample_lyapunov_

    def boom(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        model(batch)
        raise ZeroDivisionError("forward failed")

    for probe, forward, error in [(torch.randn(8, 5), None, ValueError), (torch.randn(8, 4), boom, ZeroDivisionError)]:
        model, generator = chain(), gen(1)
        before, state = snapshot(model), generator.get_state()
        with pytest.raises(error):
            quiet(sample_lyapunov_, model, probe, forward=forward, candidates=2, layerwise=layerwise,
                  generator=generator)
        assert changed(model, before) == []
        assert torch.equal(generator.get_state(), state)


# --------------------------------------------------------------------------- delta convolutions


def centre(weight: torch.Tensor) -> torch.Tensor:
    return weight[(slice(None), slice(None), *(k // 2 for k in weight.shape[2:]))]


@pytest.mark.parametrize("c_in, c_out, groups", [(6, 6, 1), (4, 8, 1), (8, 4, 2)])
def test_stiefel_conv_is_a_delta_kernel_with_mean_calibrated_centre(c_in: int, c_out: int, groups: int) -> None:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups)
    plan = quiet(apply_init, nn.Sequential(conv, nn.ReLU()), scheme="stiefel", generator=gen(0))
    assert plan.spec.conv_draw == "delta" and plan.layers[0].taps == ((1, 1),) and "stiefel delta" in plan.describe(details=True) and "conv='delta'" in str(plan)
    assert (plan.layers[0].d_in, plan.layers[0].d_out) == (c_in // groups, c_out // groups)
    w = conv.weight.detach()
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[1, 1] = False
    assert not w[:, :, mask].any()  # every other tap exactly 0
    m, n = c_out // groups, c_in // groups
    for g in range(groups):
        block = centre(w)[g * m:(g + 1) * m]
        small = min(m, n)
        gram = block @ block.T if m <= n else block.T @ block
        assert torch.allclose(gram, torch.eye(small), atol=1e-5)
        assert torch.allclose(block.sum(1), torch.full((m,), math.sqrt(n / m)), atol=1e-5)
        assert torch.allclose(block.sum(0), torch.full((n,), math.sqrt(m / n)), atol=1e-5)
    if c_in == c_out and groups == 1:  # the mean is preserved exactly at every location, borders included
        x = torch.full((2, c_in, 5, 5), 0.7)
        with torch.no_grad():
            assert torch.allclose(conv(x), x, atol=1e-5)


def test_transposed_delta_feeds_every_output_location_from_one_matrix() -> None:
    conv = nn.ConvTranspose2d(5, 5, 4, stride=2, padding=1)
    plan = quiet(apply_init, nn.Sequential(conv, nn.ReLU()), scheme="stiefel", generator=gen(1))
    assert sorted(plan.layers[0].taps) == [(1, 1), (1, 2), (2, 1), (2, 2)]  # one tap per residue class
    x = torch.full((1, 5, 4, 4), 1.3)
    with torch.no_grad():
        y = conv(x)
    assert y.shape == (1, 5, 8, 8) and torch.allclose(y, torch.full_like(y, 1.3), atol=1e-5)


def test_orthogonal_delta_preserves_each_location_norm_times_the_gain() -> None:
    conv = nn.Conv2d(6, 6, 3, padding=1)
    plan = quiet(apply_init, nn.Sequential(conv, nn.LeakyReLU(0.1)), conv="delta", generator=gen(2))
    eta = plan.layers[0].init.scale
    x = torch.randn(3, 6, 5, 5, generator=gen(3))
    with torch.no_grad():
        y = conv(x)
    assert torch.allclose(y.norm(dim=1), eta * x.norm(dim=1), rtol=1e-4)


def test_twenty_layer_relu_cnn_with_stiefel_keeps_the_log_gain_near_zero() -> None:
    # the flattened (C_out, 9 C_in) construction measured +19.35 here (row sums 3: the mean tripled per layer)
    model = nn.Sequential(*[m for _ in range(20) for m in (nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())])
    gains = []
    for seed in range(3):
        quiet(apply_init, model, scheme="stiefel", generator=gen(seed))
        x = torch.randn(4, 8, 8, 8, generator=gen(10 + seed))
        with torch.no_grad():
            gains.append(float((log_r(model(x)) - log_r(x)).mean()))
    assert all(abs(g) < 1.0 for g in gains), gains


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("distribution", ["gaussian", "orthogonal"])
def test_delta_conv_measured_gain_matches_plan(transposed: bool, distribution: str) -> None:
    def make() -> nn.Sequential:
        layer = (nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1) if transposed
                 else nn.Conv2d(16, 16, 3, padding=1))
        return nn.Sequential(layer, nn.LeakyReLU(0.1))

    for scheme in ("lyapunov", "he" if distribution == "gaussian" else "orthogonal"):
        measured, exponent = conv_gain(make, draws=6, size=8, scheme=scheme, distribution=distribution,
                                       conv="delta")
        assert measured == pytest.approx(exponent, abs=0.1), (scheme, measured, exponent)


def test_conv_argument_is_validated() -> None:
    from lightning_lyapunov import LyapunovInit

    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"conv='centre' is invalid \(unknown conv\)"):
        plan_init(model, conv="centre")
    with pytest.raises(ValueError, match="conv='full' with scheme='stiefel'"):
        plan_init(model, scheme="stiefel", conv="full")
    with pytest.raises(TypeError, match=r"conv=1 is invalid \(unknown conv\)"):
        LyapunovInit(conv=1)
    linear = quiet(plan_init, nn.Sequential(nn.Linear(3, 3), nn.ReLU()), conv="delta")
    assert linear.layers[0].taps is None and (linear.layers[0].d_in, linear.layers[0].d_out) == (3, 3)


def test_a_bare_layer_is_not_mistaken_for_a_tied_one() -> None:
    layer = nn.Linear(4, 4)  # the model itself: its qualified name is ''
    assert quiet(plan_init, layer).layer_names == [""]
    tied = TiedLM()
    tied.emb, tied.head.weight = nn.Linear(10, 4), nn.Parameter(torch.randn(10, 4))  # untied: both planned
    assert sorted(quiet(plan_init, tied).layer_names) == ["body", "emb", "head"]


def test_a_bias_shared_with_a_left_alone_layer_is_left_alone() -> None:
    planned, excluded = nn.Linear(4, 4), nn.Linear(4, 4)
    excluded.bias = planned.bias  # the excluded layer holds the same bias Parameter
    nn.init.constant_(planned.bias, 0.5)
    model = nn.Sequential(planned, nn.LeakyReLU(0.1), excluded)
    with pytest.warns(UserWarning, match="'0': bias left alone, it is shared with '2'"):
        plan = apply_init(model, exclude="^2$", generator=gen(0))
    assert plan.layers[0].kept_biases == ("0",)
    assert torch.equal(planned.bias, torch.full((4,), 0.5))  # today's code zeroed it through the planned layer
    assert plan.to_dict()["layers"][0]["kept_biases"] == ["0"]
