"""lightning-lyapunov: initialization by theory and live signal diagnostics for deep, narrow nets.

Public names are loaded lazily so that ``lightning_lyapunov.theory`` (numpy/scipy only) can be
imported and run without importing torch or lightning.

Example::

    from lightning.pytorch import Trainer
    from lightning_lyapunov import LyapunovInit

    trainer = Trainer(callbacks=[LyapunovInit()])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "theory": ("lightning_lyapunov.theory", None),
    "init": ("lightning_lyapunov.init", None),
    "InitSpec": ("lightning_lyapunov.settings", "InitSpec"),
    "plan_init": ("lightning_lyapunov.surgery", "plan_init"),
    "InitPlan": ("lightning_lyapunov.plan", "InitPlan"),
    "LayerPlan": ("lightning_lyapunov.plan", "LayerPlan"),
    "apply_init": ("lightning_lyapunov.initialize", "apply_init"),
    "sample_lyapunov_": ("lightning_lyapunov.initialize", "sample_lyapunov_"),
    "SamplingReport": ("lightning_lyapunov.sampling", "SamplingReport"),
    "look_ahead_": ("lightning_lyapunov.lookahead", "look_ahead_"),
    "LookAheadReport": ("lightning_lyapunov.halving", "LookAheadReport"),
    "calibrate_": ("lightning_lyapunov.calibration", "calibrate_"),
    "CalibrationResult": ("lightning_lyapunov.calibration", "CalibrationResult"),
    "swap_activations": ("lightning_lyapunov.swap", "swap_activations"),
    "register_activation": ("lightning_lyapunov.activations", "register_activation"),
    "SignalMonitor": ("lightning_lyapunov.diagnostics", "SignalMonitor"),
    "SignalStats": ("lightning_lyapunov.diagnostics", "SignalStats"),
    "SignalReport": ("lightning_lyapunov.diagnosis", "SignalReport"),
    "LyapunovWarning": ("lightning_lyapunov._warn", "LyapunovWarning"),
    "LyapunovInit": ("lightning_lyapunov.callbacks", "LyapunovInit"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'lightning_lyapunov' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
