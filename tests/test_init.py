"""In-place initializers: scales, structure, determinism and errors."""

import inspect
import math

import pytest
import torch

from helpers import gen
from lightning_lyapunov import init, theory


@pytest.mark.parametrize(
    "fn,expected",
    [
        (lambda w, g: init.lyapunov_normal_(w, 0.1, generator=g), theory.critical_scale(300, 200, 0.1)),
        (lambda w, g: init.fractional_moment_normal_(w, 0.8, 0.0, generator=g),
         theory.critical_scale(300, 200, 0.0, moment=0.8)),
        (lambda w, g: init.he_normal_(w, 0.2, generator=g), math.sqrt(2 / (1.04 * 300))),
        (lambda w, g: init.glorot_normal_(w, generator=g), math.sqrt(2 / 500)),
    ],
)
def test_gaussian_schemes_have_the_theory_std(fn, expected):
    w = fn(torch.empty(200, 300), gen())
    # the sample std of 60,000 Gaussians has relative standard error 0.29 %
    assert w.std().item() == pytest.approx(expected, rel=0.012)
    assert abs(w.mean().item()) < 4 * expected / math.sqrt(w.numel())


def test_conv_fans_are_channels_times_kernel():
    w = init.lyapunov_normal_(torch.empty(32, 8, 5, 5), 0.1, generator=gen())
    assert w.std().item() == pytest.approx(theory.critical_scale(8 * 25, 32, 0.1), rel=0.02)
    w2 = init.lyapunov_normal_(torch.empty(32, 8, 5, 5), 0.1, fans=(50, 16), generator=gen())
    assert w2.std().item() == pytest.approx(theory.critical_scale(50, 16, 0.1), rel=0.02)


def test_moment_two_is_he_for_the_same_draw():
    a = init.fractional_moment_normal_(torch.empty(30, 20), 2.0, 0.1, generator=gen(3))
    b = init.he_normal_(torch.empty(30, 20), 0.1, generator=gen(3))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (7, 7), (6, 2, 3)])
def test_orthogonal_rows_or_columns_are_orthonormal_times_gain(shape):
    w = init.lyapunov_orthogonal_(torch.empty(shape), 0.1, generator=gen())
    m = w.reshape(shape[0], -1).double()
    rows, cols = m.shape
    gain = theory.critical_scale(cols, rows, 0.1, "orthogonal")
    gram = m @ m.T if rows <= cols else m.T @ m
    torch.testing.assert_close(gram / gain**2, torch.eye(min(rows, cols), dtype=torch.float64), atol=1e-5, rtol=0)


def test_orthogonal_fills_non_contiguous_views_and_low_precision():
    base = torch.zeros(4, 6, 3)
    view = base.transpose(0, 1)  # what the surgery passes for transposed convolutions
    init.orthogonal_(view, 2.0**0.5, generator=gen())
    m = view.reshape(6, -1)
    torch.testing.assert_close(m @ m.T, 2.0 * torch.eye(6), atol=1e-5, rtol=0)
    half = init.orthogonal_(torch.empty(8, 8, dtype=torch.bfloat16), generator=gen())
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()


def test_orthogonal_has_torchs_signature_and_gain():
    # torch's vocabulary kept exact: the second positional argument is the gain, 1 by default
    assert list(inspect.signature(init.orthogonal_).parameters) == ["tensor", "gain", "generator"]
    w = init.orthogonal_(torch.empty(5, 5), generator=gen())
    torch.testing.assert_close(w @ w.T, torch.eye(5), atol=1e-5, rtol=0)
    w = init.orthogonal_(torch.empty(5, 5), 0.5, generator=gen())
    torch.testing.assert_close(w @ w.T, 0.25 * torch.eye(5), atol=1e-5, rtol=0)


def test_every_slope_aware_initializer_defaults_to_relu():
    # one negative_slope default everywhere, torch's kaiming default a=0
    for name in init.__all__:
        parameter = inspect.signature(getattr(init, name)).parameters.get("negative_slope") \
            if callable(getattr(init, name)) else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            assert parameter.default == 0.0, name
    torch.manual_seed(0)
    relu = init.lyapunov_normal_(torch.empty(4000, 2), generator=gen(3))
    explicit = init.lyapunov_normal_(torch.empty(4000, 2), negative_slope=0.0, generator=gen(3))
    assert torch.equal(relu, explicit)


