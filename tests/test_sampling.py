"""Tests of lightning_lyapunov.sampling: sampled Lyapunov initialization (network-level, layer-wise)."""

from __future__ import annotations

import math
import statistics
import warnings

import pytest
import torch
from torch import nn

from helpers import gen
from lightning_lyapunov import sample_lyapunov_
from lightning_lyapunov import apply_init

DEPTH, WIDTH, SLOPE = 30, 4, 0.1


def deep_mlp() -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.LeakyReLU(SLOPE)]
    return nn.Sequential(*layers, nn.Linear(WIDTH, 3))


def own_score(model: nn.Module, probe: torch.Tensor) -> float:
    """|mean_b log r(out_b) - log r(in_b)|, r = ||v|| / sqrt(numel per sample), computed independently."""
    with torch.no_grad():
        out = model(probe)
    log_r_out = out.norm(dim=1).log() - 0.5 * math.log(out.shape[1])
    log_r_in = probe.norm(dim=1).log() - 0.5 * math.log(probe.shape[1])
    return abs((log_r_out - log_r_in).mean().item())


def plain_draw_median(probe: torch.Tensor, draws: int = 15) -> float:
    """Median score of plain (unselected) Lyapunov draws: what selection has to beat."""
    scores = []
    for seed in range(1000, 1000 + draws):
        model = deep_mlp()
        apply_init(model, generator=gen(seed))
        scores.append(own_score(model, probe))
    return statistics.median(scores)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.randn(64, WIDTH, generator=gen(5))


@pytest.fixture(scope="module")
def plain_median(probe: torch.Tensor) -> float:
    median = plain_draw_median(probe)
    assert median > 0.5  # spread ~ sqrt(L s^2) ~ 4.5: unselected networks are far from gain 1
    return median


def test_network_level_selection_beats_the_median(probe: torch.Tensor, plain_median: float) -> None:
    model = deep_mlp()
    plan = sample_lyapunov_(model, probe, generator=gen(0))
    report = plan.sampling
    assert len(report.scores) == math.ceil(2 * math.sqrt(DEPTH + 1)) and not report.layerwise
    assert report.chosen_score == min(report.scores) == report.scores[report.chosen]
    # the model is left with the chosen network: measured independently
    assert own_score(model, probe) == pytest.approx(report.chosen_score, abs=1e-4)
    assert report.chosen_score < report.median_score
    assert report.median_score == pytest.approx(statistics.median(report.scores))
    assert report.chosen_score < 0.5 * plain_median
    assert plan.scheme == "lyapunov" and report.mode == "network"


def test_layerwise_selection_keeps_running_gain_near_zero(probe: torch.Tensor, plain_median: float) -> None:
    model = deep_mlp()
    report = sample_lyapunov_(model, probe, layerwise=True, candidates=6, generator=gen(1)).sampling
    assert report.layerwise and len(report.layer_scores) == DEPTH + 1
    assert all(len(scores) == 6 for scores in report.layer_scores)
    assert [min(s) for s in report.layer_scores] == [s[i] for s, i in zip(report.layer_scores, report.layer_chosen)]
    final = own_score(model, probe)
    assert final == pytest.approx(report.chosen_score, abs=1e-4)
    assert final == pytest.approx(min(report.layer_scores[-1]), abs=1e-4)  # the last layer is the output
    assert final < report.median_score and final < 0.2 * plain_median


def test_same_generator_same_choice_and_default_probe() -> None:
    def run(seed: int, layerwise: bool) -> tuple[list[float], list[torch.Tensor]]:
        model = deep_mlp()
        report = sample_lyapunov_(model, None, candidates=3, layerwise=layerwise, generator=gen(seed)).sampling
        return report.scores, [p.detach().clone() for p in model.parameters()]

    for layerwise in (False, True):
        (s1, w1), (s2, w2) = run(3, layerwise), run(3, layerwise)
        assert s1 == s2 and all(torch.equal(a, b) for a, b in zip(w1, w2))


def test_probing_is_eval_no_grad_and_restores_modes(probe: torch.Tensor) -> None:
    model = nn.Sequential(nn.Linear(WIDTH, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.LeakyReLU(SLOPE),
                          nn.Linear(8, 2))
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    stats = model[1].running_mean.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sample_lyapunov_(model, {"x": probe}, candidates=4, forward=lambda m, b: m(b["x"]),
                                  generator=gen(2)).sampling
    assert torch.equal(model[1].running_mean, stats)
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True]
    assert model[0].weight.grad is None and len(report.scores) == 4


def test_sampling_errors() -> None:
    conv = nn.Sequential(nn.Conv1d(2, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match="probe"):
        sample_lyapunov_(conv)
    with pytest.raises(ValueError, match="candidates"):
        sample_lyapunov_(deep_mlp(), candidates=0)
    with pytest.raises(ValueError, match="were not called by forward"):
        sample_lyapunov_(deep_mlp(), torch.randn(8, WIDTH), forward=lambda m, b: b, candidates=2)
    # what the forward returns does not matter: the score reads the last planned layer's output
    probe = torch.randn(64, WIDTH, generator=gen(5))
    tupled = sample_lyapunov_(deep_mlp(), probe, forward=lambda m, b: (m(b),), candidates=3, generator=gen(4))
    plain = sample_lyapunov_(deep_mlp(), probe, candidates=3, generator=gen(4))
    assert tupled.sampling.scores == plain.sampling.scores
    with pytest.raises(ValueError, match="scheme"):
        sample_lyapunov_(deep_mlp(), scheme="kaiming")




@pytest.mark.parametrize("layerwise", [False, True])
def test_a_layer_the_forward_never_calls_is_drawn_but_not_scored(layerwise: bool) -> None:
    class WithAux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.aux = deep_mlp(), nn.Linear(WIDTH, WIDTH)

        def forward(self, x):
            return self.net(x)

    probe, model = torch.randn(64, WIDTH, generator=gen(5)), WithAux()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = sample_lyapunov_(model, probe, candidates=3, layerwise=layerwise, generator=gen(4))
    assert plan.layer_names[-1] == "aux"  # planned (by module order), drawn, and not in the score
    assert plan.sampling.chosen_score == pytest.approx(own_score(model.net, probe), abs=1e-5)
