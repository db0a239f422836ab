"""Tests of lightning_lyapunov.diagnosis: the report on the measured steps, without Lightning and in the
callback; batch size 1 and one-layer models: statistics that are undefined are not logged (no NaN),
and one warning says why."""

import csv
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from helpers import DeepNarrow, loader, measured, trainer_kwargs
from lightning_lyapunov import LyapunovInit, SignalMonitor, SignalReport, apply_init
from lightning_lyapunov.diagnosis import verdict
from lightning_lyapunov.diagnostics import BATCH_STATS, CONSTANT, STAT_KEYS


def run(tmp_path, depth, batch_size, max_steps=4):
    torch.manual_seed(0)
    logger = CSVLogger(tmp_path, name="small")
    trainer = pl.Trainer(callbacks=[LyapunovInit(seed=0, log_every_n_steps=1)],
                         **trainer_kwargs(tmp_path, logger=logger, max_steps=max_steps))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DeepNarrow(depth=depth), loader(batch_size=batch_size))
    with open(Path(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    logged = {key: [float(row[key]) for row in rows if row[key] != ""] for key in rows[0] if key.startswith("lyapunov/")}
    undefined = [str(w.message) for w in caught if "undefined here" in str(w.message)]
    return {key: values for key, values in logged.items() if values}, undefined


def test_batch_of_one_logs_no_nan_and_warns_once(tmp_path):
    logged, undefined = run(tmp_path, depth=4, batch_size=1)
    assert len(logged["lyapunov/log_norm_mean/net.0"]) == 4  # measured every step
    assert all(math.isfinite(v) for values in logged.values() for v in values)
    for stat in BATCH_STATS:
        assert not any(key.startswith(f"lyapunov/{stat}/") for key in logged), stat
    assert "lyapunov/exponent_estimate" in logged
    assert len(undefined) == 1 and "batch of 1 sample" in undefined[0] and "kurtosis_median" in undefined[0]


def test_one_layer_model_logs_no_exponent_and_says_why_once(tmp_path):
    logged, undefined = run(tmp_path, depth=1, batch_size=16)
    assert "lyapunov/exponent_estimate" not in logged
    assert "lyapunov/kurtosis_median/net.0" in logged
    assert all(math.isfinite(v) for values in logged.values() for v in values)
    assert len(undefined) == 1 and "fewer than 2 measured layers" in undefined[0]


def test_both_reasons_in_one_warning(tmp_path):
    logged, undefined = run(tmp_path, depth=1, batch_size=1, max_steps=3)
    measured = {key for key in logged if key.count("/") == 2 and not key.startswith(
        ("lyapunov/predicted/", "lyapunov/max/", "lyapunov/total/"))}
    # no dead units either: the one layer has no activation after it, so none of its units can die
    assert measured == {f"lyapunov/{k}/net.0" for k in ("log_norm_mean", "log_rms", "nonfinite")}
    summary = {key for key in logged if key.startswith(("lyapunov/max/", "lyapunov/total/"))}
    assert summary == {"lyapunov/total/nonfinite"}  # no undefined kurtosis
    assert len(undefined) == 1 and "batch of 1 sample" in undefined[0] and "fewer than 2" in undefined[0]


class FirstOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x)


def measure(model, x, names):
    monitor = SignalMonitor(model, names)
    monitor.active = True
    model(x)
    return monitor.compute()


def test_undefined_lists_each_case_and_keeps_real_nan():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 4))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.fill_(1.0)  # constant units: kurtosis 0/0
    stats = measure(model[:3], torch.randn(8, 4), ["0", "2"])
    degenerate = "0/0 from finite activations: units constant over the batch, or an all-zero output"
    # every sample gives the same output in layer 2: its centred log-norm is -inf (a real value: nothing
    # depends on the input), its std 0/0, and the centred exponent has one layer to fit
    assert stats.undefined() == {"kurtosis_median/2": degenerate, "kurtosis_pooled/2": degenerate,
                                 "centred_log_norm_std/2": degenerate, "centred_exponent": CONSTANT}
    assert stats.layer("2")["centred_log_norm_mean"] == -math.inf and stats.collapsed_from == 1
    not_called = measure(FirstOnly(), torch.randn(8, 4), ["a", "b"])  # layer b never runs
    assert {k for k in not_called.undefined() if k.endswith("/b")} == {f"{k}/b" for k in STAT_KEYS}
    assert not_called.undefined()["exponent_estimate"].startswith("fewer than 2")
    diverged = measure(model[:1], torch.full((8, 4), math.nan), ["0"])  # NaN activations: a real NaN
    assert math.isnan(diverged.to_scalars(defined_only=True)["lyapunov/kurtosis_median/0"])
    assert "kurtosis_median/0" not in diverged.undefined()


def test_defined_only_drops_exactly_the_undefined_keys():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    stats = measure(model, torch.randn(1, 4), ["0", "2"])
    full, defined = stats.to_scalars(), stats.to_scalars(defined_only=True)
    assert set(full) - set(defined) == {f"lyapunov/{k}" for k in stats.undefined()}
    assert len(full) - len(defined) == 2 * len(BATCH_STATS) + 1  # and the centred exponent
    assert all(np.isfinite(v) for v in defined.values())


