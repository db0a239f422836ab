"""What :class:`~lightning_lyapunov.LyapunovInit` observes in ``setup``: the network's function on a
real training batch, found once, without running the user's training code again and again.

Observing (the slopes), sampling and calibrating run the network many times. They need its
function, not the training step, so :func:`observation` finds, once, an ``example`` and a
``forward`` such that ``forward(module, example)`` runs the planned layers:

1. what the user gave: ``LyapunovInit(example_input=..., forward=...)``;
2. the module's own ``forward`` on the first training batch, the batch mapped to its arguments:
   ``model(x)``, ``model(*batch)``, ``model(**batch)`` or ``model(batch)`` (as
   :func:`~lightning_lyapunov._forward.call_forward` does), then ``model(batch[0])`` (``(x, y)``
   batches) or ``model(**{the keys forward names})`` (dict batches). One trial pass each (no grad,
   everything restored) until one runs a planned layer;
3. otherwise ``training_step(batch, 0)``, **once**, neutralized: ``self.log``/``log_dict``/``print``
   do nothing, ``self.optimizers()`` and ``self.lr_schedulers()`` give inert stand-ins (their
   ``step`` and ``zero_grad`` do nothing; a closure given to ``step`` runs; counted from
   ``configure_optimizers()``), ``manual_backward``, ``toggle_optimizer``, ``untoggle_optimizer``
   and ``clip_gradients`` do nothing, under ``torch.no_grad()``. It records the call of the
   smallest submodule that holds every planned layer (``self.net(x)`` in the step) and ends the
   step there; when no such call comes, the step runs to its end (or its error) and the smallest
   recorded call that ran every planned layer the step ran is taken. From then on that submodule is
   run on the recorded arguments. Afterwards every parameter (values and ``requires_grad``),
   buffer, ``.grad``, the random generators and every module's attributes (a step counter, the
   training flags) are as before; only in-place changes to other Python objects (a list appended
   to) are not undone. The step is observed as it runs (:func:`~lightning_lyapunov.observe.observing`):
   when no submodule call can be run again (layers called one by one from the step, with
   ``F.gelu`` between them), the plan still gets the activations seen in it
   (``Observation.slopes``), but there is nothing to calibrate or sample on.

When none works, the callback falls back (fx tracing, no calibration) with a warning that says
what was tried and how to fix it (``forward=``); it never fails a fit that would run without it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from ._checks import describe, invalid
from ._forward import Forward, call_forward, called, global_rng_preserved, preserved, tensors
from .activations import SlopeInfo, first_line
from .observe import observing, slopes_seen
from .settings import InitSpec
from .surgery import eligible_layers

__all__ = ["Observation", "check_observation", "observation", "training_batch"]


@dataclass(frozen=True)
class Observation:
    """How the callback runs the network: ``forward(module, example)`` (``forward`` None:
    :func:`~lightning_lyapunov._forward.call_forward`); ``how`` says what that is, for the plan's
    lines; ``example`` None: nothing observed, and ``missing`` says why (a warning)."""

    example: Any = None
    forward: Forward | None = None
    how: str = ""
    missing: str | None = None
    slopes: tuple[dict[str, SlopeInfo], list[str]] | None = None  # seen in a pass that cannot be rerun

    def planning(self, model: nn.Module) -> AbstractContextManager[None]:
        """Where the plan of ``model`` is made: with ``slopes``, planning without an example takes them."""
        if self.slopes is None:
            return nullcontext()
        return slopes_seen(model, *self.slopes, "the observed training_step")


def check_observation(example_input: Any, forward: Any) -> None:
    """The callback's ``example_input=`` and ``forward=``: ValueError naming the argument and the fix."""
    if forward is not None and not callable(forward):
        invalid("forward", forward, "None or a callable forward(module, batch) that runs the network "
                "(in a YAML config: the import path of a function)", error=ValueError)
    if example_input is not None and not any(True for _ in tensors(example_input)):
        raise ValueError(f"example_input={describe(example_input)} holds no tensor: pass a tensor, or a tuple, list "
                         "or dict of them (what the forward takes); a tensor cannot come from a YAML config, where "
                         "forward= (an import path) chooses how the first training batch is run")


