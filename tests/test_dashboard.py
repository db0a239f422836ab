"""What LyapunovInit writes (read back from the event files), what it prints, and that no logger
failure stops training."""

import logging
import math
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from helpers import DeepNarrow, loader, measured, trainer_kwargs
from lightning_lyapunov import LyapunovInit, dashboard, theory
from lightning_lyapunov import LyapunovWarning
from lightning_lyapunov.diagnostics import STAT_KEYS


def fit(module, tmp_path, callback, width=4, **overrides):
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(module, loader(width=width))
    return trainer


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0,
                                                           "tensors": 0})
    events.Reload()
    return events


def test_dashboard_summary_layout_and_figure_read_back(deep_narrow, tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2

    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    callback = LyapunovInit(seed=0, all_layers=True)
    callback._writers.figures = dashboard.FigureBudget(share=1)  # every figure due, whatever the time
    fit(deep_narrow, tmp_path, callback, logger=logger, max_steps=5)
    events = read_events(logger.log_dir)
    scalars = events.Tags()["scalars"]
    # every layer with all_layers=True: the statistics x 12 layers (no dead units: LeakyReLU(0.1) and a
    # linear output, where no unit can die), 12 predicted log-norms, 8 summaries (no dead units either)
    assert sum(tag.startswith("lyapunov/") for tag in scalars) == (len(STAT_KEYS) - 1) * 12 + 12 + 8
    assert not any("dead_fraction" in tag for tag in scalars)
    last = {tag: events.Scalars(tag)[-1].value for tag in scalars}
    stats = callback.report.last.as_dict()
    assert last["lyapunov/max/kurtosis_median"] == pytest.approx(max(stats["kurtosis_median"].values()), rel=1e-6)
    assert last["lyapunov/max/emp_var_collapsed"] == pytest.approx(max(stats["emp_var_collapsed"].values()))
    assert last["lyapunov/total/nonfinite"] == 0
    assert last["lyapunov/verdict"] == callback.report.verdict.code == dashboard.VERDICTS.index("healthy")
    assert last["lyapunov/input_depth"] == 12
    assert last["lyapunov/centred_exponent"] == pytest.approx(callback.report.last.centred_exponent, rel=1e-6)
    # the plan's line through the first layer's measured log-norm: m_0 + sum of the next exponents
    # (after the default calibration the plan's log-gains are the ones measured on the first batch)
    exponents = callback.plan.layer_log_gains
    assert exponents != [layer.init.exponent for layer in callback.plan.layers]
    expected = stats["log_norm_mean"]["net.0"] + sum(exponents[1:6])
    assert last["lyapunov/predicted/log_norm/net.10"] == pytest.approx(expected, abs=1e-5)

    config = layout_pb2.Layout()
    config.ParseFromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    titles = [category.title for category in config.category]
    assert titles[0] == "lyapunov: verdict and summary (one line per run)"
    assert titles[1:] == [f"lyapunov: layer {name}" for name in callback.plan.layer_names]
    import re

    def matched(chart):
        return sorted(t for r in chart.multiline.tag for t in scalars if re.search(r, t))

    for category in config.category:  # every chart shows at least one logged tag
        for chart in category.chart:
            assert matched(chart), chart.title
    # the summary charts: one tag each, so one line per run; the verdict first, its codes in the title
    for chart in config.category[0].chart:
        assert len(matched(chart)) == 1, chart.title
    assert matched(config.category[0].chart[0]) == ["lyapunov/verdict"]
    assert "0 healthy" in config.category[0].chart[0].title and "4 collapsed" in config.category[0].chart[0].title
    # a layer's charts name the layer and show that layer only (net.1 is not net.10's prefix)
    for chart in config.category[2].chart:
        assert chart.title.endswith("[net.2]") and all(t.endswith("/net.2") for t in matched(chart)), chart.title

    # one image per panel of the depth profile, so that a 350-pixel card of TensorBoard shows one panel
    assert sorted(t for t in events.Tags()["images"] if t.startswith("lyapunov/")) == [
        f"lyapunov/depth/{panel}" for panel in dashboard.PANELS]
    for panel in dashboard.PANELS:
        images = events.Images(f"lyapunov/depth/{panel}")
        # first measured step, end of epoch 1 (its last measured step), end of training
        assert [image.step for image in images] == [0, 2, 4]
        assert 10_000 < len(images[0].encoded_image_string) < 150_000
        assert (images[0].width, images[0].height) == (800, 560)


def test_depth_figure_panels_carry_the_theory(deep_narrow, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    callback = LyapunovInit(seed=0)
    fit(deep_narrow, tmp_path, callback, logger=False, max_steps=1)
    stats = callback.report.first
    figure = dashboard.depth_figure(stats, callback.plan, "run: step 0")
    try:
        assert figure._suptitle.get_text() == "run: step 0"
        signal, share, variance, kurtosis = figure.axes
        line = dashboard.predicted_log_norm(stats, callback.plan)
        theory_lines = {ax: [l for l in ax.get_lines() if l.get_label().startswith(("theory", "plan"))] for ax in figure.axes}
        np.testing.assert_allclose(theory_lines[signal][0].get_ydata(), line)
        (centred,) = [c for c in signal.containers if c.get_label().startswith("centred log-norm")]
        np.testing.assert_allclose(centred.lines[0].get_ydata(), stats.column("centred_log_norm_mean"))
        shares = [l for l in share.get_lines() if l.get_label().startswith("input-dependent share")]
        np.testing.assert_allclose(shares[0].get_ydata(), stats.column("input_share"))
        widths = [layer.d_out for layer in callback.plan.layers[:-1]]
        start = stats.layer("net.0")["kurtosis_median"]
        np.testing.assert_allclose(theory_lines[kurtosis][0].get_ydata(),
                                   theory.kurtosis_by_depth(widths, 0.1, initial_kurtosis=start))
        assert theory_lines[variance]
        # the kurtosis theory leaves the plot (width 4, 12 layers, a batch of 16): a note says where
        notes = " ".join(text.get_text() for text in kurtosis.get_legend().get_texts())
        assert "theory leaves the plot at 'net." in notes and "batch of 16" in notes
        # calibrated: a caption says why the empirical variance sits below the calibrated mean square of 1
        captions = " ".join(text.get_text() for text in variance.get_legend().get_texts())
        assert "calibrated: every layer's mean square is 1" in captions
        # the layers are named on the axis
        assert [t.get_text() for t in kurtosis.get_xticklabels()] == list(callback.plan.layer_names)
    finally:
        matplotlib.pyplot.close(figure)


def test_depth_figures_shade_a_collapse_and_name_the_run_step_verdict_and_layers():
    matplotlib = pytest.importorskip("matplotlib")
    from test_diagnostics import bias_carried_net

    stats = measured(bias_carried_net(), torch.randn(64, 4))
    names = list(stats.names)
    title = "run: step 3, verdict: collapsed from layer '6' (#3)"
    figure, figures = dashboard.depth_figure(stats, None, title), dashboard.depth_figures(stats, None, title)
    try:
        labels = [patch.get_label() for ax in figure.axes[:2] for patch in ax.patches]
        assert labels == ["collapsed from '6'", "collapsed from '6'"]
        assert list(figures) == list(dashboard.PANELS)
        for panel in figures.values():  # one panel each, titled, its layers named
            assert panel._suptitle.get_text() == title
            (axis,) = panel.axes
            assert [t.get_text() for t in axis.get_xticklabels()] == names
        signal, share = figures["1_signal"].axes[0], figures["2_share"].axes[0]
        assert [p.get_label() for p in signal.patches + share.patches] == ["collapsed from '6'"] * 2
    finally:
        for each in (figure, *figures.values()):
            matplotlib.pyplot.close(each)


def test_png_holds_the_pixels_add_figure_writes_and_uses_no_pyplot():
    pytest.importorskip("matplotlib")
    import io

    from PIL import Image
    from torch.utils.tensorboard._utils import figure_to_image
    from test_diagnostics import bias_carried_net

    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figures = dashboard.depth_figures(measured(bias_carried_net(), torch.randn(64, 4)), None, "run: step 3")
    assert plt.get_fignums() == before  # outside pyplot: nothing to close, no backend switched
    encoded, width, height = dashboard.png(figures["1_signal"])
    pixels = np.asarray(Image.open(io.BytesIO(encoded)))
    assert pixels.shape == (height, width, 3) == (560, 800, 3)
    # SummaryWriter.add_figure's pixels (CHW): the same, bit for bit
    np.testing.assert_array_equal(np.moveaxis(figure_to_image(figures["1_signal"], close=False), 0, 2), pixels)
    assert (pixels != 255).any(axis=-1).mean() > 0.02  # something is drawn


def test_kurtosis_recursion_takes_one_slope_per_layer():
    widths, slopes = [4, 3, 5, 4], [0.1, 0.0, 0.5, 0.2]
    kappa = [3.0]
    for w, a in zip(widths, slopes):  # Gaussian weights: kappa_{l+1} = kappa_l (1 + C_a / w_l)
        kappa.append(kappa[-1] * (1 + (5 - 2 * a**2 + 5 * a**4) / (1 + a**2) ** 2 / w))
    np.testing.assert_allclose(theory.kurtosis_by_depth(widths, slopes), kappa, rtol=1e-12)
    with pytest.raises(ValueError, match="one per hidden layer"):
        theory.kurtosis_by_depth(widths, slopes[:2])


def test_featured_layers_and_figure_cadence():
    assert dashboard.featured_layers(list("abcdefg")) == ["a", "d", "g"]
    assert dashboard.featured_layers(["a", "b"]) == ["a", "b"]
    assert [e for e in range(20) if dashboard.figure_due(e)] == [0, 1, 3, 7, 15]


def test_warnings_are_grouped_per_step_and_printed_without_a_file_prefix(tmp_path):
    # width 4, 32 layers, LeakyReLU(0.01), seed 1: Lyapunov init, but this draw's output is e^-9.3 x the input
    torch.manual_seed(0)
    module = DeepNarrow(width=4, depth=32, slope=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(module, tmp_path, LyapunovInit(seed=1, calibrate=None), logger=False, max_steps=1)
    ours = [w for w in caught if issubclass(w.category, LyapunovWarning)]
    at_step_0 = [w for w in ours if "at step 0" in str(w.message)]
    assert len(at_step_0) == 1
    message = str(at_step_0[0].message)
    assert message.startswith("LyapunovInit: at step 0:\n  - vanishing: the input-dependent part")
    assert "the output's typical sample is" in message and "times the input's" in message
    assert "e^(+-2 sqrt(L) s) = e^(+-13.6)" in message  # 2 sqrt(sum of the plan's variances)
    assert "calibrate=" in message and "sampled=True" in message
    text = warnings.formatwarning(at_step_0[0].message, LyapunovWarning, "callbacks.py", 304)
    assert text == f"{message}\n" and "callbacks.py" not in text


def test_he_at_width_2_is_told_to_use_lyapunov(tmp_path):
    torch.manual_seed(0)
    module = DeepNarrow(width=2, depth=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(module, tmp_path, LyapunovInit(scheme="he", seed=0), width=2, logger=False,
            max_steps=1)
    messages = [str(w.message) for w in caught if "output's typical sample" in str(w.message)]
    assert len(messages) == 1 and "scheme='he' drifts by -16" in messages[0] and "scheme='lyapunov'" in messages[0]


def test_closing_summary_says_what_was_done(tmp_path, caplog):
    torch.manual_seed(0)
    callback = LyapunovInit(seed=3, sampled=True)
    with caplog.at_level(logging.INFO):
        fit(DeepNarrow(), tmp_path, callback, logger=False, max_steps=5)
    summary = callback.summary()
    assert summary in caplog.text
    lines = summary.splitlines()
    assert lines[0].startswith("LyapunovInit summary: initialized 12 layers: scheme='lyapunov', orthogonal "
                               "weights, seed 3; sampled ('network'): kept candidate ")
    first, last = callback.report.first, callback.report.last
    assert lines[1].startswith(f"  verdict at step 4 (the last measured): {callback.report.verdict}: ")
    assert (f"at the first measured step / step 4: input-dependent part {first.centred_exponent:+.3f} / "
            f"{last.centred_exponent:+.3f}; h with its biases {first.exponent_estimate:+.3f} / "
            f"{last.exponent_estimate:+.3f}; plan {dashboard.plan_exponent(callback.plan):+.4f}") in lines[2]
    assert "SamplingReport(" not in caplog.text
    assert math.isfinite(first.exponent_estimate)


def test_step_scalars_built_once_equal_the_functions_and_refuse_other_layers():
    from types import SimpleNamespace

    from lightning_lyapunov.diagnostics import SignalStats

    g = np.random.default_rng(0)
    names = ("a", "b", "c", "d")
    values = g.normal(size=(4, len(STAT_KEYS)))
    values[:, STAT_KEYS.index("nonfinite")] = 0.0
    values[2, STAT_KEYS.index("kurtosis_median")] = math.nan  # undefined: left out, and out of the max
    stats = SignalStats(names, values, {n: g.normal(size=5) for n in names})
    slopes = (0.0, 0.0, 0.1, 1.0)  # units can die after a and b only
    plan = SimpleNamespace(layer_log_gains=[0.1, -0.2, 0.05, 0.0], layer_names=list(names),
                           layers=[SimpleNamespace(negative_slope=a) for a in slopes])
    step = dashboard.StepScalars(plan, names, ["a", "c"])
    want = dashboard.summary_scalars(stats, plan) | dashboard.layer_scalars(stats, plan, ["a", "c"])
    assert step(stats) == want
    dead = values[:, STAT_KEYS.index("dead_fraction")]
    assert "lyapunov/dead_fraction/a" in want and "lyapunov/dead_fraction/c" not in want
    assert want["lyapunov/max/dead_fraction"] == max(dead[:2])
    assert want["lyapunov/predicted/exponent"] == pytest.approx((0.1 - 0.2 + 0.05) / 4)
    assert "lyapunov/kurtosis_median/c" not in want and "lyapunov/kurtosis_median/a" in want
    assert want["lyapunov/max/kurtosis_median"] == np.nanmax(values[:, STAT_KEYS.index("kurtosis_median")])
    first = values[0, STAT_KEYS.index("log_norm_mean")]
    assert want["lyapunov/predicted/log_norm/c"] == pytest.approx(first - 0.2 + 0.05)
    # -inf (every sample alike) and NaN are left out of the layer's keys, the rest stays
    broken = values.copy()
    broken[0, STAT_KEYS.index("centred_log_norm_mean")] = -math.inf
    broken[2, STAT_KEYS.index("nonfinite")], broken[2, STAT_KEYS.index("log_rms")] = 1.0, math.nan
    logged = step.layers(SignalStats(names, broken, stats.log_norms))
    assert "lyapunov/centred_log_norm_mean/a" not in logged and "lyapunov/log_rms/c" not in logged
    assert logged["lyapunov/log_rms/a"] == want["lyapunov/log_rms/a"] and logged["lyapunov/nonfinite/c"] == 1.0
    other = SignalStats(("a", "b"), values[:2], {n: g.normal(size=5) for n in ("a", "b")})
    with pytest.raises(ValueError, match="build one for these layers"):
        step(other)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_figure_budget_keeps_the_figures_within_their_share_of_the_time():
    clock = FakeClock()
    budget = dashboard.FigureBudget(share=0.02, clock=clock, estimate=0.3)
    budget.start()
    clock.now += 29.9  # this one and the final one, 0.6 s, would be 2.007 % of 29.9 s
    assert not budget.allows()
    clock.now += 0.1  # 2 % of 30 s
    assert budget.allows()
    with budget.timed():
        clock.now += 0.5  # rendering took longer than estimated: the next estimate is 0.5 s
    assert (budget.spent, budget.estimate) == (0.5, 0.5)
    assert not budget.allows()  # 0.5 s spent, 1.0 s more would be 4.9 % of 30.5 s
    clock.now = 100.0 + 75.0
    assert budget.allows()  # 1.5 s of 75 s
    budget.start()  # a second start changes nothing
    assert budget.began == 100.0
    assert dashboard.FigureBudget(share=1, clock=clock).allows()  # share 1: always
    with pytest.raises(ValueError, match="share=0 must be > 0"):
        dashboard.FigureBudget(share=0)


class GeluNarrow(DeepNarrow):
    """A LightningModule as users write one: nn.GELU modules, and a functional F.gelu in forward."""

    def __init__(self, width=8, depth=10):
        super().__init__(width=width, depth=depth)
        blocks = [m for _ in range(depth - 2) for m in (torch.nn.Linear(width, width), torch.nn.GELU())]
        self.net = torch.nn.Sequential(*blocks, torch.nn.Linear(width, width))
        self.head = torch.nn.Linear(width, 1)

    def forward(self, x):
        return self.head(torch.nn.functional.gelu(self.net(x)))


@pytest.mark.parametrize("calibrate", [None, "layers"])
def test_the_predicted_line_and_band_of_a_gelu_net_are_the_scale_chains(tmp_path, calibrate):
    from lightning_lyapunov import chain_theory

    module = GeluNarrow()
    callback = LyapunovInit(seed=0, calibrate=calibrate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no logger
        fit(module, tmp_path, callback, width=8, logger=False, max_steps=1)
    plan = callback.plan
    assert plan.operating_scale is not None and all("gelu exact at s=" in l.theory for l in plan.layers[:-1])
    layers = [(l.d_in, l.d_out, "gelu") for l in plan.layers[:-1]] + [(8, 1, None)]
    chain = chain_theory.predict_chain(layers, "orthogonal", plan.operating_scale, input_scale=plan.operating_scale)
    np.testing.assert_allclose(dashboard.predicted_band(plan), 2 * np.sqrt(chain.std_log_norm**2 - chain.std_log_norm[0]**2),
                               rtol=1e-6, atol=1e-9)
    stats = callback.report.first
    line = dashboard.predicted_log_norm(stats, plan)
    matplotlib = pytest.importorskip("matplotlib")
    figure = dashboard.depth_figure(stats, plan, "gelu")
    try:  # the kurtosis recursion is the Leaky ReLU's: not drawn, a note says why
        kurtosis = figure.axes[3]
        assert not [l for l in kurtosis.get_lines() if l.get_label().startswith("theory")]
        assert "not Leaky ReLUs" in " ".join(t.get_text() for t in kurtosis.get_legend().get_texts())
    finally:
        matplotlib.pyplot.close(figure)
    if calibrate is None:  # theory's line through the first layer's measured mean
        np.testing.assert_allclose(line, stats.column("log_norm_mean")[0] + chain.mean_log_norm - chain.mean_log_norm[0],
                                   atol=1e-9)
    else:  # the log-gains measured at calibration, where the plan's table says "the diagnostics' prediction from here on"
        gains = np.array(plan.calibration.log_gains)
        np.testing.assert_allclose(line, stats.column("log_norm_mean")[0] + np.concatenate([[0], np.cumsum(gains[1:])]))
        assert "before calibration, theory's log-norm drift: +0.000" in plan.describe()


def test_the_plan_exponent_is_theorys_zero_not_float_noise() -> None:
    from types import SimpleNamespace

    noise = SimpleNamespace(layer_log_gains=[3e-18, -4e-18, 0.0])  # a numerically solved exponent 0 per layer
    value = dashboard.plan_exponent(noise)
    assert value == 0.0 and math.copysign(1.0, value) == 1.0  # "+0.0000", a flat 0 line in TensorBoard
    assert dashboard.plan_exponent(SimpleNamespace(layer_log_gains=[-0.8, -0.9])) == pytest.approx(-0.85, abs=1e-12)
    assert dashboard.plan_exponent(SimpleNamespace(layer_log_gains=[None])) is None
