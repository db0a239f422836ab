"""The helpers of the papers' protocol benchmarks: the VEV weight laws, the random-walk init, the output
kurtosis and the step-count comparisons of ``sampled_steps``, each against a closed form."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import fractional_protocol, sampled_steps, vev_kurtosis
from benchmarks._lib.protocol import Grid


@pytest.mark.parametrize("law, kurtosis", [("bernoulli", 1.0), ("uniform", 1.8), ("normal", 3.0)])
def test_weight_laws_have_the_he_variance_and_their_own_kurtosis(law, kurtosis):
    net = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 10))
    vev_kurtosis.WeightLaw(law).apply(net, seed=0)
    w = net[0].weight.double()
    assert w.pow(2).mean().item() == pytest.approx(2 / 400, rel=0.02)  # He: 2 / fan_in
    assert (w.pow(4).mean() / w.pow(2).mean() ** 2).item() == pytest.approx(kurtosis, abs=0.06)
    assert net[2].weight.pow(2).mean().item() == pytest.approx(2 / 300, rel=0.1)
    assert net[0].bias.abs().max().item() == 0.0
    with pytest.raises(ValueError, match="unknown weight law"):
        vev_kurtosis.WeightLaw("cauchy").apply(net, seed=0)


def test_output_kurtosis_of_a_linear_map_is_the_inputs_kurtosis():
    # a linear map of i.i.d. uniform inputs with one nonzero weight: kurtosis 1.8; of Gaussians: 3
    lin = nn.Linear(3, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 0.0, 0.0]]))
        lin.bias.fill_(5.0)
    gen = torch.Generator().manual_seed(0)
    assert vev_kurtosis.output_kurtosis(lin, torch.rand(200_000, 3, generator=gen)) == pytest.approx(1.8, abs=0.03)
    assert vev_kurtosis.output_kurtosis(lin, torch.randn(200_000, 3, generator=gen)) == pytest.approx(3.0, abs=0.06)
    dead = nn.Linear(3, 1)
    nn.init.zeros_(dead.weight)
    assert math.isnan(vev_kurtosis.output_kurtosis(dead, torch.randn(10, 3)))


def test_random_walk_scale_is_sussillo_and_abbott_for_relu():
    net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64))
    fractional_protocol.RandomWalk().apply(net, seed=0)
    g = math.sqrt(2) * math.exp(1.2 / (64 - 2.4))  # 1.4418 at n = 64
    assert net[2].weight.double().pow(2).mean().item() * 64 == pytest.approx(g * g, rel=0.04)
    assert net[0].weight.double().pow(2).mean().item() * 784 == pytest.approx(2 * math.exp(2.4 / 781.6), rel=0.02)


def test_sampled_steps_compares_every_pair_at_every_step_and_rate():
    labels = [s.label for s in sampled_steps.SCHEMES]
    seeds = tuple(range(8))
    curves = np.ones((3, 2, len(labels), len(seeds)))
    better = labels.index("sampled lyapunov-orth")
    curves[1:, 1, better] = 0.5  # better at the second rate after init, every seed
    grid = Grid(tuple(sampled_steps.SCHEMES), (1e-3, 3e-3), seeds, np.array([0, 10, 30]), {"test": curves}, {},
                np.full((2, len(labels), len(seeds)), -1), None, {}, 0.0, 0.0, "chain")
    task = sampled_steps.Task("toy", "test", "test MSE", grid)
    pairs = sampled_steps.comparisons(task)
    assert len(pairs) == 2 * 3 * len(sampled_steps.PAIRS)
    lines = sampled_steps.tally(task, pairs)
    line = next(x for x in lines if x.startswith("toy: sampled lyapunov-orth"))
    assert "better at 2 (lr 0.003 step 10, lr 0.003 step 30), worse at 0, not distinguishable at 2" in line
    assert all("better at 0, worse at 0" in x for x in lines if x is not line)


def test_a_grid_with_checkpoints_writes_one_file_per_training_and_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    from benchmarks._lib import protocol
    from benchmarks._lib.engine import SGD
    from benchmarks._lib.package import DeepMLP
    from benchmarks._lib.schemes import HE, ORTHOGONAL

    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    data = {"train": (x, (x[:, 0] > 0).long()), "test": (x[:32], (x[:32, 0] > 0).long())}

    def grid(lrs, steps=12):
        return protocol.classify(lambda: DeepMLP(5, 2, 4, 3), (HE, ORTHOGONAL), (0, 1), data, evals=("test",),
                                 optimizer=SGD, lrs=lrs, steps=steps, batch_size=16, record=[0, 6])

    plain = grid((0.1,))
    monkeypatch.setenv(protocol.CHECKPOINT_ENV, str(tmp_path))
    monkeypatch.setattr(protocol, "CHECKPOINT_EVERY", 5)
    first = grid((0.1,))
    assert len(list(tmp_path.glob("*.pt"))) == 1
    again = grid((0.1,))  # read back: the finished training's state, evaluated again
    grid((0.05,))  # another training, another file
    assert len(list(tmp_path.glob("*.pt"))) == 2
    for result in (first, again):
        np.testing.assert_array_equal(result.curves["test_acc"], plain.curves["test_acc"])
        np.testing.assert_array_equal(result.stopped, plain.stopped)
    monkeypatch.delenv(protocol.CHECKPOINT_ENV)
    assert protocol.checkpoint_for("anything") is None
