"""Tests of lightning_lyapunov.swap: replacing activation modules."""

from torch import nn

from lightning_lyapunov import plan_init, swap_activations



def test_swap_activations_reports_what_it_replaced() -> None:
    shared = nn.ReLU(inplace=True)
    model = nn.Sequential(nn.Linear(4, 4), shared, nn.Sequential(nn.Linear(4, 4), shared), nn.Tanh())
    replaced = swap_activations(model)
    assert replaced == ["1", "2.1"]
    assert isinstance(model[1], nn.LeakyReLU) and model[1] is model[2][1]
    assert model[1].negative_slope == 0.1 and model[1].inplace
    assert swap_activations(model, nn.Tanh, nn.LeakyReLU(0.3)) == ["3"]
    assert [l.negative_slope for l in plan_init(model).layers] == [0.1, 0.1]
    assert swap_activations(model, nn.ReLU) == []
