"""Which activation follows each weight layer, seen in one real forward pass.

``find_slopes(model, names, example_input)`` runs the model once on ``example_input`` under
``torch.no_grad()`` and follows each planned layer's output to what consumes it, whatever Python
the forward contains (control flow on tensor values, helper networks, closures):

* forward hooks tag each planned layer's output (per call); modules that are activations
  (``nn.ReLU``, ``nn.LeakyReLU``, ``nn.GELU``, ...), weight layers and attention are consumers,
  pass-through modules (norms, pooling, dropout, upsampling, ...) hand the tag on;
* a :class:`torch.overrides.TorchFunctionMode` sees every torch function and ``Tensor`` method
  applied to a tagged tensor: ``F.relu``/``leaky_relu``/``gelu``/``silu``/``tanh``/... are the
  activation; reshapes, views, ``cat``, indexing, dropout, norms, pooling, residual sums and
  multiplication by a constant or a broadcast scale hand the tag on; a linear map (``F.linear``,
  ``matmul``, ``conv``), a loss, a softmax or the model output mean no activation (slope 1);
  whole-batch reductions, shape queries and comparisons are ignored; any other operation is
  treated as linear, with a warning, only if nothing better is found for the layer.

Each activation kind gets its slope from :mod:`lightning_lyapunov.activations` (the same policies
as the fx walk). A layer called several times collects every call's activations; different slopes
warn, naming the layer and the fix. Afterwards every module's training flag, every buffer (BatchNorm
running statistics, spectral norm's ``_u``/``_v``), the parameters' ``.grad`` and the CPU and CUDA
random number generator states are restored: observing changes nothing. The per-unit root-mean-square
of each planned layer's input at its first call is kept (``SlopeInfo.input_rms``): the first layer's
is the operating scale of a plan by the scale chain (:mod:`lightning_lyapunov.chain_init`).

Without an example input (or if the observed pass fails), torch.fx tracing and then module
registration order are the fallbacks (:func:`lightning_lyapunov.activations.detect_slopes`), unless
the slopes were observed in another pass: :func:`observing` follows any code (the callback's one
``training_step`` run), and inside :func:`slopes_seen` ``find_slopes`` without an example takes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._forward import Forward, InputShapeError, TensorMarks, call_forward, preserved, shapes_checked, tensors
from .activations import (
    WEIGHT_LAYERS,
    SlopeInfo,
    classify_call,
    complete_slopes,
    detect_slopes,
    first_line,
    is_pass_module,
    merge_findings,
    module_slope,
)

__all__ = ["find_slopes", "observe_slopes", "observing", "slopes_seen"]

Tag = tuple[str, int]  # (planned layer, call number)
# modules consumed as a whole: their input meets a linear map, not an activation
_LINEAR_MODULES = WEIGHT_LAYERS + (nn.MultiheadAttention, nn.Bilinear)


def _target(func: Any) -> Any:
    """A ``Tensor`` method or attribute as its name, any other function as itself."""
    name = getattr(func, "__name__", None)
    if name == "__get__":  # a Tensor property: x.T, x.shape, x.data
        return str(getattr(getattr(func, "__self__", None), "__name__", "?"))
    if name is not None and getattr(torch.Tensor, name, None) is func:
        return name
    return func


class _Observer(TorchFunctionMode):
    """Tags planned layers' outputs and records what consumes them (see the module docstring)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        wanted = set(names)
        self.planned = {id(m): n for n, m in model.named_modules() if n in wanted}
        self.tags = TensorMarks()  # per tensor, the planned layers' outputs it carries: frozenset[Tag]
        self.definite: dict[str, list[SlopeInfo]] = {name: [] for name in names}
        self.unknown: dict[str, list[SlopeInfo]] = {name: [] for name in names}
        self.residual: set[str] = set()
        self.calls: dict[str, int] = {}
        self.input_rms: dict[str, float | None] = {}  # per planned layer, its input's rms at its first call
        self.depth = 0  # > 0 inside a module consumed as a whole: its inner calls are not followed
        self.handles: list[Any] = []
        self.modules = list(model.modules())
        for module in self.modules:
            if id(module) in self.planned or isinstance(module, _LINEAR_MODULES) or is_pass_module(module) or (
                module_slope(module, "", "observed") is not None
            ):
                self.handles.append(module.register_forward_pre_hook(self._enter, with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._leave, with_kwargs=True))

    # ---------------------------------------------------------------- tags

    def _get(self, tensor: torch.Tensor) -> frozenset[Tag]:
        return self.tags.get(tensor, frozenset())

    def _set(self, value: Any, tags: frozenset[Tag]) -> None:
        for tensor in tensors(value):
            if tensor.is_floating_point() and tensor.dim() > 0:
                self.tags.set(tensor, tags | self._get(tensor))

    def _clear(self, value: Any) -> None:
        for tensor in tensors(value):
            self.tags.discard(tensor)

    def _tags_of(self, *values: Any) -> frozenset[Tag]:
        return frozenset().union(*(self._get(t) for value in values for t in tensors(value)))

    def _record(self, tags: frozenset[Tag], finding: Callable[[str], SlopeInfo | None], definite: bool) -> None:
        for name in sorted({name for name, _ in tags}):
            info = finding(name)
            if info is not None:
                (self.definite if definite else self.unknown)[name].append(info)

    # ---------------------------------------------------------------- modules

    def _enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.depth == 0:
            tags = self._tags_of(args, kwargs)
            if tags:
                if isinstance(module, _LINEAR_MODULES):
                    self._record(tags, lambda name: SlopeInfo(1.0, "no activation (observed)"), True)
                elif not is_pass_module(module):
                    self._record(tags, lambda name: module_slope(module, name, "observed"), True)
            module.__dict__["_lyapunov_observed_tags"] = tags if is_pass_module(module) else frozenset()
        self.depth += 1  # from here on, the torch calls below are not the model's: not followed
        name = self.planned.get(id(module))
        if name is not None and name not in self.input_rms:
            self.input_rms[name] = _rms(args, kwargs)

    def _leave(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        self.depth -= 1
        if self.depth:
            return
        tags = module.__dict__.pop("_lyapunov_observed_tags", frozenset())
        name = self.planned.get(id(module))
        if name is not None:
            self.calls[name] = self.calls.get(name, 0) + 1
            tags = frozenset({(name, self.calls[name])})
        if tags:
            self._set(output, tags)
        elif name is None:
            self._clear(output)

    # ---------------------------------------------------------------- functions

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.depth == 0:
            tags = self._tags_of(args, kwargs)
            if tags:
                self._consume(func, args, kwargs, tags, result)
        return result

    def _consume(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], tags: frozenset[Tag],
                 result: Any) -> None:
        target = _target(func)
        if target == "__setitem__":  # out[..., :c] = layer(x): ``out`` now carries the layer's units
            self._set(args[0], tags)
            return
        verdict, _ = classify_call(target, args, kwargs, "", "observed")
        if verdict == "scale":
            verdict = "pass" if _is_scaling(args, result) else "unknown"
            if verdict == "unknown":
                target = "<product of two tensors>"
        if verdict == "ignore":
            return
        if verdict in ("pass", "add"):
            if verdict == "add" and _is_sum_of_paths(args, result):
                self.residual.update(name for name, _ in tags)
            self._set(result, tags)
            return
        if verdict == "unknown" and not any(t.is_floating_point() and t.dim() > 0 for t in tensors(result)):
            return  # a statistic or a comparison, not the signal
        self._record(tags, lambda name: classify_call(target, args, kwargs, name, "observed")[1],
                     verdict != "unknown")
        self._clear(result)

    def output(self, value: Any) -> None:
        """The model's output: tags that reach it had no activation."""
        self._record(self._tags_of(value), lambda name: SlopeInfo(1.0, "no activation (observed)"), True)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for module in self.modules:  # left behind by a forward pass that failed half-way
            module.__dict__.pop("_lyapunov_observed_tags", None)

    def slopes(self, names: list[str]) -> tuple[dict[str, SlopeInfo], list[str]]:
        """A SlopeInfo per layer that ran (first-call order), from its definite findings first."""
        order = list(self.calls)
        slopes = {}
        for name in order:
            found = self.definite[name] or self.unknown[name]
            calls = self.calls[name]
            info = merge_findings(name, found, name in self.residual,
                                  "is called with" if calls > 1 else "feeds")
            if not found:
                info = replace(info, source="no activation (observed)")
            slopes[name] = replace(info, found_by="observed", calls=calls, input_rms=self.input_rms.get(name))
        return slopes, order


