"""In-place weight initializers in the style of :mod:`torch.nn.init`.

Every function takes a weight in Linear ``(d_out, d_in)`` or ConvNd ``(C_out, C_in / groups,
*kernel)`` layout, fills it in place under ``torch.no_grad()`` and returns it. Fans default to
``d_out = size(0)`` and ``d_in = numel / size(0)`` (a conv is a dense map from a patch of
``C_in * prod(kernel)`` values to ``C_out`` channels); ``fans=(d_in, d_out)`` overrides them.
Orthogonal schemes work on the flattened ``(size(0), numel / size(0))`` matrix. Random draws
use ``generator`` (which must live on the tensor's device, as in torch).

Example::

    >>> import torch
    >>> from lightning_lyapunov import init
    >>> w = torch.empty(2, 2)
    >>> _ = init.lyapunov_normal_(w, negative_slope=0.1, generator=torch.Generator().manual_seed(0))

Names keep torch's meaning: :func:`orthogonal_` is ``torch.nn.init.orthogonal_`` (gain 1 by
default; pass ``gain=theory.orthogonal_gain(a)`` for the Leaky-ReLU gain). Every function that
takes the activation's slope calls it ``negative_slope`` and defaults to ``0.0`` (ReLU), as
``torch.nn.init.kaiming_normal_``'s ``a``. ZerO's deterministic weights are
:func:`hadamard_identity_` (``torch.nn.init.zeros_`` fills zeros; this does not).

The named schemes (``SCHEMES``) are resolved per layer by :func:`resolve_init` into a
:class:`LayerInit` (what is drawn, at which scale, and what the theory predicts), which
:func:`init_weight_` then draws. Sampled Lyapunov init works on a whole model and a probe batch,
so it is not a per-tensor initializer: use ``lightning_lyapunov.apply_init(model, sampled=True, ...)``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_lyapunov import theory
from lightning_lyapunov._checks import (
    check_choice,
    check_fans,
    check_float,
    check_generator,
    check_tensor,
    invalid,
)

__all__ = [
    "DISTRIBUTIONS",
    "SCHEMES",
    "LayerInit",
    "fractional_moment_normal_",
    "glorot_normal_",
    "he_normal_",
    "init_weight_",
    "lyapunov_normal_",
    "lyapunov_orthogonal_",
    "hadamard_identity_",
    "orthogonal_",
    "resolve_init",
    "stiefel_orthogonal_",
    "validate_scheme",
]

SCHEMES = ("lyapunov", "fractional", "stiefel", "he", "glorot", "orthogonal", "zero")
DISTRIBUTIONS = theory.DISTRIBUTIONS

Fans = tuple[int, int]


# ----------------------------------------------------------------------------- helpers


def _check_weight(tensor: Tensor, generator: torch.Generator | None = None, *, qr: bool = False) -> Tensor:
    """A floating, non-empty weight of 2+ dimensions and a generator on its device (errors name the fix);
    ``qr``: a QR-based draw, which also takes a CPU generator (see :func:`_haar`)."""
    check_tensor("tensor", tensor)
    cpu = qr and isinstance(generator, torch.Generator) and generator.device.type == "cpu"
    check_generator("generator", generator, device=None if cpu else tensor.device)
    return tensor


def _fans(tensor: Tensor, fans: Fans | None) -> Fans:
    """(d_in, d_out) of a weight: the override, or (numel / size(0), size(0))."""
    if fans is not None:
        return check_fans("fans", fans)
    return tensor.numel() // tensor.size(0), tensor.size(0)


def _matrix_shape(tensor: Tensor) -> tuple[int, int]:
    return tensor.size(0), tensor.numel() // tensor.size(0)


def _work_dtype(tensor: Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def _one_thread(device: torch.device):
    """Run the block on one CPU thread: MKL's QR rounds differently with 2 threads than with 1, and
    the same seed must give the same bits whatever ``torch.get_num_threads()`` is."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _haar(rows: int, cols: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """A Haar semi-orthogonal (rows x cols) matrix: orthonormal rows if rows <= cols, else columns.

    Q of G = QR with diag(R) > 0 for a Gaussian ``G`` of shape (max, min), as torch's ``orthogonal_``.
    Same seed, same weights: ``G`` is drawn on the generator's device (the weight's device when
    ``generator`` is None, torch's convention) and moved to ``device``, where the QR runs; so a CPU
    generator gives a CUDA weight the same Gaussian as a CPU weight (the QR then agrees to
    rounding, ~1e-6). On the CPU the QR runs on one thread: bit-identical for any thread count.
    Memory: one (max x min) matrix; ``G`` is drawn column-major (LAPACK's layout) and factorized and
    turned into Q in place.
    """
    big, small = max(rows, cols), min(rows, cols)
    source = generator.device if generator is not None else device
    matrix = torch.empty(small, big, dtype=dtype, device=source).normal_(0.0, 1.0, generator=generator)
    matrix = matrix.to(device).T  # (big, small), column-major
    tau = matrix.new_empty(small)
    with _one_thread(matrix.device):
        torch.geqrf(matrix, out=(matrix, tau))  # R on and above the diagonal, the reflectors below
        signs = torch.where(matrix.diagonal() >= 0, 1.0, -1.0).to(dtype)
        torch.linalg.householder_product(matrix, tau, out=matrix)
    matrix.mul_(signs)
    return matrix if rows >= cols else matrix.T


def _reflect_(matrix: Tensor, dim: int) -> Tensor:
    """Apply, in place, the Householder reflection ``H`` (``H = H^T = H^-1``) mapping ``e_1`` to
    ``1 / sqrt(k)`` along ``dim`` (``k = matrix.size(dim)``): ``H M`` for ``dim=0``, ``M H`` for ``dim=1``.

    ``H = I - 2 w w^T / ||w||^2`` with ``w = e_1 - 1 / sqrt(k)``, ``||w||^2 = 2 - 2 / sqrt(k)``: O(k n)
    and no temporary of the matrix's size. The other columns of ``H`` span the complement of ``1``.
    """
    k = matrix.size(dim)
    if k == 1:
        return matrix
    w = torch.full((k,), -1.0 / math.sqrt(k), dtype=matrix.dtype, device=matrix.device)
    w[0] += 1.0
    beta = -2.0 / (2.0 - 2.0 / math.sqrt(k))
    if dim == 0:
        return matrix.addr_(w, w @ matrix, alpha=beta)
    return matrix.addr_(matrix @ w, w, alpha=beta)


def _write(tensor: Tensor, matrix: Tensor, gain: float = 1.0) -> Tensor:
    """Copy a (rows, cols) matrix of ours (scaled in place) into a weight of any layout (also a
    non-contiguous view) without a temporary of the weight's size where the layout allows."""
    if gain != 1.0:
        matrix.mul_(gain)
    try:
        target = tensor.view(matrix.shape)
    except RuntimeError:  # a view that cannot be flattened: copy through the weight's shape
        target, matrix = tensor, matrix.reshape(tensor.shape)
    target.copy_(matrix)
    return tensor


# ----------------------------------------------------------------------------- initializers


@torch.no_grad()
def lyapunov_normal_(
    tensor: Tensor,
    negative_slope: float = 0.0,
    *,
    fans: Fans | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gaussian ``N(0, sigma^2)`` with the Lyapunov exponent of the log-norm set to 0.

    ``sigma = sqrt(d_out / d_in) * exp(-1/2 E log Q_{d_out,a})`` (:func:`theory.critical_scale`).

    Example::

        >>> w = torch.empty(4, 4)
        >>> _ = lyapunov_normal_(w, negative_slope=0.1)
    """
    return _draw_scheme_(tensor, "lyapunov", negative_slope, "gaussian", None, fans, generator)


@torch.no_grad()
def lyapunov_orthogonal_(
    tensor: Tensor,
    negative_slope: float = 0.0,
    *,
    fans: Fans | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Haar (semi-)orthogonal ``eta * O`` with the Lyapunov exponent set to 0.

    ``eta = sqrt(d_out / d_in) * exp(-1/2 E log Q_{d_out,a} + 1/2 (log 2 + digamma(max(d_in, d_out)/2)))``.

    Example::

        >>> w = torch.empty(8, 3, 3)
        >>> _ = lyapunov_orthogonal_(w, negative_slope=0.1)
    """
    return _draw_scheme_(tensor, "lyapunov", negative_slope, "orthogonal", None, fans, generator)


@torch.no_grad()
def fractional_moment_normal_(
    tensor: Tensor,
    moment: float = 1.0,
    negative_slope: float = 0.0,
    *,
    fans: Fans | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gaussian that preserves the ``s``-th moment ``E r(x)^s`` of the signal, ``s`` in (0, 2].

    ``sigma = sqrt(d_out / d_in) * (E Q_{d_out,a}^{s/2})^{-1/s}`` (Gürbüzbalaban & Hu); ``s = 2`` is He.

    Example::

        >>> w = torch.empty(64, 64)
        >>> _ = fractional_moment_normal_(w, moment=0.8)    # the paper's ReLU setting
    """
    return _draw_scheme_(tensor, "fractional", negative_slope, "gaussian", moment, fans, generator)


@torch.no_grad()
def he_normal_(
    tensor: Tensor,
    negative_slope: float = 0.0,
    *,
    fans: Fans | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """He (Kaiming, fan-in) Gaussian: ``sigma = sqrt(2 / ((1 + a^2) d_in))``."""
    return _draw_scheme_(tensor, "he", negative_slope, "gaussian", None, fans, generator)


@torch.no_grad()
def glorot_normal_(
    tensor: Tensor,
    *,
    fans: Fans | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Glorot (Xavier) Gaussian: ``sigma = sqrt(2 / (d_in + d_out))``."""
    return _draw_scheme_(tensor, "glorot", 0.0, "gaussian", None, fans, generator)


@torch.no_grad()
def orthogonal_(tensor: Tensor, gain: float = 1.0, *, generator: torch.Generator | None = None) -> Tensor:
    """Haar (semi-)orthogonal ``gain * O``, as :func:`torch.nn.init.orthogonal_`.

    ``O`` is the Q factor of a Gaussian matrix with ``diag(R) > 0``, on the flattened
    ``(size(0), numel / size(0))`` matrix: orthonormal rows if ``size(0) <= numel / size(0)``,
    else orthonormal columns. Unlike torch's it also fills non-contiguous views, takes a CPU
    generator for a weight on another device, and gives the same bits for any thread count.

    Args:
        tensor: the weight, 2 or more dimensions.
        gain: the factor ``gain``; ``theory.orthogonal_gain(a)`` = ``sqrt(2 / (1 + a^2))`` keeps the
            second moment through a Leaky ReLU of slope ``a``.
        generator: the random generator (on the tensor's device, or the CPU).

    Example::

        >>> w = orthogonal_(torch.empty(3, 5), generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(w @ w.T, torch.eye(3), atol=1e-6)
        True
    """
    _check_weight(tensor, generator, qr=True)
    rows, cols = _matrix_shape(tensor)
    gain = check_float("gain", gain)
    return _write(tensor, _haar(rows, cols, _work_dtype(tensor), tensor.device, generator), gain)


@torch.no_grad()
def stiefel_orthogonal_(tensor: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Mean-calibrated orthogonal init for ReLU nets (Choi, Lee & Kim; a reconstruction, see README).

    ``W = P_m I_{m x n} P_n^T`` with ``P_k`` the Q factor of ``[1_k | G]`` (``G`` Gaussian
    ``k x (k-1)``), sign-fixed so its first column is ``1 / sqrt(k)``. ``W`` has orthonormal rows
    (or columns), every row sum ``sqrt(n / m)`` and every column sum ``sqrt(m / n)``: it maximizes
    the pre-activation mean ``1' W 1 = sqrt(m n)`` on the Stiefel manifold. Gain 1.

    Drawn in one QR of torch's ``orthogonal_`` size: the other columns of ``P_k`` are a Haar frame of
    the complement of ``1``, so ``W = H_m diag(1, Z) H_n`` with ``Z`` Haar ``(m-1) x (n-1)`` and
    ``H_k`` the Householder reflection taking ``e_1`` to ``1 / sqrt(k)`` (the same law; O(m n) on top
    of the QR, at most two matrices of the weight's size at a time).

    Example::

        >>> w = stiefel_orthogonal_(torch.empty(3, 5))
        >>> torch.allclose(w.sum(1), torch.full((3,), (5 / 3) ** 0.5), atol=1e-5)
        True
    """
    m, n = _matrix_shape(_check_weight(tensor, generator, qr=True))
    dtype = _work_dtype(tensor)
    inner = _haar(m - 1, n - 1, dtype, tensor.device, generator) if min(m, n) > 1 else None
    try:  # built in the weight itself when its dtype and layout allow: one extra matrix (Z), not two
        matrix = tensor.view(m, n) if tensor.dtype == dtype else None
    except RuntimeError:
        matrix = None
    work = torch.empty(m, n, dtype=dtype, device=tensor.device) if matrix is None else matrix
    work.zero_()
    work[0, 0] = 1.0
    if inner is not None:
        work[1:, 1:] = inner
    del inner
    with _one_thread(work.device):
        _reflect_(_reflect_(work, 0), 1)
    return tensor if matrix is not None else _write(tensor, work)


@torch.no_grad()
def hadamard_identity_(tensor: Tensor) -> Tensor:
    """ZerO's weights (Zhao et al.): deterministic identity / Hadamard, at the kernel centre for convs.

    For ``W`` of shape ``(m, n)``: ``I`` if ``m == n``; the partial identity ``I*`` if ``m < n``;
    ``c I* H_k I*`` with the Hadamard matrix ``H_k`` of size ``2^k``, ``k = ceil(log2 m)``,
    ``c = 2^{-(k-1)/2}`` if ``m > n``.
    """
    _check_weight(tensor)
    m, n = tensor.size(0), tensor.size(1)
    if m <= n:
        matrix = torch.eye(m, n, dtype=_work_dtype(tensor))
    else:
        k = math.ceil(math.log2(m))
        h = _sylvester_hadamard(k, _work_dtype(tensor))
        matrix = 2.0 ** (-(k - 1) / 2.0) * h[:m, :n]
    tensor.zero_()
    centre = tuple(size // 2 for size in tensor.shape[2:])
    tensor[(slice(None), slice(None), *centre)] = matrix.to(tensor)
    return tensor


def _sylvester_hadamard(k: int, dtype: torch.dtype) -> Tensor:
    """The ``2^k x 2^k`` Hadamard matrix of Sylvester's construction, ``H_{2n} = [[H_n, H_n], [H_n, -H_n]]``."""
    h = torch.ones(1, 1, dtype=dtype)
    for _ in range(k):
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


# ----------------------------------------------------------------------------- named schemes


@dataclass(frozen=True)
class LayerInit:
    """What a scheme draws for one layer and what the theory predicts for it.

    ``distribution`` is what is drawn (``"gaussian"``, ``"orthogonal"``, ``"stiefel"``, ``"zero"``);
    ``scale`` the standard deviation (Gaussian) or gain (orthogonal, Stiefel); ``exponent`` and
    ``variance`` the predicted per-layer drift and CLT variance of the log-norm (``None`` where the
    theory does not apply: ZerO, and Stiefel, whose mean-calibrated matrices are not Haar).
    """

    scheme: str
    distribution: str
    scale: float | None
    exponent: float | None
    variance: float | None


def validate_scheme(scheme: str, distribution: str = "orthogonal", moment: float | None = None) -> None:
    """Check a scheme's arguments alone (no layer needed): raise ValueError naming the fix."""
    check_choice("scheme", scheme, SCHEMES)
    theory._check_distribution(distribution)
    if scheme == "fractional":
        if moment is None:
            raise ValueError("scheme 'fractional' needs moment=s with s in (0, 2] (s = 2 is He)")
        theory._check_moment(moment, allow_zero=False)
    elif moment is not None and scheme == "lyapunov":
        if theory._check_moment(moment) != 0.0:
            raise ValueError(
                f"scheme 'lyapunov' is the moment-0 scheme, got moment={moment!r}; "
                "use scheme='fractional' for moments in (0, 2]"
            )
    elif moment is not None:
        raise ValueError(
            f"moment={moment!r} is not used by scheme={scheme!r} (only 'fractional' takes a moment in (0, 2], "
            "and 'lyapunov' is moment 0): drop moment=, or use scheme='fractional'"
        )


def resolve_init(
    scheme: str,
    d_in: int,
    d_out: int,
    negative_slope: float,
    distribution: str = "orthogonal",
    moment: float | None = None,
    *,
    drawn_in: int | None = None,
) -> LayerInit:
    """Resolve a named scheme for a layer with fans ``(d_in, d_out)`` and activation slope ``a``.

    ``"lyapunov"`` and ``"fractional"`` draw from ``distribution`` at
    :func:`theory.critical_scale` (moment 0, or ``moment``); ``"he"`` and ``"glorot"`` are
    Gaussian, ``"orthogonal"`` Haar with gain ``sqrt(2 / (1 + a^2))``, ``"stiefel"`` gain 1 and
    ``"zero"`` deterministic (these ignore ``distribution``). ``drawn_in``: the column count of the
    drawn matrix when an output sees only ``d_in`` of them (transposed convs, see
    :func:`theory.lyapunov_exponent`); it changes the orthogonal scale and prediction only.

    Example::

        >>> resolve_init("lyapunov", 2, 2, 0.1, "gaussian").scale  # doctest: +ELLIPSIS
        2.262...
    """
    validate_scheme(scheme, distribution, moment)
    d_in, d_out = theory._check_width("d_in", d_in), theory._check_width("d_out", d_out)
    if drawn_in is not None:
        theory._check_width("drawn_in", drawn_in)
    return resolve_validated(scheme, d_in, d_out, theory._check_slope(negative_slope), distribution, moment, drawn_in)


def resolve_validated(scheme: str, d_in: int, d_out: int, a: float, distribution: str, moment: float | None,
                      drawn_in: int | None = None) -> LayerInit:
    """:func:`resolve_init` of arguments already validated (the plan validates its settings once,
    in :class:`~lightning_lyapunov.settings.InitSpec`, and its fans and slopes as it finds them)."""
    if scheme in ("zero", "stiefel"):  # no prediction: deterministic, or not Haar (rows sum to sqrt(n/m))
        return LayerInit(scheme, scheme, None if scheme == "zero" else 1.0, None, None)
    if scheme in ("lyapunov", "fractional"):
        s = 0.0 if scheme == "lyapunov" else float(moment)
        drawn, scale = distribution, theory._critical_scale(d_in, d_out, a, distribution, s, drawn_in)
    elif scheme == "he":
        drawn, scale = "gaussian", theory._he_scale(d_in, a)
    elif scheme == "glorot":
        drawn, scale = "gaussian", theory._glorot_scale(d_in, d_out)
    else:  # orthogonal
        drawn, scale = "orthogonal", theory._orthogonal_gain(a)
    return LayerInit(
        scheme=scheme,
        distribution=drawn,
        scale=scale,
        exponent=theory._exponent(d_in, d_out, a, scale, drawn, drawn_in),
        variance=theory._log_norm_variance(d_in, d_out, a, drawn, drawn_in),
    )


def _draw_scheme_(
    tensor: Tensor,
    scheme: str,
    negative_slope: float,
    distribution: str,
    moment: float | None,
    fans: Fans | None,
    generator: torch.Generator | None,
) -> Tensor:
    """The per-tensor initializers: resolve ``scheme`` for the tensor's fans, then draw it."""
    _check_weight(tensor, generator, qr=distribution == "orthogonal")
    d_in, d_out = _fans(tensor, fans)
    layer_init = resolve_init(scheme, d_in, d_out, negative_slope, distribution, moment)
    return init_weight_(tensor, layer_init, generator=generator)


@torch.no_grad()
def init_weight_(
    tensor: Tensor,
    layer_init: LayerInit,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw the weights a :class:`LayerInit` describes into ``tensor`` (in place).

    The scale already accounts for the layer's fans (see :func:`resolve_init`). The QR-based draws
    (orthogonal, Stiefel) also take a CPU generator for a weight on another device.
    """
    if not isinstance(layer_init, LayerInit):
        invalid("layer_init", layer_init, "a LayerInit (from init.resolve_init(...))")
    _check_weight(tensor, generator, qr=layer_init.distribution in ("orthogonal", "stiefel"))
    kind = layer_init.distribution
    if kind == "gaussian":
        return tensor.normal_(0.0, layer_init.scale, generator=generator)
    if kind == "orthogonal":
        return orthogonal_(tensor, layer_init.scale, generator=generator)
    if kind == "stiefel":
        return stiefel_orthogonal_(tensor, generator=generator).mul_(layer_init.scale)
    if kind == "zero":
        return hadamard_identity_(tensor)
    raise ValueError(f"unknown distribution {kind!r} in {layer_init!r}")