def test_the_report_diagnoses_a_plain_pytorch_loop() -> None:
    # no Lightning: the monitor measures, the report warns once per new problem and sums up the run
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(11) for m in (nn.Linear(2, 2), nn.LeakyReLU(0.1))], nn.Linear(2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = apply_init(model, scheme="he", generator=torch.Generator().manual_seed(0))
    monitor, report = SignalMonitor(model, plan.layer_names, measure_input=True), SignalReport(plan)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 2), torch.randn(64, 1)
    messages = []
    for step in range(4):
        monitor.active = step % 2 == 0
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if monitor.active:
            messages.append(report.update(monitor.compute(), step))
            monitor.reset()
    # He at width 2 over 12 layers: the output's scale at step 0 is far below the input's, and the plan says why
    assert messages[0] is not None and "scheme='he' drifts by" in messages[0] and messages[1] is None
    gap = report.start_gap()
    assert gap == pytest.approx(report.first.column("log_norm_mean")[-1] - report.first.input_log_norm)
    assert math.isfinite(report.first.input_log_norm) and math.isnan(report.last.input_log_norm)  # measured once
    summary = report.summary()
    assert summary.startswith("signal summary:")
    assert f"; plan {plan.predicted_drift / len(plan.layers):+.4f} (its drift / 12 layers)" in summary
    assert report.verdict.label == "vanishing" and "verdict at step 2 (the last measured): vanishing" in summary
    assert "at step 2" in summary and f"{math.exp(gap):.3g} x the input's" in summary
    scalars = report.scalars(report.last)
    assert scalars["lyapunov/predicted/exponent"] == pytest.approx(plan.predicted_drift / len(plan.layers))


# ------------------------------------------------------------------ the verdict


def chain(depth=12, width=4, gain=1.0, activation=lambda: nn.LeakyReLU(0.1), bias=False, seed=0):
    torch.manual_seed(seed)
    layers = [m for _ in range(depth) for m in (nn.Linear(width, width, bias=bias), activation())]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for layer in model[::2]:
            nn.init.orthogonal_(layer.weight, gain=gain)
    return model


def test_the_verdict_on_constructed_nets():
    from test_diagnostics import bias_carried_net

    x = torch.randn(128, 4)
    # the biases carry the norm from layer 3 on: the log-norm of h reads healthy, the verdict does not
    collapsed = measured(bias_carried_net(cut=3), x)
    assert abs(collapsed.exponent_estimate) < 0.2
    found = verdict(collapsed)
    assert (found.label, found.index, found.layer, found.code) == ("collapsed", 3, "6", 4)
    assert str(found) == "collapsed from layer '6' (#3)" and "no longer depends on the input" in found.detail
    # an orthogonal LeakyReLU chain at the gain that keeps the input-dependent part: healthy
    healthy = measured(chain(gain=math.sqrt(2 / (1 + 0.1**2))), x)
    assert verdict(healthy).label == "healthy" and verdict(healthy).code == 0
    # the same chain scaled by 0.5 / 2 per layer: e^(-+0.69 x 11) beyond a factor 100
    shrinking, growing = measured(chain(gain=0.5), x), measured(chain(gain=5.0), x)
    assert verdict(shrinking).label == "vanishing" and "shrinks by e^-" in verdict(shrinking).detail
    assert verdict(growing).label == "exploding" and verdict(growing).code == 3
    # ReLU: units die; LeakyReLU: the same outputs have no dead unit (a unit <= 0 still passes 0.1 of it)
    relu = chain(depth=4, width=8, gain=1.0, activation=nn.ReLU, bias=True, seed=1)
    with torch.no_grad():
        relu[2].bias[:6] = -100.0  # 6 of 8 units of layer 1 are <= 0 on every sample
    dead = measured(relu, x.repeat(1, 2))
    assert verdict(dead, slopes=[0.0] * 4).label == "dead units" and verdict(dead, slopes=[0.0] * 4).index == 1
    assert verdict(dead, slopes=[0.1] * 4).label != "dead units" and verdict(dead).label != "dead units"
    # NaN/Inf first
    broken = measured(healthy_model := chain(gain=1.0), x)
    assert verdict(broken).label != "NaN/Inf"
    with torch.no_grad():
        healthy_model[4].weight[0, 0] = math.inf
    assert str(verdict(measured(healthy_model, x))) == "NaN/Inf from layer '4' (#2)"


def test_the_report_warns_once_per_verdict_and_keeps_where_it_changed():
    from test_diagnostics import bias_carried_net

    x = torch.randn(64, 4)
    report = SignalReport(None)
    healthy, collapsed = measured(chain(gain=1.35), x), measured(bias_carried_net(), x)
    assert report.update(healthy, 0) is None
    message = report.update(collapsed, 5)
    assert message.startswith("at step 5:\n  - collapsed from layer '6' (#3): down to the output")
    assert report.update(collapsed, 10) is None  # said once
    later = measured(bias_carried_net(cut=4), x)
    assert report.update(later, 12) is None and str(report.verdict) == "collapsed from layer '8' (#4)"
    report.update(healthy, 15)
    assert [(step, v.label) for step, v in report.verdicts] == [(0, "healthy"), (5, "collapsed"), (15, "healthy")]
    assert report.collapsed == {"6": 5, "8": 5, "10": 5, "12": 5, "14": 5}
    assert report.scalars(collapsed)["lyapunov/verdict"] == 4 and report.scalars(healthy)["lyapunov/verdict"] == 0
    summary = report.summary()
    assert "verdict at step 15 (the last measured): healthy" in summary
    assert "verdict before: step 0: healthy; step 5: collapsed from layer '6' (#3)" in summary
