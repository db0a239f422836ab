"""The training engine: every run of one configuration trained together as one stacked model.

Deep narrow nets are so small that one training loop per seed spends nearly all its time in Python.
Here ``R`` runs of one architecture (seeds, schemes, learning rates) become one :class:`Stack`:

* every parameter is stacked along a new leading axis ``(R, ...)``, all of them in one flat buffer;
* the forward is a batched matmul per Linear layer (features first: ``(R, d, B)``) and a grouped
  convolution per conv layer when ``torch.fx`` traces the module into a plain chain of Linear, Conv1d,
  Conv2d, flatten, pooling and elementwise activations (``DeepMLP``, ``PlainCNN``, ``nn.Sequential``
  stacks); any other module (BatchNorm, skip connections) runs through ``torch.func.functional_call``
  under ``torch.vmap``, its buffers stacked too;
* :class:`SGD` and :class:`Adam` are elementwise with ``torch.optim``'s formulas (one learning rate
  per run allowed), so with the summed per-run losses each run trains exactly as it would alone, up
  to the summation order of the batched kernels (``tests/test_bench_engine.py`` checks it against
  separate ``torch.optim`` runs);
* :func:`fit` is the one training loop: batches from an order (:class:`Epochs`, :class:`Draws`,
  :class:`FullBatch`), per-run losses and per-run metric curves.

Example::

    nets = [DeepMLP(1, 1, width=2, depth=40) for _ in range(4)]      # initialized one by one
    stack = Stack(nets)
    result = fit(stack, mse, (x, y), optimizer=Adam(lr=1e-3), steps=500, order=Draws(128, seed=0),
                 evals={"val": ((xv, yv), mse)}, record=range(0, 501, 100))
    result.curves["val"][-1]        # final validation loss of each of the 4 runs
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Stack",
    "SGD",
    "Adam",
    "Epochs",
    "Draws",
    "FullBatch",
    "Fit",
    "fit",
    "take_state",
    "mse",
    "cross_entropy",
    "classification",
]

Batch = tuple[Tensor, ...]
Objective = Callable[["Stack", Batch, "torch.Generator | None"], Tensor]  # -> per-run loss (R,)
Metric = Callable[["Stack", Batch], "Tensor | dict[str, Tensor]"]  # -> (R,) or {name: (R,)}
OptimizerState = dict[str, Tensor]  # per-element tensors over Stack.flat (Adam: "m", "v"; SGD: none)

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.GELU, nn.Identity)
_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}


# ---------------------------------------------------------------------------------------------
# the stacked model


class _Chain:
    """A module traced into a chain of layers that :class:`Stack` evaluates on stacked weights.

    Layouts of the signal: ``shared`` ``(B, ...)`` (no weight applied yet), ``runs`` ``(R, B, ...)`` (a
    per-run input), ``features`` ``(R, d, B)`` (vectors, features first: one ``d_out x d_in`` times
    ``d_in x B`` product per run, the fastest layout for narrow layers), ``grouped`` ``(B, R * C, ...)``
    (the maps of a first conv on a shared input: one convolution with ``R * C`` output channels) and
    ``split`` (a list of ``R`` maps ``(B, C, ...)``: one convolution per run, which on a CPU is faster
    than one grouped convolution)."""

    def __init__(self, ops: list[tuple[str, Any, str]]) -> None:
        self.ops = ops  # (kind, module or None, qualified name)

    @classmethod
    def trace(cls, module: nn.Module) -> _Chain | None:
        """The chain, or None when the module is not a plain chain of supported layers."""
        try:
            graph = torch.fx.symbolic_trace(module).graph
        except Exception:  # noqa: BLE001 - anything fx cannot trace runs under vmap
            return None
        ops: list[tuple[str, Any, str]] = []
        previous = None
        layout: str | None = "shared"
        for node in graph.nodes:
            if node.op == "placeholder":
                if previous is not None:
                    return None
                previous = node
                continue
            if node.op == "output":
                return cls(ops) if node.args[0] is previous and layout != "shared" else None
            if not node.args or node.args[0] is not previous:
                return None
            kind, target = cls._kind(module, node)
            layout = None if kind is None else cls._next(layout, kind)
            if layout is None:
                return None
            ops.append((kind, target, node.target if node.op == "call_module" else ""))
            previous = node
        return None

    @staticmethod
    def _kind(module: nn.Module, node: torch.fx.Node) -> tuple[str | None, Any]:
        if (node.op == "call_function" and node.target is torch.flatten) or (
                node.op == "call_method" and node.target == "flatten"):
            return ("flatten", None) if node.args[1:] == (1,) and not node.kwargs else (None, None)
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            return None, None
        m = module.get_submodule(node.target)
        if isinstance(m, nn.Linear):
            return "linear", m
        if type(m) in _CONV and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            return "conv", m
        if isinstance(m, _ELEMENTWISE):
            return "elementwise", m
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return "flatten", None
        if isinstance(m, nn.Unflatten) and m.dim == 1:
            return "unflatten", m
        if isinstance(m, _POOLS):
            return "pool", m
        return None, None

    @staticmethod
    def _next(layout: str, kind: str) -> str | None:
        """The signal's layout after an op of ``kind``, or None if this chain cannot run it."""
        if kind == "elementwise":
            return layout
        if kind == "pool":
            return None if layout == "features" else layout
        if kind == "linear":
            return "features" if layout in ("shared", "runs", "features") else None
        if kind == "conv":
            return "grouped" if layout == "shared" else ("split" if layout != "features" else None)
        if kind == "flatten":
            return "features" if layout in ("grouped", "split") else layout
        if kind == "unflatten":
            return {"features": "split", "shared": "shared", "runs": "runs"}.get(layout)
        return None

    def forward(self, stack: Stack, x: Tensor, per_run: bool) -> Tensor:
        runs = stack.runs
        layout = "runs" if per_run else "shared"
        h: Any = x
        for kind, m, name in self.ops:
            if kind in ("elementwise", "pool"):
                if layout == "split":
                    h = [m(t) for t in h]
                elif kind == "pool" and layout == "runs":
                    h = m(h.flatten(0, 1)).unflatten(0, (runs, -1))
                else:
                    h = m(h)
            elif kind == "flatten":
                if layout == "grouped":
                    h, layout = h.reshape(h.shape[0], runs, -1).permute(1, 2, 0), "features"
                elif layout == "split":
                    h, layout = torch.stack([t.flatten(1) for t in h]).transpose(1, 2), "features"
                elif layout != "features":
                    h = h.flatten(1 if layout == "shared" else 2)
            elif kind == "unflatten":
                if layout == "features":
                    h, layout = [t.t().reshape(t.shape[1], *m.unflattened_size) for t in h], "split"
                else:
                    h = h.unflatten(1 if layout == "shared" else 2, m.unflattened_size)
            elif kind == "linear":
                weight, bias = stack.param(f"{name}.weight"), stack.param(f"{name}.bias")
                if layout == "shared":
                    h = h.t().expand(runs, -1, -1)
                elif layout == "runs":
                    h = h.transpose(1, 2)
                h = torch.bmm(weight, h) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, h)
                layout = "features"
            else:  # conv
                weight, bias = stack.param(f"{name}.weight"), stack.param(f"{name}.bias")
                conv = _CONV[type(m)]
                if layout == "shared" and m.groups == 1:
                    h = conv(h, weight.flatten(0, 1), None if bias is None else bias.flatten(), m.stride, m.padding,
                             m.dilation)
                    layout = "grouped"
                    continue
                if layout == "shared":
                    inputs = [h] * runs
                elif layout == "grouped":
                    inputs = list(h.split(h.shape[1] // runs, dim=1))
                else:  # runs or split
                    inputs = list(h)
                h = [conv(t, weight[r], None if bias is None else bias[r], m.stride, m.padding, m.dilation, m.groups)
                     for r, t in enumerate(inputs)]
                layout = "split"
        if layout == "features":
            return h.transpose(1, 2)
        if layout == "grouped":
            return h.unflatten(1, (runs, -1)).transpose(0, 1)
        if layout == "split":
            return torch.stack(h)
        return h


class Stack(nn.Module):
    """``R`` networks of one architecture with their parameters stacked ``(R, ...)``, evaluated together.

    ``modules``: the ``R`` initialized networks (same parameter names and shapes; they are copied, not
    changed). ``sample_dims``: dimensions of one input sample (1 for feature vectors, 3 for images), so
    that :meth:`forward` can tell a shared batch ``(B, ...)`` from a per-run batch ``(R, B, ...)``.
    Output ``(R, B, ...)``. Every parameter is a view into one flat buffer :attr:`flat` (and its
    gradient into :attr:`flat_grad`), which the optimizers update in a few elementwise operations.
    """

    def __init__(self, modules: Sequence[nn.Module], sample_dims: int = 1) -> None:
        super().__init__()
        if not modules:
            raise ValueError("Stack needs at least one module")
        self.runs, self.sample_dims = len(modules), sample_dims
        named = [dict(m.named_parameters()) for m in modules]
        self.names = list(named[0])
        for i, params in enumerate(named[1:], 1):
            if [(k, v.shape) for k, v in params.items()] != [(k, v.shape) for k, v in named[0].items()]:
                raise ValueError(f"module {i} does not have the parameters of module 0 (names and shapes)")
        with torch.no_grad():
            blocks = [torch.stack([params[name].detach() for params in named]) for name in self.names]
            self.flat = torch.cat([b.reshape(-1) for b in blocks]).float()
        self.flat_grad = torch.zeros_like(self.flat)
        self._params: list[nn.Parameter] = []
        self._index: dict[str, int] = {}
        start = 0
        for i, (name, block) in enumerate(zip(self.names, blocks)):
            p = nn.Parameter(torch.empty(0))
            p.data = self.flat[start:start + block.numel()].view(block.shape)
            p.grad = self.flat_grad[start:start + block.numel()].view(block.shape)
            self.register_parameter(f"p{i}", p)
            self._params.append(p)
            self._index[name] = i
            start += block.numel()
        #: run index of every element of :attr:`flat` (for per-run learning rates and masks)
        self.run_of = torch.cat([torch.arange(self.runs).repeat_interleave(b[0].numel()) for b in blocks])
        self._buffers_stacked = {name: torch.stack([dict(m.named_buffers())[name].detach().clone() for m in modules])
                                 for name, _ in modules[0].named_buffers()}
        self.__dict__["_template"] = copy.deepcopy(modules[0])  # not a submodule: its parameters are not the stack's
        self._chain = None if self._buffers_stacked else _Chain.trace(self._template)

    @property
    def path(self) -> str:
        """``"chain"`` (batched matmuls and grouped convolutions) or ``"vmap"``."""
        return "chain" if self._chain is not None else "vmap"

    def param(self, name: str) -> Tensor | None:
        """The stacked parameter ``(R, ...)`` of the template's parameter ``name`` (None if it has none)."""
        i = self._index.get(name)
        return None if i is None else self._params[i]

    def train(self, mode: bool = True) -> Stack:
        super().train(mode)
        self._template.train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        per_run = x.dim() == self.sample_dims + 2
        if per_run and x.shape[0] != self.runs:
            raise ValueError(f"a per-run batch needs {self.runs} runs first, got shape {tuple(x.shape)}")
        if self._chain is not None:
            return self._chain.forward(self, x, per_run)
        params = {name: p for name, p in zip(self.names, self._params)}
        call = lambda p, b, xx: torch.func.functional_call(self._template, (p, b), (xx,))  # noqa: E731
        return torch.vmap(call, in_dims=(0, 0, 0 if per_run else None))(params, self._buffers_stacked, x)

    def elements(self, runs: Sequence[int] | Tensor) -> Tensor:
        """Indices into :attr:`flat` of the elements of ``runs``, in the order of :meth:`take`'s stack
        (per parameter, run by run): ``flat[stack.elements(runs)]`` is ``stack.take(runs).flat``."""
        index = torch.as_tensor(runs, dtype=torch.long).reshape(-1, 1)
        parts, start = [], 0
        for p in self._params:
            per = p[0].numel()
            parts.append((start + index * per + torch.arange(per)).reshape(-1))
            start += p.numel()
        return torch.cat(parts)

    def take(self, runs: Sequence[int] | Tensor) -> Stack:
        """A new stack of the runs ``runs`` (in that order, repeats allowed), with their current
        parameters and buffers; carry an optimizer's state along with :func:`take_state`."""
        return Stack([self.module(int(r)) for r in torch.as_tensor(runs).reshape(-1)], self.sample_dims)

    def module(self, run: int) -> nn.Module:
        """A copy of the architecture holding run ``run``'s current parameters and buffers."""
        out = copy.deepcopy(self._template)
        with torch.no_grad():
            for name, p in out.named_parameters():
                p.copy_(self._params[self._index[name]][run])
            for name, b in out.named_buffers():
                b.copy_(self._buffers_stacked[name][run])
        return out


# ---------------------------------------------------------------------------------------------
# optimizers (elementwise, torch.optim's formulas, one learning rate per run allowed)


def _per_element(stack: Stack, values: float | Sequence[float]) -> float | Tensor:
    """A scalar, or (for one value per run) a tensor over :attr:`Stack.flat`'s elements."""
    if isinstance(values, (int, float)):
        return float(values)
    per_run = torch.as_tensor(values, dtype=torch.float64)
    if per_run.numel() != stack.runs:
        raise ValueError(f"{per_run.numel()} learning rates for {stack.runs} runs")
    if bool((per_run == per_run[0]).all()):
        return float(per_run[0])
    return per_run


@dataclass(frozen=True)
class SGD:
    """Plain SGD (``torch.optim.SGD`` without momentum): ``p -= lr (g + weight_decay p)``; ``lr``: one
    value, or one per run."""

    lr: float | Sequence[float]
    weight_decay: float = 0.0

    def start(self, stack: Stack, state: OptimizerState | None = None) -> Callable[[int], None]:
        """The step function ``step(t)`` (``t``: the step's number, from 1); SGD has no state."""
        lr = _per_element(stack, self.lr)
        neg_lr = -lr if isinstance(lr, float) else (-lr)[stack.run_of].float()
        flat, grad = stack.flat, stack.flat_grad

        @torch.no_grad()
        def step(t: int) -> None:
            g = grad.add(flat, alpha=self.weight_decay) if self.weight_decay else grad
            if isinstance(neg_lr, float):
                flat.add_(g, alpha=neg_lr)
            else:
                flat.addcmul_(g, neg_lr)

        step.state = {}  # type: ignore[attr-defined]
        return step


@dataclass(frozen=True)
class Adam:
    """``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, no amsgrad), step for step the
    same arithmetic; ``lr``: one value, or one per run."""

    lr: float | Sequence[float]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def start(self, stack: Stack, state: OptimizerState | None = None) -> Callable[[int], None]:
        """The step function ``step(t)`` (``t``: the step's number, from 1; pass on from the steps
        already taken when continuing), starting from ``state`` (``{"m", "v"}`` over :attr:`Stack.flat`,
        e.g. an earlier :attr:`Fit.state`; default zeros); ``step.state`` is the live state."""
        lr = _per_element(stack, self.lr)
        per_run = None if isinstance(lr, float) else lr[stack.run_of]
        flat, grad = stack.flat, stack.flat_grad
        if state:
            m, v = state["m"].clone(), state["v"].clone()
            if m.shape != flat.shape or v.shape != flat.shape:
                raise ValueError(f"an Adam state of {m.numel()} elements for a stack of {flat.numel()}: take the "
                                 "state of the same runs (take_state)")
        else:
            m, v = torch.zeros_like(flat), torch.zeros_like(flat)
        b1, b2 = self.betas

        @torch.no_grad()
        def step(t: int) -> None:
            g = grad.add(flat, alpha=self.weight_decay) if self.weight_decay else grad
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            bias1, bias2 = 1 - b1**t, 1 - b2**t
            denom = (v.sqrt() / bias2**0.5).add_(self.eps)
            if per_run is None:
                flat.addcdiv_(m, denom, value=-lr / bias1)
            else:
                flat.add_(m.div(denom).mul_((-per_run / bias1).float()))

        step.state = {"m": m, "v": v}  # type: ignore[attr-defined]
        return step


def take_state(state: OptimizerState, stack: Stack, runs: Sequence[int] | Tensor) -> OptimizerState:
    """The optimizer state of ``stack.take(runs)``: each per-element tensor of ``state`` taken at
    :meth:`Stack.elements` (e.g. to continue the kept candidates of a selection with their moments)."""
    index = stack.elements(runs)
    return {name: value[index].clone() for name, value in state.items()}


# ---------------------------------------------------------------------------------------------
# batch orders


@dataclass
class _Batcher:
    """Per step, ``draw(step)``: training row indices ``(streams, B)`` (None: the full training set);
    ``stream_of[r]``: run r's stream; ``per_run``: whether the batch is indexed per run ``(R, B, ...)``
    (else stream 0's rows are shared by all runs); ``generator``: handed to the objective;
    ``generators``/``orders``: what the draws depend on beyond the step (saved by a checkpoint)."""

    draw: Callable[[int], Tensor | None]
    stream_of: Tensor
    per_run: bool
    generator: torch.Generator | None
    generators: list[torch.Generator] = field(default_factory=list)
    orders: list[Tensor] = field(default_factory=list)

    def batch(self, train: Batch, step: int) -> Batch:
        """Step ``step``'s batch of the training tensors ``train``."""
        idx = self.draw(step)
        if idx is None:
            return train
        if not self.per_run:
            return tuple(t[idx[0]] for t in train)
        rows = idx[self.stream_of]
        return tuple(t[rows] for t in train)

    def get_state(self) -> dict[str, list[Tensor]]:
        return {"generators": [g.get_state() for g in self.generators], "orders": [o.clone() for o in self.orders]}

    def set_state(self, state: dict[str, list[Tensor]]) -> None:
        for g, value in zip(self.generators, state["generators"]):
            g.set_state(value)
        self.orders[:] = state["orders"]


def _stream_of(streams: Sequence[int] | None, runs: int, default_own: bool) -> tuple[Tensor, int]:
    if streams is None:
        stream_of = torch.arange(runs) if default_own else torch.zeros(runs, dtype=torch.long)
    else:
        stream_of = torch.as_tensor(list(streams), dtype=torch.long)
        if stream_of.numel() != runs:
            raise ValueError(f"{stream_of.numel()} streams for {runs} runs")
    return stream_of, int(stream_of.max()) + 1


@dataclass(frozen=True)
class Epochs:
    """Consecutive slices of a fresh random permutation per epoch (the incomplete last batch dropped),
    one permutation sequence per stream: stream ``s`` draws from ``torch.Generator().manual_seed(
    seeds[s])``. ``streams[r]``: run r's stream (default: every run stream 0, i.e. the same batches
    for all). One stream gives a shared batch, several a per-run batch ``(R, B, ...)``."""

    batch_size: int
    seeds: Sequence[int] = (0,)
    streams: Sequence[int] | None = None

    def start(self, n: int, runs: int) -> _Batcher:
        stream_of, count = _stream_of(self.streams, runs, default_own=False)
        if count > len(self.seeds):
            raise ValueError(f"{count} streams but {len(self.seeds)} seeds")
        per_epoch = max(1, n // self.batch_size)
        gens = [torch.Generator().manual_seed(int(s)) for s in self.seeds[:count]]
        orders = [torch.randperm(n, generator=g) for g in gens]

        def draw(step: int) -> Tensor:
            slot = step % per_epoch
            if slot == 0 and step > 0:
                orders[:] = [torch.randperm(n, generator=g) for g in gens]
            return torch.stack([o[slot * self.batch_size:(slot + 1) * self.batch_size] for o in orders])

        return _Batcher(draw, stream_of, count > 1, None, gens, orders)


@dataclass(frozen=True)
class Draws:
    """``batch_size`` rows drawn with replacement at every step, one draw per stream, all from one
    ``torch.Generator().manual_seed(seed)`` (also handed to the objective for the noise it draws).
    ``streams[r]``: run r's stream (default: every run its own). Always a per-run batch."""

    batch_size: int
    seed: int = 0
    streams: Sequence[int] | None = None

    def start(self, n: int, runs: int) -> _Batcher:
        stream_of, count = _stream_of(self.streams, runs, default_own=True)
        generator = torch.Generator().manual_seed(self.seed)
        return _Batcher(lambda step: torch.randint(n, (count, self.batch_size), generator=generator),
                        stream_of, True, generator, [generator])


@dataclass(frozen=True)
class FullBatch:
    """The whole training set at every step (shared by all runs); ``seed``: the objective's generator."""

    seed: int = 0

    def start(self, n: int, runs: int) -> _Batcher:
        generator = torch.Generator().manual_seed(self.seed)
        return _Batcher(lambda step: None, torch.zeros(runs, dtype=torch.long), False, generator, [generator])


# ---------------------------------------------------------------------------------------------
# objectives and metrics (per run)


def mse(model: Stack, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
    """Per-run mean squared error ``mean_{b,j} (model(x)_{r,b,j} - y_{b,j})^2``, shape ``(R,)``."""
    x, y = batch
    return (model(x) - y).pow(2).flatten(1).mean(1)


def cross_entropy(model: Stack, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
    """Per-run mean cross-entropy of the logits ``(R, B, classes)`` against labels ``(B,)`` or ``(R, B)``."""
    x, y = batch
    logits = model(x)
    runs, size = logits.shape[:2]
    labels = y.expand(runs, size) if y.dim() == 1 else y
    return F.cross_entropy(logits.flatten(0, 1), labels.reshape(-1), reduction="none").view(runs, size).mean(1)


def classification(model: Stack, batch: Batch) -> dict[str, Tensor]:
    """Per-run ``{"acc": accuracy, "loss": mean cross-entropy}`` (one forward)."""
    x, y = batch
    logits = model(x)
    runs, size = logits.shape[:2]
    labels = y.expand(runs, size)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.reshape(-1), reduction="none").view(runs, size).mean(1)
    return {"acc": (logits.argmax(-1) == labels).double().mean(1), "loss": loss}


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class Fit:
    """Outcome of :func:`fit`: ``steps`` the recorded optimizer steps (0 = at initialization);
    ``curves[name]``: ``(len(steps), R)`` per metric (non-finite values stored as ``inf``);
    ``final[name]``: ``(R,)`` per metric of ``final_evals``, evaluated once after the last step;
    ``losses``: the training loss of every step ``(steps, R)`` (``inf`` when non-finite);
    ``stopped[r]``: the step at which run r stopped on a non-finite loss (-1: never); ``seconds``: CPU time;
    ``state``: the optimizer's state after the last step (pass it to :func:`fit` to continue);
    ``earlier_seconds``: the part of ``seconds`` spent before a checkpoint this fit resumed from."""

    steps: np.ndarray
    curves: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    losses: np.ndarray
    stopped: np.ndarray
    seconds: float
    state: OptimizerState = field(default_factory=dict)
    earlier_seconds: float = 0.0


def _evaluate(model: Stack, evals: Mapping[str, tuple[Batch, Metric]], chunk: int | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    model.eval()
    with torch.no_grad():
        for name, (data, metric) in evals.items():
            n = len(data[0])
            size = n if chunk is None else chunk
            total: dict[str, Tensor] = {}
            for start in range(0, n, size):  # chunk means weighted by length (exact for counts of 500, 1000 rows)
                part = metric(model, tuple(t[start:start + size] for t in data))
                values = part if isinstance(part, dict) else {"": part}
                for key, value in values.items():
                    total[key] = total.get(key, 0) + value.double() * min(size, n - start)
            for key, value in total.items():
                array = (value / n).numpy()
                out[f"{name}_{key}" if key else name] = np.where(np.isfinite(array), array, np.inf)
    model.train()
    return out


def fit(model: Stack, objective: Objective, train: Batch, *, optimizer: SGD | Adam, steps: int,
        order: Epochs | Draws | FullBatch, evals: Mapping[str, tuple[Batch, Metric]] | None = None,
        record: Iterable[int] = (), eval_chunk: int | None = None, nonfinite: str = "stop",
        final_evals: Mapping[str, tuple[Batch, Metric]] | None = None, state: OptimizerState | None = None,
        first_step: int = 0, checkpoint: Checkpoint | None = None) -> Fit:
    """Train the ``R`` runs of ``model`` for ``steps`` steps on the summed per-run losses.

    ``objective(model, batch, generator)`` returns the per-run training loss ``(R,)``; ``batch`` holds
    the training tensors indexed by the order's rows (shared ``(B, ...)`` for one stream, per run
    ``(R, B, ...)`` otherwise). ``evals[name] = (data, metric)``: ``metric(model, data)`` returns
    ``(R,)`` (curve ``name``) or a dict (curves ``name_key``), evaluated in eval mode, in chunks of
    ``eval_chunk`` rows (a weighted mean) at every step in ``record`` and after the last step;
    ``final_evals`` the same, after the last step only (large test sets).
    ``state``, ``first_step``: continue a training that took ``first_step`` optimizer steps and left
    the optimizer in ``state`` (:attr:`Fit.state`; after :meth:`Stack.take`, :func:`take_state`):
    the steps are numbered from ``first_step + 1`` (Adam's bias correction); ``record`` and the
    order's draws count from this call's first step.
    ``nonfinite``: a run whose training loss is not finite ``"stop"``s there (its parameters are frozen,
    as a run that stops on a NaN), or (``"skip"``) gets zero gradient for that step and goes on (the
    optimizer still steps: Adam's moments move it).
    ``checkpoint``: save the whole training state every ``checkpoint.every`` steps and at the end, and
    start from the saved state when the file is there (a long run survives its process: the resumed
    run's losses and parameters are the uninterrupted run's, ``tests/test_bench_engine.py``).

    Example::

        fit(stack, cross_entropy, (x, y), optimizer=SGD(0.01), steps=1000, order=Epochs(64, seeds=[0]),
            evals={"test": ((xt, yt), classification)}, record=[0, 500], eval_chunk=1000)
    """
    if nonfinite not in ("stop", "skip"):
        raise ValueError(f"nonfinite={nonfinite!r}: choose 'stop' or 'skip'")
    runs, n = model.runs, len(train[0])
    batcher = order.start(n, runs)
    wanted = sorted(set(record) | {steps})
    alive = torch.ones(runs, dtype=torch.bool)
    stopped = np.full(runs, -1)
    frozen: Tensor | None = None
    losses = np.empty((steps, runs))
    records: list[dict[str, np.ndarray]] = []
    begin, earlier_seconds = 0, 0.0
    saved = checkpoint.load(model, steps) if checkpoint is not None else None
    if saved is not None:
        begin, earlier_seconds, state = saved["step"], saved["seconds"], saved["state"]
        _RESUMED_SECONDS.append(earlier_seconds)
        alive, stopped, frozen, records = saved["alive"], saved["stopped"], saved["frozen"], saved["records"]
        losses[:begin] = saved["losses"]
        batcher.set_state(saved["batcher"])
        with torch.no_grad():
            model.flat.copy_(saved["flat"])
        frozen_mask = ~alive[model.run_of]
    update = optimizer.start(model, state)
    start = time.process_time()
    model.train()
    for step in range(begin, steps + 1):
        if checkpoint is not None and step > begin and (step % checkpoint.every == 0 or step == steps):
            checkpoint.save(model, steps, step=step, seconds=earlier_seconds + time.process_time() - start,
                            state=update.state, alive=alive, stopped=stopped, frozen=frozen, records=records,
                            losses=losses[:step], batcher=batcher.get_state(), flat=model.flat.detach())
        if step in wanted:  # a resumed run evaluates its first step again (saved before the evaluation)
            records.append(_evaluate(model, evals or {}, eval_chunk))
        if step == steps:
            break
        loss = objective(model, batcher.batch(train, step), batcher.generator)
        finite = torch.isfinite(loss.detach())
        losses[step] = np.where(finite.numpy(), loss.detach().double().numpy(), np.inf)
        if nonfinite == "stop" and not bool(finite[alive].all()):
            newly = alive & ~finite
            stopped[newly.numpy()] = step
            alive &= finite
            mask = alive[model.run_of]
            frozen = model.flat.detach().clone() if frozen is None else torch.where(mask, frozen, model.flat)
            frozen_mask = ~mask
        model.flat_grad.zero_()
        kept = loss if frozen is None else torch.where(alive, loss, torch.zeros_like(loss))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            kept.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).sum().backward()
        model.flat_grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        update(first_step + step + 1)
        if frozen is not None:
            with torch.no_grad():
                torch.where(frozen_mask, frozen, model.flat, out=model.flat)
    curves = {name: np.stack([r[name] for r in records]) for name in (records[-1] if records else {})}
    final = _evaluate(model, final_evals or {}, eval_chunk)
    return Fit(np.array(wanted), curves, final, losses, stopped, earlier_seconds + time.process_time() - start,
               {name: value.clone() for name, value in update.state.items()}, earlier_seconds)


_RESUMED_SECONDS: list[float] = []


def resumed_cpu_seconds() -> float:
    """CPU seconds that the fits of this process resumed from checkpoints had taken in earlier
    processes (the benchmark runner adds them to the run's CPU time)."""
    return float(sum(_RESUMED_SECONDS))


@dataclass(frozen=True)
class Checkpoint:
    """Where :func:`fit` keeps its training state (``path``, written atomically) and how often
    (``every`` steps, and after the last). A saved state is used only by a fit of the same number of
    runs, parameters and steps; anything else is a ``ValueError`` naming the file to delete."""

    path: str
    every: int = 500

    def load(self, model: Stack, steps: int) -> dict[str, Any] | None:
        if not os.path.exists(self.path):
            return None
        saved = torch.load(self.path, weights_only=False)
        if (saved["runs"], saved["numel"], saved["steps"]) != (model.runs, model.flat.numel(), steps):
            raise ValueError(f"checkpoint {self.path} is of another training ({saved['runs']} runs, {saved['numel']} "
                             f"parameters, {saved['steps']} steps; here {model.runs}, {model.flat.numel()}, {steps}): "
                             "delete it to start afresh")
        return saved

    def save(self, model: Stack, steps: int, **state: Any) -> None:
        tmp = f"{self.path}.tmp"
        torch.save({"runs": model.runs, "numel": model.flat.numel(), "steps": steps, **state}, tmp)
        os.replace(tmp, self.path)
