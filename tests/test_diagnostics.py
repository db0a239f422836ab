"""Tests for lightning_lyapunov.diagnostics: every statistic against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_lyapunov.diagnostics import STAT_KEYS, SignalMonitor, SignalStats


# the statistics run on the activations' device: the tests that take `device` also run on CUDA when there is one
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def measure(h: torch.Tensor, device: str = "cpu", **kwargs) -> dict[str, float]:
    """Statistics of ``h`` seen as the output of a hooked ``nn.Identity`` (on ``device``)."""
    model = nn.Sequential(nn.Identity())
    with SignalMonitor(model, ["0"], **kwargs) as monitor:
        monitor.active = True
        model(h.to(device))
        return monitor.compute().layer("0")


def direct_stats(h: np.ndarray) -> dict[str, float]:
    """The formulas of the module docstring, written out in float64 numpy."""
    h = h.reshape(h.shape[0], -1).astype(np.float64)
    batch, d = h.shape
    log_r = np.log(np.linalg.norm(h, axis=1) / math.sqrt(d))
    c = h - h.mean(0)
    m2, m4 = (c**2).mean(0), (c**4).mean(0)
    var = h.var(0, ddof=1)
    kurt = np.sort((m4 / m2**2)[m2 > 0])
    centred_log_r = np.log(np.linalg.norm(c, axis=1) / math.sqrt(d))
    return {
        "log_norm_mean": log_r.mean(),
        "log_norm_std": log_r.std(ddof=1),
        "centred_log_norm_mean": centred_log_r.mean(),
        "centred_log_norm_std": centred_log_r.std(ddof=1),
        "log_rms": math.log(math.sqrt(np.mean(h**2))),
        "input_share": math.sqrt(np.mean(c**2) / np.mean(h**2)),
        "emp_var_mean": var.mean(),
        "emp_var_collapsed": np.mean(var <= 1e-3 * np.mean(h**2)),
        "kurtosis_median": kurt[(kurt.size - 1) // 2] if kurt.size else math.nan,  # lower median
        "kurtosis_pooled": m4.mean() / m2.mean() ** 2,
        "dead_fraction": np.mean((h <= 0).all(0)),
        "nonfinite": 0.0,
    }


def test_known_kurtosis_gaussian_and_uniform():
    g = torch.Generator().manual_seed(0)
    gauss = measure(torch.randn(40000, 8, generator=g))
    assert gauss["kurtosis_median"] == pytest.approx(3.0, abs=0.1)
    assert gauss["kurtosis_pooled"] == pytest.approx(3.0, abs=0.1)
    assert gauss["emp_var_mean"] == pytest.approx(1.0, abs=0.03)
    uniform = measure(torch.rand(40000, 8, generator=g))
    assert uniform["kurtosis_median"] == pytest.approx(1.8, abs=0.05)
    assert uniform["kurtosis_pooled"] == pytest.approx(1.8, abs=0.05)
    assert uniform["emp_var_mean"] == pytest.approx(1 / 12, rel=0.03)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(64, 10), (32, 3, 4, 5)])
def test_every_statistic_matches_direct_computation(shape, device):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(shape, generator=g)
    flat = h.view(shape[0], -1)
    d = flat.shape[1]
    flat[:, : d // 5] *= 1e-3  # collapsed units
    flat[:, d // 5 : d // 3] = -flat[:, d // 5 : d // 3].abs()  # dead units
    flat[:, -2:] **= 3  # heavy-tailed units: kurtosis varies over units
    flat[:, -4:-2] *= torch.tensor([0.015, 0.06])  # either side of the collapse threshold
    flat += torch.linspace(-2, 3, d)  # a batch mean (biases) that the centred statistics take away
    got = measure(h, device)
    want = direct_stats(h.numpy())
    assert 0 < want["emp_var_collapsed"] < 1 and 0 < want["dead_fraction"] < 1
    for key in STAT_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


def test_log_norm_of_constant_vectors_is_exact():
    scales = torch.tensor([1.0, 2.0, 0.5, 3.0])
    h = scales[:, None] * torch.ones(4, 9)  # ||h_b|| / sqrt(d) = scale_b
    got = measure(h)
    logs = np.log(scales.numpy().astype(np.float64))
    assert got["log_norm_mean"] == pytest.approx(logs.mean(), abs=1e-6)
    assert got["log_norm_std"] == pytest.approx(logs.std(ddof=1), abs=1e-6)
    # every unit takes the values of `scales`: same variance and kurtosis for all units
    s = scales.double()
    assert got["emp_var_mean"] == pytest.approx(s.var().item(), rel=1e-6)
    c = s - s.mean()
    assert got["kurtosis_median"] == pytest.approx(((c**4).mean() / (c**2).mean() ** 2).item(), rel=1e-5)


def test_collapsed_dead_and_constant_units_on_constructed_outputs():
    b = torch.arange(8.0)
    h = torch.stack(
        [
            b - 3.5,  # varying, not dead
            torch.full((8,), 0.7),  # constant: collapsed, ignored by the kurtosis median
            -(b + 1),  # dead (negative for the whole batch)
            torch.zeros(8),  # dead (exactly 0), collapsed, constant
            1e-4 * (b - 3.5),  # collapsed (variance 1e-8 * 6 << 1e-3 * mean square)
        ],
        dim=1,
    )
    got = measure(h)
    assert got["dead_fraction"] == pytest.approx(2 / 5)
    assert got["emp_var_collapsed"] == pytest.approx(3 / 5)
    # kurtosis of the units with variance: units 0 and 4 (both arange, k = 1.7619), unit 2 also
    c = b - b.mean()
    k = ((c**4).mean() / (c**2).mean() ** 2).item()
    assert got["kurtosis_median"] == pytest.approx(k, rel=1e-5)
    assert math.isnan(measure(torch.full((6, 3), 2.5))["kurtosis_median"])
    assert measure(torch.zeros(6, 3))["emp_var_collapsed"] == 1.0


def test_batch_of_one_gives_zero_std_and_nan_batch_statistics():
    got = measure(torch.tensor([[3.0, 4.0]]))
    assert got["log_norm_mean"] == pytest.approx(math.log(5 / math.sqrt(2)), abs=1e-6)
    assert got["log_norm_std"] == 0.0
    assert got["log_rms"] == got["log_norm_mean"]  # one sample: its root-mean-square is its r
    for key in ("centred_log_norm_mean", "centred_log_norm_std", "input_share", "emp_var_mean", "emp_var_collapsed",
                "kurtosis_median", "kurtosis_pooled"):
        assert math.isnan(got[key]), key


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_values_are_counted_without_crash(device):
    h = torch.randn(16, 6)
    h[0, 0], h[3, 2], h[5, 5] = math.nan, math.inf, -math.inf
    got = measure(h, device)
    assert got["nonfinite"] == 3.0
    assert not math.isfinite(got["log_norm_mean"]) and not math.isfinite(got["emp_var_mean"])
    assert math.isfinite(got["kurtosis_median"])  # units 1, 3, 4 are finite
    assert got["dead_fraction"] == 0.0
    assert measure(torch.randn(16, 6), device)["nonfinite"] == 0.0
    big = torch.full((4, 3), 3e38)  # finite entries whose sum overflows: none is counted
    assert measure(big, device)["nonfinite"] == 0.0


def test_large_outputs_reduced_in_hook_match_deferred():
    h = torch.randn(32, 4, 5, 5)
    deferred = measure(h)
    immediate = measure(h, defer_below=0)
    for key in STAT_KEYS:
        assert immediate[key] == pytest.approx(deferred[key], rel=1e-5, abs=1e-7), key


def test_a_wide_output_is_measured_on_a_sample_of_its_units_unless_max_units_is_none():
    h = torch.randn(8, 2, 16, 16)  # 512 units, a small output: reduced in the hook all the same
    sampled, exact = measure(h, max_units=64), measure(h, max_units=None)
    reference = direct_stats(h.numpy())
    assert exact["kurtosis_median"] == pytest.approx(reference["kurtosis_median"], rel=1e-5)
    from lightning_lyapunov._reduce import unit_sample

    reference_sampled = direct_stats(unit_sample(h.reshape(8, -1), 64).numpy())  # 2 runs of 32 units
    for key in ("kurtosis_median", "emp_var_mean", "input_share", "dead_fraction"):
        assert sampled[key] == pytest.approx(reference_sampled[key], rel=1e-5, abs=1e-7), key
    for key in ("log_norm_mean", "log_norm_std", "log_rms"):  # every unit
        assert sampled[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key
    assert sampled["kurtosis_median"] != exact["kurtosis_median"]
    with pytest.raises(ValueError, match="max_units"):
        SignalMonitor(nn.Sequential(nn.Identity()), ["0"], max_units=0)


def mlp(width: int, depth: int, slope: float, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width, bias=False)
        nn.init.kaiming_normal_(linear.weight, a=slope, nonlinearity="leaky_relu")
        layers += [linear, nn.LeakyReLU(slope)]
    return nn.Sequential(*layers)


def test_exponent_estimate_matches_direct_fit_and_theory():
    width, depth, slope = 2, 40, 0.1
    names = [str(2 * i) for i in range(depth)]
    estimates = []
    for seed in range(12):
        model = mlp(width, depth, slope, seed)
        x = 1e10 * torch.randn(256, width)  # the signal shrinks by ~e^-33: stay clear of denormals
        with SignalMonitor(model, names) as monitor:
            monitor.active = True
            model(x)
            stats = monitor.compute()
        # direct: run the layers by hand and fit the mean log-norm of the pre-activations
        means, h = [], x
        with torch.no_grad():
            for i in range(depth):
                pre = model[2 * i](h)
                means.append(torch.log(pre.norm(dim=1) / math.sqrt(width)).mean().item())
                h = model[2 * i + 1](pre)
        direct = np.polyfit(np.arange(depth), means, 1)[0]
        assert stats.exponent_estimate == pytest.approx(direct, abs=1e-4)
        estimates.append(stats.exponent_estimate)
    # DESIGN section 3: He init at width 2, slope 0.1 shrinks the log-norm by ~0.82 per layer
    assert np.mean(estimates) == pytest.approx(-0.82, abs=0.1)


def test_stats_container_api_and_scalar_keys():
    model = nn.Sequential()
    model.add_module("block", nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)))
    names = ["block.0", "block.2"]
    with SignalMonitor(model, names) as monitor:
        monitor.active = True
        model(torch.randn(10, 5))
        stats = monitor.compute()
    assert isinstance(stats, SignalStats) and stats.names == tuple(names)
    table = stats.as_dict()
    assert set(table) == set(STAT_KEYS) and set(table["kurtosis_median"]) == set(names)
    assert stats.layer("block.2")["log_norm_mean"] == table["log_norm_mean"]["block.2"]
    assert stats.log_norms["block.0"].shape == (10,)
    assert np.mean(stats.log_norms["block.0"]) == pytest.approx(table["log_norm_mean"]["block.0"], abs=1e-6)
    scalars = stats.to_scalars()
    assert "lyapunov/log_norm_mean/block.0" in scalars and "lyapunov/nonfinite/block.2" in scalars
    slope = table["log_norm_mean"]["block.2"] - table["log_norm_mean"]["block.0"]
    assert scalars["lyapunov/exponent_estimate"] == pytest.approx(slope, abs=1e-6)
    assert len(scalars) == len(STAT_KEYS) * 2 + 2  # and the two exponents
    assert set(stats.to_scalars(prefix="x")) == {k.replace("lyapunov/", "x/", 1) for k in scalars}
    with pytest.raises(KeyError, match="block.0"):
        stats.layer("block.O")
    assert stats.column("kurtosis_median") == tuple(table["kurtosis_median"][n] for n in names)
    assert all(type(v) is float for v in stats.column("nonfinite"))
    with pytest.raises(KeyError, match="kurtosis_median"):
        stats.column("kurtosis")


def test_exponent_estimate_needs_two_layers():
    stats = SignalStats(("a",), np.zeros((1, len(STAT_KEYS))), {"a": np.zeros(3)})
    assert math.isnan(stats.exponent_estimate)


def test_exponent_estimate_fits_the_measured_layers_only():
    """The slope over the layers measured (at their positions), every layer or some; the
    statistics of a layer not called do not enter it."""
    names = tuple("abcdef")
    values = np.zeros((len(names), len(STAT_KEYS)))
    means = np.array([0.3, -0.1, 0.7, math.nan, -0.4, 1.2])
    values[:, STAT_KEYS.index("log_norm_mean")] = means
    measured = [0, 1, 2, 4, 5]
    samples = {name: np.zeros(4 if i in measured else 0) for i, name in enumerate(names)}
    stats = SignalStats(names, values, samples)
    assert stats.exponent_estimate == pytest.approx(np.polyfit(measured, means[measured], 1)[0], rel=1e-12)
    values[3, STAT_KEYS.index("log_norm_mean")] = 0.2
    every = SignalStats(names, values, {name: np.zeros(4) for name in names})
    column = values[:, STAT_KEYS.index("log_norm_mean")]
    assert every.exponent_estimate == pytest.approx(np.polyfit(np.arange(6), column, 1)[0], rel=1e-12)
    assert every.undefined() == {}


def test_gating_inactive_and_eval_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    monitor = SignalMonitor(model, ["0", "2"])
    model(torch.randn(3, 4))  # inactive: nothing captured
    assert monitor.captured == ()
    with pytest.raises(RuntimeError, match="active"):
        monitor.compute()
    monitor.active = True
    model.eval()
    model(torch.randn(3, 4))  # eval mode skipped (training_only)
    assert monitor.captured == ()
    model.train()
    model[2].eval()
    model(torch.randn(3, 4))
    assert monitor.captured == ("0",)
    stats = monitor.compute()  # a layer that was not captured: NaN, empty log-norms
    assert math.isnan(stats.layer("2")["log_norm_mean"]) and stats.log_norms["2"].size == 0
    monitor.reset()
    assert monitor.captured == ()
    monitor.remove()
    model.eval()
    with SignalMonitor(model, ["0"], training_only=False) as monitor:
        monitor.active = True
        model(torch.randn(3, 4))
        assert monitor.captured == ("0",)


def test_one_host_transfer_and_statistics_stay_on_device(monkeypatch):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Unflatten(1, (1, 8)), nn.Conv1d(1, 2, 3))
    calls = {"cpu": 0, "item": 0, "tolist": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    x = torch.randn(5, 4)
    monitor = SignalMonitor(model, ["0", "2"], defer_below=40)  # "0" deferred, "2" in the hook
    monitor.active = True
    model(x)
    assert calls == {"cpu": 0, "item": 0, "tolist": 0}
    assert all(b.device == x.device and b.dtype == torch.float32 for b in monitor._buffer.captures.values())
    assert all(t.device == x.device for _, *tensors in monitor._buffer._groups for t in tensors)
    monitor.compute()
    assert calls == {"cpu": 1, "item": 0, "tolist": 0}
    monitor.remove()
    # every layer deferred into one group: compute()'s shortcut, one transfer too
    with SignalMonitor(model, ["0", "2"]) as monitor:
        monitor.active = True
        model(x)
        assert monitor.compute().names == ("0", "2")
    assert calls == {"cpu": 2, "item": 0, "tolist": 0}


def test_weight_sharing_keeps_last_call_and_batch_size_changes():
    shared = nn.Linear(3, 3)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = shared

        def forward(self, x):
            return self.shared(self.shared(x) * 100.0)

    model = Twice()
    x = torch.randn(6, 3)
    with SignalMonitor(model, ["shared"]) as monitor:
        monitor.active = True
        model(x)
        got = monitor.compute().layer("shared")
        with torch.no_grad():
            last = shared(shared(x) * 100.0)
        assert got["log_norm_mean"] == pytest.approx(direct_stats(last.numpy())["log_norm_mean"], abs=1e-5)
        monitor.reset()
        model(torch.randn(6, 3))
        model(torch.randn(4, 3))  # another shape before compute(): the last call wins
        assert monitor.compute().log_norms["shared"].shape == (4,)


def test_bf16_autocast():
    model = mlp(16, 6, 0.1)
    names = [str(2 * i) for i in range(6)]
    x = torch.randn(64, 16)
    with SignalMonitor(model, names) as monitor:
        monitor.active = True
        model(x)
        full = monitor.compute()
        monitor.reset()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.bfloat16
        half = monitor.compute()
    assert np.all(np.isfinite(half.values))
    np.testing.assert_allclose(half.values[:, 0], full.values[:, 0], atol=0.05)  # log_norm_mean
    np.testing.assert_allclose(half.values[:, 2], full.values[:, 2], rtol=0.05)  # emp_var_mean


def test_torch_compile():
    model = mlp(8, 4, 0.1)
    names = [str(2 * i) for i in range(4)]
    x = torch.randn(32, 8)
    with SignalMonitor(model, names) as monitor:
        monitor.active = True
        model(x)
        eager = monitor.compute().values
        monitor.reset()
        # inductor needs ~40 s of C++ compilation on 2 cores; aot_eager traces the same graph
        # (dynamo + AOTAutograd, the hooks included) without code generation
        compiled = torch.compile(model, backend="aot_eager")
        compiled(x)
        np.testing.assert_allclose(monitor.compute().values, eager, rtol=1e-4, atol=1e-6)
        monitor.reset()
        monitor.active = False
        compiled(x)  # gate off: nothing captured
        assert monitor.captured == ()
        monitor.active = True
        compiled(x)
        assert monitor.captured == tuple(names)


def test_validation_of_layer_names():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    model.add_module("encoder", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="encoder"):
        SignalMonitor(model, ["encodr"])
    with pytest.raises(ValueError, match="empty"):
        SignalMonitor(model, [])
    with pytest.raises(ValueError, match="wrap it"):
        SignalMonitor(model, "encoder")
    with pytest.raises(ValueError, match="duplicates"):
        SignalMonitor(model, ["0", "0"])


def test_remove_is_idempotent_and_context_manager_cleans_up_on_exception():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    monitor = SignalMonitor(model, ["0", "2"])
    assert len(model[0]._forward_hooks) == 1
    monitor.active = True
    model(torch.randn(3, 2))
    monitor.remove()
    monitor.remove()
    assert all(not m._forward_hooks for m in model.modules())
    assert monitor.compute().names == ("0", "2")  # captured data survives remove()
    with pytest.raises(ZeroDivisionError):
        with SignalMonitor(model, ["2"]):
            assert model[2]._forward_hooks
            1 / 0
    assert all(not m._forward_hooks for m in model.modules())


def test_non_persistent_hooks_exist_only_while_active():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x = torch.randn(32, 6)
    persistent = SignalMonitor(model, ["0", "2"])
    persistent.active = True
    model(x)
    expected = persistent.compute().values
    persistent.remove()

    monitor = SignalMonitor(model, ["0", "2"], persistent=False)
    assert not model[0]._forward_hooks
    monitor.active = True
    assert len(model[0]._forward_hooks) == 1
    model(x)
    monitor.active = False
    assert not model[0]._forward_hooks and not model[2]._forward_hooks
    np.testing.assert_array_equal(monitor.compute().values, expected)
    monitor.remove()
    monitor.active = True  # a removed monitor never re-attaches
    assert not monitor.active and not model[0]._forward_hooks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("persistent", [True, False])
def test_cuda_steps_make_no_host_synchronization(persistent):
    # an unmeasured step and the hooks of a measured one never wait for the GPU; only compute() does
    model = nn.Sequential(nn.Linear(64, 64), nn.LeakyReLU(0.1), nn.Linear(64, 64), nn.LeakyReLU(0.1),
                          nn.Linear(64, 10)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 64, device="cuda"), torch.randint(0, 10, (128,), device="cuda")
    monitor = SignalMonitor(model, ["0", "2", "4"], persistent=persistent)

    def step(measure: bool) -> None:
        monitor.active = measure
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step(True)  # warm-up (allocations, buffers)
    monitor.compute()
    monitor.reset()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(False)
        step(True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert monitor.captured == ("0", "2", "4")
    stats = monitor.compute()
    assert np.isfinite(stats.values).all()
    monitor.remove()


class Mixed(nn.Module):
    """Layers of different widths and kinds: conv (4 x 6 x 6), linear 7, linear 7, linear 3."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.a, self.b, self.c = nn.Linear(144, 7), nn.Linear(7, 7), nn.Linear(7, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.c(torch.relu(self.b(torch.relu(self.a(h)))))


