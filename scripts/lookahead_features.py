"""Do init-time gradients or the tangent kernel tell which candidate draw will train? (issue 25)

On the candidates ``scripts/lookahead_schedules.py --save`` recorded (every candidate of every seed
trained 2000 steps: which ones train is known), each candidate is drawn again and measured at step
0, before any training: the training loss, the gradient's norm, the log of the smallest weight
gradient's norm over the layers, the empirical neural tangent kernel on 128 training points (its
effective rank ``(sum ev)^2 / sum ev^2`` and ``log(ev_3 / ev_1)``), and the loss on one half of the
training points after one Adam-like step (``lr * sign(gradient)``) on the other half, the kind of
signal GradInit optimizes. Against them, the look-ahead's own
signal, the training loss after ``n`` steps. Per criterion: the within-seed AUC (over seeds with
candidates that train and candidates that do not, the chance that a trained candidate scores better;
0.5 is no information) and how many seeds train when each keeps its best-scoring candidate.

Then the rules :data:`RULES` (fixed before they were replayed on fresh seeds): successive halving
on the recorded losses (``lookahead_schedules.staged``), all 8 candidates or only those with the
smallest gradient norm at step 0 (its ``keep`` best), the kept candidate's test loss at equal total
steps. A step-0 gradient costs a forward and a backward pass per candidate, counted as one step each.

    OMP_NUM_THREADS=1 python -m scripts.lookahead_schedules --shape w2d40 --seeds 40 --save /tmp/w2d40.npz
    OMP_NUM_THREADS=1 python -m scripts.lookahead_features --shape w2d40 --load /tmp/w2d40.npz

``--learned TRAIN,... --on TEST,...``: instead, a ranking learned from the loss curves of the first
``n`` steps (a logistic regression on the log losses at steps 1, 2, 4, ..., n, the last half's trend,
mean and spread and the lowest loss, centred within the seed) fitted on the TRAIN recordings'
trained/not labels and scored on the TEST recordings against the plain loss at step n.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.func import functional_call, jacrev

from benchmarks._lib.package import candidate_seeds
from benchmarks._lib.schemes import Calibrated
from benchmarks._lib.stats import count
from benchmarks.lookahead import FIRST_SEED, REGRESSION_TRAINED, SHAPES, Regression, _draw
from scripts.lookahead_schedules import staged

#: Learning rates of the one-step criterion (Adam's first step is ``lr * sign(gradient)``).
ONE_STEP_LRS = (1e-3, 1e-2)
#: (candidates kept by the smallest step-0 gradient norm (None: no prefilter), halving stages (cut, keep)).
RULES = ((None, ((16, 4), (32, 2), (64, 1))), (None, ((12, 2), (100, 1))), (4, ((16, 2), (64, 1))),
         (4, ((12, 2), (100, 1))), (6, ((20, 3), (40, 2), (80, 1))))


def at_init(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, var: torch.Tensor) -> dict[str, float]:
    """The step-0 criteria of one candidate (higher = predicted to train better)."""
    params = dict(net.named_parameters())
    loss = (functional_call(net, params, (x,)) - y).pow(2).mean() / var
    grads = torch.autograd.grad(loss, list(params.values()))
    weight_norms = [float(g.norm()) for name, g in zip(params, grads) if name.endswith("weight")]
    points = x[:: max(1, x.shape[0] // 128)]
    jacobian = jacrev(lambda p: functional_call(net, p, (points,)).squeeze(-1))(params)
    j = torch.cat([v.reshape(points.shape[0], -1) for v in jacobian.values()], 1).detach()
    ev = torch.linalg.eigvalsh(j @ j.T).clamp_min(0).flip(0).double()
    half = x.shape[0] // 2  # one sign step (Adam's first) on one half, the loss on the other: GradInit's kind of signal
    first = (functional_call(net, params, (x[:half],)) - y[:half]).pow(2).mean() / var
    step = torch.autograd.grad(first, list(params.values()))
    after = {}
    for lr in ONE_STEP_LRS:
        moved = {name: (p - lr * torch.sign(g)).detach() for (name, p), g in zip(params.items(), step)}
        with torch.no_grad():
            after[f"-held-out loss after a step of {lr:g}"] = -float(
                (functional_call(net, moved, (x[half:],)) - y[half:]).pow(2).mean() / var)
    return {**after, "-loss at step 0": -loss.item(), "-gradient norm": -float(torch.stack([g.norm() for g in grads]).norm()),
            "-log smallest weight gradient": -float(np.log(min(weight_norms))),
            "kernel effective rank": float(ev.sum() ** 2 / ev.pow(2).sum()),
            "kernel log(ev3 / ev1)": float(torch.log(ev[2] / ev[0] + 1e-300))}


def within_seed_auc(score: np.ndarray, good: np.ndarray) -> float:
    aucs = []
    for s, g in zip(score, good):
        a, b = s[g], s[~g]
        if len(a) and len(b):
            aucs.append((a[:, None] > b[None]).mean() + 0.5 * (a[:, None] == b[None]).mean())
    return float(np.mean(aucs))


def _recorded(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A recording's training losses ``(seeds, candidates, steps)`` and which candidates train."""
    data = np.load(path)
    points = list(data["points"])
    return data["losses"], data["test"][:, :, points.index(int(data["steps"]))] < REGRESSION_TRAINED


