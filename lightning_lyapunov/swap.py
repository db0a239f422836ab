"""Replace activation modules, e.g. ReLU by LeakyReLU(0.1), so that Lyapunov init's theory applies.

Example::

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    swap_activations(model, nn.ReLU, lambda m: nn.LeakyReLU(0.1))   # -> ['1']
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from torch import nn

from ._checks import check_module, invalid

__all__ = ["swap_activations"]


def swap_activations(
    model: nn.Module,
    old: type[nn.Module] | tuple[type[nn.Module], ...] = nn.ReLU,
    new: Callable[[nn.Module], nn.Module] | nn.Module | None = None,
) -> list[str]:
    """Replace every submodule that is an instance of ``old`` by ``new(old_module)``; in place.

    ``new`` is a factory called with the module it replaces, or a module (deep-copied for each
    replacement); the default is ``nn.LeakyReLU(0.1)`` keeping ``inplace``. A module registered under
    several names is replaced by one shared new module. Returns the qualified names replaced.
    Functional activations (``F.relu(x)`` inside ``forward``) are not modules and cannot be swapped:
    edit the model's code (``plan_init`` detects and reports them).

    Example::

        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
        swap_activations(model, nn.ReLU, lambda m: nn.LeakyReLU(0.1))   # -> ['1']
    """
    check_module("model", model)
    old = _check_activation_types(old)
    factory = _activation_factory(new)
    if isinstance(model, old):
        raise ValueError(f"model itself is a {type(model).__name__}: wrap it in a container before swapping")
    targets = [(name, module) for name, module in model.named_modules(remove_duplicate=False)
               if name and isinstance(module, old)]
    made: dict[int, nn.Module] = {}
    for _, module in targets:  # build every replacement first: a bad factory changes nothing
        if id(module) not in made:
            made[id(module)] = replacement = factory(module)
            if not isinstance(replacement, nn.Module):
                invalid(f"new({type(module).__name__})", replacement, "an nn.Module (new must return one)")
    replaced = []
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, made[id(module)])
        replaced.append(name)
    return replaced


def _check_activation_types(old: Any) -> tuple[type[nn.Module], ...]:
    """``old`` as a tuple of nn.Module classes; a string, an instance or anything else is refused."""
    items = old if isinstance(old, tuple) else (old,)
    if not items:
        raise ValueError("old=() names no activation class; pass e.g. old=nn.ReLU")
    for item in items:
        if not (isinstance(item, type) and issubclass(item, nn.Module)):
            hint = ""
            if isinstance(item, str) and isinstance(getattr(nn, item, None), type):
                hint = f"pass the class: old=nn.{item}"
            elif isinstance(item, nn.Module):
                hint = f"pass the class: old=nn.{type(item).__name__}"
            invalid("old", old, "an nn.Module class or a tuple of them (e.g. nn.ReLU or (nn.ReLU, nn.GELU))", hint)
    return items


def _activation_factory(new: Any) -> Callable[[nn.Module], nn.Module]:
    """``new`` as a factory ``old module -> new module`` (see :func:`swap_activations`)."""
    if new is None:
        return lambda module: nn.LeakyReLU(0.1, inplace=getattr(module, "inplace", False))
    if isinstance(new, nn.Module):
        return lambda module: copy.deepcopy(new)
    if isinstance(new, type):
        invalid("new", new, "an nn.Module instance or a factory, not a class",
                f"pass new=nn.{new.__name__}(...) or new=lambda old: nn.{new.__name__}(...)")
    if not callable(new):
        invalid("new", new, "an nn.Module, a factory old_module -> nn.Module, or None (LeakyReLU(0.1))")
    return new