def test_fused_statistics_over_steps_equal_the_per_layer_reference():
    # the buffer is reused and overwritten from step to step (one copy per layer, in-place
    # reduction): every step must still give each layer's own statistics, also after the batch
    # size changes and when a layer is not called
    torch.manual_seed(0)
    model = Mixed()
    names = ["conv", "a", "b", "c"]
    outputs = {}
    for name in names:
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.detach().clone()))
    monitor = SignalMonitor(model, names)
    monitor.active = True
    for batch in (16, 16, 16, 5, 16, 16):
        model(torch.randn(batch, 2, 6, 6))
        stats = monitor.compute()
        monitor.reset()
        for name in names:
            with np.errstate(invalid="ignore", divide="ignore"):  # dead ReLU units: m2 = 0
                want = direct_stats(outputs[name].numpy())
            for key in STAT_KEYS:
                assert stats.layer(name)[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (batch, name, key)
        assert stats.log_norms["a"].shape == (batch,)
    monitor.remove()


def test_layer_skipped_or_reshaped_between_steps_keeps_the_others_right():
    torch.manual_seed(1)
    first, second = nn.Linear(5, 6), nn.Linear(6, 4)
    model = nn.Sequential(first, nn.ReLU(), second)
    monitor = SignalMonitor(model, ["0", "2"])
    monitor.active = True
    x = torch.randn(12, 5)
    model(x)
    monitor.compute()
    monitor.reset()
    first(x)  # "2" not called this step: NaN for it, "0" right
    stats = monitor.compute()
    assert monitor.captured == ("0",)
    assert stats.layer("0")["emp_var_mean"] == pytest.approx(direct_stats(first(x).detach().numpy())["emp_var_mean"], rel=1e-5)
    assert math.isnan(stats.layer("2")["log_norm_mean"])
    monitor.reset()
    out = model(x)
    with torch.no_grad():  # then "0" gets another width: a new slot, its stale columns are dropped
        model[0].weight, model[0].bias = nn.Parameter(torch.randn(9, 5)), nn.Parameter(torch.randn(9))
    h0 = model[0](x)
    stats = monitor.compute()
    assert stats.layer("0")["emp_var_mean"] == pytest.approx(direct_stats(h0.detach().numpy())["emp_var_mean"], rel=1e-5)
    assert stats.layer("2")["emp_var_mean"] == pytest.approx(direct_stats(out.detach().numpy())["emp_var_mean"], rel=1e-5)
    monitor.remove()


def test_measuring_in_inference_mode_then_training_keeps_working():
    """A measurement under torch.inference_mode() (first, or between steps: Lightning validates in
    it) must not leave inference tensors behind that the next training step's hooks write into."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4))
    monitor = SignalMonitor(model, ["0", "2"], training_only=False)
    monitor.active = True
    for mode in (torch.inference_mode, torch.enable_grad, torch.inference_mode, torch.enable_grad):
        x = torch.randn(9, 5)
        with mode():
            out = model(x)
            stats = monitor.compute()
        if out.requires_grad:
            out.sum().backward()
        expected = [direct_stats(h.detach().numpy())["emp_var_mean"] for h in (model[0](x), out)]
        assert stats.values[:, STAT_KEYS.index("emp_var_mean")] == pytest.approx(expected, rel=1e-5), mode
        monitor.reset()
    monitor.remove()




def bias_carried_net(width: int = 4, depth: int = 8, cut: int = 3, leak: float = 0.0) -> nn.Sequential:
    """A LeakyReLU MLP whose layer ``cut`` multiplies its input by ``leak`` (0: the input is lost there)
    while every layer has a bias of order 1: from ``cut`` on the biases carry the log-norm."""
    torch.manual_seed(0)
    layers = [m for _ in range(depth) for m in (nn.Linear(width, width), nn.LeakyReLU(0.1))]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for i, layer in enumerate(model[::2]):
            nn.init.orthogonal_(layer.weight, gain=1.5)
            layer.bias.uniform_(0.5, 1.5)
            if i == cut:
                layer.weight.mul_(leak)
    return model


@pytest.mark.parametrize("leak", [0.0, 1e-9])
def test_a_net_whose_biases_carry_the_norm_reads_collapsed(leak):
    # exactly constant from layer 3 (leak 0), or carrying 1e-9 of the input (below fp32's resolution
    # after a few layers): the raw log-norm looks healthy, the centred one and the share do not
    model = bias_carried_net(leak=leak)
    names = [str(i) for i in range(0, len(model), 2)]
    with SignalMonitor(model, names) as monitor:
        monitor.active = True
        model(torch.randn(64, 4))
        stats = monitor.compute()
    raw, centred = np.array(stats.column("log_norm_mean")), np.array(stats.column("centred_log_norm_mean"))
    share = np.array(stats.column("input_share"))
    assert np.all(raw > -1.0) and abs(stats.exponent_estimate) < 0.2  # the biases keep |h| of order 1
    assert np.all(share[:3] > 0.05) and np.all((share[3:] < 1e-3) | np.isnan(share[3:]))
    assert stats.collapsed_from == 3
    assert np.all(centred[3:] < centred[:3].min() - 10)  # -inf or rounding noise
    # the centred exponent is the least-squares slope over the layers where it is finite
    finite = np.flatnonzero(np.isfinite(centred))
    want = np.polyfit(finite, centred[finite], 1)[0] if finite.size >= 2 else math.nan
    assert stats.centred_exponent == pytest.approx(want, rel=1e-9, nan_ok=True)


def test_the_centred_exponent_of_a_linear_orthogonal_net_is_log_gain():
    # no bias, no activation, orthogonal weights times 0.8: every sample's norm, and that of every
    # sample less the batch mean, shrinks by exactly 0.8 per layer
    torch.manual_seed(1)
    model = nn.Sequential(*[nn.Linear(16, 16, bias=False) for _ in range(10)])
    with torch.no_grad():
        for layer in model:
            nn.init.orthogonal_(layer.weight, gain=0.8)
    with SignalMonitor(model, [str(i) for i in range(10)]) as monitor:
        monitor.active = True
        model(torch.randn(256, 16) + 3.0)
        stats = monitor.compute()
    centred = np.array(stats.column("centred_log_norm_mean"))
    assert stats.centred_exponent == pytest.approx(np.polyfit(np.arange(10), centred, 1)[0], rel=1e-9)
    assert stats.centred_exponent == pytest.approx(math.log(0.8), abs=1e-5)
    assert stats.exponent_estimate == pytest.approx(math.log(0.8), abs=1e-5)
    share = np.array(stats.column("input_share"))  # the mean 3 keeps its share: sqrt(1 / (1 + 9))
    np.testing.assert_allclose(share, share[0], rtol=1e-4)
    assert stats.collapsed_from is None
