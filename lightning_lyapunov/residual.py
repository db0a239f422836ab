"""Residual blocks by theory: recognize ``x + f(x)`` in a real forward pass, and the branch scale
that keeps the stream's growth over the whole net bounded at any depth (docs/theory.md section 9).

A residual stream ``x_{b+1} = x_b + f_b(x_b)`` whose branch ``f_b`` ends in a weight layer ``W_b``
drawn with mean zero, independently of ``x_b`` and of the branch's hidden signal ``h_b``, has
``E_W <x_b, W_b h_b> = 0`` exactly, at any width: the squared norms add in expectation,

    E ||x_{b+1}||^2 = ||x_b||^2 + E ||f_b(x_b)||^2.

With every branch's output calibrated to ``alpha`` times the root-mean-square of the stream it
joins (``r(f_b) = alpha r(x_b)`` on the batch), the stream's mean square grows by ``1 + alpha^2``
per block: ``r(x_B)^2 = r(x_0)^2 (1 + alpha^2)^B``. The default calibration of plain chains
(every layer's output to rms 1, the size of the stream) is ``alpha = 1``: the stream grows like
``2^{B/2}`` (``e^{8.3}`` at 24 blocks); with the branches at unit gain but not calibrated
relative to the stream (pre-norm blocks: ``r(f_b) = 1`` whatever ``r(x_b)``), it grows like
``sqrt(1 + B)``. :func:`branch_scale` solves ``(1 + alpha^2)^B = G^2`` for a total growth ``G``
of the stream's rms (default :data:`STREAM_GROWTH` ``= sqrt 2``: the branches together add as
much mean square as the stream brings in),

    alpha = sqrt(G^{2/B} - 1) ~ sqrt(2 log G / B),

so ``alpha ~ c / sqrt(B)`` and the growth is ``G`` at every depth. Per sample, the log-norm
changes by ``(1/2) log(1 + alpha^2 + 2 alpha c_b)`` with ``c_b`` the cosine between the stream
and the branch output: uniform on the sphere's directions for an isotropic last layer (Gaussian
or Haar orthogonal), so ``E c_b^{2k} = prod_{j<k} (2j + 1) / (n + 2j)`` at width ``n``;
:func:`stream_log_norm` sums the exact series of ``E log(1 + t c)`` (``t = 2 alpha / (1 +
alpha^2)``): the mean log-norm at finite width is below ``(1/2) log(1 + alpha^2)`` per block by
about ``alpha^2 / n``.

:func:`find_residual_blocks` runs the model once and records every sum of two same-shape
tensors ``s + f`` where ``s`` was already consumed by the network before the newest planned
layer that ``f`` carries ran (the block's input, read by the branch) and ``f`` carries that
layer's output (through reshapes, scales, norms, dropout, ...): that layer is the branch's last
layer. A projection shortcut (``conv2(...) + shortcut(x)``: both operands new) is not a block;
``x + f(x)``, ``f(x) + x``, ``x += f(x)``, ``torch.add`` all are.

Example::

    >>> from torch import nn
    >>> round(branch_scale(24), 4)   # (1 + alpha^2)^24 = 2
    0.1716
    >>> class Block(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
    ...     def forward(self, x):
    ...         return x + self.fc2(torch.relu(self.fc1(x)))
    >>> model = nn.Sequential(nn.Linear(4, 8), Block(), Block())
    >>> [b.layer for b in find_residual_blocks(model, ["0", "1.fc1", "1.fc2", "2.fc1", "2.fc2"],
    ...                                         lambda: model(torch.randn(16, 4)))]
    ['1.fc2', '2.fc2']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._checks import check_float, check_int
from ._forward import TensorMarks, tensors
from .log_norm import rms
from .observe import _target
from .settings import STREAM_GROWTH

__all__ = ["STREAM_GROWTH", "ResidualBlock", "branch_scale", "find_residual_blocks", "is_affine_norm",
           "stream_log_norm"]

_ADDS = {"add", "add_", "__add__", "__radd__", "__iadd__", torch.add}
_QUERIES = {"dim", "size", "shape", "numel", "is_floating_point", "device", "dtype", "ndim", "requires_grad"}
_SERIES_TERMS = 4000


@dataclass(frozen=True)
class ResidualBlock:
    """One recognized ``stream + branch`` sum: ``layer``, the branch's last planned layer, or the
    normalization with an affine weight after it (``bn2`` in ``bn2(conv2(...))``: ``norm`` is then
    True); ``stream_rms`` and ``branch_rms``, the two operands' root-mean-squares where they were
    added (in the pass that found the block); ``before``: the first planned layer called after the
    sum (None: none is)."""

    layer: str
    stream_rms: float
    branch_rms: float
    norm: bool = False
    before: str | None = None

    @property
    def ratio(self) -> float:
        """``r(branch) / r(stream)``: the branch scale this block has now."""
        return self.branch_rms / self.stream_rms if self.stream_rms > 0 else math.inf


def branch_scale(blocks: int, growth: float = STREAM_GROWTH) -> float:
    """The branch scale ``alpha = sqrt(growth^{2/blocks} - 1)``: ``blocks`` residual blocks whose
    branches are each ``alpha`` times the stream's rms grow the stream's rms by ``growth`` in all
    (module docstring). ``alpha ~ sqrt(2 log(growth) / blocks)`` for many blocks.

    Example::

        >>> round(branch_scale(1, 2 ** 0.5), 6), round(branch_scale(100), 4)
        (1.0, 0.0833)
    """
    check_int("blocks", blocks, minimum=1)
    growth = check_float("growth", growth, minimum=1.0, low_open=True,
                         allowed="a number > 1: the stream's rms growth over all residual blocks")
    return math.sqrt(math.expm1(2.0 * math.log(growth) / blocks))


def stream_log_norm(scales: Sequence[float], width: int) -> np.ndarray:
    """Predicted mean of ``log r(x_b) - log r(x_0)`` after each of the blocks (``len(scales)``
    values), per sample, for branches of the given ``scales`` (``r(f_b) = alpha_b r(x_b)``) whose
    direction is uniform and independent of the stream at ``width`` units (module docstring):
    per block ``(1/2) log(1 + alpha^2) - (1/2) sum_k t^{2k} E c^{2k} / (2k)``, ``t = 2 alpha / (1 + alpha^2)``.
    At width 2 and ``alpha < 1`` the mean is exactly 0 (``log|1 + alpha e^{i theta}|`` averages to 0
    over the circle), at large width it tends to ``(1/2) log(1 + alpha^2)`` per block.

    Example::

        >>> stream_log_norm([0.5, 0.5], 2).round(6) + 0.0, stream_log_norm([0.5], 10 ** 6).round(4)
        (array([0., 0.]), array([0.1116]))
    """
    width = check_int("width", width, minimum=1)
    if width < 2:
        raise ValueError("stream_log_norm: width=1 has no direction to average over (the stream and a branch are "
                         "parallel); pass width >= 2")
    k = np.arange(1, _SERIES_TERMS + 1)
    moments = np.cumprod((2 * k - 1) / (width + 2 * k - 2))  # E c^{2k} on the sphere of R^width
    steps = []
    for alpha in scales:
        alpha = check_float("scale", alpha, minimum=0.0, allowed="a branch scale >= 0")
        t = 2 * alpha / (1 + alpha * alpha)
        correction = float(np.sum(t ** (2 * k) * moments / (2 * k))) if t > 0 else 0.0  # -E log(1 + t c)
        steps.append(0.5 * math.log1p(alpha * alpha) - 0.5 * correction)
    return np.cumsum(steps)


class _Stop(Exception):
    """Ends the pass once the wanted block is found."""


class _Watcher(TorchFunctionMode):
    """Follows planned layers' outputs and the tensors the network consumes, and records each
    ``stream + branch`` sum (module docstring)."""

    def __init__(self, model: nn.Module, names: Sequence[str], stop_after: str | None) -> None:
        super().__init__()
        wanted = set(names)
        self.step = 0
        self.depth = 0  # > 0 inside a planned layer: its inner calls are its own
        self.tags = TensorMarks()  # per tensor, the planned layers' outputs it carries: frozenset[(name, step)]
        self.consumed = TensorMarks()  # per tensor, the step at which the network first read it
        self.blocks: dict[str, ResidualBlock] = {}
        self.stop_after = stop_after
        self.norms: set[str] = set()
        self.waiting: list[str] = []  # blocks whose next planned layer is not known yet
        self.handles = []
        for name, module in model.named_modules():
            if name in wanted or is_affine_norm(module):
                if name not in wanted:
                    self.norms.add(name)
                self.handles.append(module.register_forward_pre_hook(self._make_enter(name)))
                self.handles.append(module.register_forward_hook(self._make_leave(name)))

    def _consume(self, values: Any) -> None:
        for tensor in tensors(values):
            if self.consumed.get(tensor) is None:
                self.consumed.set(tensor, self.step)

    def _tags(self, values: Any) -> frozenset[tuple[str, int]]:
        return frozenset().union(*(self.tags.get(t, frozenset()) for t in tensors(values)))

    def _tag(self, values: Any, tags: frozenset[tuple[str, int]]) -> None:
        for tensor in tensors(values):
            if tensor.is_floating_point():
                self.tags.set(tensor, tags)

    def _make_enter(self, name: str) -> Callable[..., None]:
        def enter(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.depth == 0:
                self._consume(args)
                if name not in self.norms:
                    for layer in self.waiting:
                        self.blocks[layer] = replace(self.blocks[layer], before=name)
                    self.waiting = []
            self.depth += 1
            self.step += 1
        return enter

    def _make_leave(self, name: str) -> Callable[..., None]:
        def leave(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
            if self.depth == 1:  # tagged while still inside: the tagging's own calls are not the network's
                self.step += 1
                self._tag(output, frozenset({(name, self.step)}))
            self.depth -= 1
        return leave

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.depth == 0 and _target(func) in _ADDS:
            self._check_sum(args[:2])
        result = func(*args, **kwargs)
        if self.depth == 0 and _target(func) not in _QUERIES:
            tags = self._tags((args, kwargs))
            self._consume((args, kwargs))
            self.step += 1
            if tags and isinstance(result, torch.Tensor) and result.dim() > 0:
                self._tag(result, tags | self.tags.get(result, frozenset()))
        return result

    def _check_sum(self, pair: tuple[Any, ...]) -> None:
        if len(pair) < 2 or not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in pair):
            return
        if pair[0].shape != pair[1].shape or pair[0].dim() == 0:
            return
        for stream, branch in (pair, pair[::-1]):
            fresh = self._tags(branch) - self._tags(stream)
            seen = self.consumed.get(stream)
            if not fresh or seen is None:
                continue
            layer, called = max(fresh, key=lambda tag: tag[1])
            if seen < called and layer not in self.blocks:
                with torch.no_grad():
                    self.blocks[layer] = ResidualBlock(layer, rms(stream), rms(branch), layer in self.norms)
                self.waiting.append(layer)
                if layer == self.stop_after:
                    raise _Stop
                return

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def is_affine_norm(module: nn.Module) -> bool:
    """A BatchNorm, GroupNorm, LayerNorm or InstanceNorm with a learnable weight: it sets the scale of
    what it outputs, whatever the layer before it."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    return isinstance(module, norms) and isinstance(getattr(module, "weight", None), torch.Tensor)


def find_residual_blocks(model: nn.Module, names: Sequence[str], run: Callable[[], Any],
                         stop_after: str | None = None) -> list[ResidualBlock]:
    """The residual blocks of ``model`` whose branch ends in one of the planned layers ``names``, in
    forward order, seen in one forward pass ``run()`` (e.g. ``lambda: model(x)``; under the caller's
    ``torch.no_grad()`` and eval mode as wanted); a branch whose last planned layer is followed by a
    normalization with an affine weight ends in that normalization (``block.norm``). ``stop_after``:
    end the pass once that layer's block is found. A layer whose output joins several sums is the
    branch of the first only.
    Errors of the pass propagate; nothing is left attached to the model.
    """
    watcher = _Watcher(model, names, stop_after)
    try:
        with watcher:
            run()
    except _Stop:
        pass
    finally:
        watcher.remove()
    return list(watcher.blocks.values())
