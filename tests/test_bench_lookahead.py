"""The ``lookahead`` benchmark's selection is the library's look-ahead: the same candidates, cuts,
ranking losses, kept candidate and kept weights as ``look_ahead_`` in a plain PyTorch loop."""

import pytest
import torch

from benchmarks._lib.package import DeepMLP, LyapunovInit, look_ahead_
from benchmarks._lib.schemes import Calibrated
from benchmarks.lookahead import LR, Regression, Shape, select


@pytest.mark.parametrize("generator_seed", [0, 3])
def test_the_benchmark_keeps_the_candidate_and_weights_that_look_ahead_keeps(generator_seed):
    shape, candidates, budget = Shape("w2d6", 2, 6, 0.1), 4, 40
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(generator_seed)))  # look_ahead_'s
    task = Regression([seed])
    stack, _, _, used, own, kept, losses = select(task, shape, [Calibrated()], [seed], candidates, budget)

    net = DeepMLP(1, 1, width=shape.width, depth=shape.depth, negative_slope=shape.slope)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    x, y, var = task.x[0], task.y[0], task.var[0]

    def step(_):
        optimizer.zero_grad()
        loss = (net(x) - y).pow(2).mean() / var
        loss.backward()
        optimizer.step()
        return loss

    report = look_ahead_(net, optimizer, step, [None], LyapunovInit().spec, candidates=candidates, steps=budget,
                         example_input=x, generator=torch.Generator().manual_seed(generator_seed))
    assert (report.kept, report.steps, report.kept_steps) == (kept[0], used, own)
    assert len(set(report.history[0].values())) == candidates  # the candidates differ: the choice means something
    torch.testing.assert_close(torch.tensor([cut[report.kept] for cut in report.history]), torch.tensor(losses[0]),
                               rtol=1e-4, atol=0)
    for (name, mine), theirs in zip(stack.module(0).named_parameters(), net.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6, msg=name)


def test_a_report_of_cells_read_back_states_the_cpu_time_the_cells_took(tmp_path, monkeypatch):
    import json

    import benchmarks.lookahead as lookahead
    from benchmarks.__main__ import run_one

    monkeypatch.setenv("LOOKAHEAD_CELLS", str(tmp_path / "cells"))
    size = lookahead.SIZES.quick
    assert all(cpu == 0 for _, cpu in lookahead._cells(size))  # run here: the runner measures them
    files = sorted((tmp_path / "cells").glob("*.json"))
    assert len(files) == len(size.cells) * len(lookahead.PARTS)  # a cell's methods; its GradInit runs
    for path in files:  # as if each part had taken 1000 s in its own process
        saved = json.loads(path.read_text())
        assert saved["cpu_seconds"] > 0
        path.write_text(json.dumps({**saved, "cpu_seconds": 1000.0}))
    report = run_one(lookahead, quick=True, out_dir=tmp_path / "out")
    earlier = 1000 * len(files)
    assert earlier <= report.cpu_seconds < earlier + 60 and report.earlier_cpu_seconds == earlier
    header = (tmp_path / "out" / "lookahead.md").read_text().splitlines()[2]
    assert f"CPU time {report.cpu_seconds:.0f} s ({earlier} s of it in earlier processes, read back)" in header
    saved = json.loads(files[0].read_text())
    del saved["cpu_seconds"]  # a cell cached before its CPU time was stored with it: read back, time unknown
    files[0].write_text(json.dumps(saved))
    report = run_one(lookahead, quick=True, out_dir=tmp_path / "out")
    text = (tmp_path / "out" / "lookahead.md").read_text()
    assert "(quick run: CPU time not recorded, one torch thread" in text.splitlines()[2]
    assert "1 of them were cached before their CPU time was stored with them" in text


