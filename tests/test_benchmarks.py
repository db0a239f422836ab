"""The benchmark framework end to end: ``python -m benchmarks theory --quick`` in process."""

import csv

from benchmarks import theory
from benchmarks.common import write_report

COLUMNS = {
    "width", "slope", "lambda_he", "lambda_glorot", "lambda_orth", "sigma_he", "sigma_lyap", "eta_orth",
    "eta_lyap", "s2_gauss", "s2_orth", "mc_he", "mc_he_se", "mc_orth", "mc_orth_se",
}


def test_theory_quick_writes_md_csv_png(tmp_path):
    report = theory.run(quick=True)
    report.seconds = 1.0
    paths = write_report(report, quick=True, out_dir=tmp_path)
    names = {p.name for p in paths}
    assert names == {"theory.md", "theory.csv", "theory.png"}
    for name in names:
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "theory.csv") as f:
        rows = list(csv.DictReader(f))
    assert COLUMNS <= set(rows[0])
    assert len(rows) == len({(r["width"], r["slope"]) for r in rows}) >= 8
    # the closed form at width 2, slope 0.1 (DESIGN section 3) and its Monte Carlo check
    row = next(r for r in rows if r["width"] == "2" and float(r["slope"]) == 0.1)
    assert abs(float(row["lambda_he"]) + 0.8216) < 1e-3
    assert abs(float(row["mc_he"]) - float(row["lambda_he"])) < 4 * float(row["mc_he_se"])
    assert abs(float(row["mc_lyap_gauss"])) < 4 * float(row["mc_lyap_gauss_se"])
    md = (tmp_path / "theory.md").read_text()
    assert "## Setup" in md and "## Findings" in md and "(theory.png)" in md


def test_stacked_nets_train_exactly_like_separate_ones():
    """The real-data benchmarks train many nets as one stacked model: the stacked forward equals each
    net's own, and one SGD step on the summed losses moves each net as its own step would."""
    import torch
    from torch import nn

    from benchmarks.mnist_fractional import paper_cnn
    from benchmarks.realdata import StackedConvMLP, fit_stacked

    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(paper_cnn(1, 8))
    stacked = StackedConvMLP.from_modules(nets)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(10, (16,))
    with torch.no_grad():
        for i, net in enumerate(nets):
            torch.testing.assert_close(stacked(x)[i], net(x))
    fit_stacked(stacked, torch.optim.SGD(stacked.parameters(), lr=0.1), (x, y), {}, steps=1, batch_size=16,
                eval_steps=[])
    for i, net in enumerate(nets):
        torch.optim.SGD(net.parameters(), lr=0.1).zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad
            torch.testing.assert_close(stacked(x)[i], net(x), rtol=1e-4, atol=1e-5)


def test_stacked_lsuv_and_calibration_match_the_real_inits():
    """cifar_variance runs LSUV and the calibrated init in closed form on 1000 stacked nets; on the
    same weights they must give what the ``lsuv`` package and ``apply_init(calibrate=...)`` give."""
    import pytest
    import torch

    pytest.importorskip("lsuv")
    from benchmarks.cifar_variance import check_stacked

    x = torch.randn(320, 48, generator=torch.Generator().manual_seed(0))
    check = check_stacked(x, depth=12, nets=3)
    assert check["lsuv dead"] == check["calibration dead"] == 0  # Gaussian inputs, depth 12: no dead layer
    assert max(check["lsuv"], check["calibrate=layers"], check["calibrate=output"]) < 1e-4


def test_overhead_only_keeps_the_other_rows_marked_previous(tmp_path, monkeypatch):
    """``python -m benchmarks overhead --only ...``: re-measured rows replace theirs in place, a new case
    goes after its group, every other row is kept and marked ``(previous run)``."""
    import math

    from benchmarks import overhead

    rows = [{"group": g, "case": c, "reference": "r", "reference_ms": 1.0, "ms": 2.0, "ratio": 2.0,
             "ratio_q25": math.nan, "ratio_q75": math.nan, "target": "t", "rounds": 3}
            for g, c in (("a", "x"), ("a", "y"), ("theory.critical_scale", "width 2: lyapunov gaussian"), ("b", "z"))]
    (tmp_path / "overhead.csv").write_text(
        "group,case,reference,reference_ms,ms,ratio,ratio_q25,ratio_q75,target,rounds\n"
        + "".join(f"{r['group']},{r['case']},r,1.0,2.0,2.0,nan,nan,t,3\n" for r in rows))
    monkeypatch.setattr(overhead, "RESULTS", tmp_path)
    previous = overhead._previous_rows(quick=False)
    assert [r["case"] for r in previous][0] == "x (previous run)" and previous[0]["rounds"] == 3
    new = [dict(rows[1], ms=5.0), dict(rows[0], case="w", ms=7.0)]
    merged = overhead._merge(previous, new)
    assert [(r["group"], r["case"]) for r in merged] == [
        ("a", "x (previous run)"), ("a", "y"), ("a", "w"), ("theory.critical_scale", "width 2: lyapunov gaussian (previous run)"),
        ("b", "z (previous run)")]
    assert merged[1]["ms"] == 5.0
    (theory,) = overhead._theory_from_rows(merged)
    assert (theory["width"], theory["call"], theory["uncached_ms"], theory["cached_ms"]) == (2, "lyapunov gaussian", 2.0, 1.0)
