"""What :class:`~lightning_lyapunov.LyapunovInit` observes in ``setup``: a real training batch, as is.

The first batch of the train dataloader (a tensor, a tuple or a dict: it is not taken apart) is
moved to the module's device and run through

* the module's own ``forward`` (``model(x)``, ``model(*batch)``, ``model(**batch)`` or
  ``model(batch)``, whichever the signature takes), when it has one and it accepts the batch;
* otherwise ``training_step(batch, 0)``, with ``self.log``/``self.log_dict`` silenced (nothing is
  logged or recorded), under ``torch.no_grad()`` (no gradient kept, no optimizer stepped).

Every pass runs inside :func:`lightning_lyapunov._forward.preserved`: training flags, buffers,
``.grad`` and RNG states come back as they were.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from ._forward import Forward, call_forward, global_rng_preserved, preserved

__all__ = ["observation", "training_batch", "training_call"]


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


@contextmanager
def _silent_logging(module: LightningModule) -> Iterator[None]:
    """``self.log`` and ``self.log_dict`` do nothing (instance attributes shadowing the methods)."""
    saved = {name: module.__dict__[name] for name in ("log", "log_dict") if name in module.__dict__}
    module.__dict__["log"] = module.__dict__["log_dict"] = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            module.__dict__.pop(name, None)
        module.__dict__.update(saved)


def _training_step(module: LightningModule, batch: Any) -> Any:
    with _silent_logging(module):
        return module.training_step(batch, 0)


def _has_own_forward(module: nn.Module) -> bool:
    return type(module).forward not in (LightningModule.forward, nn.Module.forward)


def training_call(pl_module: LightningModule, batch: Any) -> tuple[Forward | None, str | None]:
    """How to run ``pl_module`` on ``batch`` (module docstring), or ``(None, why not)``.

    With its own ``forward``, one silent trial pass (no grad, everything restored) checks that it
    takes the batch; if not, ``training_step(batch, 0)`` is used.
    """
    candidates: list[tuple[str, Forward]] = []
    if _has_own_forward(pl_module):
        candidates.append(("forward", call_forward))
    if type(pl_module).training_step is not LightningModule.training_step:
        candidates.append(("training_step", _training_step))
    for index, (_, call) in enumerate(candidates):
        if index == len(candidates) - 1:
            return call, None  # the last resort: a failure shows up (and is named) when it is observed
        try:
            with preserved(pl_module), torch.no_grad():
                call(pl_module, batch)
            return call, None
        except Exception:  # noqa: BLE001 - try the next way of running the module
            continue
    return None, "the module has neither forward nor training_step"


def observation(trainer: Trainer, pl_module: LightningModule) -> tuple[Any, Forward | None, str | None]:
    """``(batch, how to run the module on it, None)`` for the first training batch, or ``(None, None,
    why not)``: the message says that the plan falls back to torch.fx tracing."""
    batch, why = training_batch(trainer, pl_module)
    call = None
    if batch is not None:
        call, why = training_call(pl_module, batch)
    if call is None:
        return None, None, (f"LyapunovInit observed no training pass ({why}): slopes from torch.fx tracing, or "
                            "module registration order where tracing fails")
    return batch, call, None
