"""Why the look-ahead misses 39/40, and which schedule would not: every candidate trained to the end.

For the seeds' regression protocol (``benchmarks/lookahead.py``'s ``Regression``, full batch, Adam
1e-3), ``K`` candidate draws per seed (the library's: ``candidate_seeds(s, K)``, the default's
calibrated draw) are all trained ``T`` steps, stacked. Full-batch training is deterministic, so a
candidate's trajectory does not depend on which others train: any successive-halving schedule can be
replayed offline on the recorded per-step training losses, and the kept candidate's result at equal
total steps is its test loss at step ``T - extra`` (its own steps: ``T`` minus the look-ahead's steps
beyond its own). Recorded: every step's training loss, the validation loss over the first steps (a
held-out ranking), the test loss at every other step near the end.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/lookahead_schedules.py --shape w2d40 --seeds 40 --save /tmp/w2d40.npz
    PYTHONPATH=. python scripts/lookahead_schedules.py --load /tmp/w2d40.npz       # the schedules' table only

The rules search behind ``benchmarks/results/lookahead_rules*.csv`` (the lookahead report's findings):
16 candidates recorded on the tuning seeds, every rule tuned there and replayed on the benchmark's seeds,
then the in-sample best trained for real on the benchmark's seeds, both tasks and shapes:

    ... --shape w2d40 --seeds 40 --candidates 16 --first-seed 27000 --save /tmp/tune.npz
    ... --shape w2d40 --seeds 40 --candidates 8 --save /tmp/fresh.npz
    ... --shape w2d40 --search /tmp/tune.npz,/tmp/fresh.npz --search-seeds 27000..27039,25000..25039 \
        --search-out benchmarks/results/lookahead_rules_search.csv --out benchmarks/results/lookahead_rules.csv
    ... --validate --task score --shape w3d60 --candidates 16 --stages 6:8,12:4,24:2,48:1 --rules window \
        --out benchmarks/results/lookahead_rules.csv
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks._lib.engine import Adam, FullBatch, Stack, fit
from benchmarks._lib.package import (DEFAULT_CANDIDATES, DEFAULT_STEPS, Halving, PolynomialRegression, candidate_seeds,
                                     halving_cost, halving_cuts)
from benchmarks._lib.schemes import Calibrated
from benchmarks._lib.stats import count
from benchmarks.lookahead import (FIRST_SEED, LR, REGRESSION_TRAINED, SCAN, SHAPES, Regression, _draw, halving_stages,
                                  library_rule, stages_text)

TAIL = 400  # test losses are recorded every other step over the last TAIL steps
EARLY = 600  # validation losses are recorded at every one of the first EARLY steps


def record(shape_name: str, seeds: int, candidates: int, steps: int, first_seed: int = FIRST_SEED,
           target: float | None = None) -> dict:
    torch.set_num_threads(1)
    shape = next(s for s in SHAPES if s.name == shape_name)
    seed_list = list(range(first_seed, first_seed + seeds))
    task = Regression(seed_list)
    val = [validation(s) for s in seed_list]
    nets = [_draw(task, shape, Calibrated(target=target), c, i) for i, s in enumerate(seed_list)
            for c in candidate_seeds(s, candidates)]
    seed_of = torch.arange(seeds).repeat_interleave(candidates)
    xv = torch.stack([v[0] for v in val])[seed_of]
    yv = torch.stack([v[1] for v in val])[seed_of]
    test = task.test(seed_of)["test"]
    evals = {"test": test, "val": ((xv, yv, task.var[seed_of]), Regression.objective)}
    points = sorted(set(range(0, EARLY)) | set(range(steps - TAIL, steps + 1, 2)))
    start = time.time()
    result = fit(Stack(nets), Regression.objective, task.data(seed_of), optimizer=Adam(LR), steps=steps,
                 order=FullBatch(), evals=evals, record=points, nonfinite="skip")
    print(f"{shape_name}: {seeds} seeds x {candidates} candidates, {steps} steps: {time.time() - start:.0f} s",
          flush=True)
    shaped = lambda a: a.reshape(a.shape[0], seeds, candidates).transpose(1, 2, 0)  # noqa: E731 -> (S, K, time)
    return {"losses": shaped(result.losses), "test": shaped(result.curves["test"]), "val": shaped(result.curves["val"]),
            "points": np.array(points), "steps": steps}


def validation(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation split of seed's polynomial (256 points the training never sees)."""
    return PolynomialRegression(in_features=1, degree=5, seed=seed).build()["val"]