def training_batch(trainer: Trainer, pl_module: LightningModule) -> tuple[Any, str | None]:
    """The first training batch on the module's device, or ``(None, why not)``.

    Reading it leaves torch's, Python's and NumPy's global generators as they were (a shuffling
    sampler draws its seed from torch's): the training run sees the same data order as without it.
    """
    try:
        with global_rng_preserved():
            loader = trainer.fit_loop._data_source.dataloader()
            batch = next(iter(loader))
    except Exception as error:  # noqa: BLE001 - no data yet, or a loader that cannot be iterated here
        return None, f"no training batch ({type(error).__name__}{': ' + str(error) if str(error) else ''})"
    return move_data_to_device(batch, pl_module.device), None


def observation(trainer: Trainer, pl_module: LightningModule, spec: InitSpec, example_input: Any = None,
                forward: Forward | None = None) -> Observation:
    """How to run ``pl_module``'s network (module docstring), found once; the training batch is read
    only when ``example_input`` is None.

    Example::

        seen = observation(trainer, module, InitSpec())   # in the callback's setup
        plan_init(module, example_input=seen.example, forward=seen.forward)
    """
    if example_input is not None:
        return Observation(move_data_to_device(example_input, pl_module.device), forward, "example_input")
    batch, why = training_batch(trainer, pl_module)
    if batch is None:
        return Observation(missing=_fallback(why))
    if forward is not None:
        return Observation(batch, forward, "the first training batch, through forward=")
    try:
        names = eligible_layers(pl_module, spec)
    except ValueError:  # a bad include/exclude: plan_init reports it
        names = []
    modules = dict(pl_module.named_modules())
    if not names:
        return Observation(batch, None, "the first training batch")
    layers = [modules[name] for name in names]
    tried: list[str] = []
    found = _through_forward(pl_module, batch, layers, tried)
    if found is None and type(pl_module).training_step is not LightningModule.training_step:
        found = _through_training_step(pl_module, batch, names, modules, tried)
    elif found is None:
        tried.append("the module has no training_step")
    return found if found is not None else Observation(missing=_fallback("tried: " + "; ".join(tried), fix=True))


_FIX = (". Pass LyapunovInit(forward=lambda module, batch: ...) that runs the network on a training batch "
        "(or example_input=<a batch of inputs>, if the module's own forward takes one)")
#: the diagnosis's advice on an output far from the input's scale when there is no pass to run again
NO_RERUN_FIX = "LyapunovInit found no pass that runs the network again, so it could neither calibrate nor sample" + _FIX


def _fallback(why: str, fix: bool = False) -> str:
    return (f"LyapunovInit observed no training pass ({why}): slopes from torch.fx tracing, or module registration "
            "order where tracing fails; nothing to sample or calibrate on" + (_FIX if fix else ""))


# ---------------------------------------------------------------------- the module's forward


def _has_own_forward(module: nn.Module) -> bool:
    return type(module).forward not in (LightningModule.forward, nn.Module.forward)


def _forward_examples(pl_module: LightningModule, batch: Any) -> Iterator[tuple[str, Any]]:
    """The batch mapped to the forward's arguments: as it is, its first item, the keys forward names."""
    yield "forward(batch)", batch
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        yield "forward(batch[0])", batch[0]
    if isinstance(batch, Mapping):
        try:
            parameters = inspect.signature(pl_module.forward).parameters
        except (TypeError, ValueError):  # a wrapped forward without a signature
            parameters = {}
        named = [k for k in parameters if k in batch]
        if named and len(named) < len(batch):
            yield f"forward({', '.join(f'{k}=batch[{k!r}]' for k in named)})", {k: batch[k] for k in named}


