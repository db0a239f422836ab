"""Tests of lightning_lyapunov._warn: one warning category, printed as the bare message."""

import warnings

import lightning_lyapunov
from lightning_lyapunov._warn import LyapunovWarning


def test_the_category_is_importable_from_the_package_and_printed_without_a_location() -> None:
    assert lightning_lyapunov.LyapunovWarning is LyapunovWarning and issubclass(LyapunovWarning, UserWarning)
    assert warnings.formatwarning("a message", LyapunovWarning, "surgery.py", 12) == "a message\n"
    other = warnings.formatwarning("a message", UserWarning, "surgery.py", 12)
    assert "surgery.py:12" in other  # other warnings keep Python's format