def test_orthogonal_is_haar_not_biased():
    # for Haar O (n x n), E O_11^2 = 1/n and E O_11^4 = 3/(n(n+2))
    n, draws = 4, 4000
    g = gen(1)
    first = torch.stack([init.orthogonal_(torch.empty(n, n), gain=1.0, generator=g)[0, 0] for _ in range(draws)])
    assert (first**2).mean().item() == pytest.approx(1 / n, abs=0.012)
    assert first.mean().item() == pytest.approx(0.0, abs=0.03)


@pytest.mark.parametrize("m,n", [(3, 5), (5, 3), (16, 16), (1, 4)])
def test_stiefel_structure(m, n):
    w = init.stiefel_orthogonal_(torch.empty(m, n, dtype=torch.float64), generator=gen())
    gram = w @ w.T if m <= n else w.T @ w
    torch.testing.assert_close(gram, torch.eye(min(m, n), dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(w.sum(1), torch.full((m,), math.sqrt(n / m), dtype=torch.float64))
    torch.testing.assert_close(w.sum(0), torch.full((n,), math.sqrt(m / n), dtype=torch.float64))


def test_stiefel_units_fire_more_often_than_he_on_relu_inputs():
    g = gen(2)
    x = torch.relu(torch.randn(20000, 64, generator=g))
    stiefel = (x @ init.stiefel_orthogonal_(torch.empty(64, 64), generator=g).T > 0).float().mean().item()
    he = (x @ init.he_normal_(torch.empty(64, 64), generator=g).T > 0).float().mean().item()
    assert stiefel == pytest.approx(0.753, abs=0.02)  # DESIGN section 5
    assert he == pytest.approx(0.5, abs=0.03)


def test_stiefel_deep_relu_net_has_no_dead_unit():
    g = gen(4)
    h = torch.rand(256, 32, generator=g)
    for _ in range(200):
        h = torch.relu(h @ init.stiefel_orthogonal_(torch.empty(32, 32), generator=g).T)
    assert (h > 0).any(0).all()


def test_zero_is_identity_partial_identity_and_hadamard():
    torch.testing.assert_close(init.hadamard_identity_(torch.empty(4, 4)), torch.eye(4))
    torch.testing.assert_close(init.hadamard_identity_(torch.empty(3, 5)), torch.eye(3, 5))
    w = init.hadamard_identity_(torch.empty(6, 3))
    k = 3  # ceil(log2 6)
    assert torch.all(w.abs() == 2.0 ** (-(k - 1) / 2))
    conv = init.hadamard_identity_(torch.empty(4, 4, 3, 3))
    torch.testing.assert_close(conv[:, :, 1, 1], torch.eye(4))
    assert conv.abs().sum().item() == 4


def test_same_generator_same_weights():
    for fn in (init.lyapunov_normal_, init.lyapunov_orthogonal_, init.stiefel_orthogonal_):
        a, b = fn(torch.empty(6, 5), generator=gen(7)), fn(torch.empty(6, 5), generator=gen(7))
        assert torch.equal(a, b)


def test_resolve_init_matches_the_theory():
    layer = init.resolve_init("lyapunov", 3, 5, 0.2, "orthogonal")
    assert layer.scale == theory.critical_scale(3, 5, 0.2, "orthogonal")
    assert layer.exponent == pytest.approx(0.0, abs=1e-12)
    assert layer.variance == theory.log_norm_variance(3, 5, 0.2, "orthogonal")
    he = init.resolve_init("he", 4, 4, 0.1, "orthogonal")  # He ignores the distribution
    assert he.distribution == "gaussian" and he.exponent == theory.lyapunov_exponent(4, 4, 0.1, he.scale)
    assert init.resolve_init("zero", 4, 4, 0.1).exponent is None
    frac = init.resolve_init("fractional", 4, 4, 0.1, "gaussian", moment=2.0)
    assert frac.scale == pytest.approx(theory.he_scale(4, 0.1), rel=1e-12)


def test_init_weight_draws_what_resolve_init_says():
    layer = init.resolve_init("lyapunov", 300, 200, 0.1, "gaussian")
    w = init.init_weight_(torch.empty(200, 300), layer, generator=gen())
    assert w.std().item() == pytest.approx(layer.scale, rel=0.012)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scheme="kaiming"), "unknown scheme.*lyapunov"),
        (dict(scheme="fractional"), r"needs moment.*\(0, 2\]"),
        (dict(scheme="fractional", moment=0.0), r"moment.*\(0, 2\]"),
        (dict(scheme="fractional", moment=3.0), r"moment.*\(0, 2\]"),
        (dict(scheme="lyapunov", moment=1.0), "fractional"),
        (dict(scheme="lyapunov", distribution="uniform"), "distribution"),
        (dict(scheme="he", negative_slope=-0.5), r"negative_slope.*\[0, 1\]"),
        (dict(scheme="zero", negative_slope=2.0), r"negative_slope.*\[0, 1\]"),
    ],
)
def test_resolve_init_errors(kwargs, match):
    args = dict(d_in=4, d_out=4, negative_slope=0.1) | kwargs
    with pytest.raises(ValueError, match=match):
        init.resolve_init(**args)


