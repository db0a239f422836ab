"""Candidates: swapping training states in and out leaves each candidate's training as if it were alone."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from helpers import gen, snapshot
from lightning_lyapunov.candidates import Candidates


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LeakyReLU(0.1), nn.Linear(4, 1))
    net[0].bias.requires_grad_(False)  # frozen: never read or written by the store
    return net


def _setup(net: nn.Module):
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 4))
    return optimizer, scheduler


def _step(net, optimizer, scheduler, i: int) -> None:
    x = torch.randn(8, 3, generator=gen(i))
    optimizer.zero_grad()
    net(x).pow(2).mean().backward()
    optimizer.step()
    scheduler.step()


def _drawn(seed: int, net: nn.Module) -> list[torch.Tensor]:
    return [torch.randn(t.shape, generator=gen(seed)) for t in (net[0].weight, net[3].weight)]


def _alone(draw: list[torch.Tensor], steps: list[int]):
    net = _net(0)
    with torch.no_grad():
        net[0].weight.copy_(draw[0])
        net[3].weight.copy_(draw[1])
    optimizer, scheduler = _setup(net)
    for i in steps:
        _step(net, optimizer, scheduler, i)
    return net, optimizer, scheduler


def _same(a, b) -> None:
    (net_a, opt_a, sched_a), (net_b, opt_b, sched_b) = a, b
    for (name, x), y in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(x, y), name
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        assert set(opt_a.state[p]) == set(opt_b.state[q])
        for key in opt_a.state[p]:
            assert torch.equal(opt_a.state[p][key], opt_b.state[q][key]), key
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]
    assert sched_a.state_dict() == sched_b.state_dict()


def test_interleaved_candidates_train_exactly_as_alone():
    net = _net(0)
    optimizer, scheduler = _setup(net)
    draws = [_drawn(s, net) for s in (1, 2, 3)]
    targets = [net[0].weight, net[3].weight]
    with torch.no_grad():
        for t, v in zip(targets, draws[0]):
            t.copy_(v)
    frozen = net[0].bias.detach().clone()
    store = Candidates(net, [optimizer], [scheduler])
    assert all(t is not net[0].bias for t in store.tensors)
    store.begin(draws, targets)
    history = {0: [], 1: [], 2: []}
    for k, steps in [(0, [0, 1]), (1, [2]), (2, [3, 4, 5]), (0, [6]), (1, [7, 8])]:
        store.swap(k)
        assert net[0].weight.grad is None
        for i in steps:
            _step(net, optimizer, scheduler, i)
        history[k] += steps
    store.swap(2)
    _same((net, optimizer, scheduler), _alone(draws[2], history[2]))
    store.keep(0)
    assert store.stored == {}
    _same((net, optimizer, scheduler), _alone(draws[0], history[0]))
    assert torch.equal(net[0].bias, frozen) and not net[0].bias.requires_grad
    assert net[1].num_batches_tracked.item() == len(history[0])  # buffers are the candidate's own


def test_state_dict_round_trips_through_a_weights_only_checkpoint():
    net = _net(0)
    optimizer, scheduler = _setup(net)
    draws = [_drawn(s, net) for s in (1, 2)]
    targets = [net[0].weight, net[3].weight]
    with torch.no_grad():
        for t, v in zip(targets, draws[0]):
            t.copy_(v)
    store = Candidates(net, [optimizer], [scheduler])
    store.begin(draws, targets)
    _step(net, optimizer, scheduler, 0)
    store.swap(1)
    _step(net, optimizer, scheduler, 1)
    buffer = io.BytesIO()
    torch.save({"store": store.state_dict(), "net": net.state_dict(), "opt": optimizer.state_dict(),
                "sched": scheduler.state_dict()}, buffer)
    _step(net, optimizer, scheduler, 2)  # the saved copies do not change when training goes on
    store.swap(0)
    _step(net, optimizer, scheduler, 3)
    expected = snapshot(net)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    net2 = _net(0)
    optimizer2, scheduler2 = _setup(net2)
    net2.load_state_dict(saved["net"])
    optimizer2.load_state_dict(saved["opt"])
    scheduler2.load_state_dict(saved["sched"])
    store2 = Candidates(net2, [optimizer2], [scheduler2])
    store2.load_state_dict(saved["store"])
    assert store2.current == 1 and set(store2.stored) == {0}
    _step(net2, optimizer2, scheduler2, 2)
    store2.swap(0)
    _step(net2, optimizer2, scheduler2, 3)
    assert all(torch.equal(v, expected[k]) for k, v in net2.state_dict().items())


def test_errors_name_the_problem():
    net = _net(0)
    optimizer, _ = _setup(net)
    store = Candidates(net, [optimizer])
    with pytest.raises(ValueError, match="not trainable parameters"):
        store.begin([[torch.zeros(4)], [torch.zeros(4)]], [net[0].bias])
    with pytest.raises(KeyError, match="candidate 3 is not stored"):
        store.swap(3)
    other = _net(1)
    other.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="resume with the model that was checkpointed"):
        Candidates(other, []).load_state_dict({"current": 1, "stored": {0: {"tensors": [torch.zeros(1)],
                                                                               "optimizers": [], "schedulers": []}}})
