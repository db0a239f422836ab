"""The package's warning category, :class:`LyapunovWarning`, printed as the bare message.

Every warning of lightning-lyapunov has this category (importable as
``lightning_lyapunov.LyapunovWarning``); silence them with
``warnings.filterwarnings("ignore", category=LyapunovWarning)``. Python's default format prefixes
``file:line:`` and the source line, which for these messages (about the user's model, not about a
line of the package) only adds noise: they print as the message alone.
"""

from __future__ import annotations

import warnings

__all__ = ["LyapunovWarning"]


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
