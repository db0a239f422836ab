"""Everything the benchmarks take from ``lightning_lyapunov``, in one place.

No other module of ``benchmarks/`` imports the package (``tests/test_bench_suite.py`` checks it): when
the package's modules or names change, :data:`SOURCES` is the only table to follow. Names are imported
on first use (``from benchmarks._lib.package import apply_init`` imports ``lightning_lyapunov.surgery``
then), so a short-lived process, e.g. a QR-draw timing child, pays only for what it uses.
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> (module, attribute); attribute None: the module itself
SOURCES: dict[str, tuple[str, str | None]] = {
    # initialization
    "apply_init": ("lightning_lyapunov", "apply_init"),
    "plan_init": ("lightning_lyapunov", "plan_init"),
    "sample_lyapunov_": ("lightning_lyapunov", "sample_lyapunov_"),
    "LyapunovInit": ("lightning_lyapunov", "LyapunovInit"),
    "calibrate_": ("lightning_lyapunov.calibration", "calibrate_"),
    "DEFAULT_TARGET": ("lightning_lyapunov.settings", "DEFAULT_TARGET"),
    "InitSpec": ("lightning_lyapunov", "InitSpec"),
    "find_residual_blocks": ("lightning_lyapunov.residual", "find_residual_blocks"),
    "branch_scale": ("lightning_lyapunov.residual", "branch_scale"),
    "orthogonal_": ("lightning_lyapunov.init", "orthogonal_"),
    "orthogonal_gain": ("lightning_lyapunov.theory", "orthogonal_gain"),
    "lyapunov_orthogonal_": ("lightning_lyapunov.init", "lyapunov_orthogonal_"),
    "stiefel_orthogonal_": ("lightning_lyapunov.init", "stiefel_orthogonal_"),
    # look-ahead selection
    "look_ahead_": ("lightning_lyapunov", "look_ahead_"),
    "Halving": ("lightning_lyapunov.halving", "Halving"),
    "candidate_seeds": ("lightning_lyapunov.halving", "candidate_seeds"),
    "halving_cost": ("lightning_lyapunov.halving", "halving_cost"),
    "halving_cuts": ("lightning_lyapunov.halving", "halving_cuts"),
    "halving_steps": ("lightning_lyapunov.halving", "halving_steps"),
    "DEFAULT_CANDIDATES": ("lightning_lyapunov.lookahead", "DEFAULT_CANDIDATES"),
    "DEFAULT_STEPS": ("lightning_lyapunov.lookahead", "DEFAULT_STEPS"),
    # theory and measurement
    "theory": ("lightning_lyapunov.theory", None),
    "chain_theory": ("lightning_lyapunov.chain_theory", None),
    "log_gain": ("lightning_lyapunov.log_norm", "log_gain"),
    "SignalMonitor": ("lightning_lyapunov.diagnostics", "SignalMonitor"),
    # example models and data
    "DeepMLP": ("lightning_lyapunov.examples.models", "DeepMLP"),
    "PlainCNN": ("lightning_lyapunov.examples.models", "PlainCNN"),
    "SmallResNet": ("lightning_lyapunov.examples.models", "SmallResNet"),
    "PolynomialRegression": ("lightning_lyapunov.examples.data", "PolynomialRegression"),
    "GaussianMixtureScore": ("lightning_lyapunov.examples.data", "GaussianMixtureScore"),
    "MNIST1D": ("lightning_lyapunov.examples.data", "MNIST1D"),
    "CIFAR10": ("lightning_lyapunov.examples.data", "CIFAR10"),
    "read_mnist": ("lightning_lyapunov.examples.data", "read_mnist"),
    "read_cifar10": ("lightning_lyapunov.examples.data", "read_cifar10"),
    "MNIST_ENV": ("lightning_lyapunov.examples.data", "MNIST_ENV"),
    "MNIST_MEAN": ("lightning_lyapunov.examples.data", "MNIST_MEAN"),
    "MNIST_STD": ("lightning_lyapunov.examples.data", "MNIST_STD"),
    "CIFAR10_MEAN": ("lightning_lyapunov.examples.data", "CIFAR10_MEAN"),
    "CIFAR10_STD": ("lightning_lyapunov.examples.data", "CIFAR10_STD"),
}

__all__ = sorted([*SOURCES, "clear_theory_caches", "default_calibration"])


def __getattr__(name: str) -> Any:
    try:
        module, attribute = SOURCES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def clear_theory_caches() -> None:
    """Empty ``theory``'s lru caches (the uncached timing of ``critical_scale`` in ``overhead``)."""
    theory = __getattr__("theory")
    theory._log_moments.cache_clear()
    theory._moment.cache_clear()


def default_calibration() -> tuple[str, float]:
    """``(calibrate, calibrate_target)`` of ``LyapunovInit()`` (its ``"auto"`` for the Lyapunov scheme)."""
    spec = __getattr__("LyapunovInit")().spec
    return spec.calibration_method, spec.calibrate_target
