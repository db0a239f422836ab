"""Batched random weights and signal chains for the Monte Carlo benchmarks (``theory``, ``lln_clt``,
``empirical_variance``, ``cifar_variance``): thousands of random nets drawn and run as stacked tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks._lib.package import theory as th

Draw = Callable[[int, torch.Generator], torch.Tensor]  # (n_nets, generator) -> weights (n_nets, d_out, d_in)


def _sign_fixed_q(a: torch.Tensor) -> torch.Tensor:
    q, r = torch.linalg.qr(a)
    signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) >= 0, 1.0, -1.0).to(a.dtype)
    return q * signs.unsqueeze(-2)


def batched_haar(n: int, d: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` independent Haar orthogonal ``d x d`` matrices: Q of a Gaussian matrix, sign-fixed so that
    ``diag(R) > 0`` (the law of ``lightning_lyapunov.init.orthogonal_``)."""
    return _sign_fixed_q(torch.randn(n, d, d, generator=generator, dtype=dtype))


def semi_orthogonal(n: int, rows: int, cols: int, g: torch.Generator, first_column_ones: bool = False) -> torch.Tensor:
    """``n`` float32 matrices ``(rows, cols)`` with orthonormal columns: sign-fixed thin QR of a Gaussian
    matrix (with its first column set to ones for the Stiefel construction)."""
    a = torch.randn(n, rows, cols, generator=g)
    if first_column_ones:
        a[:, :, 0] = 1.0
    return _sign_fixed_q(a)


def batched_stiefel(n: int, d: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` square mean-calibrated orthogonal matrices ``P_1 P_2^T`` (``P`` the sign-fixed Q of
    ``[1 | Gaussian]``, as ``lightning_lyapunov.init.stiefel_orthogonal_``): ``W 1 = 1``."""

    def basis() -> torch.Tensor:
        columns = torch.randn(n, d, d, generator=generator, dtype=dtype)
        columns[:, :, 0] = 1.0
        return _sign_fixed_q(columns)

    return basis() @ basis().transpose(-1, -2)


def gaussian_draw(d: int, scale: float) -> Draw:
    return lambda n, g: scale * torch.randn(n, d, d, generator=g, dtype=torch.float64)


def orthogonal_draw(d: int, gain: float) -> Draw:
    return lambda n, g: gain * batched_haar(n, d, g)


def square_draw(scheme: str, d: int, a: float) -> Draw:
    """The float64 square ``d x d`` layers of ``scheme`` at the scales of ``apply_init`` for slope ``a``:
    "he", "lyapunov gaussian", "lyapunov orthogonal", "orthogonal" (gain), "stiefel", "zero" (identity)."""
    if scheme == "he":
        return gaussian_draw(d, th.he_scale(d, a))
    if scheme == "lyapunov gaussian":
        return gaussian_draw(d, th.critical_scale(d, d, a))
    if scheme == "lyapunov orthogonal":
        return orthogonal_draw(d, th.critical_scale(d, d, a, "orthogonal"))
    if scheme == "orthogonal":
        return orthogonal_draw(d, th.orthogonal_gain(a))
    if scheme == "stiefel":
        return lambda n, g: batched_stiefel(n, d, g)
    if scheme == "zero":  # ZerO: the identity for square layers (deterministic)
        return lambda n, g: torch.eye(d, dtype=torch.float64).expand(n, d, d)
    raise ValueError(f"unknown scheme {scheme!r}")


def leaky_relu(z: torch.Tensor, slope: float) -> torch.Tensor:
    return torch.where(z > 0, z, slope * z)


def log_norm_increments(draw: Draw, d: int, slope: float, n_nets: int, depth: int, generator: torch.Generator
                        ) -> torch.Tensor:
    """Per-layer increments ``log r(x_{l+1}) - log r(x_l)``, shape ``(depth, n_nets)``, of ``n_nets``
    independent random chains started at ``x_0 = (1, ..., 1)``. The signal is renormalized after every
    layer (the increments do not depend on the norm), so nothing under- or overflows at any depth."""
    x = torch.ones(n_nets, d, dtype=torch.float64)
    out = torch.empty(depth, n_nets, dtype=torch.float64)
    for layer in range(depth):
        y = leaky_relu(torch.bmm(draw(n_nets, generator), x.unsqueeze(-1)).squeeze(-1), slope)
        norm = y.norm(dim=1)
        out[layer] = torch.log(norm / x.norm(dim=1))
        x = y / norm.clamp_min(1e-300).unsqueeze(1)
    return out