def replay(data: dict, candidates: int, budget: int, window: float = 0.5, by: str = "train") -> dict:
    """The schedule ``halving_cuts(candidates, budget)`` replayed per seed on the recorded losses
    (ranked by the library's rule on the training losses, or on the validation loss at the cut with
    ``by="val"``); the kept candidate's test loss at ``T - extra``."""
    import lightning_lyapunov.halving as halving_module

    losses, test, val, points, steps = data["losses"], data["test"], data["val"], list(data["points"]), int(data["steps"])
    cuts = halving_cuts(candidates, budget)
    used = halving_cost(candidates) * cuts[0]
    extra = used - cuts[-1]
    at = min(range(len(points)), key=lambda i: abs(points[i] - (steps - extra)))
    halving_module.WINDOW = window
    kept, values = [], []
    for s in range(losses.shape[0]):
        h = Halving.start(candidates, cuts)
        done = 0
        for cut in cuts:
            for k in h.alive:
                h.losses[k] = list(losses[s, k, done:cut])
            ranked = h.rung_losses() if by == "train" else [float(val[s, k, points.index(cut)]) for k in h.alive]
            h.cut(ranked)
            done = cut
        kept.append(h.current)
        values.append(float(test[s, h.current, at]))
    halving_module.WINDOW = 0.5
    values = np.array(values)
    return {"label": f"K={candidates}, {budget} steps, cuts {'/'.join(map(str, cuts))}, extra {extra}"
                     + (f", window {window:g}" if window != 0.5 else "") + (", ranked on validation" if by != "train" else ""),
            "trained": values < REGRESSION_TRAINED, "values": values, "kept": kept, "extra": extra}