def test_the_rules_tried_are_counted_and_compared_with_the_library_rule_on_the_same_seeds(tmp_path):
    import csv

    from benchmarks.lookahead import LOOK_AHEAD, rule_findings

    def write(name, header, rows):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])

    header = ["source", "seeds", "task", "shape", "K", "stages", "rule", "extra", "seed", "metric", "trained"]
    library = [["replay", "1..6", "regression", "w2d40", 8, "16:4,32:2,64:1", "window", 192, s, 0.5, False]
               for s in range(1, 7)]
    other = [["replay", "1..6", "regression", "w2d40", 16, "6:8,12:4,24:2,48:1", "last", 192, s, 0.01, True]
             for s in range(1, 7)]
    real = [["trained", "7..8", "score", "w3d60", 16, "6:8,12:4,24:2,48:1", "window", 192, s, 0.7, s == 7]
            for s in (7, 8)]
    write("lookahead_rules.csv", header, library + other + real)
    runs = [{"task": "score", "shape": "w3d60", "scheme": LOOK_AHEAD, "seed": s, "trained": True} for s in (7, 8)]
    out, summary = rule_findings(runs, tmp_path)
    assert len(out) == 4 and summary == out[3:]
    assert out[3].endswith("K=16, cuts 6:8,12:4,24:2,48:1, window: score w3d60 1; the goal (2 trained in every cell) "
                           "met by none of them")  # the only rule on the run's seeds
    assert out[0].startswith("regression, w2d40, seeds 1..6, replayed: K=8, cuts 16:4,32:2,64:1 ranked by window "
                             "(192 extra steps) trained 0/6")
    assert "trained 6/6" in out[1] and "is trained more often than the library's rule replayed" in out[1]
    assert "sign test p = 0.031" in out[1]  # 6 seeds for one, 0 for the other: 2 / 2^6
    assert "trained 1/2" in out[2] and "this run's look-ahead" in out[2] and "not distinguishable" in out[2]

    search = [["w2d40", 8, "h", "16:4", rule, 192, "1..40", tune, 0.01, "41..80", fresh, 0.02]
              for rule, tune, fresh in (("a", 30, 31), ("b", 36, 33), ("c", 33, 35), ("d", 31, 30))]
    search.append(["w2d40", 8, "library halving, budget 512 steps", "32:4,64:2,128:1", "window", 384, "1..40", 35,
                   0.01, "41..80", 39, 0.01])  # a larger budget: its own line, not among the rules searched
    write("lookahead_rules_search.csv", ["shape", "K", "schedule", "stages", "rule", "extra", "tune seeds",
                                         "trained (tune)", "median (tune)", "fresh seeds", "trained (fresh)",
                                         "median (fresh)"], search)
    out, summary = rule_findings(runs, tmp_path)
    assert summary == [out[0], out[-1]] and "4 (K, schedule, ranking) within 192 extra steps (K up to 8" in out[0]
    assert "in-sample trained counts 30..36/40, on the fresh seeds 30..35/40" in out[0]
    assert "the in-sample best (K=8, h 16:4, b: 36/40) trained 33/40 on the fresh seeds" in out[0]
    assert "Spearman correlation of a rule's two counts 0.60" in out[0]
    assert out[1].endswith("with larger budgets (regression, w2d40, replayed), trained on the tuning / fresh seeds: "
                           "K=8, 512 steps (384 extra): 35 / 39")  # ranks 1432 vs 2341: 1 - 6 * 4 / 60


