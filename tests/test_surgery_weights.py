"""Tests of the weights side of lightning_lyapunov.surgery: transposed and delta convs against Monte
Carlo, shared (tied) weights, weight_norm / spectral_norm, and all-or-nothing writes."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lightning_lyapunov import apply_init, plan_init


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

    measured, exponent = conv_gain(make, draws=6, size=8, scheme=scheme, distribution=distribution)
    assert measured == pytest.approx(exponent, abs=0.1), (measured, exponent)


# --------------------------------------------------------------------------- shared (tied) weights


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def changed(model: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in model.state_dict(keep_vars=True).items() if not torch.equal(v.detach(), before[k])]


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


def inference_second() -> nn.Sequential:
    model = chain()
    with torch.inference_mode():
        model[2] = nn.Linear(4, 4)  # an inference tensor: writing it outside inference mode raises
    return model


def expanded_second() -> nn.Sequential:
    model = chain()
    model[2].weight = nn.Parameter(torch.randn(1, 4).expand(4, 4))  # 4 rows on one memory location
    return model


@pytest.mark.parametrize(
    "make, match", [(inference_second, "inference tensor"), (expanded_second, "single memory location")]
)
def test_a_failed_write_restores_every_weight_and_the_generator(make, match: str) -> None:
    model, generator = make(), gen(5)
    before, state = snapshot(model), generator.get_state()
    with pytest.raises(RuntimeError, match=match):
        quiet(apply_init, model, generator=generator)
    assert changed(model, before) == []
    assert torch.equal(generator.get_state(), state)  # a failed apply_init does not advance it


def test_a_failed_write_with_the_default_generator_restores_its_state() -> None:
    model = expanded_second()
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError):
        quiet(apply_init, model)
    assert torch.equal(torch.get_rng_state(), state)


def test_an_interrupt_between_writes_restores_every_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    model = chain()
    before, target, real_zero = snapshot(model), model[2].bias, torch.Tensor.zero_

    def interrupted(tensor: torch.Tensor) -> torch.Tensor:
        if tensor is target:  # layer 0 written, layer 2's weight written, its bias not yet
            raise KeyboardInterrupt
        return real_zero(tensor)

    monkeypatch.setattr(torch.Tensor, "zero_", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quiet(apply_init, model, generator=gen(0))
    monkeypatch.undo()
    assert changed(model, before) == []


@pytest.mark.parametrize("layerwise", [False, True])
def test_sampling_with_a_bad_probe_or_a_raising_forward_changes_nothing(layerwise: bool) -> None:
    from lightning_lyapunov import sample_lyapunov_

    def boom(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        out = model(batch)
        raise ZeroDivisionError("forward failed")

    for probe, forward, error in [(torch.randn(8, 5), None, RuntimeError), (torch.randn(8, 4), boom, ZeroDivisionError)]:
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
    assert plan.spec.conv_draw == "delta" and plan.layers[0].taps == ((1, 1),) and "stiefel delta" in str(plan)
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
    with pytest.raises(ValueError, match=r"conv=1 is invalid \(unknown conv\)"):
        LyapunovInit(conv=1)
    linear = quiet(plan_init, nn.Sequential(nn.Linear(3, 3), nn.ReLU()), conv="delta")
    assert linear.layers[0].taps is None and (linear.layers[0].d_in, linear.layers[0].d_out) == (3, 3)


def test_plan_write_refuses_wrong_shapes_and_counts_before_writing() -> None:
    model = chain()
    plan = quiet(plan_init, model)
    before, weights = snapshot(model), plan.draw(gen(0))
    with pytest.raises(ValueError, match="3 planned layers"):
        plan.write(weights[:2])
    with pytest.raises(ValueError, match=r"shape \(4, 1\) for layer '2'"):
        plan.write([weights[0], torch.zeros(4, 1), weights[2]])  # would broadcast silently
    assert changed(model, before) == []
    plan.write(weights)
    assert all(torch.equal(layer.module.weight, w) for layer, w in zip(plan.layers, weights))


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
