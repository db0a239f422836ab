"""Argument checks shared by every public function and class of the package.

Each check returns the (normalized) value or raises an error whose message names the argument,
shows what was given (value and type) and says what is allowed, e.g.::

    seed=1.5 is invalid: it must be an integer in [0, 2**63) or None, not a float

A value of the wrong type raises :class:`ArgumentTypeError` (a ``TypeError``); a value of the right
type outside the allowed range raises ``ValueError``. Booleans are never accepted as numbers.

torch is imported only by the tensor, generator and module checks, so that
:mod:`lightning_lyapunov.theory` stays importable without torch.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = [
    "ArgumentTypeError",
    "MIN_SLOPE",
    "check_bool",
    "check_choice",
    "check_fans",
    "check_float",
    "check_generator",
    "check_int",
    "check_module",
    "check_slope",
    "check_tensor",
    "describe",
    "invalid",
]

#: Below this (but above 0) ``a**2`` underflows the theory's quadrature: use 0 (ReLU) instead.
MIN_SLOPE = 1e-100


class ArgumentTypeError(TypeError):
    """An argument of the wrong type."""


def short_repr(value: Any) -> str:
    """``repr(value)``, shortened to 80 characters for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(value: Any) -> str:
    """``repr(value)`` (shortened) and its type, for error messages: ``'abc' (str)``."""
    return f"{short_repr(value)} ({type(value).__name__})"


