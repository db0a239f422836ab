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
    assert len(files) == len(size.cells)
    for path in files:  # as if each cell had taken 1000 s in its own process
        saved = json.loads(path.read_text())
        assert saved["cpu_seconds"] > 0
        path.write_text(json.dumps({**saved, "cpu_seconds": 1000.0}))
    report = run_one(lookahead, quick=True, out_dir=tmp_path / "out")
    assert 2000 <= report.cpu_seconds < 2060 and report.earlier_cpu_seconds == 2000
    header = (tmp_path / "out" / "lookahead.md").read_text().splitlines()[2]
    assert f"CPU time {report.cpu_seconds:.0f} s (2000 s of it in earlier processes, read back)" in header
    saved = json.loads(files[0].read_text())
    del saved["cpu_seconds"]  # a cell cached before its CPU time was stored with it: read back, time unknown
    files[0].write_text(json.dumps(saved))
    report = run_one(lookahead, quick=True, out_dir=tmp_path / "out")
    text = (tmp_path / "out" / "lookahead.md").read_text()
    assert "(quick run: CPU time not recorded, one torch thread" in text.splitlines()[2]
    assert "1 of them were cached before their CPU time was stored with them" in text
