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
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks._lib.engine import Adam, FullBatch, Stack, fit
from benchmarks._lib.package import Halving, PolynomialRegression, candidate_seeds, halving_cost, halving_cuts
from benchmarks._lib.schemes import Calibrated
from benchmarks._lib.stats import count
from benchmarks.lookahead import FIRST_SEED, LR, REGRESSION_TRAINED, SHAPES, Regression, _draw

TAIL = 400  # test losses are recorded every other step over the last TAIL steps
EARLY = 600  # validation losses are recorded at every one of the first EARLY steps


def record(shape_name: str, seeds: int, candidates: int, steps: int, first_seed: int = FIRST_SEED) -> dict:
    torch.set_num_threads(1)
    shape = next(s for s in SHAPES if s.name == shape_name)
    seed_list = list(range(first_seed, first_seed + seeds))
    task = Regression(seed_list)
    val = [validation(s) for s in seed_list]
    nets = [_draw(task, shape, Calibrated(), c, i) for i, s in enumerate(seed_list) for c in candidate_seeds(s, candidates)]
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


def validate(shape_name: str, seeds: int, first_seed: int, steps: int, schedules: dict[str, tuple]) -> None:
    """Fresh seeds, the schedules trained for real (stacked, as the benchmark does): every candidate in
    trains to each cut, the best ``keep`` by ``rank`` (on the rung's training losses) go on with their
    Adam state; the kept one continues to ``steps`` in all. ``schedules[label] = (stages, rank)``."""
    from benchmarks._lib.engine import take_state

    torch.set_num_threads(1)
    shape = next(s for s in SHAPES if s.name == shape_name)
    seed_list = list(range(first_seed, first_seed + seeds))
    task = Regression(seed_list)
    candidates = 8
    pool = [_draw(task, shape, Calibrated(), c, i) for i, s in enumerate(seed_list) for c in candidate_seeds(s, candidates)]
    for label, (stages, rank) in schedules.items():
        start = time.time()
        stack = Stack(pool)
        seed_of = torch.arange(seeds).repeat_interleave(candidates)
        state, done, used = None, 0, 0
        for cut, keep in stages:
            result = fit(stack, Regression.objective, task.data(seed_of), optimizer=Adam(LR), steps=cut - done,
                         order=FullBatch(), nonfinite="skip", state=state, first_step=done)
            used += stack.runs // seeds * (cut - done)
            kept = []
            for i in range(seeds):
                runs = (seed_of == i).nonzero().flatten().tolist()
                rung = [result.losses[:, r] for r in runs]
                if rank == "window":
                    score = [r[len(r) - max(1, -(-len(r) // 2)):].mean() for r in rung]
                else:
                    score = [r[-1] for r in rung]
                score = [v if np.isfinite(v) else np.inf for v in score]
                kept += [runs[j] for _, j in sorted(zip(score, range(len(runs))))[:keep]]
            kept.sort()
            index = torch.tensor(kept)
            state, stack, seed_of, done = take_state(result.state, stack, index), stack.take(index), seed_of[index], cut
        final = fit(stack, Regression.objective, task.data(seed_of), optimizer=Adam(LR), steps=steps - used,
                    order=FullBatch(), nonfinite="skip", state=state, first_step=done, final_evals=task.test(seed_of))
        values = final.final["test"]
        print(f"{shape_name}, seeds {seed_list[0]}..{seed_list[-1]}: {label} ({stages}, ranked by {rank}, extra "
              f"{used - done}): trained {count(values < REGRESSION_TRAINED)}, median {np.median(values):.4g}; "
              f"failing seeds {[seed_list[i] for i in np.flatnonzero(values >= REGRESSION_TRAINED)]} "
              f"({time.time() - start:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="w2d40")
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--save")
    parser.add_argument("--load")
    parser.add_argument("--validate", action="store_true",
                        help="train the current schedule and the two-stage ones on fresh seeds (--first-seed)")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    args = parser.parse_args()
    if args.validate:
        validate(args.shape, args.seeds, args.first_seed, args.steps, {
            "current default (K=8, 256 steps)": ([(16, 4), (32, 2), (64, 1)], "window"),
            "8 -> 2 at 12 steps -> 1 at 100": ([(12, 2), (100, 1)], "last"),
            "8 -> 2 at 8 steps -> 1 at 128": ([(8, 2), (128, 1)], "last"),
        })
        return
    if args.load:
        data = dict(np.load(args.load))
    else:
        data = record(args.shape, args.seeds, args.candidates, args.steps, args.first_seed)
        if args.save:
            np.savez_compressed(args.save, **data)
    report(data)


if __name__ == "__main__":
    main()
