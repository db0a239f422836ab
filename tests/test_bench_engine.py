"""The benchmark engine trains every seed exactly as it would train alone.

Each test builds a few seeded networks, trains them together as one ``Stack`` and trains copies of
them one by one with plain ``torch.optim`` on the same batches (the order object's own draws replayed),
then compares every step's loss and the final parameters.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._lib import engine
from benchmarks._lib.engine import (SGD, Adam, Checkpoint, Draws, Epochs, FullBatch, Stack, classification, cross_entropy,
                                    fit, mse, take_state)
from benchmarks._lib.package import DeepMLP, PlainCNN, SmallResNet


def conv_then_mlp() -> nn.Sequential:
    """A first conv on the shared input, then fully connected layers (the fractional paper's CNN, small)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6),
                         nn.ReLU(), nn.Linear(6, 3))


def conv1d_net() -> nn.Sequential:
    """Unflatten, two Conv1d and a head (the conv_delta training net, small)."""
    return nn.Sequential(nn.Unflatten(1, (1, 12)), nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv1d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))


CASES = {  # name: (build, one input sample's shape, the stack's expected path)
    "mlp": (lambda: DeepMLP(6, 3, width=5, depth=4, activation="relu"), (6,), "chain"),
    "conv then mlp": (conv_then_mlp, (1, 8, 8), "chain"),
    "conv1d": (conv1d_net, (12,), "chain"),
    "plain cnn": (lambda: PlainCNN(3, 3, width=4, depth=3), (3, 6, 6), "chain"),
    "resnet with batchnorm": (lambda: SmallResNet(3, 3, width=4, blocks_per_stage=(1,)), (3, 6, 6), "vmap"),
}


def nets(build, seeds):
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(build())
    return out


