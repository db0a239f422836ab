"""Rank the candidates where their failures show, train the chosen one where more of them train (issue 25).

At ``calibrate_target=0.001`` more calibrated draws train than at 1, but the look-ahead's loss after
8-64 steps no longer tells which ones (the ``lookahead`` report: within-seed AUC near 0.5). The
hidden layers of the ``"layers"`` calibration do not depend on the target (only the last layer is
scaled to it), so the same draw can be ranked at target 1, where the failures show early, and
trained at the small target. This script does that on seeds of its choice: ``K`` candidates per
seed (``candidate_seeds``, candidate 0 is the default's draw) trained ``n`` Adam steps each at the
ranking target; the one with the lowest training loss after ``n`` steps is drawn again at the
training target and trained from its initialization for ``steps - K n`` steps (every look-ahead step
counts, the ranked candidates' progress is thrown away). Against it: candidate 0 at the training
target, trained ``steps`` steps. Prints trained counts and medians per cell; ``--out``: appends the
per-seed rows of the selection to ``scripts/lookahead_schedules.py``'s rules file, whose rules the
lookahead report compares with its look-ahead on the same seeds (its steps beyond the kept candidate's
own: all ``K n``, since the kept draw restarts):

    OMP_NUM_THREADS=1 python -m scripts.lookahead_rank_target --cells regression_w2d40,regression_w3d60 \\
        --first-seed 27000 --n 24
    OMP_NUM_THREADS=1 python -m scripts.lookahead_rank_target --first-seed 25000 --n 24 \\
        --out benchmarks/results/lookahead_rules.csv
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks._lib.engine import Stack
from benchmarks._lib.package import candidate_seeds
from benchmarks._lib.schemes import Calibrated
from benchmarks.lookahead import FULL_CELLS, SIZES, TASKS, TUNING_FIRST_SEED, _draw, _train
from scripts.lookahead_schedules import append_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = [f"{task}_{shape.name}" for task, shape in FULL_CELLS]
    parser.add_argument("--cells", default=",".join(names), help=f"comma-separated, of {', '.join(names)}")
    parser.add_argument("--first-seed", type=int, default=TUNING_FIRST_SEED)
    parser.add_argument("--seeds", type=int, default=SIZES.full.seeds)
    parser.add_argument("--candidates", type=int, default=SIZES.full.candidates)
    parser.add_argument("--n", default="8,16,24", help="look-ahead steps per candidate (comma-separated)")
    parser.add_argument("--rank-target", type=float, default=1.0)
    parser.add_argument("--train-target", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=SIZES.full.steps)
    parser.add_argument("--out", help="append the selections' per-seed rows to this rules CSV")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    k, ns = args.candidates, [int(v) for v in args.n.split(",")]
    for name in args.cells.split(","):
        start = time.process_time()
        task_name, shape = FULL_CELLS[names.index(name)]
        task = TASKS[task_name](seeds)
        drawn = [(i, d) for i, s in enumerate(seeds) for d in candidate_seeds(s, k)]
        ranked = Stack([_draw(task, shape, Calibrated(target=args.rank_target), d, i) for i, d in drawn])
        losses = _train(task, ranked, torch.tensor([i for i, _ in drawn]), max(ns)).losses

        def trained(picks: list[tuple[int, int]], steps: int) -> np.ndarray:
            nets = [_draw(task, shape, Calibrated(target=args.train_target), d, i) for i, d in picks]
            return np.nan_to_num(np.asarray(_train(task, Stack(nets), torch.arange(len(seeds)), steps,
                                                   test=True).final["test"]), nan=np.inf)

        def counted(metric: np.ndarray) -> str:
            return f"trained {(metric < task.threshold).sum()}/{len(seeds)}, median {np.median(metric):.3g}"

        for n in ns:
            picks = [drawn[i * k + int(np.argmin(losses[n - 1, i * k:(i + 1) * k]))] for i in range(len(seeds))]
            metric = trained(picks, args.steps - k * n)
            print(f"{name}: ranked at target {args.rank_target:g}, K={k} x {n} steps ({k * n} extra), trained at "
                  f"{args.train_target:g}: {counted(metric)}", flush=True)
            if args.out:
                rule = f"loss at target {args.rank_target:g}, kept draw restarted at {args.train_target:g}"
                append_rows(args.out, [["trained", f"{seeds[0]}..{seeds[-1]}", task_name, shape.name, k, f"{n}:1", rule,
                                        k * n, seed, float(v), bool(v < task.threshold)]
                                       for seed, v in zip(seeds, metric)])
        print(f"{name}: candidate 0 at {args.train_target:g}, {args.steps} steps: "
              f"{counted(trained([drawn[i * k] for i in range(len(seeds))], args.steps))} "
              f"({time.process_time() - start:.0f} s CPU)", flush=True)


if __name__ == "__main__":
    main()