def invalid(name: str, value: Any, allowed: str, hint: str = "", error: type[Exception] = ArgumentTypeError) -> NoReturn:
    """Raise ``error("name=value is invalid: it must be <allowed>[, not a <type>][; hint]")``."""
    kind = f", not {_a(type(value).__name__)}" if error is ArgumentTypeError else ""
    raise error(f"{name}={short_repr(value)} is invalid: it must be {allowed}{kind}" + (f"; {hint}" if hint else ""))


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _interval(minimum: float | None, maximum: float | None, low_open: bool, high_open: bool) -> str:
    if minimum is None and maximum is None:
        return ""
    if maximum is None:
        return f" {'>' if low_open else '>='} {minimum:g}"
    if minimum is None:
        return f" {'<' if high_open else '<='} {maximum:g}"
    return f" in {'(' if low_open else '['}{minimum:g}, {maximum:g}{')' if high_open else ']'}"


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
    allowed: str | None = None,
) -> int | None:
    """An integer (``int`` or numpy integer, not ``bool`` or ``1.0``) in ``[minimum, maximum]``.

    ``allowed`` replaces the generated description of the allowed values in the message.

    Example::

        >>> check_int("depth", 3, minimum=1)
        3
    """
    if value is None and allow_none:
        return None
    text = allowed or "an integer" + _interval(minimum, maximum, False, False) + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        invalid(name, value, text)
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        invalid(name, value, text, error=ValueError)
    return value


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
    allowed: str | None = None,
    hint: str = "",
) -> float | None:
    """A finite real number (not ``bool``, not NaN or infinite) in the given interval, as ``float``.

    Example::

        >>> check_float("gain", 2, minimum=0.0, low_open=True)
        2.0
    """
    if value is None and allow_none:
        return None
    text = allowed or (
        "a finite number" + _interval(minimum, maximum, low_open, high_open) + (" or None" if allow_none else "")
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        invalid(name, value, text, hint)
    number = float(value)
    if not math.isfinite(number):
        invalid(name, value, text, hint, error=ValueError)
    if minimum is not None and (number <= minimum if low_open else number < minimum):
        invalid(name, value, text, hint, error=ValueError)
    if maximum is not None and (number >= maximum if high_open else number > maximum):
        invalid(name, value, text, hint, error=ValueError)
    return number


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (or a numpy bool); strings such as ``"no"`` are refused, not read as truthy.

    Example::

        >>> check_bool("diagnostics", False)
        False
    """
    if isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    invalid(name, value, "True or False")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """One of ``choices`` (strings or booleans; ``True`` never stands for ``1``); the message
    suggests the closest string choice.

    Example::

        >>> check_choice("distribution", "gaussian", ("gaussian", "orthogonal"))
        'gaussian'
    """
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        value = bool(value)
    for choice in choices:
        if isinstance(choice, bool) or isinstance(value, bool):
            if value is choice:
                return value
        elif isinstance(value, str) and value == choice:
            return value
    listed = ", ".join(repr(choice) for choice in choices)
    hint = ""
    if isinstance(value, str):
        strings = {choice.lower(): choice for choice in choices if isinstance(choice, str)}
        close = difflib.get_close_matches(value.lower(), list(strings), n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {strings[close[0]]!r}?"
    error = ValueError if isinstance(value, (str, bool)) else ArgumentTypeError
    kind = "" if error is ValueError else f", not {_a(type(value).__name__)}"
    raise error(f"{name}={short_repr(value)} is invalid (unknown {name}): it must be one of {listed}{kind}"
                + (f"; {hint}" if hint else ""))


def check_slope(name: str, value: Any) -> float:
    """A Leaky ReLU negative slope: a finite number in [0, 1], 0 or at least :data:`MIN_SLOPE`.

    Example::

        >>> check_slope("negative_slope", 0.1)
        0.1
    """
    allowed = "a number in [0, 1] (0 = ReLU, 1 = no activation)"
    hint = "for a negative slope a pass |a| (the theory depends on a**2 only)"
    slope = check_float(name, value, minimum=0.0, maximum=1.0, allowed=allowed, hint=hint)
    if 0.0 < slope < MIN_SLOPE:
        raise ValueError(
            f"{name}={value!r} is invalid: it is too small to compute with (a**2 underflows); use 0 (ReLU) "
            f"or a slope of at least {MIN_SLOPE:g}"
        )
    return slope


def check_fans(name: str, value: Any) -> tuple[int, int] | None:
    """``None`` or a pair ``(d_in, d_out)`` of integers >= 1.

    Example::

        >>> check_fans("fans", (8, 4))
        (8, 4)
    """
    if value is None:
        return None
    allowed = "None or a pair (d_in, d_out) of integers >= 1"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        invalid(name, value, allowed)
    d_in = check_int(f"{name}[0] (d_in)", value[0], minimum=1)
    d_out = check_int(f"{name}[1] (d_out)", value[1], minimum=1)
    return d_in, d_out


def check_tensor(name: str, value: Any, *, min_dim: int = 2) -> Any:
    """A non-empty floating-point ``torch.Tensor`` with at least ``min_dim`` dimensions (a weight in
    Linear ``(d_out, d_in)`` or ConvNd ``(C_out, C_in / groups, *kernel)`` layout by default).

    Example::

        >>> import torch
        >>> check_tensor("tensor", torch.empty(2, 3)).shape
        torch.Size([2, 3])
    """
    import torch

    if not isinstance(value, torch.Tensor):
        invalid(name, value, "a torch.Tensor")
    if not value.is_floating_point():
        raise ArgumentTypeError(
            f"{name} of dtype {value.dtype} is invalid: it must be a floating-point tensor (float16, bfloat16, "
            "float32 or float64); create it with dtype=torch.float32 or convert it with .float()"
        )
    if value.dim() < min_dim:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} is invalid: it needs at least {min_dim} dimensions (a weight "
            "in Linear (d_out, d_in) or ConvNd (C_out, C_in / groups, *kernel) layout)"
        )
    if value.numel() == 0:
        raise ValueError(f"{name} of shape {tuple(value.shape)} is invalid: it is empty (every dimension must be >= 1)")
    return value


def check_generator(name: str, value: Any, *, device: Any = None) -> Any:
    """``None`` or a ``torch.Generator``; with ``device``, one on that device type.

    Example::

        >>> import torch
        >>> check_generator("generator", None) is None
        True
    """
    import torch

    if value is None:
        return None
    if not isinstance(value, torch.Generator):
        hint = f"pass generator=torch.Generator().manual_seed({value})" if isinstance(value, int) else ""
        invalid(name, value, "a torch.Generator or None", hint)
    if device is not None and value.device.type != torch.device(device).type:
        raise ValueError(
            f"{name} on {value.device} is invalid: the draw happens on {torch.device(device)}; pass a "
            f"torch.Generator(device={torch.device(device).type!r})"
        )
    return value


def check_module(name: str, value: Any) -> Any:
    """A ``torch.nn.Module``.

    Example::

        >>> from torch import nn
        >>> isinstance(check_module("model", nn.Linear(2, 2)), nn.Module)
        True
    """
    from torch import nn

    if not isinstance(value, nn.Module):
        invalid(name, value, "a torch.nn.Module")
    return value