def _through_forward(pl_module: LightningModule, batch: Any, layers: list[nn.Module],
                     tried: list[str]) -> Observation | None:
    if not _has_own_forward(pl_module):
        tried.append("the module has no forward of its own")
        return None
    for how, example in _forward_examples(pl_module, batch):
        try:
            with preserved(pl_module), torch.no_grad():
                ran = called(lambda: call_forward(pl_module, example), layers)  # noqa: B023 - run at once
        except Exception as error:  # noqa: BLE001 - try the next way of running the module
            tried.append(f"{how} raised {type(error).__name__}: {first_line(error)}")
            continue
        if ran:
            return Observation(example, None, f"the first training batch, through {how}")
        tried.append(f"{how} ran no planned layer")
    return None


# ---------------------------------------------------------------------- one training step


class _Recorded(Exception):
    """Raised by the pre-hook of the submodule that holds every planned layer: the step ends there."""


def _common_path(names: list[str]) -> str:
    """The smallest submodule that holds every named one (``""``: the module itself)."""
    parts = [name.split(".") for name in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0


def _copied(value: Any) -> Any:
    """``value`` with every tensor in it (tuples, lists, dicts) copied: the step may change them later."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copied(item) for item in value)
    if isinstance(value, Mapping):
        return {key: _copied(item) for key, item in value.items()}
    return value


def _replayed(path: str, call: tuple[tuple[Any, ...], dict[str, Any]]) -> Observation:
    """Run submodule ``path`` on the arguments ``training_step`` called it with."""
    def replay(module: nn.Module, recorded: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        args, kwargs = recorded
        return module.get_submodule(path)(*args, **kwargs)

    name = f"self.{path}" if path else "self"
    return Observation(call, replay, f"the first training batch, through {name}(...) as training_step calls it")


def _through_training_step(pl_module: LightningModule, batch: Any, names: list[str], modules: dict[str, nn.Module],
                           tried: list[str]) -> Observation | None:
    """Run ``training_step(batch, 0)`` once, neutralized, recording the submodule calls (module docstring)."""
    holders = sorted({".".join(name.split(".")[:i]) for name in names for i in range(name.count(".") + 2)})
    whole = _common_path(names)
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    ran: dict[str, set[str]] = {}  # per recorded call, the planned layers that ran inside it
    step_ran: set[str] = set()
    open_calls: list[str] = []

    def enter(path: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if path not in calls:
                calls[path] = (_copied(args), _copied(kwargs))
                if path == whole:
                    raise _Recorded
                ran[path] = set()
                open_calls.append(path)
        return hook

    def leave(path: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, _output: Any) -> None:
            if path in open_calls:
                open_calls.remove(path)
        return hook

    def layer_ran(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any) -> None:
            step_ran.add(name)
            for path in open_calls:
                ran[path].add(name)
        return hook

    handles = [modules[path].register_forward_pre_hook(enter(path), with_kwargs=True) for path in holders]
    handles += [modules[path].register_forward_hook(leave(path)) for path in holders]
    handles += [modules[name].register_forward_pre_hook(layer_ran(name)) for name in names]
    error: Exception | None = None
    try:
        with _neutralized(pl_module), torch.no_grad(), observing(pl_module, names) as observer:
            observer.output(pl_module.training_step(batch, 0))
    except _Recorded:
        pass
    except Exception as raised:  # noqa: BLE001 - what it recorded before the error still counts
        error = raised
    finally:
        for handle in handles:
            handle.remove()
    covering = [path for path in ran if step_ran and ran[path] >= step_ran]
    if whole in calls or covering:
        path = whole if whole in calls else max(covering, key=_depth)
        return _replayed(path, calls[path])
    raised = f"raised {type(error).__name__}: {first_line(error)}" if error is not None else ""
    if not step_ran:
        tried.append(f"training_step(batch, 0) {raised or 'ran no planned layer'}")
        return None
    how = "one training_step(batch, 0), observed as it ran" + (f" until it {raised}" if raised else "")
    return Observation(how=how, slopes=observer.slopes(names), missing=(
        f"LyapunovInit observed the activations in {how}, but no single submodule call in it runs every planned "
        "layer" + (f" (the step ran {len(step_ran)} of {len(names)})" if len(step_ran) < len(names) else "")
        + ", so the network cannot be run again: nothing to sample or calibrate on" + _FIX))


# ---------------------------------------------------------------------- neutralized


class _InertOptimizer:
    """An optimizer in the observed step: ``step`` and ``zero_grad`` do nothing (a closure given to
    ``step`` runs: the network may be called in it); anything else is the real optimizer's."""

    def __init__(self, real: Any = None) -> None:
        self._real = real

    def step(self, closure: Callable[[], Any] | None = None, **_kwargs: Any) -> Any:
        return closure() if closure is not None else None

    def zero_grad(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or self.__dict__.get("_real") is None:
            raise AttributeError(name)
        return getattr(self._real, name)


def _configured(pl_module: LightningModule) -> tuple[list[Any], list[Any]]:
    """The optimizers and schedulers ``configure_optimizers()`` returns, found in any of its forms."""
    try:
        with global_rng_preserved():
            configured = pl_module.configure_optimizers()
    except Exception:  # noqa: BLE001 - one stand-in then; the step itself shows whether that suffices
        return [None], []
    optimizers: list[Any] = []
    schedulers: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, torch.optim.Optimizer):
            optimizers.append(value)
        elif isinstance(value, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)):
            schedulers.append(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)

    walk(configured)
    return optimizers or [None], schedulers