def _rms(args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
    """The per-unit root-mean-square of a layer's input (its first floating tensor), or None."""
    for tensor in tensors((args, kwargs)):
        if tensor.is_floating_point() and tensor.numel() > 0:
            value = float(tensor.detach().double().pow(2).mean().sqrt())
            return value if math.isfinite(value) and value > 0.0 else None
    return None


def _is_scaling(args: tuple[Any, ...], result: Any) -> bool:
    """``x * c`` or ``x / c`` with a number or a broadcast (smaller) tensor ``c``: a per-unit rescale."""
    size = result.numel() if isinstance(result, torch.Tensor) else 0
    operands = args[:2]
    return any(not isinstance(a, torch.Tensor) or a.numel() < size for a in operands)


def _is_sum_of_paths(args: tuple[Any, ...], result: Any) -> bool:
    """A sum of two full-size tensors (a residual or skip connection), not a bias or a constant."""
    size = result.numel() if isinstance(result, torch.Tensor) else -1
    return sum(isinstance(a, torch.Tensor) and a.numel() == size for a in args[:2]) == 2


def observe_slopes(
    model: nn.Module, names: list[str], example_input: Any, forward: Forward | None = None
) -> tuple[dict[str, SlopeInfo], list[str]]:
    """Slopes of the named layers that run in one forward pass on ``example_input`` (module docstring).

    ``forward(model, example_input)`` runs the model (default :func:`call_forward`). Raises whatever
    the forward raises (:class:`~lightning_lyapunov._forward.InputShapeError` for a batch of the
    wrong width); the model's state is restored in every case.
    """
    with preserved(model), torch.no_grad(), shapes_checked(model), observing(model, names) as observer:
        observer.output((forward or call_forward)(model, example_input))
    return observer.slopes(names)


@contextmanager
def observing(model: nn.Module, names: list[str]) -> Iterator[_Observer]:
    """Follow the named layers' outputs through whatever runs inside (module docstring); afterwards
    ``observer.slopes(names)`` has the slope of every layer that ran. Give the code's result to
    ``observer.output`` (what reaches it had no activation). The hooks are removed on exit, errors too.

    Example::

        with torch.no_grad(), observing(model, ["0", "2"]) as observer:
            observer.output(model(x))
        slopes, order = observer.slopes(["0", "2"])
    """
    observer = _Observer(model, names)
    try:
        with observer:
            yield observer
    finally:
        observer.remove()


#: Slopes observed in another pass, by model (:func:`slopes_seen`).
_SEEN: ContextVar[tuple[nn.Module, dict[str, SlopeInfo], list[str], str] | None] = ContextVar("_SEEN", default=None)


@contextmanager
def slopes_seen(model: nn.Module, slopes: dict[str, SlopeInfo], order: list[str], where: str) -> Iterator[None]:
    """Inside, ``find_slopes(model, names)`` without an example input takes ``slopes`` (observed
    ``where``, in first-call ``order``) instead of tracing: a pass that cannot be run again, such as
    the callback's one ``training_step`` run, still gives the plan its observed activations."""
    token = _SEEN.set((model, slopes, order, where))
    try:
        yield
    finally:
        _SEEN.reset(token)


def find_slopes(
    model: nn.Module, names: list[str], example_input: Any = None, forward: Forward | None = None
) -> tuple[dict[str, SlopeInfo], list[str], list[str]]:
    """Slope per named layer: observed on ``example_input`` if given, else by torch.fx / module order.

    Returns ``(slopes, order, warnings)`` as :func:`lightning_lyapunov.activations.detect_slopes`.
    Layers the observed pass never calls are planned by registration order (one warning names them);
    if the observed pass fails, the fx fallback is used and a warning says why; a batch of the wrong
    width for a weight layer raises :class:`~lightning_lyapunov._forward.InputShapeError` (a ValueError).

    Example::

        model = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 1))
        slopes, order, _ = find_slopes(model, ["0", "2"], torch.randn(8, 4))
        slopes["0"].slope, slopes["0"].found_by   # (0.1, 'observed')
    """
    if example_input is None:
        seen = _SEEN.get()
        if seen is None or seen[0] is not model:
            return detect_slopes(model, names)
        _, slopes, order, where = seen
        return complete_slopes(model, names, {name: slopes[name] for name in names if name in slopes},
                               [name for name in order if name in names], f"they are never called in {where}")
    try:
        slopes, order = observe_slopes(model, names, example_input, forward)
    except InputShapeError:  # a batch no layer can take is a wrong argument, not a failed observation
        raise
    except Exception as error:  # noqa: BLE001 - a failed observation means: use the fallback
        slopes, order, warnings_ = detect_slopes(model, names)
        how = "forward(model, example_input)" if forward is not None else f"{type(model).__name__}(example_input)"
        warnings_.insert(0, (
            f"could not observe a forward pass: {how} raised {type(error).__name__}: {first_line(error)}; slopes "
            "from torch.fx tracing instead: check the plan, or pass the example the forward takes "
            "(a tensor, a tuple of arguments or a dict of keyword arguments)"
        ))
        return slopes, order, warnings_
    return complete_slopes(model, names, slopes, order, "they are never called in the observed forward pass")