def staged(data: dict, stages: list[tuple[int, int]], rank: str = "window") -> tuple[np.ndarray, int]:
    """A general elimination schedule replayed per seed: ``stages = [(cut, keep), ...]`` (every
    candidate still in trains to ``cut``, the best ``keep`` go on), ranked on the rung's training
    losses by ``rank``: ``"window"`` (the library's: the mean over the last half of the rung),
    ``"last"`` (the loss at the rung's last step) or ``"min"``. Returns the kept candidates' test
    losses at ``T - extra`` and the extra steps."""
    losses, test, points, steps = data["losses"], data["test"], list(data["points"]), int(data["steps"])
    candidates = losses.shape[1]
    values = []
    for s in range(losses.shape[0]):
        alive, done, used = list(range(candidates)), 0, 0
        for cut, keep in stages:
            used += len(alive) * (cut - done)
            rung = [losses[s, k, done:cut] for k in alive]
            if rank == "window":
                score = [r[len(r) - max(1, -(-len(r) // 2)):].mean() for r in rung]
            else:
                score = [r[-1] if rank == "last" else r.min() for r in rung]
            score = [v if np.isfinite(v) else np.inf for v in score]
            alive, done = sorted(k for _, k in sorted(zip(score, alive))[:keep]), cut
        extra = used - done
        at = min(range(len(points)), key=lambda i: abs(points[i] - (steps - extra)))
        values.append(float(test[s, alive[0], at]))
    return np.array(values), extra


def search(data: dict, most_extra: int) -> None:
    """Every two-stage schedule ``K -> keep (2, 3 or 4) at a -> 1 at b`` (steps in 4s) and every
    one-cut best-of-K with at most ``most_extra`` extra steps, by how many seeds the kept candidate
    trains. In-sample: the best of hundreds of schedules on the same seeds is optimistic; confirm on
    fresh seeds before changing the default."""
    candidates = data["losses"].shape[1]
    found = []
    for a in range(4, most_extra, 4):
        options = [[(a, 1)]] + [[(a, keep), (b, 1)] for keep in (2, 3, 4) for b in range(a + 4, 4 * most_extra, 4)]
        for stages in options:
            extra = candidates * a + (stages[0][1] * (stages[1][0] - a) - stages[1][0] if len(stages) > 1 else -a)
            if extra > most_extra:
                continue
            for rank in ("window", "last", "min"):
                values, _ = staged(data, stages, rank)
                found.append((int((values < REGRESSION_TRAINED).sum()), float(np.median(values)), stages, rank, extra))
    found.sort(key=lambda f: (-f[0], f[1]))
    print(f"{len(found)} schedules with at most {most_extra} extra steps; trained seeds -> how many schedules: "
          + ", ".join(f"{n}: {sum(f[0] == n for f in found)}" for n in sorted({f[0] for f in found}, reverse=True)))
    for n, med, stages, rank, extra in found[:12]:
        print(f"  {n}/{data['losses'].shape[0]}, median {med:.4g}: {stages} ranked by {rank}, extra {extra}")


#: Ranking rules of :func:`rule_scores`: the rung's window mean (the library's before), its last or
#: lowest loss, and ``fitH``: a least-squares line through the log losses of the window (the last
#: half of the rung, as the library's mean), read ``H`` times the candidate's steps ahead (``fit0``: the line's value now; ``H > 0`` favours a
#: candidate whose loss is falling over one on a plateau at the same level).
RULES = ("window", "last", "min", "fit0", "fit0.5", "fit1", "fit2", "fit4")


def rule_scores(rung: np.ndarray, steps: int, rule: str) -> np.ndarray:
    """Every candidate's score by ``rule`` (:data:`RULES`) from its training losses in the rung just
    ended (``rung``: ``(..., n)``), ``steps`` its steps in all: ``(...)``, ``inf`` where a loss in the
    window is not finite."""
    n = rung.shape[-1]
    m = min(n, max(2, -(-n // 2)))
    seg = rung[..., n - m:]
    with np.errstate(all="ignore"):
        if rule == "window":
            v = seg.mean(-1)
        elif rule in ("last", "min"):
            v = seg[..., -1] if rule == "last" else seg.min(-1)
        else:
            y, t = np.log(seg), np.arange(m) - (m - 1) / 2
            slope = (y * t).sum(-1) / max((t * t).sum(), 1e-12)
            v = np.exp(y.mean(-1) + slope * ((m - 1) / 2 + float(rule[3:]) * steps))
    return np.where(np.isfinite(v) & np.isfinite(seg).all(-1), v, np.inf)


def play(data: dict, candidates: int, stages: Sequence[tuple[int, int]], rule: str) -> tuple[np.ndarray, int]:
    """A schedule ``stages = [(cut, keep), ...]`` among the first ``candidates`` recorded candidates,
    ranked by ``rule`` at each cut (ties to the lower index): the kept candidates' test losses at
    ``T - extra`` and the extra steps (vectorised :func:`staged`)."""
    losses, test, points, steps = data["losses"], data["test"], list(data["points"]), int(data["steps"])
    seeds = losses.shape[0]
    alive, used, done = np.tile(np.arange(candidates), (seeds, 1)), 0, 0
    for cut, keep in stages:
        used += alive.shape[1] * (cut - done)
        score = np.take_along_axis(rule_scores(losses[:, :candidates, done:cut], cut, rule), alive, 1)
        best = np.argsort(score, axis=1, kind="stable")[:, :keep]
        alive, done = np.sort(np.take_along_axis(alive, best, 1), axis=1), cut
    extra = used - done
    at = min(range(len(points)), key=lambda i: abs(points[i] - (steps - extra)))
    return test[np.arange(seeds), alive[:, 0], at], extra


def extra_steps(candidates: int, stages: Sequence[tuple[int, int]]) -> int:
    used, done, alive = 0, 0, candidates
    for cut, keep in stages:
        used, alive, done = used + alive * (cut - done), keep, cut
    return used - done


def schedules(candidates: int, most_extra: int) -> dict[str, list[tuple[int, int]]]:
    """The schedule families searched, each at the longest cuts within ``most_extra`` extra steps:
    successive halving with doubling cuts keeping a half or a quarter, one cut (best of K), and two
    stages ``K -> keep at a -> 1 at b`` (a in steps of 4)."""
    def doubling(first: int, share: float) -> list[tuple[int, int]]:
        stages, alive, cut = [], candidates, first
        while alive > 1:
            alive = max(1, math.ceil(alive * share)) if alive > 2 else 1
            stages.append((cut, alive))
            cut *= 2
        return stages

    out = {}
    for share in (0.5, 0.25):
        first = max(f for f in range(1, most_extra) if extra_steps(candidates, doubling(f, share)) <= most_extra
                    or f == 1)
        out[f"halving 1/{round(1 / share)}"] = doubling(first, share)
    out["one cut"] = [(most_extra // (candidates - 1), 1)]
    for keep in (k for k in (2, 3, 4) if k < candidates):
        for a in range(4, most_extra // candidates + 1, 4):
            b = (most_extra - (candidates - keep) * a) // (keep - 1)  # extra = K a + keep (b - a) - b
            if b > a:
                out[f"{keep} at {a}"] = [(a, keep), (b, 1)]
    return out


def rules(tune: dict, validate: list[dict], most_extra: int) -> list[dict]:
    """Every (K, schedule, rule) on the tuning trajectories, then the same on each validation set:
    rows with the trained counts and medians (in-sample on ``tune``; out of sample on ``validate``)."""
    rows = []
    for candidates in sorted({k for k in (4, 6, 8, 12, 16) if k <= tune["losses"].shape[1]}):
        for name, stages in schedules(candidates, most_extra).items():
            for rule in RULES:
                row = {"K": candidates, "schedule": name, "stages": stages, "rule": rule}
                for i, data in enumerate([tune, *validate]):
                    if candidates > data["losses"].shape[1]:
                        continue
                    values, row["extra"] = play(data, candidates, stages, rule)
                    row[f"trained {i}"], row[f"median {i}"] = int((values < REGRESSION_TRAINED).sum()), np.median(values)
                rows.append(row)
    return rows


def report(data: dict) -> None:
    test, steps, points = data["test"], int(data["steps"]), list(data["points"])
    seeds, candidates = test.shape[:2]
    final = test[:, :, points.index(steps)]
    good = final < REGRESSION_TRAINED
    print(f"candidates trained after {steps} steps each: {good.sum()} of {good.size}; seeds with at least one: "
          f"{count(good.any(1))}; candidate 0 (the default): {count(good[:, 0])}")
    print("per seed, trained candidates:", " ".join(str(int(g.sum())) for g in good))
    rows = [replay(data, k, b) for k, b in ((8, 256), (8, 200), (8, 208), (4, 200), (6, 200), (8, 512))
            if halving_cost(k) <= b and k <= candidates]
    rows += [replay(data, 8, 256, window=w) for w in (0.25, 1.0) if candidates >= 8]
    rows += [replay(data, 8, 256, by="val") for _ in [0] if candidates >= 8]
    for stages in ([(16, 4), (32, 2), (64, 1)], [(12, 2), (100, 1)], [(8, 2), (128, 1)]):
        for rank in ("window", "last"):
            values, extra = staged(data, stages, rank)
            print(f"stages {stages} ranked by {rank} (extra {extra}): trained {count(values < REGRESSION_TRAINED)}, "
                  f"median {np.median(values):.4g}")
    search(data, most_extra=int(0.1 * steps))
    for row in rows:
        fails = [s for s in range(seeds) if not row["trained"][s]]
        missed = [s for s in fails if good[s].any()]
        print(f"{row['label']}: trained {count(row['trained'])}, median {np.median(row['values']):.4g}; failing seeds "
              f"{fails} ({len(missed)} of them had a candidate that trains)")


ROWS = ["source", "seeds", "task", "shape", "K", "stages", "rule", "extra", "seed", "metric", "trained"]


def append_rows(out: str, rows: list[list]) -> None:
    """Append per-seed rows (:data:`ROWS`) to the CSV ``out`` (its header first if it is new)."""
    import csv
    import os

    new = not os.path.exists(out)
    with open(out, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(ROWS)
        writer.writerows(rows)


def search_csv(tune: dict, fresh: dict, tune_seeds: str, fresh_seeds: str, shape: str, out: str, rows_out: str,
               most_extra: int = 200) -> None:
    """The replayed search (:func:`rules`) tuned on ``tune`` and replayed on ``fresh``: one row per
    (K, schedule, rule) into ``out`` (in-sample and out-of-sample counts and medians), and the per-seed
    rows of the library's rule and of the in-sample best of each K on both sets into ``rows_out``."""
    import csv

    found = rules(tune, [fresh], most_extra)
    named = [{"K": DEFAULT_CANDIDATES, "stages": halving_stages(DEFAULT_CANDIDATES, DEFAULT_STEPS), "rule": "window"}]
    for k in sorted({r["K"] for r in found}):
        named.append(min((r for r in found if r["K"] == k), key=lambda r: (-r["trained 0"], r["median 0"])))
    for candidates in (8, 16):  # what the library's schedule and rule need: larger budgets (``SCAN`` rows)
        for budget in (halving_cost(candidates) * n for n in (8, 16, 32) if candidates * n < int(tune["steps"]) // 2):
            stages = halving_stages(candidates, budget)
            row = {"K": candidates, "schedule": f"{SCAN} {budget} steps", "stages": stages, "rule": "window"}
            for i, data in enumerate([tune, fresh]):
                if candidates <= data["losses"].shape[1]:
                    values, row["extra"] = play(data, candidates, stages, "window")
                    row[f"trained {i}"], row[f"median {i}"] = int((values < REGRESSION_TRAINED).sum()), np.median(values)
            found.append(row)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["shape", "K", "schedule", "stages", "rule", "extra", "tune seeds", "trained (tune)",
                         "median (tune)", "fresh seeds", "trained (fresh)", "median (fresh)"])
        writer.writerows([shape, r["K"], r["schedule"], stages_text(r["stages"]), r["rule"], r["extra"], tune_seeds,
                          r["trained 0"], r["median 0"], fresh_seeds, r.get("trained 1", ""), r.get("median 1", "")]
                         for r in found)
    for r in named:
        for data, seeds in ((tune, tune_seeds), (fresh, fresh_seeds)):
            if r["K"] > data["losses"].shape[1]:
                continue
            values, extra = play(data, r["K"], r["stages"], r["rule"])
            first = int(seeds.split("..")[0])
            append_rows(rows_out, [["replay", seeds, "regression", shape, r["K"], stages_text(r["stages"]), r["rule"],
                                    extra, first + i, float(v), bool(v < REGRESSION_TRAINED)]
                                   for i, v in enumerate(values)])


def validate(task_name: str, shape_name: str, seeds: int, first_seed: int, steps: int, candidates: int,
             schedules: dict[str, tuple], out: str | None = None) -> None:
    """Fresh seeds, the schedules trained for real (stacked, as the benchmark does, on either task: the
    score task's minibatches and noise cannot be replayed): every candidate in trains to each cut, the
    best ``keep`` by ``rule`` (:func:`rule_scores` on the rung's training losses) go on with their Adam
    state; the kept one continues to ``steps`` in all. ``schedules[label] = (stages, rule)``. ``out``:
    a CSV the per-seed rows are appended to (:func:`append_rows`)."""
    from benchmarks._lib.engine import take_state
    from benchmarks.lookahead import TASKS, _train

    torch.set_num_threads(1)
    shape = next(s for s in SHAPES if s.name == shape_name)
    seed_list = list(range(first_seed, first_seed + seeds))
    task = TASKS[task_name](seed_list)
    pool = [_draw(task, shape, Calibrated(), c, i) for i, s in enumerate(seed_list) for c in candidate_seeds(s, candidates)]
    for label, (stages, rule) in schedules.items():
        start = time.process_time()
        stack = Stack(pool)
        seed_of = torch.arange(seeds).repeat_interleave(candidates)
        state, done, used = None, 0, 0
        for cut, keep in stages:
            result = _train(task, stack, seed_of, cut - done, first_step=done, state=state)
            used += stack.runs // seeds * (cut - done)
            score = rule_scores(result.losses.T, cut, rule)
            kept = []
            for i in range(seeds):
                runs = (seed_of == i).nonzero().flatten().tolist()
                kept += [runs[j] for j in np.argsort(score[runs], kind="stable")[:keep]]
            index = torch.tensor(sorted(kept))
            state, stack, seed_of, done = take_state(result.state, stack, index), stack.take(index), seed_of[index], cut
        values = _train(task, stack, seed_of, steps - used, first_step=done, state=state, test=True).final["test"]
        trained = values < task.threshold
        if out is not None:
            append_rows(out, [["trained", f"{seed_list[0]}..{seed_list[-1]}", task_name, shape_name, candidates,
                               stages_text(stages), rule, used - done, seed, float(v), bool(t)]
                              for seed, v, t in zip(seed_list, values, trained)])
        print(f"{task_name} {shape_name}, seeds {seed_list[0]}..{seed_list[-1]}: {label} ({stages}, ranked by {rule}, "
              f"extra {used - done}): trained {count(trained)}, median {np.median(values):.4g}; failing seeds "
              f"{[seed_list[i] for i in np.flatnonzero(~trained)]} ({time.process_time() - start:.0f} s CPU)",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="w2d40")
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--save")
    parser.add_argument("--load")
    parser.add_argument("--validate", action="store_true",
                        help="train --stages ranked by each of --rules for real on fresh seeds (--first-seed)")
    parser.add_argument("--out", help="--validate, --search: append the per-seed rows to this CSV")
    parser.add_argument("--search", metavar="TUNE.npz,FRESH.npz",
                        help="replay every rule tuned on TUNE, then on FRESH (recordings of --save); one row per rule "
                             "into --search-out, the per-seed rows of the named ones into --out")
    parser.add_argument("--search-seeds", metavar="A..B,C..D", help="--search: the two recordings' seeds")
    parser.add_argument("--search-out", help="--search: the CSV of every rule's counts")
    parser.add_argument("--task", default="regression", help="--validate: regression or score")
    parser.add_argument("--stages", default=library_rule()[1], help="--validate: cut:keep,... (default: the library's)")
    parser.add_argument("--rules", default="window", help=f"--validate: comma-separated, of {', '.join(RULES)}")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--target", type=float, help="--save: the candidates' calibrate_target (default: the default's)")
    args = parser.parse_args()
    if args.validate:
        validate(args.task, args.shape, args.seeds, args.first_seed, args.steps, args.candidates, {
            rule: (stages, rule) for rule in args.rules.split(",")
            for stages in [[tuple(int(v) for v in stage.split(":")) for stage in args.stages.split(",")]]}, args.out)
        return
    if args.search:
        tune, fresh = args.search.split(",")
        search_csv(dict(np.load(tune)), dict(np.load(fresh)), *args.search_seeds.split(","), args.shape,
                   args.search_out, args.out)
        return
    if args.load:
        data = dict(np.load(args.load))
    else:
        data = record(args.shape, args.seeds, args.candidates, args.steps, args.first_seed, args.target)
        if args.save:
            np.savez_compressed(args.save, **data)
    report(data)


if __name__ == "__main__":
    main()
