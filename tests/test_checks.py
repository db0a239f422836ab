"""Bad arguments of every public function and class: a TypeError (wrong type) or ValueError (wrong
value) whose message names the argument and the value given, raised before anything changes."""

import copy
import math
import re

import pytest
import torch
from torch import nn

from lightning_lyapunov import LyapunovInit, SignalMonitor, apply_init, init, plan_init, sample_lyapunov_
from lightning_lyapunov import swap_activations, theory
from lightning_lyapunov._checks import ArgumentTypeError, check_bool, check_choice, check_float, check_int
from lightning_lyapunov.examples.data import PolynomialRegression
from lightning_lyapunov.examples.models import DeepMLP, PlainCNN, RegressionModule, SmallResNet

NAN, INF = math.nan, math.inf
T, V = TypeError, ValueError


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def w(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(shape or (4, 4), dtype=dtype)


CASES = [
    # ------------------------------------------------------------------ LyapunovInit
    ("cb-scheme", lambda: LyapunovInit(scheme="kaiming"), V, "scheme='kaiming' is invalid"),
    ("cb-scheme-type", lambda: LyapunovInit(scheme=5), T, "scheme=5 is invalid"),
    ("cb-distribution-case", lambda: LyapunovInit(distribution="Gaussian"), V, "did you mean 'gaussian'"),
    ("cb-moment-str", lambda: LyapunovInit(moment="abc"), T, "moment='abc' is invalid"),
    ("cb-moment-bool", lambda: LyapunovInit(moment=True), T, "moment=True is invalid"),
    ("cb-moment-nan", lambda: LyapunovInit(scheme="fractional", moment=NAN), V, "moment=nan is invalid"),
    ("cb-moment-range", lambda: LyapunovInit(scheme="fractional", moment=2.5), V, "moment=2.5 is invalid"),
    ("cb-moment-ignored", lambda: LyapunovInit(scheme="he", moment=1.0), V, "moment=1.0 is not used by scheme='he'"),
    ("cb-moment-lyapunov", lambda: LyapunovInit(moment=1.0), V, "moment-0 scheme, got moment=1.0"),
    ("cb-sampled", lambda: LyapunovInit(sampled="maybe"), V, "sampled='maybe' is invalid"),
    ("cb-sampled-case", lambda: LyapunovInit(sampled="Layerwise"), V, "did you mean 'layerwise'"),
    ("cb-sampled-int", lambda: LyapunovInit(sampled=1), T, "sampled=1 is invalid"),
    ("cb-slope-range", lambda: LyapunovInit(negative_slope=1.5), V, "negative_slope=1.5 is invalid"),
    ("cb-slope-tiny", lambda: LyapunovInit(negative_slope=1e-200), V, "negative_slope=1e-200 is invalid"),
    ("cb-slope-nan", lambda: LyapunovInit(negative_slope=NAN), V, "negative_slope=nan is invalid"),
    ("cb-slope-str", lambda: LyapunovInit(negative_slope="0.1"), T, "negative_slope='0.1' is invalid"),
    ("cb-slope-dict-value", lambda: LyapunovInit(negative_slope={"net": "x"}), T, "negative_slope['net']='x'"),
    ("cb-include-int", lambda: LyapunovInit(include=5), V, "include=5"),
    ("cb-include-regex", lambda: LyapunovInit(include="net.(("), V, "include='net.(('"),
    ("cb-diagnostics-str", lambda: LyapunovInit(diagnostics="no"), T, "diagnostics='no' is invalid"),
    ("cb-diagnostics-int", lambda: LyapunovInit(diagnostics=1), T, "diagnostics=1 is invalid"),
    ("cb-every-str", lambda: LyapunovInit(log_every_n_steps="5"), T, "log_every_n_steps='5' is invalid"),
    ("cb-every-nan", lambda: LyapunovInit(log_every_n_steps=NAN), T, "log_every_n_steps=nan is invalid"),
    ("cb-every-float", lambda: LyapunovInit(log_every_n_steps=1.5), T, "log_every_n_steps=1.5 is invalid"),
    ("cb-every-zero", lambda: LyapunovInit(log_every_n_steps=0), V, "log_every_n_steps=0 is invalid"),
    ("cb-every-bool", lambda: LyapunovInit(log_every_n_steps=True), T, "log_every_n_steps=True is invalid"),
    ("cb-seed-str", lambda: LyapunovInit(seed="abc"), T, "seed='abc' is invalid"),
    ("cb-seed-nan", lambda: LyapunovInit(seed=NAN), T, "seed=nan is invalid"),
    ("cb-seed-list", lambda: LyapunovInit(seed=[1]), T, "seed=[1] is invalid"),
    ("cb-seed-float", lambda: LyapunovInit(seed=1.5), T, "seed=1.5 is invalid"),
    ("cb-seed-negative", lambda: LyapunovInit(seed=-1), V, "seed=-1 is invalid"),
    ("cb-seed-big", lambda: LyapunovInit(seed=2**63), V, f"seed={2**63} is invalid"),
    ("cb-seed-bool", lambda: LyapunovInit(seed=True), T, "seed=True is invalid"),
    # ------------------------------------------------------------------ init.*
    ("init-empty", lambda: init.lyapunov_normal_(torch.empty(0, 4)), V, "tensor of shape (0, 4) is invalid"),
    ("init-1d", lambda: init.lyapunov_normal_(torch.empty(5)), V, "tensor of shape (5,) is invalid"),
    ("init-int-he", lambda: init.he_normal_(w(dtype=torch.int64)), T, "tensor of dtype torch.int64"),
    ("init-int-orth", lambda: init.orthogonal_(w(dtype=torch.int32)), T, "tensor of dtype torch.int32"),
    ("init-int-zero", lambda: init.hadamard_identity_(w(dtype=torch.int64)), T, "tensor of dtype torch.int64"),
    ("init-bool-stiefel", lambda: init.stiefel_orthogonal_(w(dtype=torch.bool)), T, "tensor of dtype torch.bool"),
    ("init-not-tensor", lambda: init.glorot_normal_([[0.0]]), T, "tensor=[[0.0]] is invalid"),
    ("init-empty-stiefel", lambda: init.stiefel_orthogonal_(torch.empty(3, 0)), V, "tensor of shape (3, 0)"),
    ("init-gain-nan", lambda: init.orthogonal_(w(), gain=NAN), V, "gain=nan is invalid"),
    ("init-gain-inf", lambda: init.orthogonal_(w(), gain=INF), V, "gain=inf is invalid"),
    ("init-gain-str", lambda: init.orthogonal_(w(), gain="2"), T, "gain='2' is invalid"),
    ("init-generator-int", lambda: init.lyapunov_normal_(w(), generator=42), T, "generator=42 is invalid"),
    ("init-generator-str", lambda: init.orthogonal_(w(), generator="g"), T, "generator='g' is invalid"),
    ("init-slope-nan", lambda: init.lyapunov_normal_(w(), negative_slope=NAN), V, "negative_slope=nan"),
    ("init-slope-tiny", lambda: init.lyapunov_orthogonal_(w(), negative_slope=1e-200), V, "negative_slope=1e-200"),
    ("init-slope-negative", lambda: init.he_normal_(w(), negative_slope=-0.1), V, "negative_slope=-0.1"),
    ("init-slope-lyap", lambda: init.lyapunov_orthogonal_(w(), negative_slope=2.0), V, "negative_slope=2.0"),
    ("init-fans-float", lambda: init.lyapunov_orthogonal_(w(), fans=(4.5, 4)), T, "fans[0] (d_in)=4.5"),
    ("init-fans-zero", lambda: init.lyapunov_normal_(w(), fans=(4, 0)), V, "fans[1] (d_out)=0"),
    ("init-fans-int", lambda: init.lyapunov_normal_(w(), fans=4), T, "fans=4 is invalid"),
    ("init-moment-bool", lambda: init.fractional_moment_normal_(w(), moment=True), T, "moment=True"),
    ("init-moment-zero", lambda: init.fractional_moment_normal_(w(), moment=0), V, "moment=0 is invalid"),
    ("init-moment-str", lambda: init.fractional_moment_normal_(w(), moment="1"), T, "moment='1' is invalid"),
    ("init-layer-init", lambda: init.init_weight_(w(), "lyapunov"), T, "layer_init='lyapunov' is invalid"),
    ("resolve-d-in", lambda: init.resolve_init("lyapunov", 4.5, 4, 0.1), T, "d_in=4.5 is invalid"),
    ("resolve-moment-bool", lambda: init.resolve_init("lyapunov", 4, 4, 0.1, moment=True), T, "moment=True"),
    ("resolve-moment-ignored", lambda: init.resolve_init("he", 4, 4, 0.1, moment=0.5), V, "moment=0.5 is not used"),
    ("resolve-scheme-case", lambda: init.validate_scheme("Lyapunov"), V, "did you mean 'lyapunov'"),
    # ------------------------------------------------------------------ theory.*
    ("theory-slope-str", lambda: theory.critical_scale(4, 4, "0.1"), T, "negative_slope='0.1' is invalid"),
    ("theory-moment-nan", lambda: theory.critical_scale(4, 4, 0.1, moment=NAN), V, "moment=nan is invalid"),
    ("theory-width-bool", lambda: theory.critical_scale(True, 4, 0.1), T, "d_in=True is invalid"),
    ("theory-scale-inf", lambda: theory.lyapunov_exponent(4, 4, 0.1, INF), V, "scale=inf is invalid"),
    ("theory-scale-str", lambda: theory.lyapunov_exponent(4, 4, 0.1, "1"), T, "scale='1' is invalid"),
    ("theory-he-float", lambda: theory.he_scale(4.0, 0.1), T, "d_in=4.0 is invalid"),
    ("theory-glorot-zero", lambda: theory.glorot_scale(4, 0), V, "d_out=0 is invalid"),
    ("theory-gain-nan", lambda: theory.orthogonal_gain(NAN), V, "negative_slope=nan is invalid"),
    ("theory-tiny-slope", lambda: theory.expected_log_q(2, 1e-200), V, "negative_slope=1e-200 is invalid"),
    ("theory-d-str", lambda: theory.log_q_variance("2", 0.1), T, "d='2' is invalid"),
    ("theory-moment-range", lambda: theory.moment_q(4, 0.1, 3), V, "moment=3 is invalid"),
    ("theory-distribution", lambda: theory.log_norm_variance(4, 4, 0.1, "Gaussian"), V, "did you mean 'gaussian'"),
    ("kurt-depth-float", lambda: theory.kurtosis_by_depth(4, 0.1, depth=1.5), T, "depth=1.5 is invalid"),
    ("kurt-depth-missing", lambda: theory.kurtosis_by_depth(4, 0.1), T, "depth=None is invalid"),
    ("kurt-widths-item", lambda: theory.kurtosis_by_depth([4, 4.5], 0.1), T, "widths[1]=4.5 is invalid"),
    ("kurt-widths-str", lambda: theory.kurtosis_by_depth("4", 0.1), T, "widths='4' is invalid"),
    ("kurt-depth-unused", lambda: theory.kurtosis_by_depth([4], 0.1, depth=3), V, "depth=3 is only used"),
    ("kurt-weight-nan", lambda: theory.kurtosis_by_depth(4, 0.1, 3, weight_kurtosis=NAN), V, "weight_kurtosis=nan"),
    ("kurt-initial", lambda: theory.kurtosis_by_depth(4, 0.1, 3, initial_kurtosis=0.5), V, "initial_kurtosis=0.5"),
    ("table-widths", lambda: theory.theory_table(widths=[0]), V, "widths[0]=0 is invalid"),
    ("table-widths-int", lambda: theory.theory_table(widths=4), T, "widths=4 is invalid"),
    ("table-slopes", lambda: theory.theory_table(slopes=[2.0]), V, "slopes[0]=2.0 is invalid"),
    ("table-depth", lambda: theory.theory_table(depth=0), V, "depth=0 is invalid"),
    # ------------------------------------------------------------------ plan_init / apply_init
    ("apply-none", lambda: apply_init(None), T, "model=None is invalid"),
    ("plan-str", lambda: plan_init("model"), T, "model='model' is invalid"),
    ("apply-generator-int", lambda: apply_init(mlp(), generator=42), T, "generator=42 is invalid"),
    ("apply-include-nomatch", lambda: apply_init(mlp(), include="encoder"), V, "include pattern 'encoder' matches no"),
    ("apply-exclude-nomatch", lambda: apply_init(mlp(), exclude="^head"), V, "exclude pattern '^head' matches no"),
    ("apply-slope-nomatch", lambda: apply_init(mlp(), negative_slope={"nope": 0.1}), V, "negative_slope pattern 'nope'"),
    ("apply-slope-dict-nan", lambda: apply_init(mlp(), negative_slope={"0": NAN}), V, "negative_slope['0']=nan"),
    ("apply-slope-tiny", lambda: apply_init(mlp(), negative_slope=1e-200), V, "negative_slope=1e-200 is invalid"),
    ("apply-moment-ignored", lambda: apply_init(mlp(), scheme="stiefel", moment=1.0), V, "moment=1.0 is not used"),
    ("apply-moment-bool", lambda: apply_init(mlp(), moment=True), T, "moment=True is invalid"),
    ("apply-scheme-case", lambda: apply_init(mlp(), scheme="HE"), V, "did you mean 'he'"),
    ("apply-conv", lambda: apply_init(mlp(), conv="Delta"), V, "conv='Delta'"),
    ("cb-conv", lambda: LyapunovInit(conv=5), T, "conv=5"),
    ("apply-include-dict", lambda: apply_init(mlp(), include={"0": 1}), T, "include={'0': 1} is invalid"),
    ("plan-forward-int", lambda: plan_init(mlp(), example_input=torch.randn(2, 4), forward=5), T, "forward=5"),
    ("plan-forward-alone", lambda: plan_init(mlp(), forward=lambda m, x: m(x)), V, "forward= is only used"),
    ("plan-write-none", lambda: plan_init(mlp()).write(None), T, "weights=None is invalid"),
    ("plan-write-tensor", lambda: plan_init(mlp()).write(torch.zeros(4, 4)), T, "weights=tensor("),
    ("layer-write-list", lambda: plan_init(mlp()).layers[0].write([[0.0]]), T, "weight=[[0.0]] is invalid"),
    ("plan-draw-int", lambda: plan_init(mlp()).draw(42), T, "generator=42 is invalid"),
    ("plan-describe-warnings", lambda: plan_init(mlp()).describe(warnings="no"), T, "warnings='no' is invalid"),
    ("plan-describe-fold", lambda: plan_init(mlp()).describe(fold=-1), V, "fold=-1 is invalid"),
    ("apply-calibrate-case", lambda: apply_init(mlp(), calibrate="Layers"), V, "did you mean 'layers'"),
    ("apply-calibrate-target-nan", lambda: apply_init(mlp(), calibrate="layers", calibrate_target=NAN), V,
     "calibrate_target=nan is invalid"),
    ("apply-calibrate-target-alone", lambda: apply_init(mlp(), calibrate_target=2.0), V,
     "calibrate_target=2.0 is only used"),
    ("cb-calibrate-target-alone", lambda: LyapunovInit(calibrate=None, calibrate_target=2.0), V,
     "calibrate_target=2.0 is only used"),
    ("cb-calibrate-target-baseline", lambda: LyapunovInit(scheme="he", calibrate_target=2.0), V,
     "calibrate_target=2.0 is only used"),
    # ------------------------------------------------------------------ swap_activations
    ("swap-old-str", lambda: swap_activations(mlp(), old="ReLU"), T, "old='ReLU' is invalid"),
    ("swap-old-instance", lambda: swap_activations(mlp(), old=nn.ReLU()), T, "old=ReLU() is invalid"),
    ("swap-old-empty", lambda: swap_activations(mlp(), old=()), V, "old=()"),
    ("swap-new-int", lambda: swap_activations(mlp(), new=5), T, "new=5 is invalid"),
    ("swap-new-class", lambda: swap_activations(mlp(), new=nn.LeakyReLU), T, "new=<class"),
    ("swap-new-returns", lambda: swap_activations(mlp(), new=lambda m: 5), T, "new(ReLU)=5 is invalid"),
    ("swap-model", lambda: swap_activations(None), T, "model=None is invalid"),
    # ------------------------------------------------------------------ sample_lyapunov_
    ("sample-model", lambda: sample_lyapunov_(None), T, "model=None is invalid"),
    ("sample-candidates-zero", lambda: sample_lyapunov_(mlp(), candidates=0), V, "candidates=0 is invalid"),
    ("sample-candidates-float", lambda: sample_lyapunov_(mlp(), candidates=1.5), T, "candidates=1.5 is invalid"),
    ("sample-candidates-bool", lambda: sample_lyapunov_(mlp(), candidates=True), T, "candidates=True is invalid"),
    ("sample-layerwise", lambda: sample_lyapunov_(mlp(), layerwise="yes"), T, "layerwise='yes' is invalid"),
    ("sample-forward", lambda: sample_lyapunov_(mlp(), forward=5), T, "forward=5 is invalid"),
    ("sample-generator", lambda: sample_lyapunov_(mlp(), generator=42), T, "generator=42 is invalid"),
    ("sample-include", lambda: sample_lyapunov_(mlp(), include="nope"), V, "include pattern 'nope'"),
    # ------------------------------------------------------------------ SignalMonitor
    ("monitor-defer-str", lambda: SignalMonitor(mlp(), ["0"], defer_below="abc"), T, "defer_below='abc' is invalid"),
    ("monitor-defer-neg", lambda: SignalMonitor(mlp(), ["0"], defer_below=-1), V, "defer_below=-1 is invalid"),
    ("monitor-defer-float", lambda: SignalMonitor(mlp(), ["0"], defer_below=1.5), T, "defer_below=1.5 is invalid"),
    ("monitor-training-only", lambda: SignalMonitor(mlp(), ["0"], training_only="no"), T, "training_only='no'"),
    ("monitor-persistent", lambda: SignalMonitor(mlp(), ["0"], persistent=1), T, "persistent=1 is invalid"),
    ("monitor-model", lambda: SignalMonitor(None, ["0"]), T, "model=None is invalid"),
    ("monitor-names-int", lambda: SignalMonitor(mlp(), [0]), T, "layer_names=(0,) is invalid"),
    ("monitor-names-scalar", lambda: SignalMonitor(mlp(), 5), T, "layer_names=5 is invalid"),
    # ------------------------------------------------------------------ models / data
    ("mlp-width-str", lambda: DeepMLP(1, 1, width="4"), T, "width='4' is invalid"),
    ("mlp-depth-float", lambda: DeepMLP(1, 1, depth=1.5), T, "depth=1.5 is invalid"),
    ("module-lr-nan", lambda: RegressionModule(DeepMLP(1, 1), lr=NAN), V, "lr=nan is invalid"),
    ("module-optimizer-case", lambda: RegressionModule(DeepMLP(1, 1), optimizer="Adam"), V, "did you mean 'adam'"),
    ("mlp-bias-str", lambda: DeepMLP(1, 1, bias="no"), T, "bias='no' is invalid"),
    ("cnn-batch-norm-str", lambda: PlainCNN(batch_norm="yes"), T, "batch_norm='yes' is invalid"),
    ("resnet-blocks-int", lambda: SmallResNet(blocks_per_stage=2), T, "blocks_per_stage=2 is invalid"),
    ("theory-drawn-in", lambda: theory.lyapunov_exponent(4, 4, 0.1, 1.0, drawn_in=2.5), T, "drawn_in=2.5"),
    ("theory-drawn-in-zero", lambda: theory.critical_scale(4, 4, 0.1, drawn_in=0), V, "drawn_in=0 is invalid"),
    ("data-batch-size", lambda: PolynomialRegression(batch_size=0), V, "batch_size=0 is invalid"),
]


@pytest.mark.parametrize("call,error,message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_argument_names_argument_value_and_what_is_allowed(call, error, message):
    with pytest.raises(error, match=re.escape(message)) as info:
        call()
    if error is ValueError:  # a value of the right type: not reported as a type error
        assert not isinstance(info.value, TypeError), info.value


def test_the_table_is_large():
    assert len(CASES) >= 120


def test_type_errors_are_type_errors_and_values_out_of_range_value_errors():
    # no release to be compatible with: a wrong type is a TypeError only
    with pytest.raises(TypeError):
        LyapunovInit(seed="abc")
    with pytest.raises(ValueError):
        LyapunovInit(seed=-1)
    assert issubclass(ArgumentTypeError, TypeError) and not issubclass(ArgumentTypeError, ValueError)


def test_an_unmatched_pattern_lists_the_candidate_layers():
    with pytest.raises(ValueError, match=r"the weight layers are: '0', '2'"):
        plan_init(mlp(), include="encoder")


@pytest.mark.parametrize(
    "kwargs",
    [dict(include="nope"), dict(negative_slope={"nope": 0.1}), dict(generator=42), dict(moment=True),
     dict(scheme="he", moment=1.0)],
)
def test_rejected_apply_init_changes_nothing(kwargs):
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    state = torch.get_rng_state()
    with pytest.raises((TypeError, ValueError)):
        apply_init(model, **kwargs)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), state)


