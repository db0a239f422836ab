"""Which output scale should the look-ahead's candidates start at? The calibrated draw at several
``calibrate_target`` values, one draw per seed trained 2000 Adam steps, on tuning seeds that are not the
lookahead benchmark's, in its four cells (both tasks, both shapes).

Writes ``benchmarks/results/lookahead_targets.csv`` (one row per cell, target and seed), from which
``benchmarks/lookahead.py`` picks the target its small-output methods use (:func:`benchmarks.lookahead.
small_target`: the most seeds trained over the four cells).

``--sgd LR,...``: instead, plain SGD (no momentum) at those learning rates on the w2d40 regression, into
``lookahead_targets_sgd.csv`` (a small last layer also shrinks the earlier layers' gradients, which Adam
normalizes away and SGD does not: does a small output still help?).

    OMP_NUM_THREADS=1 python -m scripts.lookahead_targets
    OMP_NUM_THREADS=1 python -m scripts.lookahead_targets --sgd 0.001,0.003
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
import torch

from benchmarks._lib.engine import SGD, Stack
from benchmarks._lib.schemes import Calibrated
from benchmarks.lookahead import (FULL_CELLS, SIZES, TARGETS, TARGETS_CSV, TARGETS_SGD_CSV, TASKS, TUNING_FIRST_SEED,
                                  _draw, _train)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=SIZES.full.seeds)
    parser.add_argument("--sgd", help="plain SGD at these learning rates (comma-separated), w2d40 regression only")
    parser.add_argument("--steps", type=int, default=SIZES.full.steps)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(TUNING_FIRST_SEED, TUNING_FIRST_SEED + args.seeds))
    lrs = [float(v) for v in args.sgd.split(",")] if args.sgd else [None]  # None: the benchmark's Adam
    cells = FULL_CELLS[:1] if args.sgd else FULL_CELLS
    rows = []
    for task_name, shape in cells:
        start = time.process_time()
        task = TASKS[task_name](seeds)
        configs = [(lr, t) for lr in lrs for t in TARGETS]
        nets = [_draw(task, shape, Calibrated(target=t), s, i) for _, t in configs for i, s in enumerate(seeds)]
        seed_of = torch.arange(len(seeds)).repeat(len(configs))
        sgd = SGD([lr for lr, _ in configs for _ in seeds]) if args.sgd else None
        result = _train(task, Stack(nets), seed_of, args.steps, test=True, optimizer=sgd)
        values = np.nan_to_num(np.asarray(result.final["test"]), nan=np.inf).reshape(len(configs), len(seeds))
        for (lr, target), row in zip(configs, values):
            rows += [{"task": task_name, "shape": shape.name, **({"sgd lr": lr} if args.sgd else {}), "target": target,
                      "seed": s, "metric": float(v), "trained": bool(v < task.threshold)} for s, v in zip(seeds, row)]
            print(f"{task_name} {shape.name}{f' SGD {lr:g}' if lr else ''} target {target:g}: trained "
                  f"{(row < task.threshold).sum()}/{len(seeds)}", flush=True)
        print(f"{task_name} {shape.name}: {time.process_time() - start:.0f} s CPU", flush=True)
    with open(args.out or (TARGETS_SGD_CSV if args.sgd else TARGETS_CSV), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