def alone(net: nn.Module, optimizer: torch.optim.Optimizer, x, y, batches, loss_fn) -> list[float]:
    """Train ``net`` by itself on the given batches of row indices; the loss of every step."""
    losses = []
    for idx in batches:
        loss = loss_fn(net(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def replay(order, n: int, runs: int, steps: int) -> list[list[torch.Tensor]]:
    """The row indices each run sees at each step, drawn from a fresh start of ``order``."""
    batcher = order.start(n, runs)
    draws = [batcher.draw(step) for step in range(steps)]
    return [[d[batcher.stream_of[r]] for d in draws] for r in range(runs)]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_stacked_seeds_train_exactly_as_separate_runs(name, kind):
    build, shape, path = CASES[name]
    seeds, steps = (0, 1, 2), 12
    x, y = torch.randn(40, *shape, generator=torch.Generator().manual_seed(5)), torch.randint(3, (40,))
    modules = nets(build, seeds)
    stack = Stack(modules, sample_dims=len(shape))
    assert stack.path == path
    order = Epochs(8, seeds=seeds, streams=[0, 1, 2])  # every seed its own batch order
    optimizer = SGD(0.05) if kind == "sgd" else Adam(1e-2, weight_decay=1e-3)
    result = fit(stack, cross_entropy, (x, y), optimizer=optimizer, steps=steps, order=order)
    for r, (net, batches) in enumerate(zip(copy.deepcopy(modules), replay(order, len(x), 3, steps))):
        torch_optimizer = (torch.optim.SGD(net.parameters(), lr=0.05) if kind == "sgd"
                           else torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3))
        losses = alone(net, torch_optimizer, x, y, batches, F.cross_entropy)
        torch.testing.assert_close(torch.tensor(result.losses[:, r]), torch.tensor(losses, dtype=torch.float64),
                                   rtol=1e-4, atol=1e-5)  # float32 rounding differs between bmm and mm; Adam amplifies it
        trained = stack.module(r)
        # Adam's update m / sqrt(v) turns float32 rounding in a near-zero gradient (a conv before batchnorm)
        # into up to ~lr/2 on a few elements over the run; oneDNN picks its conv kernel by what ran before,
        # so the rounding differs by test order. A wrong Adam (bias correction, weight decay) is off by ~lr
        # per step on every element, which this catches (and the losses above are compared to 1e-4).
        atol = 5e-3 if kind == "adam" else 1e-5
        for (key, a), b in zip(trained.state_dict().items(), net.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=lambda m: f"{name}, run {r}: {key} {m}")


def test_one_learning_rate_per_run_and_draws_with_replacement():
    """A learning-rate grid in one stack (Adam with one rate per run) and minibatches drawn with replacement
    per stream: runs of the same stream see the same rows, each run trains as alone at its own rate."""
    build = lambda: DeepMLP(2, 1, width=2, depth=6)  # noqa: E731
    modules = nets(build, (0, 1)) * 2  # (lr, seed) = (1e-3, 0), (1e-3, 1), (1e-2, 0), (1e-2, 1)
    lrs, streams = [1e-3, 1e-3, 1e-2, 1e-2], [0, 1, 0, 1]
    x = torch.rand(64, 2, generator=torch.Generator().manual_seed(1))
    y = x.sum(1, keepdim=True) ** 2
    order = Draws(16, seed=3, streams=streams)
    stack = Stack(modules)
    result = fit(stack, mse, (x, y), optimizer=Adam(lrs), steps=15, order=order)
    batches = replay(order, len(x), 4, 15)
    assert torch.equal(torch.stack(batches[0]), torch.stack(batches[2]))
    assert not torch.equal(torch.stack(batches[0]), torch.stack(batches[1]))
    for r, net in enumerate(copy.deepcopy(m) for m in modules):  # one copy per run (modules repeats two nets)
        losses = alone(net, torch.optim.Adam(net.parameters(), lr=lrs[r]), x, y, batches[r], F.mse_loss)
        torch.testing.assert_close(torch.tensor(result.losses[:, r]), torch.tensor(losses, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-7)


def test_a_run_with_a_non_finite_loss_stops_and_the_others_do_not_notice():
    modules = nets(lambda: DeepMLP(3, 2, width=4, depth=3), (0, 1))
    x, y = torch.randn(32, 3), torch.randint(2, (32,))
    calls = {"n": 0}

    def objective(model, batch, generator):
        loss = cross_entropy(model, batch)
        calls["n"] += 1
        return loss * torch.tensor([1.0, float("nan") if calls["n"] == 3 else 1.0])  # run 1 fails at step 2

    stack = Stack(modules)
    snapshots = []

    def snapshot_objective(model, batch, generator):
        snapshots.append(stack.module(1).state_dict())
        return objective(model, batch, generator)

    result = fit(stack, snapshot_objective, (x, y), optimizer=Adam(1e-2), steps=6, order=Epochs(8))
    assert result.stopped.tolist() == [-1, 2]
    assert result.losses[2, 1] == float("inf") and result.losses[:, 0].max() < float("inf")
    for later in snapshots[3:] + [stack.module(1).state_dict()]:  # frozen from step 2 on
        for a, b in zip(later.values(), snapshots[2].values()):
            assert torch.equal(a, b)
    net = copy.deepcopy(modules[0])
    losses = alone(net, torch.optim.Adam(net.parameters(), lr=1e-2), x, y, replay(Epochs(8), 32, 2, 6)[0],
                   F.cross_entropy)
    torch.testing.assert_close(torch.tensor(result.losses[:, 0]), torch.tensor(losses, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_shared_and_per_run_inputs_give_each_run_its_own_forward():
    modules = nets(conv_then_mlp, (0, 1, 2))
    stack = Stack(modules, sample_dims=3)
    x, per_run = torch.randn(5, 1, 8, 8), torch.randn(3, 5, 1, 8, 8)
    with torch.no_grad():
        for r, net in enumerate(modules):
            torch.testing.assert_close(stack(x)[r], net(x))
            torch.testing.assert_close(stack(per_run)[r], net(per_run[r]))
    with pytest.raises(ValueError, match="3 runs"):
        stack(torch.randn(2, 5, 1, 8, 8))


def test_modules_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="module 1"):
        Stack([DeepMLP(2, 1, width=3, depth=2), DeepMLP(2, 1, width=4, depth=2)])


def test_taken_runs_continue_with_their_optimizer_state_as_if_never_interrupted():
    """Train 4 runs 7 steps, take runs (2, 0) with their Adam moments, train 5 more steps numbered 8-12:
    the same parameters as those runs trained 12 steps alone with torch.optim.Adam."""
    modules = nets(lambda: DeepMLP(3, 2, width=4, depth=3), (0, 1, 2, 3))
    x, y = torch.randn(16, 3, generator=torch.Generator().manual_seed(1)), torch.randn(16, 2)
    stack = Stack(modules)
    first = fit(stack, mse, (x, y), optimizer=Adam(1e-2), steps=7, order=FullBatch())
    kept = stack.take([2, 0])
    torch.testing.assert_close(kept.flat, stack.flat[stack.elements([2, 0])])
    state = take_state(first.state, stack, [2, 0])
    second = fit(kept, mse, (x, y), optimizer=Adam(1e-2), steps=5, order=FullBatch(), state=state, first_step=7)
    restarted = fit(stack.take([2, 0]), mse, (x, y), optimizer=Adam(1e-2), steps=5, order=FullBatch())
    for r, source in enumerate((2, 0)):
        net = copy.deepcopy(modules[source])
        losses = alone(net, torch.optim.Adam(net.parameters(), lr=1e-2), x, y, [slice(None)] * 12, F.mse_loss)
        np.testing.assert_allclose(second.losses[:, r], losses[7:], rtol=1e-4)
        np.testing.assert_allclose(first.losses[:, source], losses[:7], rtol=1e-4)
        torch.testing.assert_close(kept.module(r).state_dict(), net.state_dict(), rtol=1e-4, atol=1e-6)
        assert abs(restarted.losses[-1, r] - losses[-1]) > 1e-4  # fresh moments would not match: the test can fail
    with pytest.raises(ValueError, match="take_state"):
        fit(kept, mse, (x, y), optimizer=Adam(1e-2), steps=1, order=FullBatch(), state=first.state)


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("order", [Epochs(8, seeds=(0, 1, 2), streams=(0, 1, 2, 0)), Draws(8, seed=4)])
def test_a_run_resumed_from_its_checkpoint_is_the_uninterrupted_run(order, tmp_path):
    """Killed at step 13 (a checkpoint every 5 steps), then started again from fresh nets: the same losses
    at every step, the same records, the same stopped run (a NaN at step 3) and the same parameters."""
    build = lambda: DeepMLP(3, 2, width=4, depth=3)  # noqa: E731
    x, y = torch.randn(32, 3, generator=torch.Generator().manual_seed(1)), torch.randint(2, (32,))
    evals = {"train": ((x, y), classification)}

    def objective(interrupt_at: int | None, nan_at: int | None):
        calls = {"n": 0}

        def loss(model, batch, generator):
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                raise _Interrupted
            nan = float("nan") if calls["n"] == nan_at else 1.0
            return cross_entropy(model, batch) * torch.tensor([1.0, 1.0, 1.0, nan])

        return loss

    def run(seeds, interrupt_at=None, checkpoint=None, nan_at=4):  # run 3 stops at step 3
        stack = Stack(nets(build, seeds))
        result = fit(stack, objective(interrupt_at, nan_at), (x, y), optimizer=Adam([1e-2, 1e-2, 3e-3, 1e-2]),
                     steps=20, order=order, evals=evals, record=[0, 7, 12, 15], checkpoint=checkpoint)
        return stack, result

    straight_stack, straight = run((0, 1, 2, 3))
    checkpoint = Checkpoint(str(tmp_path / "fit.pt"), every=5)
    with pytest.raises(_Interrupted):
        run((0, 1, 2, 3), interrupt_at=14, checkpoint=checkpoint)
    assert torch.load(checkpoint.path, weights_only=False)["step"] == 10
    # other draws, and no NaN (the resumed objective's calls count from step 10): the saved state wins
    resumed_stack, resumed = run((5, 6, 7, 8), checkpoint=checkpoint, nan_at=None)
    np.testing.assert_array_equal(resumed.losses, straight.losses)
    assert resumed.stopped.tolist() == straight.stopped.tolist() == [-1, -1, -1, 3]
    for name in straight.curves:
        np.testing.assert_array_equal(resumed.curves[name], straight.curves[name])
    assert torch.equal(resumed_stack.flat, straight_stack.flat)
    assert 0 < resumed.earlier_seconds <= resumed.seconds and straight.earlier_seconds == 0
    assert engine.resumed_cpu_seconds() >= resumed.earlier_seconds
    assert not torch.equal(Stack(nets(build, (5, 6, 7, 8))).flat, straight_stack.flat)  # the test can fail
    again_stack, again = run((5, 6, 7, 8), checkpoint=checkpoint, nan_at=None)  # finished: evaluations only
    assert torch.equal(again_stack.flat, straight_stack.flat) and again.losses.shape == straight.losses.shape
    with pytest.raises(ValueError, match="delete it to start afresh"):
        fit(Stack(nets(build, (0, 1))), mse, (x, y), optimizer=Adam(1e-2), steps=20, order=FullBatch(),
            checkpoint=checkpoint)
