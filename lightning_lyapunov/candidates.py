"""Several training states of one model, one at a time in the model: the look-ahead's swap.

A candidate's training state is everything training changes:

* the values of the model's trainable parameters and of all its buffers (BatchNorm statistics);
  frozen parameters are never read or written (they are the same for every candidate);
* each optimizer's per-parameter state (Adam's moments and step count) and its param groups'
  hyperparameters (a scheduler changes ``lr``, momentum, betas there);
* each LR scheduler's ``state_dict()`` (its step count, base and last rates).

:class:`Candidates` keeps the candidates that are not in the model and exchanges them at a step
boundary (:meth:`Candidates.swap`): parameter values are copied in place (the ``Parameter`` objects,
which optimizers, DDP and hooks hold, stay the same), the optimizer's per-parameter state dicts are
moved, not copied, and gradients are cleared (``.grad = None``, as ``zero_grad()`` does). Every
candidate starts from the optimizers' and schedulers' state at :meth:`Candidates.begin` (fresh, at
the start of training), so each trains exactly as it would alone. Memory: ``K - 1`` copies of the
trainable parameters, buffers and optimizer state.

Example::

    store = Candidates(model, [optimizer])
    store.begin(drawn, targets)     # candidate k: the model with drawn[k] written over targets
    ...                             # train candidate 0 a few steps
    store.swap(1)                   # candidate 0 put aside, candidate 1 in the model
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Candidates"]


@dataclass
class _State:
    tensors: list[torch.Tensor]
    optimizers: list[dict[str, Any]]  # {"state": {param index: state dict}, "groups": [hyperparameters]}
    schedulers: list[dict[str, Any]]


def _unique(tensors: Any) -> list[torch.Tensor]:
    return list({id(t): t for t in tensors}.values())


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _hyper(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [copy.deepcopy({k: v for k, v in group.items() if k != "params"}) for group in optimizer.param_groups]


class Candidates:
    """``count`` training states of ``model`` with its ``optimizers`` and ``schedulers`` (module
    docstring); :attr:`current` is the one in the model."""

    def __init__(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                 schedulers: Sequence[Any] = (), current: int = 0) -> None:
        self.optimizers, self.schedulers = list(optimizers), list(schedulers)
        trainable = [p for p in model.parameters() if p.requires_grad]
        from_optimizers = [p for opt in self.optimizers for p in _params(opt)]
        self.tensors = _unique([*trainable, *from_optimizers, *model.buffers()])
        self.current = current
        self.stored: dict[int, _State] = {}

    def begin(self, drawn: Sequence[Sequence[torch.Tensor]], targets: Sequence[torch.Tensor]) -> None:
        """Candidate ``k``: the model as it is now with ``drawn[k]`` written over ``targets`` (the
        tensors the init draws: weights and zeroed biases), and the optimizers' and schedulers' state
        as it is now. ``drawn[current]`` must be what the model holds."""
        where = {id(t): i for i, t in enumerate(self.tensors)}
        missing = [t for t in targets if id(t) not in where]
        if missing:
            raise ValueError(f"{len(missing)} drawn tensors are not trainable parameters of the model: a look-ahead "
                             "draws only trainable weights")
        for k, values in enumerate(drawn):
            if k != self.current:
                state = self.capture(clone=True)
                for target, value in zip(targets, values):
                    state.tensors[where[id(target)]] = value.detach().to(target.device, target.dtype, copy=True)
                self.stored[k] = state

    def capture(self, clone: bool = False) -> _State:
        """The live state; ``clone=True`` leaves the optimizers' per-parameter state in place (copied),
        otherwise it is moved out of them."""
        with torch.no_grad():
            tensors = [t.detach().clone() for t in self.tensors]
        optimizers = []
        for opt in self.optimizers:
            params = _params(opt)
            if clone:
                state = {i: copy.deepcopy(opt.state[p]) for i, p in enumerate(params) if p in opt.state}
            else:
                state = {i: opt.state.pop(p) for i, p in enumerate(params) if p in opt.state}
            optimizers.append({"state": state, "groups": _hyper(opt)})
        schedulers = [copy.deepcopy(s.state_dict()) for s in self.schedulers]
        return _State(tensors, optimizers, schedulers)

    def load(self, state: _State) -> None:
        with torch.no_grad():
            for tensor, value in zip(self.tensors, state.tensors):
                tensor.copy_(value)
                tensor.grad = None
        for opt, saved in zip(self.optimizers, state.optimizers):
            params = _params(opt)
            for p in params:
                opt.state.pop(p, None)
            for i, value in saved["state"].items():
                opt.state[params[i]] = value
            for group, hyper in zip(opt.param_groups, saved["groups"]):
                group.update(hyper)
        for scheduler, saved in zip(self.schedulers, state.schedulers):
            scheduler.load_state_dict(saved)

    def swap(self, to: int) -> None:
        """Put the model's candidate aside and candidate ``to`` in (a no-op if it is in already)."""
        if to == self.current:
            return
        if to not in self.stored:
            raise KeyError(f"candidate {to} is not stored (stored: {sorted(self.stored)}; in the model: {self.current})")
        incoming = self.stored.pop(to)
        self.stored[self.current] = self.capture()
        self.load(incoming)
        self.current = to

    def keep(self, candidate: int) -> None:
        """Candidate ``candidate`` in the model, every other one discarded (memory freed)."""
        self.swap(candidate)
        self.stored.clear()

    def discard(self, candidates: Sequence[int]) -> None:
        """Forget stored candidates (cut out by the schedule)."""
        for k in candidates:
            if k != self.current:
                self.stored.pop(k, None)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The stored candidates as plain Python values and CPU tensors (copies: the checkpoint does
        not change when they train again). The candidate in the model is the model's and the
        optimizers' own state, which the checkpoint holds already."""
        def cpu(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.detach().to("cpu", copy=True)
            if isinstance(value, dict):
                return {k: cpu(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(cpu(v) for v in value)
            return value

        return {"current": self.current,
                "stored": {k: cpu({"tensors": s.tensors, "optimizers": s.optimizers, "schedulers": s.schedulers})
                           for k, s in self.stored.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned: the model and optimizers must hold candidate
        ``state["current"]`` already (as a checkpoint restores them). Tensors go to the device of
        the tensor or parameter they belong to (an optimizer's ``step`` count stays where it was
        saved, as ``torch.optim`` keeps it, unless the group is ``capturable`` or ``fused``)."""
        self.current = int(state["current"])
        self.stored = {}
        for k, saved in state["stored"].items():
            if len(saved["tensors"]) != len(self.tensors):
                raise ValueError(f"the checkpoint's look-ahead candidates have {len(saved['tensors'])} tensors, the "
                                 f"model {len(self.tensors)}: resume with the model that was checkpointed")
            tensors = [v.to(t.device, t.dtype) for t, v in zip(self.tensors, saved["tensors"])]
            optimizers = [{"state": _to_params(opt, entry["state"]), "groups": list(entry["groups"])}
                          for opt, entry in zip(self.optimizers, saved["optimizers"])]
            self.stored[int(k)] = _State(tensors, optimizers, list(saved["schedulers"]))


def _to_params(optimizer: torch.optim.Optimizer, state: dict[Any, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per-parameter optimizer state onto its parameter's device (``step`` stays put unless capturable/fused)."""
    params = _params(optimizer)
    on_device = any(g.get("capturable") or g.get("fused") for g in optimizer.param_groups)
    return {int(i): {key: value.to(params[int(i)].device)
                     if isinstance(value, torch.Tensor) and (key != "step" or on_device) else value
                     for key, value in entry.items()}
            for i, entry in state.items()}
