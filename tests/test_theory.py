"""The theory module against closed forms and Monte Carlo simulations (numpy only)."""

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import special, stats

from lightning_lyapunov import theory

RNG_SEED = 20261122


def leaky(z, a):
    return np.where(z > 0, z, a * z)


def log_r(v):
    with np.errstate(divide="ignore"):  # a dead ReLU layer has log-norm -inf
        return np.log(np.linalg.norm(v, axis=-1) / math.sqrt(v.shape[-1]))


def haar(rng, n, rows, cols):
    """n Haar-distributed semi-orthogonal (rows x cols) matrices, as torch.nn.init.orthogonal_."""
    big, small = max(rows, cols), min(rows, cols)
    q, r = np.linalg.qr(rng.standard_normal((n, big, small)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    return q if rows >= cols else np.swapaxes(q, 1, 2)


def one_layer_increments(rng, d_in, d_out, a, scale, distribution, n=200_000):
    """log r(y) - log r(x) for one random layer and a fixed input x."""
    x = rng.standard_normal(d_in)
    if distribution == "gaussian":
        w = scale * rng.standard_normal((n, d_out, d_in))
    else:
        w = scale * haar(rng, n, d_out, d_in)
    y = leaky(w @ x, a)
    return log_r(y) - log_r(x[None])


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("d", [1, 2, 3, 10, 1000, 65536])
def test_linear_layer_is_chi_square(d):
    assert theory.expected_log_q(d, 1.0) == pytest.approx(math.log(2) + special.digamma(d / 2), rel=1e-9)
    assert theory.log_q_variance(d, 1.0) == pytest.approx(special.polygamma(1, d / 2), rel=1e-6)


@pytest.mark.parametrize("d", [1, 2, 5, 40, 1000, 65536])
def test_relu_is_binomial_mixture_conditional_on_survival(d):
    n = np.arange(1, d + 1)
    w = stats.binom.pmf(n, d, 0.5)
    w /= w.sum()
    logs = math.log(2) + special.digamma(n / 2)
    mean = float(np.sum(w * logs))
    var = float(np.sum(w * (special.polygamma(1, n / 2) + (logs - mean) ** 2)))
    assert theory.expected_log_q(d, 0.0) == pytest.approx(mean, rel=1e-9)
    assert theory.log_q_variance(d, 0.0) == pytest.approx(var, rel=1e-6)


@pytest.mark.parametrize("d", [1, 7, 64, 65536])
@pytest.mark.parametrize("s", [0.01, 0.8, 1.0, 1.99])
def test_fractional_moment_closed_forms(d, s):
    p = s / 2
    chi2 = 2**p * math.exp(special.gammaln(d / 2 + p) - special.gammaln(d / 2))
    assert theory.moment_q(d, 1.0, s) == pytest.approx(chi2, rel=1e-6)
    n = np.arange(1, d + 1)
    relu = np.sum(stats.binom.pmf(n, d, 0.5) * 2**p * np.exp(special.gammaln(n / 2 + p) - special.gammaln(n / 2)))
    assert theory.moment_q(d, 0.0, s) == pytest.approx(float(relu), rel=1e-6)


def test_design_reference_values_at_width_two():
    assert theory.critical_scale(2, 2, 0.1) == pytest.approx(2.263, abs=5e-4)
    assert theory.critical_scale(2, 2, 0.1, "orthogonal") == pytest.approx(2.398, abs=5e-4)
    he = theory.he_scale(2, 0.1)
    assert he == pytest.approx(0.995, abs=5e-4)
    assert theory.lyapunov_exponent(2, 2, 0.1, he) == pytest.approx(-0.82, abs=5e-3)
    assert theory.log_norm_variance(2, 2, 0.1) == pytest.approx(1.36, abs=5e-3)
    assert theory.critical_scale(16, 16, 0.1) == pytest.approx(0.383, abs=5e-4)


@pytest.mark.parametrize("d_in,d_out,a", [(64, 64, 0.0), (3, 7, 0.1), (100, 10, 0.5), (1, 1, 1.0)])
def test_second_moment_is_exactly_he(d_in, d_out, a):
    assert theory.critical_scale(d_in, d_out, a, moment=2.0) == pytest.approx(theory.he_scale(d_in, a), rel=1e-12)
    gain = theory.critical_scale(d_in, d_out, a, "orthogonal", moment=2.0)
    expected = theory.orthogonal_gain(a) * math.sqrt(max(d_in, d_out) / d_in)
    assert gain == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("d", [1, 2, 16, 1024])
def test_linear_orthogonal_square_is_an_isometry(d):
    assert theory.critical_scale(d, d, 1.0, "orthogonal") == pytest.approx(1.0, rel=1e-9)
    assert theory.lyapunov_exponent(d, d, 1.0, 1.0, "orthogonal") == pytest.approx(0.0, abs=1e-9)
    assert theory.log_norm_variance(d, d, 1.0, "orthogonal") == pytest.approx(0.0, abs=1e-9)


def test_moment_zero_is_the_limit_of_small_moments():
    lyap = theory.critical_scale(8, 8, 0.2)
    assert theory.critical_scale(8, 8, 0.2, moment=1e-4) == pytest.approx(lyap, rel=1e-4)


def test_kurtosis_gaussian_closure_matches_matrix_recursion():
    for a in (0.0, 0.1, 1.0):
        c_a = (5 - 2 * a**2 + 5 * a**4) / (1 + a**2) ** 2
        widths = [3, 10, 7, 50]
        predicted = theory.kurtosis_by_depth(widths, a)
        closed = 3 * np.cumprod([1.0] + [1 + c_a / w for w in widths])
        np.testing.assert_allclose(predicted, closed, rtol=1e-12)


# ----------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("distribution", ["gaussian", "orthogonal"])
@pytest.mark.parametrize("d_in,d_out,a", [(2, 2, 0.1), (3, 5, 0.2), (6, 3, 0.0), (4, 4, 0.01)])
def test_monte_carlo_drift_at_critical_and_he_scale(distribution, d_in, d_out, a):
    rng = np.random.default_rng(RNG_SEED)
    he = theory.he_scale(d_in, a) if distribution == "gaussian" else theory.orthogonal_gain(a)
    for scale in (theory.critical_scale(d_in, d_out, a, distribution), he):
        inc = one_layer_increments(rng, d_in, d_out, a, scale, distribution)
        if a == 0.0:
            inc = inc[np.isfinite(inc)]  # the theory is conditional on a non-zero output
        se = inc.std() / math.sqrt(inc.size)
        predicted = theory.lyapunov_exponent(d_in, d_out, a, scale, distribution)
        assert abs(inc.mean() - predicted) < 4 * se + 1e-4, (inc.mean(), predicted, se)
        variance = theory.log_norm_variance(d_in, d_out, a, distribution)
        assert inc.var() == pytest.approx(variance, rel=0.03)


@pytest.mark.parametrize("distribution", ["gaussian", "orthogonal"])
def test_clt_variance_of_log_norm_over_depth(distribution):
    rng = np.random.default_rng(RNG_SEED + 1)
    d, a, depth, n = 2, 0.1, 50, 4000
    scale = theory.critical_scale(d, d, a, distribution)
    # track the log-norm by summing increments instead of letting the signal under/overflow
    x = rng.standard_normal((n, d))
    total = np.zeros(n)
    for _ in range(depth):
        w = scale * (rng.standard_normal((n, d, d)) if distribution == "gaussian" else haar(rng, n, d, d))
        y = leaky(np.einsum("nij,nj->ni", w, x), a)
        total += log_r(y) - log_r(x)
        x = y / np.linalg.norm(y, axis=1, keepdims=True)
    expected_var = depth * theory.log_norm_variance(d, d, a, distribution)
    # the sample variance of n draws has relative standard error ~ sqrt(2 / n) = 2.2 %
    assert total.var() == pytest.approx(expected_var, rel=0.09)
    assert abs(total.mean()) < 4 * total.std() / math.sqrt(n)


def test_fractional_moment_is_preserved_over_depth():
    rng = np.random.default_rng(RNG_SEED + 3)
    d, a, s, depth, n = 4, 0.1, 1.0, 5, 200_000
    scale = theory.critical_scale(d, d, a, moment=s)
    x = np.broadcast_to(rng.standard_normal(d), (n, d))
    start = np.exp(s * log_r(x))
    for _ in range(depth):
        x = leaky(np.einsum("nij,nj->ni", scale * rng.standard_normal((n, d, d)), x), a)
    ratio = np.exp(s * log_r(x)) / start
    se = ratio.std() / math.sqrt(n)
    assert abs(ratio.mean() - 1.0) < 4 * se, (ratio.mean(), se)
    # He (s = 2) would move the s = 1 moment by (sigma_He / sigma_s)^(s depth): far outside the tolerance
    assert abs((theory.he_scale(d, a) / scale) ** (s * depth) - 1.0) > 8 * se


@pytest.mark.parametrize("weights,weight_kurtosis", [("gaussian", 3.0), ("uniform", 1.8)])
def test_kurtosis_recursion_against_monte_carlo(weights, weight_kurtosis):
    rng = np.random.default_rng(RNG_SEED + 4)
    w_width, depth, a, n = 16, 5, 0.1, 100_000
    x = np.broadcast_to(rng.standard_normal(w_width), (n, w_width)).astype(np.float64)
    x = x / np.abs(x).max()
    sigma = theory.he_scale(w_width, a)
    h = x
    measured = []
    for layer in range(depth):
        if weights == "gaussian":
            w = rng.standard_normal((n, w_width, w_width))
        else:
            w = rng.uniform(-math.sqrt(3), math.sqrt(3), (n, w_width, w_width))
        z = np.einsum("nij,nj->ni", sigma * w, h)
        measured.append(np.mean(z[:, 0] ** 4) / np.mean(z[:, 0] ** 2) ** 2)
        h = leaky(z, a)
    kappa_1 = 3.0 + (weight_kurtosis - 3.0) * float(np.sum(x[0] ** 4) / np.sum(x[0] ** 2) ** 2)
    predicted = theory.kurtosis_by_depth(w_width, a, depth=depth, weight_kurtosis=weight_kurtosis,
                                         initial_kurtosis=kappa_1)
    np.testing.assert_allclose(measured, predicted, rtol=0.06)
    assert predicted[-1] > 1.5 * predicted[0]  # the growth is large against the tolerance


# ----------------------------------------------------------------------------- API behaviour


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: theory.critical_scale(0, 2, 0.1), "d_in"),
        (lambda: theory.critical_scale(2, 2.5, 0.1), "d_out"),
        (lambda: theory.critical_scale(2, 2, -0.1), r"negative_slope.*\[0, 1\]"),
        (lambda: theory.critical_scale(2, 2, 1.5), r"negative_slope.*\[0, 1\]"),
        (lambda: theory.critical_scale(2, 2, 0.1, moment=2.5), r"moment.*\[0, 2\]"),
        (lambda: theory.critical_scale(2, 2, 0.1, moment=-1), r"moment.*\[0, 2\]"),
        (lambda: theory.moment_q(2, 0.1, 0.0), r"moment.*\(0, 2\]"),
        (lambda: theory.critical_scale(2, 2, 0.1, distribution="uniform"), "distribution.*gaussian"),
        (lambda: theory.lyapunov_exponent(2, 2, 0.1, 0.0), "scale"),
        (lambda: theory.log_norm_variance(2, 2, 0.1, "haar"), "distribution"),
        (lambda: theory.kurtosis_by_depth(4, 0.1), "depth"),
        (lambda: theory.expected_log_q(2, 1e-200), "too small"),
    ],
)
def test_bad_input_names_the_argument_and_range(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_results_are_cached():
    theory._log_moments.cache_clear()
    theory.critical_scale(333, 333, 0.07)
    misses = theory._log_moments.cache_info().misses
    theory.critical_scale(333, 333, 0.07, "orthogonal")
    theory.lyapunov_exponent(333, 333, 0.07, 1.0)
    assert theory._log_moments.cache_info().misses == misses


def test_wide_and_extreme_arguments_are_finite():
    for d in (1, 65536):
        for a in (0.0, 1e-100, 1e-6, 0.5, 1.0):
            values = [theory.expected_log_q(d, a), theory.log_q_variance(d, a), theory.moment_q(d, a, 0.5)]
            assert all(math.isfinite(v) for v in values), (d, a, values)


def test_command_line_table_runs_without_torch():
    code = (
        "import sys, runpy; sys.argv=['x','--widths','2','--slopes','0.1','--depth','40'];"
        "runpy.run_module('lightning_lyapunov.theory', run_name='__main__');"
        "assert 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "| 2 | 0.1 | -0.8216" in out
    assert "-32.86" in out  # 40 layers of He at width 2