def test_one_dimensional_tensor_is_rejected():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.lyapunov_normal_(torch.empty(5))


def _stiefel_by_two_qrs(m, n, g):
    """The definition, drawn literally: P_k = Q of [1 | G] (first column 1 / sqrt(k)), W = P_m I P_n^T."""
    k = min(m, n)

    def leading(size):
        a = torch.cat([torch.ones(size, 1, dtype=torch.float64), torch.randn(size, k - 1, generator=g, dtype=torch.float64)], 1)
        q, r = torch.linalg.qr(a)
        return q * torch.where(r.diagonal() >= 0, 1.0, -1.0).to(q.dtype)

    return leading(m) @ leading(n).T


@pytest.mark.parametrize("m,n", [(3, 5), (4, 4)])
def test_stiefel_one_qr_construction_has_the_law_of_the_definition(m, n):
    # W = H_m diag(1, Z) H_n with one QR must have the law of P_m I P_n^T with two QRs: a wrong frame
    # (e.g. Z not Haar, or H not mapping e_1 to 1/sqrt(k)) changes the entries' distribution
    from scipy.stats import ks_2samp

    draws, g = 1500, gen(5)
    fast = torch.stack([init.stiefel_orthogonal_(torch.empty(m, n, dtype=torch.float64), generator=g)
                        for _ in range(draws)])
    slow = torch.stack([_stiefel_by_two_qrs(m, n, g) for _ in range(draws)])
    for i, j in ((0, 0), (1, 2), (m - 1, n - 1)):
        assert ks_2samp(fast[:, i, j].numpy(), slow[:, i, j].numpy()).pvalue > 1e-3, (i, j)
    # and a control: the same test tells a plain Haar matrix (no mean calibration) apart
    haar = torch.stack([init.orthogonal_(torch.empty(m, n, dtype=torch.float64), gain=1.0, generator=g)
                        for _ in range(draws)])
    assert ks_2samp(haar[:, 1, 2].numpy(), slow[:, 1, 2].numpy()).pvalue < 1e-6


_DRAW_BITS = """
import hashlib, sys, torch
from lightning_lyapunov import init
torch.set_num_threads(int(sys.argv[1]))
digest = hashlib.sha256()
for fn in (init.orthogonal_, init.lyapunov_orthogonal_, init.stiefel_orthogonal_):
    for shape in ((96, 96), (300, 96), (64, 3, 3, 3), (40, 500)):
        w = fn(torch.empty(shape), generator=torch.Generator().manual_seed(3))
        digest.update(w.numpy().tobytes())
print(digest.hexdigest())
"""


def test_qr_draws_are_bit_identical_for_any_thread_count(monkeypatch):
    # MKL's QR rounds differently on 1 and 2 threads (up to 3e-7 at width 96); the draws must not:
    # 2 threads here, 1 thread in a fresh process
    import contextlib
    import io
    import subprocess
    import sys

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(sys, "argv", ["-", "2"])
        here = io.StringIO()
        with contextlib.redirect_stdout(here):
            exec(_DRAW_BITS, {})
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    there = subprocess.run([sys.executable, "-c", _DRAW_BITS, "1"], capture_output=True, text=True, check=True)
    assert here.getvalue().strip() == there.stdout.strip()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_weight_is_drawn_on_the_gpu_with_the_cpu_generators_gaussian():
    # same seed, same weights: the Gaussian comes from the (CPU) generator, the QR runs on the GPU
    for fn in (init.orthogonal_, init.stiefel_orthogonal_):
        cpu = fn(torch.empty(64, 48), generator=gen(9))
        gpu = fn(torch.empty(64, 48, device="cuda"), generator=gen(9))
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


def test_stiefel_makes_no_haar_prediction():
    # Stiefel matrices are mean-calibrated, not Haar: the Haar exponent at gain 1 predicted -8.06 for a
    # 20-layer 3x3 ReLU CNN that measures -0.42, so the plan gives no prediction (as for ZerO).
    layer = init.resolve_init("stiefel", 16, 16, 0.0)
    assert (layer.distribution, layer.scale, layer.exponent, layer.variance) == ("stiefel", 1.0, None, None)
    with pytest.raises(ValueError, match="slope"):
        init.resolve_init("stiefel", 16, 16, 2.0)
