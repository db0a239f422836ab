"""Which output scale should the look-ahead's candidates start at? The calibrated draw at several
``calibrate_target`` values, one draw per seed trained 2000 Adam steps, on tuning seeds that are not the
lookahead benchmark's, in its four cells (both tasks, both shapes).

Writes ``benchmarks/results/lookahead_targets.csv`` (one row per cell, target and seed), from which
``benchmarks/lookahead.py`` picks the target its small-output methods use (:func:`benchmarks.lookahead.
small_target`: the most seeds trained over the four cells).

``--sgd LR,...``: instead, plain SGD (no momentum) at those learning rates on the w2d40 regression, into
``lookahead_targets_sgd.csv`` (a small last layer also shrinks the earlier layers' gradients, which Adam
normalizes away and SGD does not: does a small output still help?).

``--classification``: instead, the targets 1, 0.01 and 0.001 on two standard classifiers, the
``mnist_fractional`` benchmark's MNIST MLP (width 64, depth 20, ReLU) and its CIFAR-10 CNN, each with
that benchmark's SGD (0.01, batch 64) and with Adam 1e-3, on 3000 training images for 20 epochs, into
``lookahead_targets_classification.csv`` (one row per model, optimizer, target and seed): what would a
small default cost a user whose net is not deep and narrow? Needs MNIST and CIFAR-10 (``benchmarks/README``).

    OMP_NUM_THREADS=1 python -m scripts.lookahead_targets
    OMP_NUM_THREADS=1 python -m scripts.lookahead_targets --sgd 0.001,0.003
    OMP_NUM_THREADS=1 python -m scripts.lookahead_targets --classification
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
import torch

from benchmarks._lib.engine import SGD, Adam, Stack
from benchmarks._lib.schemes import Calibrated
from benchmarks.lookahead import (CLASSIFICATION_EPOCHS, CLASSIFICATION_SEEDS, CLASSIFICATION_TARGETS, FULL_CELLS,
                                  SIZES, TARGETS, TARGETS_CLASSIFICATION_CSV, TARGETS_CSV, TARGETS_SGD_CSV, TASKS,
                                  TUNING_FIRST_SEED, _draw, _train)


def classification(seeds: int) -> list[dict]:
    """The ``--classification`` rows: train accuracy after each of ``CLASSIFICATION_EPOCHS`` and test
    accuracy after the last, per run."""
    from benchmarks._lib.data import cifar10, mnist
    from benchmarks._lib.package import DeepMLP
    from benchmarks._lib.protocol import classify
    from benchmarks.mnist_fractional import BATCH, DEPTH, LR, WIDTH, paper_cnn

    n_train, n_test = 3000, 2000
    schemes = [Calibrated(f"target {t:g}", target=t) for t in CLASSIFICATION_TARGETS]
    per_epoch = n_train // BATCH
    epochs = CLASSIFICATION_EPOCHS
    models = [("MNIST, MLP 64x20", mnist(n_train=n_train, n_test=n_test, seed=0),
               lambda: DeepMLP(784, 10, WIDTH, DEPTH, activation="relu")),
              ("CIFAR-10, CNN", cifar10(n_train=n_train, n_test=n_test, seed=0), lambda: paper_cnn(3, 32))]
    rows = []
    for model, data, build in models:
        for optimizer, make, lr in (("SGD", SGD, LR), ("Adam", Adam, 1e-3)):
            start = time.process_time()
            grid = classify(build, schemes, range(seeds), data, evals=("train", "test"), optimizer=make, lrs=(lr,),
                            steps=epochs[-1] * per_epoch, batch_size=BATCH, record=[e * per_epoch for e in epochs],
                            order_by_seed=False)
            for target, label in zip(CLASSIFICATION_TARGETS, grid.labels):
                train, test = grid.curve("train_acc", label)[-len(epochs):], grid.curve("test_acc", label)[-1]
                rows += [{"model": model, "optimizer": f"{optimizer} {lr:g}", "target": target, "seed": s,
                          **{f"train acc epoch {e}": float(train[i][k]) for i, e in enumerate(epochs)},
                          "test acc": float(test[k])} for k, s in enumerate(range(seeds))]
                print(f"{model} {optimizer} target {target:g}: median train accuracy after {epochs[-1]} epochs "
                      f"{np.median(train[-1]):.3f}", flush=True)
            print(f"{model} {optimizer}: {time.process_time() - start:.0f} s CPU", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int,
                        help=f"default {SIZES.full.seeds} ({CLASSIFICATION_SEEDS} with --classification)")
    parser.add_argument("--sgd", help="plain SGD at these learning rates (comma-separated), w2d40 regression only")
    parser.add_argument("--classification", action="store_true",
                        help="the targets on the MNIST MLP and CIFAR-10 CNN of mnist_fractional, SGD and Adam")
    parser.add_argument("--steps", type=int, default=SIZES.full.steps)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.classification:
        _write(args.out or TARGETS_CLASSIFICATION_CSV, classification(args.seeds or CLASSIFICATION_SEEDS))
        return
    seeds = list(range(TUNING_FIRST_SEED, TUNING_FIRST_SEED + (args.seeds or SIZES.full.seeds)))
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
    _write(args.out or (TARGETS_SGD_CSV if args.sgd else TARGETS_CSV), rows)


def _write(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