def curve_features(losses: np.ndarray, n: int) -> np.ndarray:
    """Features of each candidate's first ``n`` training losses, centred within its seed."""
    logs = np.log(np.maximum(losses[:, :, :n], 1e-12))
    at = [logs[:, :, k] for k in sorted({k for k in (0, 1, 3, 7, 15, 31, 63, 127) if k < n} | {n - 1})]
    tail = logs[:, :, n // 2:]
    features = np.stack(at + [logs[:, :, n - 1] - logs[:, :, n // 2], tail.mean(2), tail.std(2), logs.min(2)], -1)
    return features - features.mean(1, keepdims=True)


def learned(train: list[str], test: list[str], steps: tuple[int, ...] = (16, 24, 32, 64)) -> None:
    from sklearn.linear_model import LogisticRegression

    fitted, scored = [_recorded(p) for p in train], [_recorded(p) for p in test]
    for n in steps:
        x = np.concatenate([f.reshape(-1, f.shape[-1]) for f in (curve_features(losses, n) for losses, _ in fitted)])
        model = LogisticRegression(max_iter=2000).fit(x, np.concatenate([good.reshape(-1) for _, good in fitted]))
        for path, (losses, good) in zip(test, scored):
            features = curve_features(losses, n)
            score = model.decision_function(features.reshape(-1, features.shape[-1])).reshape(features.shape[:2])
            rows = np.arange(len(good))
            print(f"  {path}, first {n} steps: learned ranking AUC {within_seed_auc(score, good):.3f}, keeping the "
                  f"best trains {good[rows, score.argmax(1)].sum()}/{len(good)}; the loss at step {n}: AUC "
                  f"{within_seed_auc(-losses[:, :, n - 1], good):.3f}, {good[rows, (-losses[:, :, n - 1]).argmax(1)].sum()}"
                  f"/{len(good)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="w2d40", choices=[s.name for s in SHAPES])
    parser.add_argument("--load", help="a recording of scripts/lookahead_schedules.py --save")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--learned", help="recordings to fit a learned ranking on (comma-separated)")
    parser.add_argument("--on", help="recordings to score the learned ranking on (comma-separated)")
    args = parser.parse_args()
    if args.learned:
        learned(args.learned.split(","), args.on.split(","))
        return
    torch.set_num_threads(1)
    data = np.load(args.load)
    losses, points = data["losses"], list(data["points"])
    seeds, candidates = losses.shape[:2]
    good = data["test"][:, :, points.index(int(data["steps"]))] < REGRESSION_TRAINED
    shape = next(s for s in SHAPES if s.name == args.shape)
    seed_list = list(range(args.first_seed, args.first_seed + seeds))
    task = Regression(seed_list)
    scores: dict[str, np.ndarray] = {}
    for i, seed in enumerate(seed_list):
        for k, drawn in enumerate(candidate_seeds(seed, candidates)):
            net = _draw(task, shape, Calibrated(), drawn, i)
            for name, value in at_init(net, task.x[i], task.y[i], task.var[i]).items():
                scores.setdefault(name, np.zeros((seeds, candidates)))[i, k] = value
    for n in (16, 64, 128, 256):
        scores[f"-training loss at step {n}"] = -losses[:, :, n - 1]
    print(f"{args.shape}: {seeds} seeds x {candidates} candidates; {good.sum()} of {good.size} candidates train; "
          f"seeds with at least one: {good.any(1).sum()}")
    for name, score in scores.items():
        kept = good[np.arange(seeds), np.nan_to_num(score, nan=-np.inf).argmax(1)].sum()
        print(f"  {name:32s} within-seed AUC {within_seed_auc(score, good):.3f}; keeping the best trains {kept}/{seeds}")
    for keep, stages in RULES:
        chosen = np.argsort(-scores["-gradient norm"], 1)[:, :keep or candidates]
        kept = {k: np.take_along_axis(data[k], chosen[:, :, None], 1) for k in ("losses", "test")}
        values, extra = staged({**kept, "points": data["points"], "steps": data["steps"]}, list(stages))
        extra += candidates if keep else 0
        prefilter = f"the {keep} of {candidates} with the smallest gradient, " if keep else f"all {candidates}, "
        print(f"  {prefilter}stages {stages}, extra {extra} steps: trained {count(values < REGRESSION_TRAINED)}, "
              f"median {np.median(values):.3g}")


if __name__ == "__main__":
    main()
