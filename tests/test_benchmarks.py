"""The benchmark suite: every registered benchmark runs end to end at its quick size, the runner, the
README tables generated from the result files, and the rules the suite keeps (one module imports the
package; the runner owns threads and the plotting backend).

The real-data benchmarks read tiny files this module writes in the standard formats (MNIST idx, the
CIFAR-10 python batches), never a real data set.
"""

import csv
import gzip
import math
import pickle
import re
import struct
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from benchmarks.__main__ import main, run_one
from benchmarks._lib import catalogue
from benchmarks._lib.report import Report, Sizes, write_report

ROOT = Path(__file__).resolve().parents[1]
matplotlib.use("Agg")  # before the registry imports the benchmarks, which import pyplot
REGISTRY = catalogue.registry()


def write_idx(path: Path, array: np.ndarray) -> None:
    """One gzipped idx file: magic 0x00 0x00 0x08 <ndim>, big-endian sizes, uint8 data."""
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def write_tiny_data(root: Path) -> dict[str, str]:
    """Tiny MNIST (320 train / 128 test) and CIFAR-10 (5 x 64 train / 128 test) in the standard formats."""
    rng = np.random.default_rng(0)
    mnist = root / "mnist"
    mnist.mkdir()
    for prefix, n in (("train", 320), ("t10k", 128)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    cifar = root / "cifar10" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name, n in [*((f"data_batch_{i}", 64) for i in range(1, 6)), ("test_batch", 128)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (cifar / name).write_bytes(pickle.dumps(batch))
    return {"LYAPUNOV_MNIST_DIR": str(mnist), "LYAPUNOV_CIFAR_DIR": str(root / "cifar10")}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    env = write_tiny_data(tmp_path_factory.mktemp("data"))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_benchmark_runs_at_its_quick_size(name, tiny_data, tmp_path):
    report = run_one(REGISTRY[name], quick=True, out_dir=tmp_path)
    md = (tmp_path / f"{name}.md").read_text()
    assert re.search(r"\(quick run: CPU time \d+ s, one torch thread; wall time \d+ s", md)
    assert "## Setup" in md and "## Results" in md and "## Findings" in md
    with open(tmp_path / f"{name}.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(None not in row.values() for row in rows)
    if report.runs:  # one row per run, the md's table beside it
        assert {"scheme", "seed"} <= set(rows[0]) and len(rows) == len(report.runs)
        assert (tmp_path / f"{name}_table.csv").exists()
    assert report.figure is None or (tmp_path / f"{name}.png").stat().st_size > 0
    assert report.cpu_seconds < 60, f"{name} --quick took {report.cpu_seconds:.0f} s of CPU: make its quick size smaller"


def test_a_benchmark_run_again_with_checkpoints_continues_and_counts_the_earlier_cpu_time(tiny_data, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setenv("LYAPUNOV_BENCH_CHECKPOINTS", str(tmp_path / "state"))
    first = run_one(REGISTRY["stiefel_protocol"], quick=True, out_dir=tmp_path / "a")
    again = run_one(REGISTRY["stiefel_protocol"], quick=True, out_dir=tmp_path / "b")
    assert list((tmp_path / "state").glob("*.pt")) and first.earlier_cpu_seconds == 0 < again.earlier_cpu_seconds
    assert "in earlier processes, read back" in (tmp_path / "b" / "stiefel_protocol.md").read_text()
    assert [r["test_acc final"] for r in again.runs] == [r["test_acc final"] for r in first.runs]


def test_the_theory_report_matches_the_closed_forms(tmp_path):
    import benchmarks.theory as theory

    report = theory.run(theory.SIZES.quick)
    row = next(r for r in report.rows if r["width"] == 2 and r["slope"] == 0.1)
    assert abs(row["lambda_he"] + 0.8216) < 1e-3
    assert abs(row["mc_he"] - row["lambda_he"]) < 4 * row["mc_he_se"]
    assert abs(row["mc_lyap_gauss"]) < 4 * row["mc_lyap_gauss_se"]
    assert len(report.rows) == len({(r["width"], r["slope"]) for r in report.rows}) >= 8
    report.cpu_seconds = report.seconds = 1.0
    assert {p.name for p in write_report(report, quick=True, out_dir=tmp_path)} == {"theory.md", "theory.csv",
                                                                                   "theory.png"}
    assert "## Summary\n\n- Monte Carlo against the closed forms" in (tmp_path / "theory.md").read_text()


def test_every_benchmark_declares_a_title_and_two_sizes_of_one_kind():
    assert len(REGISTRY) >= 16
    for name, module in REGISTRY.items():
        assert isinstance(module.TITLE, str) and module.TITLE and "\n" not in module.TITLE, name
        assert isinstance(module.SIZES, Sizes) and type(module.SIZES.quick) is type(module.SIZES.full), name
        assert module.SIZES.quick != module.SIZES.full, name


def test_help_lists_every_benchmark_with_its_title(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name, module in REGISTRY.items():
        assert re.search(rf"^  {name} +{re.escape(module.TITLE)}$", out, re.M), name
    main(["theory", "--sizes"])
    sizes = capsys.readouterr().out
    assert re.search(r"^nets +100 +400$", sizes, re.M) and re.search(r"^depth +20 +50$", sizes, re.M)


def test_options_of_one_benchmark_are_refused_by_the_others(tmp_path):
    with pytest.raises(SystemExit, match="lln_clt does not take --only"):
        main(["lln_clt", "--quick", "--only", "theory", "--out", str(tmp_path)])


BENCHMARK_FILES = sorted(p for p in (ROOT / "benchmarks").rglob("*.py"))


def test_only_one_module_imports_the_package():
    """The integrator's rename touches ``benchmarks/_lib/package.py`` only."""
    offenders = [p.relative_to(ROOT) for p in BENCHMARK_FILES if p.name != "package.py"
                 and re.search(r"^\s*(from|import) lightning_lyapunov\b", p.read_text(), re.M)]
    assert offenders == []


def test_the_runner_owns_threads_and_the_plotting_backend():
    for path in BENCHMARK_FILES:
        text = path.read_text()
        if path.name != "__main__.py" and path.name != "qr_draws.py":  # qr_draws' child processes set theirs
            assert "set_num_threads" not in text, path
        if path.name != "__main__.py":
            assert "matplotlib.use(" not in text and "noqa: E402" not in text, path
        if "_lib" not in path.parts and path.name != "__main__.py":
            assert "if quick" not in text and "quick else" not in text, path  # sizes live in SIZES
        assert "sys.path.insert" not in text, path


@pytest.mark.parametrize("readme", catalogue.READMES, ids=lambda p: p.parent.name or "README")
def test_the_readme_tables_are_the_result_files(readme):
    """Every generated block is present and equal to what ``python -m benchmarks --readme`` writes."""
    text = readme.read_text()
    generated = catalogue.tables(REGISTRY, readme)
    for name in generated:
        assert f"<!-- benchmarks:{name} -->" in text or readme.parent == ROOT and name == "sizes", (readme, name)
    assert catalogue.fill(text, generated) == text, "run `python -m benchmarks --readme` after the result files change"


def test_the_catalogue_reads_cpu_time_and_summary_from_a_report(tmp_path):
    report = Report("x", "X", "setup", [{"a": 1.0}], ["a finding"], summary=["a beats b: median 1 vs 2"],
                    cpu_seconds=123.4, seconds=150.0)
    write_report(report, out_dir=tmp_path)
    result = catalogue.read_result(tmp_path / "x.md")
    assert (result.cpu_seconds, result.wall_seconds, result.summary) == (123.0, 150.0, ["a beats b: median 1 vs 2"])  # whole seconds


def test_stacked_lsuv_and_calibration_match_the_real_inits():
    """cifar_variance runs LSUV and the calibrated init in closed form on 1000 stacked nets; on the
    same weights they must give what the ``lsuv`` package and ``apply_init(calibrate=...)`` give."""
    pytest.importorskip("lsuv")
    from benchmarks.cifar_variance import check_stacked

    x = torch.randn(320, 48, generator=torch.Generator().manual_seed(0))
    check = check_stacked(x, depth=12, nets=3)
    assert check["lsuv dead"] == check["calibration dead"] == 0  # Gaussian inputs, depth 12: no dead layer
    assert max(check["lsuv"], check["calibrate=layers"], check["calibrate=output"]) < 1e-4


def test_overhead_only_keeps_the_other_rows_marked_previous(tmp_path):
    """``python -m benchmarks overhead --only ...``: re-measured rows replace theirs in place, a new case
    goes after its group, every other row is kept and marked ``(previous run)``."""
    from benchmarks import overhead

    rows = [{"group": g, "case": c, "reference": "r", "reference_ms": 1.0, "ms": 2.0, "ratio": 2.0,
             "ratio_q25": math.nan, "ratio_q75": math.nan, "target": "t", "rounds": 3}
            for g, c in (("a", "x"), ("a", "y"), ("theory.critical_scale", "width 2: lyapunov gaussian"), ("b", "z"))]
    (tmp_path / "overhead.csv").write_text(
        "group,case,reference,reference_ms,ms,ratio,ratio_q25,ratio_q75,target,rounds\n"
        + "".join(f"{r['group']},{r['case']},r,1.0,2.0,2.0,nan,nan,t,3\n" for r in rows))
    previous = overhead._previous_rows(tmp_path)
    assert [r["case"] for r in previous][0] == "x (previous run)" and previous[0]["rounds"] == 3
    new = [dict(rows[1], ms=5.0), dict(rows[0], case="w", ms=7.0)]
    merged = overhead._merge(previous, new)
    assert [(r["group"], r["case"]) for r in merged] == [
        ("a", "x (previous run)"), ("a", "y"), ("a", "w"),
        ("theory.critical_scale", "width 2: lyapunov gaussian (previous run)"), ("b", "z (previous run)")]
    assert merged[1]["ms"] == 5.0
    (theory,) = overhead._theory_from_rows(merged)
    assert (theory["width"], theory["call"], theory["uncached_ms"], theory["cached_ms"]) == (2, "lyapunov gaussian",
                                                                                           2.0, 1.0)
    with pytest.raises(ValueError, match="do not exist"):
        overhead.run(overhead.SIZES.quick, only=["nonsense"])


def test_overhead_a_remeasured_trainer_group_replaces_its_previous_rows(tmp_path):
    """The Lightning and memory groups' cases were renamed (loggers, models): re-measuring the group drops
    its old rows instead of keeping them as ``(previous run)``; the memory rows read back the fit."""
    from benchmarks import overhead

    with open(tmp_path / "overhead.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "case", "reference", "reference_ms", "ms", "ratio", "ratio_q25", "ratio_q75",
                         "target", "rounds"])
        for group, case in ((overhead.MEMORY, "old case"), ("init time", "kept case")):
            writer.writerow([group, case, "r", 1.0, 2.0, 2.0, "nan", "nan", "t", 3])
    report = overhead.run(overhead.SIZES.quick, only=["memory"], results_dir=tmp_path)
    cases = [(r["group"], r["case"]) for r in report.rows]
    assert ("init time", "kept case (previous run)") in cases
    assert not any("old case" in case for _, case in cases)
    resident, events = [r for r in report.rows if r["group"] == overhead.MEMORY]
    assert resident["ms"] > 10 and 0.5 < resident["ratio"] < 2  # MB of a Python process with torch
    steps = overhead.SIZES.quick.memory_steps
    assert events["reference_ms"] == steps and events["ratio"] * 1e3 * steps == pytest.approx(events["ms"] * 2**20)
    assert any(line.startswith("Memory: ") for line in report.summary)


PIVOTS = {  # a generated README table: its file's rows -> the table's lines (a method per row, a cell per column)
    "lookahead": ("lookahead_table.csv", "task,shape,scheme,trained [95% Wilson],extra steps\n"
                  'regression,w2,he,"1/2 [9%, 91%]",0\nregression,w2,look-ahead,"2/2 [34%, 100%]",6\n'
                  'score,w2,look-ahead,"0/2 [0%, 66%]",6\n',
                  ["| method | extra steps | regression w2 | score w2 |", "|---|---:|---|---|",
                   "| he | 0 | 1/2 [9%, 91%] | - |", "| **look-ahead** | 6 | **2/2 [34%, 100%]** | **0/2 [0%, 66%]** |"]),
    "calibration": ("calibration_table.csv", "task,method,protocol,lr,trained,test median\n"
                    'reg,plain,lr 1e-3,0.001,"1/2 [9%, 91%]",0.5\nreg,plain,other,0.003,"2/2 [34%, 100%]",0.1\n'
                    'reg,x (the callback\'s default),lr 1e-3,0.001,"2/2 [34%, 100%]",0.01234\n'
                    'score,plain,lr 1e-3,0.001,"0/2 [0%, 66%]",1.0\n',
                    ["| method | reg | score |", "|---|---|---|", "| plain | 1/2 [9%, 91%], 0.5 | 0/2 [0%, 66%], 1 |",
                     "| **x (the callback's default)** | **2/2 [34%, 100%], 0.0123** | **-** |"]),
}


@pytest.mark.parametrize("name", PIVOTS)
def test_a_generated_readme_table_puts_each_methods_numbers_under_its_cell(name, tmp_path):
    filename, text, expected = PIVOTS[name]
    make = getattr(catalogue, f"{name}_table")
    (tmp_path / filename).write_text(text)
    assert make(tmp_path).splitlines() == expected
    assert make(tmp_path / "none") == f"({name} not run yet)"


def test_the_targets_table_has_a_row_per_setting_and_a_column_per_target_largest_first(tmp_path):
    (tmp_path / "lookahead_targets.csv").write_text(
        "task,shape,target,seed,metric,trained\n" + "".join(f"r,w2,{t},{s},0.5,{s < k}\n" for t, k in
                                                             ((0.1, 2), (1.0, 1)) for s in range(2)))
    (tmp_path / "lookahead_targets_classification.csv").write_text(
        "model,optimizer,target,seed,train acc epoch 1,train acc epoch 5,train acc epoch 20,test acc\n"
        "MLP,SGD 0.01,1.0,0,0.1,0.8,0.9,0.7\nMLP,SGD 0.01,1.0,1,0.1,0.6,1.0,0.7\nMLP,SGD 0.01,0.001,0,0.1,0.3,0.9,0.2\n")
    assert catalogue.targets_table(tmp_path).splitlines() == [
        "| setting | target 1 | target 0.1 | target 0.001 |", "|---|---|---|---|",
        "| deep narrow regression and score, 4 cells, Adam 1e-3: seeds trained | 1/2 | 2/2 | - |",
        "| MLP, SGD 0.01: median train accuracy after 5 epochs (2 seeds) | 70.0% | - | 30.0% |",
        "| MLP, SGD 0.01: median train accuracy after 20 epochs (2 seeds) | 95.0% | - | 90.0% |"]
    assert catalogue.targets_table(tmp_path / "none") == "(scripts/lookahead_targets.py not run yet)"
