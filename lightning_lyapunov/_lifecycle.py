"""What :class:`~lightning_lyapunov.LyapunovInit` needs to know about the Trainer in ``setup``.

* :func:`checkpoint_to_restore`: the checkpoint ``fit`` is about to restore, if any. Lightning 2.x
  runs the callbacks' ``setup`` *before* it restores ``fit(ckpt_path=...)`` (``Trainer._run``:
  ``_call_setup_hook``, then ``_restore_modules_and_callbacks``), and the path reaches
  ``trainer.ckpt_path`` only in ``_checkpoint_connector.resume_start``, after ``setup``; until then
  ``trainer.ckpt_path`` is the previous run's. The only place that holds the selected path during
  ``setup`` is the ``ckpt_path`` argument of the running ``Trainer._run`` (already resolved from
  ``"last"``/``"best"``/``"hpc"`` and from a user-managed ``trainer.ckpt_path = ...``), which is
  read from its frame. Should a future Lightning not run ``setup`` inside ``Trainer._run``, a
  user-managed ``trainer.ckpt_path`` is still honoured.
* :func:`check_strategy`: refuse sharded strategies (and their subclasses) by ``isinstance``.
  Lightning calls the callbacks' ``setup`` before ``configure_model`` and before the strategy wraps
  (and shards) the model (``Trainer._run``: ``_call_setup_hook``, ``_call_configure_model``, then
  ``strategy.setup``): a model built in ``__init__`` is whole in ``setup``, one built in
  ``configure_model`` does not exist yet. The obstacle is elsewhere: every rank must end with the
  same weights, and these strategies, unlike DDP, do not copy rank 0's weights to the other ranks
  (FSDP only with ``sync_module_states=True``), while the callback draws and calibrates on each rank
  from that rank's first batch. The message says which case the model is in and what to do.
* :func:`check_single`: refuse two instances of one callback class in a Trainer.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["checkpoint_to_restore", "check_single", "check_strategy", "sharded_strategies"]

_SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def checkpoint_to_restore(trainer: Any) -> Any:
    """The checkpoint path the running ``trainer.fit``/``validate``/... will restore after ``setup``, or None."""
    from lightning.pytorch.trainer.trainer import Trainer

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is Trainer._run.__code__ and frame.f_locals.get("self") is trainer:
            return frame.f_locals.get("ckpt_path") or None
        frame = frame.f_back
    connector = getattr(trainer, "_checkpoint_connector", None)
    if connector is not None and getattr(connector, "_user_managed", False):
        return trainer.ckpt_path or None
    return None


def sharded_strategies() -> tuple[type, ...]:
    """The Lightning strategy classes that shard parameters in ``setup`` (those importable here)."""
    found = []
    try:
        strategies = importlib.import_module("lightning.pytorch.strategies")
    except ImportError:  # pragma: no cover - lightning is a dependency
        return ()
    for name in _SHARDED:
        cls = getattr(strategies, name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def check_strategy(strategy: Any, who: str, model: Any = None) -> None:
    """RuntimeError if ``strategy`` is (a subclass of) a sharded strategy (module docstring); the
    message depends on whether ``model`` has any weight layer yet (None: not known)."""
    for base in sharded_strategies():
        if isinstance(strategy, base):
            kind = type(strategy).__name__
            what = kind if kind == base.__name__ else f"{kind} (a {base.__name__})"
            raise RuntimeError(f"{who} does not support {what}. Lightning calls this callback's setup before "
                               f"configure_model and before the strategy wraps the model, so {_why(model)}")


def _why(model: Any) -> str:
    """The rest of :func:`check_strategy`'s message: built in configure_model, or whole in setup."""
    if model is not None and not _has_weights(model):
        return ("the model has no weight layer yet at setup: it is built in configure_model, which runs after it. "
                "Initialize the layers there, after building them: lightning_lyapunov.apply_init(self.net, "
                "generator=torch.Generator().manual_seed(seed)) with the same seed on every rank (and the same "
                "example_input=, if you calibrate); or build them in __init__ and use the DDP strategy.")
    return ("the weights are whole here; but every rank must end with the same weights, and this strategy, unlike "
            "DDP, does not copy rank 0's weights to the others (FSDP only with sync_module_states=True), while "
            "this callback draws and calibrates on each rank, from that rank's first batch. Supporting it would take "
            "one seed and one calibration batch for every rank (or rank 0's weights broadcast before the wrap), "
            "and a test of the diagnostics' hooks on the wrapped model on GPUs; it is not built. Use the DDP "
            "strategy, or initialize before fit: lightning_lyapunov.apply_init(model, example_input=batch, "
            "generator=torch.Generator().manual_seed(seed)) with the same seed and batch on every rank, then fit "
            "without LyapunovInit.")


def _has_weights(model: Any) -> bool:
    """Whether ``model`` holds a Linear or convolution with a materialized weight."""
    from torch import nn

    from .activations import WEIGHT_LAYERS

    return any(isinstance(m, WEIGHT_LAYERS) and not isinstance(m.weight, nn.parameter.UninitializedParameter)
               and not m.weight.is_meta for m in model.modules())


def check_single(callbacks: Any, cls: type, describe: Any = repr, hint: str = "") -> None:
    """ValueError if ``callbacks`` holds more than one instance of ``cls`` (listed with ``describe``);
    ``hint`` replaces the default fix."""
    mine = [callback for callback in callbacks if isinstance(callback, cls)]
    if len(mine) > 1:
        listed = ", ".join(describe(callback) for callback in mine)
        fix = hint or f"keep a single {cls.__name__} in Trainer(callbacks=[...]) (and in configure_callbacks)"
        raise ValueError(
            f"the Trainer has {len(mine)} {cls.__name__} callbacks ({listed}): a model is initialized once, by one "
            f"scheme; {fix}"
        )
