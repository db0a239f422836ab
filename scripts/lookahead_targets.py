"""Which output scale should the look-ahead's candidates start at? The calibrated draw at several
``calibrate_target`` values, one draw per seed trained 2000 Adam steps, on tuning seeds that are not the
lookahead benchmark's, in its four cells (both tasks, both shapes).

Writes ``benchmarks/results/lookahead_targets.csv`` (one row per cell, target and seed), from which
``benchmarks/lookahead.py`` picks the target its small-output methods use (:func:`benchmarks.lookahead.
small_target`: the most seeds trained over the four cells).

    OMP_NUM_THREADS=1 python -m scripts.lookahead_targets
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
import torch

from benchmarks._lib.engine import Stack
from benchmarks._lib.schemes import Calibrated
from benchmarks.lookahead import FULL_CELLS, SIZES, TARGETS, TARGETS_CSV, TASKS, TUNING_FIRST_SEED, _draw, _train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=SIZES.full.seeds)
    parser.add_argument("--out", default=str(TARGETS_CSV))
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(TUNING_FIRST_SEED, TUNING_FIRST_SEED + args.seeds))
    rows = []
    for task_name, shape in FULL_CELLS:
        start = time.process_time()
        task = TASKS[task_name](seeds)
        nets = [_draw(task, shape, Calibrated(target=t), s, i) for t in TARGETS for i, s in enumerate(seeds)]
        result = _train(task, Stack(nets), torch.arange(len(seeds)).repeat(len(TARGETS)), SIZES.full.steps, test=True)
        values = np.asarray(result.final["test"]).reshape(len(TARGETS), len(seeds))
        for target, row in zip(TARGETS, values):
            rows += [{"task": task_name, "shape": shape.name, "target": target, "seed": s, "metric": float(v),
                      "trained": bool(v < task.threshold)} for s, v in zip(seeds, row)]
            print(f"{task_name} {shape.name} target {target:g}: trained {(row < task.threshold).sum()}/{len(seeds)}",
                  flush=True)
        print(f"{task_name} {shape.name}: {time.process_time() - start:.0f} s CPU", flush=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
