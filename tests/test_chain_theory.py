"""chain_theory against closed forms, theory.py's Leaky ReLU formulas and Monte Carlo simulations with
torch: the real ``torch.nn.functional`` activations and ``torch.nn.init.orthogonal_`` weights.

Monte Carlo tolerances are multiples of the simulation's own standard error (4.5 of them, so that the
many comparisons of a run do not fail by chance), and each family of tests also asserts that a plausible
wrong constant (the Gaussian law for orthogonal weights, ``d`` for ``D``, a variance off by a factor of 2,
the scale of one layer for the next) would fall outside them.
"""

import doctest
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special, stats

from lightning_lyapunov import chain_theory as ct
from lightning_lyapunov import theory

SEED = 20261207
Z = 4.5  # standard errors allowed in a Monte Carlo comparison

# (chain_theory activation, the torch function it mirrors)
TORCH_TWINS = {
    "relu": (ct.activation("relu"), F.relu),
    "leaky_relu": (ct.activation("leaky_relu", negative_slope=0.2), lambda x: F.leaky_relu(x, 0.2)),
    "leaky_relu_steep": (ct.activation("LeakyReLU", negative_slope=-1.7), lambda x: F.leaky_relu(x, -1.7)),
    "prelu": (ct.activation("prelu", negative_slope=0.3), lambda x: F.prelu(x, torch.tensor([0.3], dtype=x.dtype))),
    "identity": (ct.activation("identity"), lambda x: x),
    "gelu": (ct.activation("gelu"), F.gelu),
    "gelu_tanh": (ct.activation("gelu", approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "silu": (ct.activation("silu"), F.silu),
    "mish": (ct.activation("mish"), F.mish),
    "elu": (ct.activation("elu"), F.elu),
    "elu_alpha": (ct.activation("elu", alpha=0.4), lambda x: F.elu(x, alpha=0.4)),
    "celu": (ct.activation("celu", alpha=2.5), lambda x: F.celu(x, alpha=2.5)),
    "selu": (ct.activation("selu"), F.selu),
    "softplus": (ct.activation("softplus"), F.softplus),
    "softplus_beta": (ct.activation("softplus", beta=2.0, threshold=5.0), lambda x: F.softplus(x, 2.0, 5.0)),
    "tanh": (ct.activation("tanh"), torch.tanh),
    "sigmoid": (ct.activation("sigmoid"), torch.sigmoid),
    "hardswish": (ct.activation("hardswish"), F.hardswish),
    "hardsigmoid": (ct.activation("hardsigmoid"), F.hardsigmoid),
    "relu6": (ct.activation("relu6"), F.relu6),
    "hardtanh": (ct.activation("hardtanh", min_val=-0.5, max_val=2.0), lambda x: F.hardtanh(x, -0.5, 2.0)),
    "softsign": (ct.activation("softsign"), F.softsign),
}


def torch_of(name):
    return TORCH_TWINS[name][1]


def log_q(phi, h):
    """``log ||phi(h)||^2`` per row of a float64 tensor."""
    return torch.log((phi(h) ** 2).sum(-1)).numpy()


def directions(law, d, n, generator, d_in=None):
    """``n`` pre-activations of per-unit scale 1: ``g ~ N(0, I_d)`` (Gaussian weights) or ``sqrt(D) O x``
    with ``O`` from ``torch.nn.init.orthogonal_`` (shape ``(d, d_in)``) and a fixed unit vector ``x``."""
    if law == "gaussian":
        return torch.randn(n, d, generator=generator, dtype=torch.float64)
    d_in = d if d_in is None else d_in
    x = torch.randn(d_in, generator=generator, dtype=torch.float64)
    x /= x.norm()
    out = torch.empty(n, d, dtype=torch.float64)
    w = torch.empty(d, d_in, dtype=torch.float64)
    for i in range(n):
        torch.nn.init.orthogonal_(w, generator=generator)
        out[i] = w @ x
    return out * math.sqrt(max(d, d_in))


def mean_and_se(values):
    values = np.asarray(values, dtype=np.float64)
    centred = values - values.mean()
    var = float(np.mean(centred**2))
    se_var = math.sqrt(max(float(np.mean(centred**4)) - var * var, 0.0) / values.size)
    return float(values.mean()), math.sqrt(var / values.size), var, se_var


# ----------------------------------------------------------------------------- activations


@pytest.mark.parametrize("name", sorted(TORCH_TWINS))
def test_numpy_activations_equal_torch_on_a_grid(name):
    act, fn = TORCH_TWINS[name]
    x = np.concatenate([np.linspace(-40.0, 40.0, 4001), [0.0, -3.0, 3.0, 6.0, -0.5, 2.0, 2.5, 5.0, 20.0, 1e-300]])
    expected = fn(torch.tensor(x, dtype=torch.float64)).numpy()
    # equal to rounding: torch's vectorized tanh differs by 1e-16 where 1 + tanh cancels (tanh-GELU tail)
    np.testing.assert_allclose(act(x), expected, rtol=1e-12, atol=1e-14)


def test_activation_names_parameters_and_flags():
    assert ct.activation("LeakyReLU", negative_slope=0.1) == ct.activation("leaky_relu", negative_slope=0.1)
    assert ct.activation("ReLU6").name == "relu6" and ct.activation("Hardswish").dead_below == -3.0
    assert ct.activation("swish") == ct.activation("SiLU")
    gelu = ct.activation("gelu")
    assert ct.activation(gelu) is gelu
    assert [ct.activation(n).homogeneous for n in ("relu", "identity", "prelu", "gelu", "tanh")] == [
        True, True, True, False, False]
    assert ct.activation("leaky_relu", negative_slope=-0.3).homogeneous_slope == 0.3
    assert not ct.activation("leaky_relu", negative_slope=2.0).homogeneous  # |a| > 1: the quadrature
    assert set(ct.ACTIVATIONS) >= {"gelu", "silu", "mish", "elu", "celu", "selu", "softplus", "tanh", "sigmoid",
                                   "hardswish", "hardsigmoid", "relu6", "hardtanh", "softsign", "prelu"}
    own = ct.activation(np.tanh, name="my_tanh", breakpoints=(1.0,))
    assert own.name == "my_tanh" and own.breakpoints == (1.0,) and not own.homogeneous
    assert own == ct.activation(np.tanh, name="my_tanh", breakpoints=(1.0,))  # cached by the function


# a wrong type is a TypeError (_checks' ArgumentTypeError), a wrong value a ValueError
@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: ct.activation("swiglu"), ValueError, r"spec='swiglu' is invalid \(unknown activation\).*gelu, silu"),
        (lambda: ct.activation("gelu", approximate="fast"), ValueError, r"approximate='fast'.*'none', 'tanh'"),
        (lambda: ct.activation("elu", beta=2.0), ValueError, r"'elu' does not take \['beta'\].*\['alpha'\]"),
        (lambda: ct.activation("tanh", alpha=1.0), ValueError, r"'tanh' does not take \['alpha'\].*none"),
        (lambda: ct.activation("celu", alpha=0.0), ValueError, r"alpha=0.0 is invalid.*positive"),
        (lambda: ct.activation("elu", alpha="big"), TypeError, r"alpha='big' is invalid"),
        (lambda: ct.activation("softplus", beta=-1.0), ValueError, r"beta=-1.0 is invalid"),
        (lambda: ct.activation("hardtanh", min_val=1.0, max_val=0.0), ValueError, r"min_val=1.0, max_val=0.0.*below"),
        (lambda: ct.activation(3.0), TypeError, r"spec=3.0 is invalid"),
        (lambda: ct.activation(lambda x: x.sum()), ValueError, r"same shape"),
        (lambda: ct.activation(lambda x: float(x[0])), ValueError, r"calling it on a float64 array raised TypeError"),
        (lambda: ct.activation(np.log), ValueError, r"non-finite"),
        (lambda: ct.activation(lambda x: x * 1j), ValueError, r"real"),
        (lambda: ct.activation(np.tanh, dead_below=1.0), ValueError, r"dead_below=1.0 is invalid.*<= 0"),
        (lambda: ct.activation(np.tanh, dead_below=-1.0), ValueError, r"dead_below=-1.0 is invalid: phi is not 0"),
        (lambda: ct.activation(np.tanh, alpha=1.0), ValueError, r"bind them into your function"),
        (lambda: ct.activation("gelu", name="x"), ValueError, r"for your own function"),
        (lambda: ct.activation(ct.activation("gelu"), alpha=1.0), ValueError, r"already an Activation"),
    ],
)
def test_bad_activation_specs_say_what_is_allowed(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------- Leaky ReLU = theory.py


@pytest.mark.parametrize("law", ["gaussian", "orthogonal"])
@pytest.mark.parametrize("d_in,d_out,a,drawn_in", [(2, 2, 0.1, None), (3, 7, 0.0, None), (100, 10, 0.5, None),
                                                   (1, 1, 1.0, None), (16, 16, 0.01, 40)])
def test_leaky_relu_reproduces_theory(law, d_in, d_out, a, drawn_in):
    act = ct.activation("leaky_relu", negative_slope=a)
    for scale in (0.05, 1.0, 7.0):  # homogeneous: no dependence on the operating scale
        kwargs = {"drawn_in": drawn_in}
        assert ct.critical_scale(act, d_in, d_out, law, scale, **kwargs) == pytest.approx(
            theory.critical_scale(d_in, d_out, a, law, **kwargs), rel=1e-12)
        assert ct.lyapunov_exponent(act, d_in, d_out, 0.37, law, scale, **kwargs) == pytest.approx(
            theory.lyapunov_exponent(d_in, d_out, a, 0.37, law, **kwargs), rel=1e-12, abs=1e-12)
        assert ct.log_norm_variance(act, d_in, d_out, law, scale, **kwargs) == pytest.approx(
            theory.log_norm_variance(d_in, d_out, a, law, **kwargs), rel=1e-12, abs=1e-12)
        assert ct.stability(act, d_in, d_out, law, scale) == (1.0, "neutral")


def _leaky_numeric(a):
    """The same Leaky ReLU as a user's function: it goes through the quadrature, not the closed forms."""
    return ct.activation(lambda x, a=a: np.where(x > 0, x, a * x), name=f"leaky{a}", breakpoints=(0.0,),
                         dead_below=0.0 if a == 0.0 else None)


@pytest.mark.parametrize("a", [0.0, 0.1, 1.0])
def test_quadrature_reproduces_theory_for_leaky_relu(a):
    act = _leaky_numeric(a)
    for d in (1, 2, 3, 8, 64, 256):
        for s in (0.3, 3.0):
            expected = theory.expected_log_q(d, a) + 2.0 * math.log(s)
            assert ct.expected_log_q(act, d, s) == pytest.approx(expected, abs=3e-8)
            assert ct.log_q_variance(act, d, s) == pytest.approx(theory.log_q_variance(d, a), abs=1e-7)
    if a == 1.0:
        return  # the linear layer on the sphere: test_third_cumulants_against_closed_forms
    for d, d_in in ((2, 2), (3, 3), (8, 8), (8, 20), (64, 64), (256, 256))[: 6 if a == 0.1 else 4]:
        big = max(d, d_in)
        s = 1.7
        expected = theory.expected_log_q(d, a) + 2.0 * math.log(s) + math.log(big) - theory._log_chi2(big)
        variance = theory.log_q_variance(d, a) - float(special.polygamma(1, big / 2.0))
        assert ct.expected_log_q(act, d, s, "orthogonal", d_in=d_in) == pytest.approx(expected, abs=3e-6)
        assert ct.log_q_variance(act, d, s, "orthogonal", d_in=d_in) == pytest.approx(variance, abs=6e-6)
        eta = theory.critical_scale(d_in, d, a, "orthogonal")
        assert ct.critical_scale(act, d_in, d, "orthogonal", s) == pytest.approx(eta, rel=3e-6)
    if a == 0.0:
        assert ct.dead_probability(act, 5, 0.8) == pytest.approx(2.0**-5, rel=1e-9)
        assert ct.dead_probability(act, 5, 0.8, "orthogonal") == pytest.approx(2.0**-5, rel=1e-6)


def test_third_cumulants_against_closed_forms():
    # a linear layer: log chi2_d (Gaussian), log Beta(d/2, (D-d)/2) + const (orthogonal)
    linear = _leaky_numeric(1.0)
    for d in (1, 2, 7, 64):
        third = ct._layer_law(linear, d, d, "gaussian", 1.3)[3]
        assert third == pytest.approx(float(special.polygamma(2, d / 2.0)), abs=1e-6)
    for d, big in ((3, 3), (3, 11)):
        _, _, var, third = ct._layer_law(linear, d, big, "orthogonal", 0.9)
        beta = (d / 2.0, (big - d) / 2.0)
        assert var == pytest.approx(float(special.polygamma(1, beta[0]) - special.polygamma(1, d / 2.0 + beta[1]))
                                    if big > d else 0.0, abs=1e-6)
        assert third == pytest.approx(float(special.polygamma(2, beta[0]) - special.polygamma(2, big / 2.0))
                                      if big > d else 0.0, abs=1e-5)
    # ReLU: a binomial mixture of log chi2_n, n >= 1 (conditional on a non-zero output)
    for d in (2, 9):
        n = np.arange(1, d + 1)
        w = stats.binom.pmf(n, d, 0.5)
        w /= w.sum()
        mu, v, k3 = np.log(2.0) + special.digamma(n / 2), special.polygamma(1, n / 2), special.polygamma(2, n / 2)
        m1, m2, m3 = (w * mu).sum(), (w * (v + mu**2)).sum(), (w * (k3 + 3 * mu * v + mu**3)).sum()
        expected = m3 - 3 * m1 * m2 + 2 * m1**3
        assert ct._homogeneous_third(0.0, d, d, "gaussian") == pytest.approx(expected, abs=1e-6)
        assert ct._layer_law(_leaky_numeric(0.0), d, d, "gaussian", 1.0)[3] == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------- one layer against torch


@pytest.mark.parametrize("law,d,n", [("gaussian", 2, 40000), ("gaussian", 8, 30000), ("gaussian", 64, 8000),
                                     ("orthogonal", 2, 12000), ("orthogonal", 8, 6000),
                                     ("orthogonal", 64, 1500)])
def test_log_q_moments_match_torch_monte_carlo(law, d, n):
    generator = torch.Generator().manual_seed(SEED + d + (law == "orthogonal"))
    h = directions(law, d, n, generator)
    wrong_law = "gaussian" if law == "orthogonal" else None
    caught = 0
    for name in ("gelu", "silu", "tanh", "elu", "sigmoid"):
        act = TORCH_TWINS[name][0]
        for s in (0.3, 1.0, 3.0):
            mean, se, var, se_var = mean_and_se(log_q(torch_of(name), s * h))
            predicted = ct.expected_log_q(act, d, s, law)
            predicted_var = ct.log_q_variance(act, d, s, law)
            assert abs(mean - predicted) < Z * se + 1e-9, (name, s, mean, predicted, se)
            assert abs(var - predicted_var) < Z * se_var + 1e-9, (name, s, var, predicted_var, se_var)
            assert abs(2.0 * var - predicted_var) > Z * se_var  # a variance off by 2 would be caught
            if wrong_law and d <= 8:
                other = ct.expected_log_q(act, d, s, wrong_law)
                caught += abs(mean - other) > Z * se or abs(var - ct.log_q_variance(act, d, s, wrong_law)) > Z * se_var
    if wrong_law and d <= 8:
        assert caught >= 10  # the Gaussian law is visibly wrong for orthogonal weights at small width


def test_dead_probabilities_match_torch_monte_carlo():
    generator = torch.Generator().manual_seed(SEED + 5)
    n = 200_000
    for law, d in (("gaussian", 3), ("orthogonal", 2)):
        h = directions(law, d, n if law == "gaussian" else 8_000, generator)
        for name, s in (("relu6", 1.0), ("hardswish", 3.0))[: 2 if law == "gaussian" else 1]:
            dead = (torch_of(name)(s * h) == 0).all(-1).double().mean().item()
            predicted = ct.dead_probability(TORCH_TWINS[name][0], d, s, law)
            se = math.sqrt(max(predicted * (1 - predicted), 1e-12) / h.shape[0])
            assert abs(dead - predicted) < Z * se + 1e-4, (law, name, dead, predicted)
    assert ct.dead_probability("hardswish", 2, 3.0) == pytest.approx(special.ndtr(-1.0) ** 2, rel=1e-6)
    assert ct.dead_probability("gelu", 8, 1.0) == 0.0


@pytest.mark.parametrize("law", ["gaussian", "orthogonal"])
@pytest.mark.parametrize("d_in,d_out", [(12, 5), (5, 12)])
def test_one_torch_layer_drifts_as_predicted_with_any_fans(law, d_in, d_out):
    """``x`` fixed, ``W`` of torch's ``(d_out, d_in)`` layout: ``log r(phi(W x)) - log r(x)`` over draws."""
    generator = torch.Generator().manual_seed(SEED + 10 * d_in + d_out)
    n = 8000
    act, phi = TORCH_TWINS["gelu"]
    big = max(d_in, d_out)
    x = torch.randn(d_in, generator=generator, dtype=torch.float64)
    unit = torch.empty(n, d_out, d_in, dtype=torch.float64)  # weights of scale 1, rescaled per case
    if law == "gaussian":
        unit.normal_(0.0, 1.0, generator=generator)
    else:
        for i in range(n):
            torch.nn.init.orthogonal_(unit[i], generator=generator)
    for s, scheme in ((1.0, "critical"), (2.5, "critical"), (1.0, "he")):
        w_scale = ct.critical_scale(act, d_in, d_out, law, s) if scheme == "critical" else (
            theory.he_scale(d_in, 0.0) if law == "gaussian" else math.sqrt(2.0))
        # put the input at the norm that gives the pre-activation the per-unit scale s
        norm = s / w_scale if law == "gaussian" else s * math.sqrt(big) / w_scale
        x_s = x * norm / x.norm()
        log_r_x = math.log(norm / math.sqrt(d_in))
        y = phi((w_scale * unit) @ x_s)
        increments = torch.log(y.norm(dim=-1) / math.sqrt(d_out)).numpy() - log_r_x
        mean, se, var, se_var = mean_and_se(increments)
        exponent = ct.lyapunov_exponent(act, d_in, d_out, w_scale, law, s)
        assert abs(mean - exponent) < Z * se, (scheme, s, mean, exponent, se)
        assert abs(var - ct.log_norm_variance(act, d_in, d_out, law, s)) < Z * se_var
        if scheme == "critical":
            assert abs(exponent) < 1e-12
        wrong = 0.5 * math.log(d_in / d_out)  # the fan ratio, dropped or doubled
        assert abs(mean - (exponent + wrong)) > Z * se and abs(mean - (exponent - wrong)) > Z * se
        if law == "orthogonal" and d_out < d_in:  # D = d_in, not d_out
            assert abs(mean - (exponent + 0.5 * (math.log(big / d_out) + theory._log_chi2(d_out)
                                                 - theory._log_chi2(big)))) > Z * se


# ----------------------------------------------------------------------------- chains against torch


def simulate_chain(layers, phis, law, scales, n, generator, floor=40.0):
    """Per-unit log-norms of every pre-activation ``h_l = W_l x_{l-1}`` (rows: layers), NaN once dead;
    the input has per-unit rms 1; orthogonal weights by ``torch.nn.init.orthogonal_``."""
    x = torch.randn(n, layers[0][0], 1, generator=generator, dtype=torch.float64)
    x = x * math.sqrt(layers[0][0]) / x.norm(dim=1, keepdim=True)
    dead = torch.zeros(n, dtype=torch.bool)
    out = np.full((len(layers), n), np.nan)
    for l, ((d_in, d_out, _), phi, scale) in enumerate(zip(layers, phis, scales)):
        w = torch.empty(n, d_out, d_in, dtype=torch.float64)
        if law == "gaussian":
            w.normal_(0.0, float(scale), generator=generator)
        else:
            for i in range(n):
                torch.nn.init.orthogonal_(w[i], gain=float(scale), generator=generator)
        h = torch.bmm(w, x)
        log_r = torch.log(h.norm(dim=(1, 2)) / math.sqrt(d_out))
        dead |= ~(log_r > -floor)
        out[l] = torch.where(dead, torch.nan, log_r).numpy()
        x = phi(h) if phi is not None else h
    return out


def depth_statistics(log_norms):
    alive = np.isfinite(log_norms)
    rows = [row[ok] for row, ok in zip(log_norms, alive)]
    mean = np.array([r.mean() for r in rows])
    std = np.array([r.std() for r in rows])
    count = alive.sum(1)
    fourth = np.array([np.mean((r - r.mean()) ** 4) for r in rows])
    se_std = np.sqrt(np.maximum(fourth - std**4, 0.0) / count) / (2.0 * np.maximum(std, 1e-300))
    return mean, std, std / np.sqrt(count), se_std, alive.mean(1)


def assert_chain_matches(plan, log_norms, label):
    mean, std, se, se_std, alive = depth_statistics(log_norms)
    assert np.all(np.abs(mean - plan.mean_log_norm) < Z * se + 1e-9), (label, mean - plan.mean_log_norm, se)
    assert np.all(np.abs(std - plan.std_log_norm) < Z * se_std + 1e-9), (label, std - plan.std_log_norm, se_std)
    n = log_norms.shape[1]
    assert np.all(np.abs(alive - plan.alive) < Z * np.sqrt(plan.alive * (1 - plan.alive) / n) + 2e-3), label
    return mean


def test_chain_with_changing_widths_matches_torch():
    """Fans change from layer to layer (and the last has no activation): the scale of layer l's output
    enters layer l+1 through its own fan, D and law."""
    layers = [(6, 10, "gelu"), (10, 4, "tanh"), (4, 9, "silu"), (9, 3, None)]
    phis = [F.gelu, torch.tanh, F.silu, None]
    for law in ("gaussian", "orthogonal"):
        generator = torch.Generator().manual_seed(SEED + 20 + (law == "orthogonal"))
        plan = ct.predict_chain(layers, law, operating_scale=[1.0, 0.7, 1.5, 1.0], input_scale=2.0)
        assert np.allclose(plan.mean_log_norm, np.log([1.0, 0.7, 1.5, 1.0]), atol=1e-9)
        # an input of rms 2 through W_1 is one of rms 1 through 2 W_1
        scales = plan.weight_scales * np.array([2.0, 1.0, 1.0, 1.0])
        log_norms = simulate_chain(layers, phis, law, scales, 4000, generator)
        mean = assert_chain_matches(plan, log_norms, law)
        # the scale of one layer used for the next (no fan shift) would be caught
        shifted = plan.mean_log_norm[1:] + 0.5 * np.log([10 / 6, 4 / 10, 9 / 4])
        _, _, se, _, _ = depth_statistics(log_norms)
        assert np.any(np.abs(mean[1:] - shifted) > Z * se[1:])


@pytest.mark.parametrize(
    "name,width,law,depth,seeds",
    [("gelu", 8, "gaussian", 30, 1500), ("silu", 8, "orthogonal", 30, 800), ("tanh", 32, "orthogonal", 25, 300),
     ("hardswish", 16, "gaussian", 30, 800), ("sigmoid", 8, "gaussian", 25, 1000)],
)
def test_chain_prediction_matches_torch(name, width, law, depth, seeds):
    act, phi = TORCH_TWINS[name]
    layers = [(width, width, act)] * (depth - 1) + [(width, width, None)]
    plan = ct.predict_chain(layers, law)
    assert np.allclose(plan.mean_log_norm, 0.0, atol=1e-9)
    generator = torch.Generator().manual_seed(SEED + width + depth)
    log_norms = simulate_chain(layers, [phi] * (depth - 1) + [None], law, plan.weight_scales, seeds, generator)
    mean = assert_chain_matches(plan, log_norms, name)
    assert abs(np.polyfit(np.arange(depth), mean, 1)[0]) < 0.02  # issue 23's goal: flat to 0.02 per layer


def test_local_critical_scale_drifts_and_the_chain_predicts_it():
    """Zero drift at scale 1 (the local condition) is not enough for GELU: the chain predicts the drift
    of those scales, and torch measures it."""
    width, depth, seeds = 16, 30, 800
    act, phi = TORCH_TWINS["gelu"]
    layers = [(width, width, act)] * (depth - 1) + [(width, width, None)]
    local = [ct.critical_scale(act, width, width)] * (depth - 1) + [ct.critical_scale("identity", width, width)]
    plan = ct.predict_chain(layers, weight_scales=local)
    assert plan.mean_drift > 0.02  # the unstable fixed point: the expected log-norm grows
    assert ct.predict_chain(layers).mean_drift == pytest.approx(0.0, abs=1e-9)
    generator = torch.Generator().manual_seed(SEED + 30)
    log_norms = simulate_chain(layers, [phi] * (depth - 1) + [None], "gaussian", local, seeds, generator)
    mean = assert_chain_matches(plan, log_norms, "local")
    assert np.polyfit(np.arange(depth), mean, 1)[0] > 0.02


@pytest.mark.slow
@pytest.mark.parametrize("law,width,seeds", [("gaussian", 8, 500), ("orthogonal", 8, 300), ("gaussian", 32, 200),
                                             ("orthogonal", 32, 100)])
def test_issue_goal_on_60_layer_chains(law, width, seeds):
    """Every listed activation, 60 layers: flat seed-averaged log-norm (<= 0.02 per layer) and mean and
    spread at every depth within their standard errors (scripts/chain_goal.py runs the full sizes)."""
    depth = 60
    for i, name in enumerate(("gelu", "gelu_tanh", "silu", "mish", "elu", "celu", "selu", "softplus", "tanh",
                              "sigmoid", "hardswish", "relu6")):
        act, phi = TORCH_TWINS[name]
        layers = [(width, width, act)] * (depth - 1) + [(width, width, None)]
        plan = ct.predict_chain(layers, law)
        generator = torch.Generator().manual_seed(SEED + 100 * width + i)
        log_norms = simulate_chain(layers, [phi] * (depth - 1) + [None], law, plan.weight_scales, seeds, generator)
        mean = assert_chain_matches(plan, log_norms, name)
        assert abs(np.polyfit(np.arange(depth), mean, 1)[0]) < 0.02, name


# ----------------------------------------------------------------------------- properties, cost, API


def test_stability_is_the_slope_of_the_mean_map():
    for name, kind in (("gelu", "unstable"), ("silu", "unstable"), ("tanh", "stable"), ("sigmoid", "stable"),
                       ("relu", "neutral"), ("identity", "neutral")):
        for law in ("gaussian", "orthogonal"):
            result = ct.stability(name, 16, 16, law)
            assert result.kind == kind, (name, law, result)
            if kind != "neutral":
                step = 0.01
                slope = (ct.expected_log_q(name, 16, math.exp(step), law)
                         - ct.expected_log_q(name, 16, math.exp(-step), law)) / (4 * step)
                assert result.slope == pytest.approx(slope, abs=1e-4)
    # far from the activation's own scale GELU is homogeneous: linear (s -> 0) or ReLU-like (s -> inf)
    assert ct.stability("gelu", 64, 64, scale=1e-4).slope == pytest.approx(1.0, abs=1e-3)
    assert ct.stability("gelu", 64, 64, scale=1e3).slope == pytest.approx(1.0, abs=1e-3)


def test_homogeneous_chain_is_a_random_walk():
    """Leaky ReLU: the chain's scales are theory's critical scales and its spread the CLT's sqrt(l s^2)."""
    for law in ("gaussian", "orthogonal"):
        layers = [(8, 8, "leaky_relu")] * 9 + [(8, 8, None)]
        plan = ct.predict_chain(layers, law)
        assert plan.weight_scales[1:-1] == pytest.approx(theory.critical_scale(8, 8, 0.01, law), rel=1e-9)
        variance = theory.log_norm_variance(8, 8, 0.01, law)
        offset = 0.0 if law == "orthogonal" else float(special.polygamma(1, 4.0)) / 4.0
        expected = np.sqrt(np.arange(10) * variance + offset)
        # the kernel (skewness -2: a gamma shape) is laid on the grid cell by cell, each cell with its exact
        # mass and mean; its variance gains up to step^2/12 per cell (the grid's resolution), ~1e-4 here
        np.testing.assert_allclose(plan.std_log_norm, expected, rtol=1e-3, atol=1e-9)
        he = [theory.he_scale(8, 0.01)] * 9 + [math.sqrt(1 / 8)] if law == "gaussian" else [
            theory.orthogonal_gain(0.01)] * 9 + [1.0]
        drift = ct.predict_chain(layers, law, weight_scales=he).drift
        assert drift[1:-1] == pytest.approx(theory.lyapunov_exponent(8, 8, 0.01, he[0], law), abs=1e-9)


def test_operating_scale_and_input_scale():
    layers = [(16, 16, "tanh")] * 5 + [(16, 4, None)]
    plan = ct.predict_chain(layers, operating_scale=0.5, input_scale=3.0)
    assert np.allclose(plan.mean_log_norm, math.log(0.5), atol=1e-9)
    assert plan.drift[0] == pytest.approx(math.log(0.5) - math.log(3.0))
    # the first layer maps an input of rms 3 to pre-activations of rms ~0.5
    assert plan.weight_scales[0] == pytest.approx(
        0.5 / (3.0 * math.sqrt(16)) * math.exp(-0.5 * (math.log(2 / 16) + special.digamma(8))), rel=1e-9)
    big = ct.predict_chain(layers, operating_scale=3.0)
    assert big.weight_scales[1] != pytest.approx(plan.weight_scales[1] * 6.0, rel=1e-3)  # not homogeneous


def test_a_100_layer_plan_is_fast():
    layers = [(64, 64, "gelu")] * 99 + [(64, 10, None)]
    ct.predict_chain(layers)  # tables are cached per (activation, width, law)
    plan = ct.predict_chain(layers)
    assert plan.seconds < 1.0, plan.seconds
    assert plan.mean_log_norm.shape == (100,) and np.isfinite(plan.std_log_norm).all()


def test_imports_without_torch():
    code = ("import sys; from lightning_lyapunov import chain_theory as ct; "
            "ct.critical_scale('gelu', 4, 4); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docstring_examples():
    failures, tried = doctest.testmod(ct, optionflags=doctest.ELLIPSIS)
    assert tried > 10 and failures == 0


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: ct.critical_scale("gelu", 0, 4), ValueError, r"d_in=0 is invalid"),
        (lambda: ct.critical_scale("gelu", 4, 2.5), TypeError, r"d_out=2.5 is invalid"),
        (lambda: ct.critical_scale("gelu", 4, 4, scale=-1.0), ValueError, r"scale=-1.0 is invalid.*positive"),
        (lambda: ct.critical_scale("gelu", 4, 4, "haar"), ValueError, r"distribution='haar'.*'gaussian', 'orthogonal'"),
        (lambda: ct.lyapunov_exponent("gelu", 4, 4, 0.0), ValueError, r"weight_scale=0.0 is invalid"),
        (lambda: ct.expected_log_q("gelu", 4, 1.0, drawn_in=0, distribution="orthogonal"), ValueError,
         r"drawn_in=0"),
        (lambda: ct.expected_log_q("swiglu", 4), ValueError, r"activation='swiglu' is invalid"),
        (lambda: ct.expected_log_q(3, 4), TypeError, r"activation=3 is invalid"),
        (lambda: ct.predict_chain([]), ValueError, r"layers=\[\] is invalid"),
        (lambda: ct.predict_chain("gelu"), TypeError, r"layers='gelu' is invalid"),
        (lambda: ct.predict_chain([(4, 4)]), TypeError, r"layers\[0\]=\(4, 4\) is invalid"),
        (lambda: ct.predict_chain([(4, 4, "gelu"), (4, 0, None)]), ValueError, r"layers\[1\]\[1\] \(d_out\)=0"),
        (lambda: ct.predict_chain([(4, 4, "gelo")]), ValueError, r"layers\[0\]\[2\] \(activation\)='gelo'"),
        (lambda: ct.predict_chain([(4, 4, "gelu")], weight_scales=[1.0, 2.0]), ValueError,
         r"weight_scales=.*one per layer"),
        (lambda: ct.predict_chain([(4, 4, "gelu")] * 2, operating_scale=[1.0]), ValueError,
         r"operating_scale=.*2 positive"),
        (lambda: ct.predict_chain([(4, 4, "gelu")], input_scale=0.0), ValueError, r"input_scale=0.0 is invalid"),
        (lambda: ct.predict_chain([(4, 4, "gelu")], floor=0.5), ValueError, r"floor=0.5 is invalid"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