def test_rejected_swap_changes_nothing():
    model = mlp()
    calls = []

    def factory(module):
        calls.append(module)
        return nn.LeakyReLU(0.1) if len(calls) == 1 else "not a module"

    model.append(nn.ReLU())
    with pytest.raises(TypeError, match="new"):
        swap_activations(model, new=factory)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]


def test_valid_edge_values_are_accepted():
    import numpy as np

    LyapunovInit(seed=np.int64(3), log_every_n_steps=np.int32(2), diagnostics=np.bool_(False),
                 negative_slope=np.float64(0.1))
    LyapunovInit(scheme="lyapunov", moment=0.0, negative_slope=0.0, seed=2**63 - 1)
    init.orthogonal_(w(), gain=-1.0)
    init.lyapunov_normal_(torch.empty(3, 2, dtype=torch.float64), fans=(np.int64(2), 3))
    assert swap_activations(mlp(), old=(nn.ReLU, nn.GELU), new=nn.LeakyReLU(0.2)) == ["1"]
    assert check_int("x", np.int16(4), minimum=1) == 4
    assert check_float("x", np.float32(0.5)) == 0.5
    assert check_bool("x", True) is True
    assert check_choice("x", "a", ("a", "b")) == "a"
    assert check_choice("sampled", np.bool_(True), (False, True, "network")) is True
    assert theory.kurtosis_by_depth(np.array([4, 4]), 0.1).shape == (3,)
    assert "| 4 |" in theory.theory_table(widths=np.array([4]), slopes=np.array([0.1]), depth=2)


def test_a_probe_the_model_cannot_take_is_named_in_the_error():
    with pytest.raises(TypeError) as info:
        sample_lyapunov_(mlp(), probe="abc", candidates=2)
    assert "probe='abc' (str)" in "".join(getattr(info.value, "__notes__", []))
