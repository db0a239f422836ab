"""The package's warning category, :class:`LyapunovWarning`, printed as the bare message, and
:func:`warn`, which attributes a warning to the user's line.

Every warning of lightning-lyapunov has this category (importable as
``lightning_lyapunov.LyapunovWarning``); silence them with
``warnings.filterwarnings("ignore", category=LyapunovWarning)``. Python's default format prefixes
``file:line:`` and the source line, which for these messages (about the user's model, not about a
line of the package) only adds noise: they print as the message alone. The location is still
recorded (``warnings.catch_warnings(record=True)``, ``-W error``, ``filterwarnings(module=...)``):
:func:`warn` gives the first frame outside this package, Lightning and torch, i.e. the user's call
(``apply_init(...)``, ``trainer.fit(...)``), not a line of ``surgery.py``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

__all__ = ["LyapunovWarning", "warn"]


class LyapunovWarning(UserWarning):
    """Category of every warning of lightning-lyapunov, printed as the bare message (no ``file:line:``).

    Silence them with ``warnings.filterwarnings("ignore", category=LyapunovWarning)``.
    """


_format_other_warnings = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' signature
    if isinstance(category, type) and issubclass(category, LyapunovWarning):
        return f"{message}\n"
    return _format_other_warnings(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Packages whose frames stand between the user's call and ours (when imported).
_FRAMEWORKS = ("lightning", "lightning_fabric", "lightning_utilities", "pytorch_lightning", "torch", "jsonargparse")


def _internal_prefixes() -> tuple[str, ...]:
    prefixes = [_PACKAGE, os.path.abspath(contextlib.__file__)]  # a warning from a context manager's exit
    for name in _FRAMEWORKS:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            prefixes.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(prefixes)


def warn(message: str) -> None:
    """``warnings.warn(message, LyapunovWarning)`` attributed to the user's line: the first frame,
    outward from the caller, outside this package, Lightning, torch, jsonargparse and ``contextlib``
    (the outermost frame when there is none, e.g. under ``python -m``).

    Example::

        warn("layer 'fc1' is followed by GELU ...")   # recorded at the line that called apply_init
    """
    prefixes = _internal_prefixes()
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(prefixes):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, LyapunovWarning, stacklevel=level)