def _stand_ins(pl_module: LightningModule) -> dict[str, Any]:
    """Instance attributes that shadow the LightningModule methods a training step uses to act."""
    found: list[tuple[list[Any], list[Any]]] = []

    def configured() -> tuple[list[Any], list[Any]]:
        if not found:
            found.append(_configured(pl_module))
        return found[0]

    def optimizers(*_args: Any, **_kwargs: Any) -> Any:
        inert = [_InertOptimizer(real) for real in configured()[0]]
        return inert[0] if len(inert) == 1 else inert

    def lr_schedulers() -> Any:
        inert = [_InertOptimizer(real) for real in configured()[1]]
        return None if not inert else inert[0] if len(inert) == 1 else inert

    def nothing(*_args: Any, **_kwargs: Any) -> None:
        return None

    return {"log": nothing, "log_dict": nothing, "print": nothing, "manual_backward": nothing,
            "toggle_optimizer": nothing, "untoggle_optimizer": nothing, "clip_gradients": nothing,
            "toggled_optimizer": lambda *_args, **_kwargs: nullcontext(), "optimizers": optimizers,
            "lr_schedulers": lr_schedulers}


@contextmanager
def _neutralized(pl_module: LightningModule) -> Iterator[None]:
    """The training step's means of acting do nothing (:func:`_stand_ins`); on exit every module's
    attributes, every parameter (values, ``requires_grad``), buffer and ``.grad``, and the random
    generators are as before."""
    attributes = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules))
                  for m in pl_module.modules()]
    parameters = [(p, p.detach().clone(), p.requires_grad) for p in pl_module.parameters()]
    try:
        with preserved(pl_module):
            pl_module.__dict__.update(_stand_ins(pl_module))
            yield
    finally:
        for module, saved, params, buffers, children in attributes:
            module.__dict__.clear()
            module.__dict__.update(saved)
            for registry, contents in ((module._parameters, params), (module._buffers, buffers),
                                       (module._modules, children)):
                registry.clear()
                registry.update(contents)
        with torch.no_grad():
            for parameter, value, requires_grad in parameters:
                parameter.copy_(value)
                parameter.requires_grad_(requires_grad)
