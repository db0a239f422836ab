"""Monte Carlo checks of two statements of docs/theory.md that an earlier version got wrong.

Section 4: the mean square over random draws grows exactly by ``sigma^2 (1+a^2) d / 2`` per Gaussian
layer (``eta^2 (1+a^2) / 2`` per square Haar layer), not by the log-normal ``exp(2 s^2)``.
Section 6: the kurtosis recursion closes to ``kappa (1 + C_a / w)`` only on the line ``c + 1 = kappa / 3``.
"""

import math
from pathlib import Path

import numpy as np
import torch

from benchmarks._lib.chains import batched_haar, leaky_relu
from benchmarks._lib.package import theory
from benchmarks.theory import mean_square_growth

DOC = Path(__file__).resolve().parents[1] / "docs" / "theory.md"
WIDTH, SLOPE = 2, 0.1


def mean_square_factor(weights: torch.Tensor, layers: int) -> tuple[float, float]:
    """log of the Monte Carlo mean of r_L^2 / r_0^2 over independent chains, and its standard error;
    ``weights`` ``(layers, n, d, d)``, input (1, ..., 1)."""
    x = torch.ones(weights.shape[1], weights.shape[2], dtype=torch.float64)
    for w in weights[:layers]:
        x = leaky_relu(torch.bmm(w, x.unsqueeze(-1)).squeeze(-1), SLOPE)
    ratio = x.pow(2).mean(1)  # r_0 = 1
    return math.log(float(ratio.mean())), float(ratio.std() / ratio.mean()) / math.sqrt(len(ratio))


def test_exact_mean_square_at_the_critical_scale_not_the_log_normal_one():
    sigma = theory.critical_scale(WIDTH, WIDTH, SLOPE)
    exact = mean_square_growth(WIDTH, SLOPE, sigma)
    assert math.isclose(exact, math.log(sigma**2 * (1 + SLOPE**2) * WIDTH / 2))
    assert round(exact, 3) == 1.643  # the number the doc quotes
    log_normal = 2 * theory.log_norm_variance(WIDTH, WIDTH, SLOPE)
    assert round(log_normal, 2) == 2.72
    generator = torch.Generator().manual_seed(0)
    weights = sigma * torch.randn(2, 400_000, WIDTH, WIDTH, generator=generator, dtype=torch.float64)
    for layers in (1, 2):
        measured, se = mean_square_factor(weights, layers)
        assert abs(measured - layers * exact) < 4 * se, (layers, measured, layers * exact, se)
        assert measured < layers * (exact + log_normal) / 2  # far below the log-normal value


def test_exact_mean_square_of_a_square_haar_layer():
    eta = theory.critical_scale(WIDTH, WIDTH, SLOPE, "orthogonal")
    weights = eta * batched_haar(400_000, WIDTH, torch.Generator().manual_seed(1)).unsqueeze(0)
    measured, se = mean_square_factor(weights, 1)
    assert abs(measured - math.log(eta**2 * (1 + SLOPE**2) / 2)) < 4 * se


def test_kurtosis_closed_form_holds_on_the_invariant_line_only():
    width, depth = 10, 8
    c_a = (5 - 2 * SLOPE**2 + 5 * SLOPE**4) / (1 + SLOPE**2) ** 2
    closed = 3.0 * (1 + c_a / width) ** np.arange(depth)
    np.testing.assert_allclose(theory.kurtosis_by_depth(width, SLOPE, depth=depth), closed, rtol=1e-12)
    start = 4.0  # with c_1 = 0: c + 1 = 1 != 4 / 3, off the line
    off_line = theory.kurtosis_by_depth(width, SLOPE, depth=depth, initial_kurtosis=start)
    assert abs(off_line[-1] / (start * (1 + c_a / width) ** (depth - 1)) - 1) > 0.01


def test_the_doc_states_the_exact_forms():
    text = DOC.read_text()
    assert "E r_L^2 = r_0^2 (sigma^2 (1+a^2) d / 2)^L" in text
    assert "`c + 1 = kappa / 3` is invariant" in text
    assert "the mean square over draws is `E r_L^2 = r_0^2 exp(2 L s^2)`" not in text
