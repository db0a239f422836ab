"""Running a model without side effects: the one home of what observation, sampling and calibration share.

* :func:`call_forward`: run a model on an example the way its forward takes it (``model(x)``,
  ``model(*args)``, ``model(**kwargs)`` or ``model(batch)``).
* :func:`preserved`: afterwards every module's training flag, every buffer (BatchNorm running
  statistics, spectral norm's ``_u``/``_v``), every parameter's ``.grad`` and the global random
  generators (torch's CPU and CUDA, Python's, NumPy's) are as before.
* :func:`quiet`: :func:`preserved`, under ``torch.no_grad()``, in eval mode (no dropout) except
  BatchNorm, which normalizes with the batch's statistics as in the first training step (its
  running statistics at init would make it the identity). Sampling and calibration measure here.
* :func:`stop_at`: end a forward pass at one module's first call (its input and output).
* :func:`called`: which of some modules a forward pass calls, in the order of their first call.
* :func:`tensors`: every tensor in a (nested) batch.
* :func:`shapes_checked`: a pass that fails because a weight layer was given an input of the wrong
  width raises :class:`InputShapeError`, which names the layer and the shape it takes, instead of
  torch's ``mat1 and mat2 shapes cannot be multiplied``.
* :func:`global_rng_preserved`: the global random generators alone.
"""

from __future__ import annotations

import inspect
import random
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "Forward", "FirstCall", "InputShapeError", "call_forward", "called", "global_rng_preserved", "preserved", "quiet",
    "shapes_checked", "stop_at", "tensors", "TensorMarks",
]

#: ``forward(model, example)``: how to run a model on an example (default :func:`call_forward`).
Forward = Callable[[nn.Module, Any], Any]


def call_forward(model: nn.Module, example: Any) -> Any:
    """Run ``model`` on ``example`` the way its forward takes it.

    A tuple or list is unpacked into positional arguments, a mapping into keyword arguments, when
    the forward's signature accepts that; otherwise (and for anything else) it is passed as the
    single argument: ``model(x)``, ``model(*args)``, ``model(**batch)`` or ``model(batch)``.

    Example::

        call_forward(nn.Bilinear(2, 3, 1), (torch.randn(4, 2), torch.randn(4, 3)))   # model(x1, x2)
    """
    if isinstance(example, (tuple, list, Mapping)):
        args, kwargs = ((), dict(example)) if isinstance(example, Mapping) else (tuple(example), {})
        try:
            inspect.signature(model.forward).bind(*args, **kwargs)
        except (TypeError, ValueError):
            return model(example)
        return model(*args, **kwargs)
    return model(example)


def tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) tuple, list or dict, in order.

    Example::

        list(tensors({"x": x, "pair": (y, 3.0)}))   # [x, y]
    """
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from tensors(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from tensors(item)


class TensorMarks:
    """A mark per tensor, kept by the tensor's identity while it lives: what an observer of a forward
    pass attaches to the tensors it follows. A freed tensor's id may be reused by a new one; the weak
    reference tells them apart, so a new tensor never inherits an old mark.

    Example::

        marks = TensorMarks()
        marks.set(x, "seen")
        marks.get(x), marks.get(x.clone())   # ("seen", None)
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, Any]] = {}

    def get(self, tensor: torch.Tensor, default: Any = None) -> Any:
        """The mark of ``tensor``, or ``default``."""
        entry = self._entries.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else default

    def set(self, tensor: torch.Tensor, mark: Any) -> None:
        """Mark ``tensor`` (replacing any mark it had)."""
        self._entries[id(tensor)] = (weakref.ref(tensor), mark)

    def discard(self, tensor: torch.Tensor) -> None:
        """Forget the mark of ``tensor``, if any."""
        self._entries.pop(id(tensor), None)


@contextmanager
def global_rng_preserved() -> Iterator[None]:
    """Restore torch's CPU generator (and every CUDA device's, once CUDA is initialized), Python's
    ``random`` and NumPy's global generator on exit, whatever the block drew from them."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda_devices = range(torch.cuda.device_count()) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore training flags, buffers (same tensors, same values), ``.grad`` and RNG states on exit."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [
        (module, name, tensor, tensor.clone())
        for module in model.modules()
        for name, tensor in module._buffers.items()
        if tensor is not None
    ]
    grads = [(parameter, parameter.grad) for parameter in model.parameters()]
    try:
        with global_rng_preserved():
            yield
    finally:
        with torch.no_grad():
            for module, name, tensor, saved in buffers:
                module._buffers[name] = tensor
                tensor.copy_(saved)
        for module, training in modes:
            module.training = training
        for parameter, grad in grads:
            parameter.grad = grad


@contextmanager
def quiet(model: nn.Module) -> Iterator[None]:
    """Measure ``model`` as the first training step sees it, changing nothing (module docstring)."""
    with preserved(model), torch.no_grad():
        model.eval()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()
        yield


class _Stop(Exception):
    """Raised by :func:`stop_at`'s hook to end the forward pass at the module of interest."""


