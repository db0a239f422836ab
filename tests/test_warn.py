"""Tests of lightning_lyapunov._warn: one warning category, printed as the bare message."""

import sys
import warnings

import lightning_lyapunov
from lightning_lyapunov._warn import LyapunovWarning


def test_the_category_is_importable_from_the_package_and_printed_without_a_location() -> None:
    assert lightning_lyapunov.LyapunovWarning is LyapunovWarning and issubclass(LyapunovWarning, UserWarning)
    assert warnings.formatwarning("a message", LyapunovWarning, "surgery.py", 12) == "a message\n"
    other = warnings.formatwarning("a message", UserWarning, "surgery.py", 12)
    assert "surgery.py:12" in other  # other warnings keep Python's format


def test_warn_attributes_the_warning_to_the_users_line() -> None:
    import torch

    from lightning_lyapunov import plan_init

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.Linear(4, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan_init(model, example_input=torch.randn(8, 4)); line = sys._getframe().f_lineno  # noqa: E702
    ours = [w for w in caught if issubclass(w.category, LyapunovWarning)]
    assert ours and all((w.filename, w.lineno) == (__file__, line) for w in ours), [(w.filename, w.lineno) for w in ours]
