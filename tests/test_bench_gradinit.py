"""The benchmark's GradInit against a line-by-line transcription of the authors' code (one network at
a time: ``gradinit_utils.gradinit`` with ``RescaleAdam``, github.com/zhuchen03/gradinit)."""

import pytest
import torch
from torch import nn

from benchmarks._lib.engine import Epochs, Stack, mse
from benchmarks._lib.gradinit import GradInit
from lightning_lyapunov.examples.models import DeepMLP


def authors_gradinit(net: nn.Module, batches, settings: GradInit) -> int:
    """The authors' loop for a target Adam on one module (``batch_no_overlap``: the loss after the
    step on the next batch); returns how many iterations took the constraint step."""
    params = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]
    state = {i: {"alpha": 1.0, "init_norm": p.norm().item(), "step": 0, "cons_step": 0, "exp_avg": 0.0,
                 "exp_avg_sq": 0.0, "cons_exp_avg": 0.0} for i, p in enumerate(params)}
    b1, b2 = settings.betas
    constrained = 0
    for t in range(settings.iterations):
        x, y = batches[2 * t]
        loss = (net(x) - y).pow(2).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        gnorm = sum(g.abs().sum() for g in grads)
        for p in params:
            p.grad = None
        is_constraint = gnorm.item() > settings.gamma
        if is_constraint:
            gnorm.backward()
            constrained += 1
        else:
            before = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(settings.eta * g.sign())
            x2, y2 = batches[2 * t + 1]
            ((net(x2) - y2).pow(2).mean() / settings.eta).backward()
            with torch.no_grad():
                for p, b in zip(params, before):
                    p.copy_(b)
        with torch.no_grad():  # RescaleAdam.step (no gradient clipping)
            for i, (name, p) in enumerate(zip(names, params)):
                s = state[i]
                curr_norm = p.norm().item()
                if s["init_norm"] == 0 or curr_norm == 0:
                    continue
                grad = torch.sum(p.grad * p).item() * s["init_norm"] / curr_norm
                if is_constraint:
                    s["cons_step"] += 1
                    s["cons_exp_avg"] = s["cons_exp_avg"] * b1 + grad * (1 - b1)
                    steps, exp_avg = s["cons_step"], s["cons_exp_avg"]
                else:
                    s["step"] += 1
                    s["exp_avg"] = s["exp_avg"] * b1 + grad * (1 - b1)
                    steps, exp_avg = s["step"], s["exp_avg"]
                s["exp_avg_sq"] = s["exp_avg_sq"] * b2 + grad * grad * (1 - b2)
                denom = (s["exp_avg_sq"] / (1 - b2 ** (s["cons_step"] + s["step"]))) ** 0.5 + settings.eps
                lower = 0.0 if name.endswith("bias") else settings.min_scale
                s["alpha"] = min(max(s["alpha"] - settings.lr / (1 - b1**steps) * exp_avg / denom, lower),
                                 settings.max_scale)
                p.mul_(s["alpha"] * s["init_norm"] / curr_norm)
    return constrained


@pytest.mark.parametrize("gamma", [float("inf"), 3.0])
def test_gradinit_on_stacked_runs_is_the_authors_algorithm_run_by_run(gamma):
    torch.manual_seed(0)
    nets = [DeepMLP(2, 1, width=3, depth=4) for _ in range(3)]
    with torch.no_grad():
        nets[1].net[0].bias.zero_()  # a bias that starts at 0 is left alone
    x = torch.randn(32, 2)
    y = x[:, :1] * x[:, 1:] + 0.5
    settings = GradInit(iterations=12, eta=0.05, lr=0.05, gamma=gamma)
    order = Epochs(batch_size=8, seeds=(3,))
    stack = Stack(nets)
    learned = settings.fit_(stack, mse, (x, y), order)
    batcher = order.start(32, 1)
    batches = [batcher.batch((x, y), k) for k in range(2 * settings.iterations)]
    counts = []
    for r, net in enumerate(nets):
        counts.append(authors_gradinit(net, batches, settings))
        for (name, mine), theirs in zip(stack.module(r).named_parameters(), net.parameters()):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4, msg=f"run {r}, {name}")
    assert list(learned["constrained"]) == counts
    if gamma == float("inf"):
        assert counts == [0, 0, 0]
    else:  # both branches taken
        assert any(0 < c < settings.iterations for c in counts), counts
    assert (learned["scales"] != 1).any()
    assert settings.steps == 24