class FirstCall(NamedTuple):
    """A module's first call in a forward pass: its positional arguments and its output (``None``
    when the pass was stopped before the module ran)."""

    args: tuple[Any, ...]
    output: Any


def stop_at(run: Callable[[], Any], module: nn.Module, *, before: bool = False) -> tuple[FirstCall | None, Any]:
    """Run ``run()`` (a forward pass) until ``module``'s first call, which ends it: after the module
    ran, or just ``before`` it. Returns ``(call, None)``, or ``(None, run())`` when the module was not
    called (the pass ran to the end). Errors of the pass propagate; the hook is always removed.

    Example::

        call, _ = stop_at(lambda: model(x), model.net[4])   # model.net[4]'s input and output
    """
    calls: list[FirstCall] = []

    def after(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        calls.append(FirstCall(args, output))
        raise _Stop

    def ahead(_module: nn.Module, args: tuple[Any, ...]) -> None:
        calls.append(FirstCall(args, None))
        raise _Stop

    handle = module.register_forward_pre_hook(ahead) if before else module.register_forward_hook(after)
    try:
        result = run()
    except _Stop:
        return calls[0], None
    finally:
        handle.remove()
    return None, result


def called(run: Callable[[], Any], modules: Sequence[nn.Module]) -> list[int]:
    """Run ``run()`` (a forward pass) once; the indices of ``modules`` that it calls, in the order of
    their first call. Errors of the pass propagate; the hooks are always removed.

    Example::

        called(lambda: model(x), [model.aux, model.net[0]])   # [1]: the forward never calls model.aux
    """
    order: list[int] = []

    def hook(index: int) -> Callable[..., None]:
        def record(_module: nn.Module, _args: tuple[Any, ...]) -> None:
            if index not in order:
                order.append(index)
        return record

    handles = [module.register_forward_pre_hook(hook(index)) for index, module in enumerate(modules)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return order


class InputShapeError(ValueError):
    """A weight layer was given an input of a shape it cannot take; the message names the argument
    the batch came from (``example_input`` unless :meth:`renamed`), the layer and the shape it takes."""

    def __init__(self, layer: str, kind: str, got: tuple[int, ...], takes: str, argument: str = "example_input"):
        self.layer, self.kind, self.got, self.takes = layer, kind, got, takes
        super().__init__(f"{argument} gives layer {layer!r} ({kind}) inputs of shape {got}; it takes {takes}: "
                         "pass a batch of the shape the model's forward takes")

    def renamed(self, argument: str) -> InputShapeError:
        """The same error, naming ``argument`` (e.g. ``"probe"``) as where the batch came from."""
        return InputShapeError(self.layer, self.kind, self.got, self.takes, argument)


_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def _takes(module: nn.Module, x: torch.Tensor) -> str | None:
    """The input shape ``module`` takes when ``x`` does not fit it, else None."""
    if isinstance(module.weight, nn.parameter.UninitializedParameter):  # lazy: it takes what it gets
        return None
    if isinstance(module, nn.Linear):
        return None if x.dim() >= 1 and x.shape[-1] == module.in_features else f"(..., {module.in_features})"
    spatial = len(module.kernel_size)
    if x.dim() in (spatial + 1, spatial + 2) and x.shape[-spatial - 1] == module.in_channels:
        return None
    return f"(N, {module.in_channels}, {_SPATIAL.get(spatial, '...')})"


@contextmanager
def shapes_checked(model: nn.Module) -> Iterator[None]:
    """Inside the block, an error of a forward pass whose last Linear or convolution of ``model`` was
    given an input of the wrong width (or channels) becomes :class:`InputShapeError` (from torch's
    error). The hooks only keep a reference to each layer's input: no tensor operation runs during
    the pass (an observer's ``TorchFunctionMode`` sees none); the check runs on the error.

    Example::

        with shapes_checked(model):
            model(torch.randn(8, 3))   # InputShapeError: ... layer '0' (Linear) ... it takes (..., 2)
    """
    last: list[tuple[str, nn.Module, Any]] = []  # the weight layer entered last, and its input

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            last[:] = [(name or "<root>", module, args[0] if args else None)]
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in model.named_modules()
               if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        yield
    except Exception as error:
        if last and isinstance(last[0][2], torch.Tensor):
            name, module, x = last[0]
            takes = _takes(module, x)
            if takes is not None:
                raise InputShapeError(name, type(module).__name__, tuple(x.shape), takes) from error
        raise
    finally:
        last.clear()
        for handle in handles:
            handle.remove()
