"""Tests of lightning_lyapunov._forward: running a model without side effects."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from lightning_lyapunov._forward import TensorMarks, call_forward, preserved, quiet, stop_at


class TwoInputs(nn.Module):
    def forward(self, a, b=None):
        return a if b is None else a + b


def test_call_forward_unpacks_what_the_signature_takes() -> None:
    a, b = torch.ones(2), 2 * torch.ones(2)
    model = TwoInputs()
    assert torch.equal(call_forward(model, (a, b)), 3 * torch.ones(2))  # model(a, b)
    assert torch.equal(call_forward(model, {"a": a, "b": b}), 3 * torch.ones(2))  # model(a=a, b=b)
    assert torch.equal(call_forward(model, a), a)  # model(a)
    packed = nn.Identity()
    assert call_forward(packed, (a, b)) == (a, b)  # Identity(x) takes one argument: the tuple as is


def test_preserved_restores_flags_buffers_grads_and_every_global_generator() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    model.train()
    model[2].eval()
    model[0].weight.grad = torch.ones(3, 3)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    stats = model[1].running_mean.clone()
    with preserved(model):
        model.eval()
        model(torch.randn(8, 3))
        model.train()
        model(torch.randn(8, 3))  # updates the running statistics
        model[0].weight.grad = None
        random.random(), np.random.rand()
    assert torch.equal(model[1].running_mean, stats)
    assert [m.training for m in model.modules()] == [True, True, True, False]
    assert torch.equal(model[0].weight.grad, torch.ones(3, 3))
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert (np.random.get_state()[1] == states[2]).all()


def test_quiet_normalizes_with_the_batch_statistics_without_dropout_and_changes_nothing() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.9))
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 5 + 3
    stats = model[1].running_mean.clone()
    with quiet(model):
        out = model(x)
        assert not torch.is_grad_enabled()
    # BatchNorm on the batch: each unit has mean 0 and variance 1 over the batch; no dropout zeros
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert (out != 0).all()
    assert torch.equal(model[1].running_mean, stats) and model.training


def test_stop_at_ends_the_pass_at_the_first_call() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    x = torch.randn(4, 2)
    call, result = stop_at(lambda: model(x), model[1])
    assert result is None and torch.equal(call.args[0], model[0](x)) and torch.equal(call.output, model[1](model[0](x)))
    call, _ = stop_at(lambda: model(x), model[2], before=True)
    assert call.output is None and call.args[0].shape == (4, 2)
    call, result = stop_at(lambda: model(x), nn.ReLU())  # never called: the pass runs to its end
    assert call is None and result.shape == (4, 1)
    assert not model[1]._forward_hooks and not model[2]._forward_pre_hooks
    with pytest.raises(ZeroDivisionError):
        stop_at(lambda: 1 / 0, model[1])
    assert not model[1]._forward_hooks


def test_called_lists_the_modules_a_pass_calls_in_the_order_of_their_first_call() -> None:
    from lightning_lyapunov._forward import called

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    unused = nn.Linear(2, 2)
    x = torch.randn(3, 2)
    assert called(lambda: model(x), [model[2], unused, model[0]]) == [2, 0]
    assert called(lambda: (model(x), model[2](x)), [model[2]]) == [0]  # once, however often it runs
    assert not model[0]._forward_pre_hooks and not unused._forward_pre_hooks


def test_shapes_checked_names_the_layer_and_the_shape_it_takes() -> None:
    from lightning_lyapunov._forward import InputShapeError, shapes_checked

    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Unflatten(1, (2, 1)), nn.Conv1d(2, 2, 1))
    with shapes_checked(model):
        assert model(torch.randn(4, 3)).shape == (4, 2, 1)
        assert model[3](torch.randn(2, 5)).shape == (2, 5)  # an unbatched (C, L) input fits
    with pytest.raises(InputShapeError, match=r"example_input gives layer '0' \(Linear\) inputs of shape "
                                              r"\(4, 5\); it takes \(\.\.\., 3\)") as raised, shapes_checked(model):
        model(torch.randn(4, 5))
    assert isinstance(raised.value.__cause__, RuntimeError)  # torch's own error, kept as the cause
    assert "probe gives layer '0'" in str(raised.value.renamed("probe"))
    conv_error = r"layer '3' \(Conv1d\) inputs of shape \(4, 3, 1\); it takes \(N, 2, L\)"
    with pytest.raises(ValueError, match=conv_error), shapes_checked(model):
        model[3](torch.randn(4, 3, 1))
    with pytest.raises(KeyError), shapes_checked(model):  # other errors pass through
        model(torch.randn(4, 3))
        raise KeyError("not a shape")
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_tensor_marks_follow_identity_and_a_reused_id_does_not_inherit_a_mark() -> None:
    marks = TensorMarks()
    x = torch.zeros(3)
    marks.set(x, "seen")
    assert marks.get(x) == "seen" and marks.get(x.clone()) is None and marks.get(x.view(3), "none") == "none"
    old_id = id(x)
    del x
    for _ in range(1000):  # a new tensor at the freed address must not read the old mark
        y = torch.zeros(3)
        if id(y) == old_id:
            assert marks.get(y) is None
            break
        del y
    z = torch.ones(2)
    marks.set(z, 1)
    marks.discard(z)
    marks.discard(z)  # discarding twice is fine
    assert marks.get(z) is None