def test_the_small_output_target_is_the_one_that_trained_the_most_tuning_seeds(tmp_path):
    from benchmarks.lookahead import TARGETS, small_target

    def write(trained: dict[float, int]) -> None:
        lines = ["task,shape,target,seed,metric,trained"]
        for t in TARGETS:
            lines += [f"regression,w2,{t},{s},0.5,{s < trained.get(t, 0)}" for s in range(4)]
        (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")

    write({1.0: 1, 0.1: 3, 0.01: 2})
    assert small_target(tmp_path / "t.csv") == (0.1, {1.0: 1, 0.1: 3, 0.01: 2, 0.001: 0}, 4)
    write({1.0: 1, 0.01: 3, 0.001: 3})  # a tie goes to the larger output
    assert small_target(tmp_path / "t.csv")[0] == 0.01


def test_the_targets_script_writes_every_cell_and_target_and_the_benchmark_reads_its_choice(tmp_path):
    import csv

    from benchmarks.lookahead import FULL_CELLS, TARGETS, small_target
    from scripts.lookahead_targets import main

    out = tmp_path / "targets.csv"
    main(["--seeds", "1", "--steps", "2", "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert {(r["task"], r["shape"], float(r["target"])) for r in rows} == {
        (task, shape.name, t) for task, shape in FULL_CELLS for t in TARGETS}
    assert small_target(out)[0] in TARGETS and small_target(out)[2] == len(FULL_CELLS)
    main(["--seeds", "1", "--steps", "2", "--sgd", "0.001", "--out", str(tmp_path / "sgd.csv")])
    assert {r["sgd lr"] for r in csv.DictReader((tmp_path / "sgd.csv").open())} == {"0.001"}


def test_the_classification_finding_gives_each_targets_median_per_compared_epoch_and_pairs_the_smallest_with_1():
    from benchmarks.lookahead import CLASSIFICATION_COMPARED, CLASSIFICATION_TARGETS, classification_finding

    accuracy = {1.0: 0.8, 0.01: 0.5, 0.001: 0.4}
    early, late = CLASSIFICATION_COMPARED
    rows = [{"model": "MLP", "optimizer": optimizer, "target": str(t), "seed": str(s),
             f"train acc epoch {early}": str(accuracy[t] + 0.001 * s if optimizer == "SGD" else 0.9),
             f"train acc epoch {late}": str(0.95 + 0.001 * s if optimizer == "SGD" else accuracy[t])}
            for optimizer in ("SGD", "Adam") for t in CLASSIFICATION_TARGETS for s in range(20)]
    line = classification_finding(rows)
    assert "20 seeds" in line
    sgd, adam = line.split("MLP, SGD: ")[1].split("; MLP, Adam: ")
    sgd_early, sgd_late = sgd.split(f"; after {late} epochs ")
    # medians of 0.8 + s/1000; the sentence names the winner first
    assert sgd_early.startswith(f"after {early} epochs 81.0% / 51.0% / 41.0%; target 1 beats target 0.001")
    assert "20 seeds better, 0 worse" in sgd_early
    assert sgd_late.startswith("96.0% / 96.0% / 96.0%; target 0.001 and target 1 are not distinguishable")
    adam_early, adam_late = adam.split(f"; after {late} epochs ")
    assert adam_early.startswith(f"after {early} epochs 90.0% / 90.0% / 90.0%; target 0.001 and target 1 are not")
    assert adam_late.startswith("80.0% / 50.0% / 40.0%; target 1 beats target 0.001")


def test_the_rank_target_script_ranks_every_candidate_at_one_target_and_trains_one_at_the_other(capsys, monkeypatch,
                                                                                                 tmp_path):
    import csv

    import scripts.lookahead_rank_target as script

    drawn = []
    real_draw = script._draw
    monkeypatch.setattr(script, "_draw", lambda task, shape, scheme, seed, index: drawn.append((scheme.target, seed))
                        or real_draw(task, shape, scheme, seed, index))
    out = tmp_path / "rules.csv"
    script.main(["--cells", "regression_w2d40", "--seeds", "1", "--candidates", "2", "--n", "1", "--steps", "4",
                 "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("regression_w2d40: ranked at target 1, K=2 x 1 steps (2 extra), trained at 0.001: ")
    assert lines[1].startswith("regression_w2d40: candidate 0 at 0.001, 4 steps: trained ")
    seeds = script.candidate_seeds(script.TUNING_FIRST_SEED, 2)
    assert drawn[:2] == [(1.0, s) for s in seeds]  # both ranked at target 1
    assert drawn[2][0] == 0.001 and drawn[2][1] in seeds and drawn[3] == (0.001, seeds[0])
    (row,) = csv.DictReader(out.open())  # the rules file's columns: the report compares it with its look-ahead
    assert (row["source"], row["K"], row["stages"], row["extra"], row["seed"]) == (
        "trained", "2", "1:1", "2", str(script.TUNING_FIRST_SEED))
    assert row["rule"] == "loss at target 1, kept draw restarted at 0.001"
