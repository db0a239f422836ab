"""Measure the look-ahead of issue 25 at equal total steps: the seeds' regression protocol.

Per fresh seed ``s``: a random degree-5 polynomial (``PolynomialRegression(degree=5, seed=s)``, 1024
full-batch training points), ``DeepMLP(1, 1, width, depth)`` with Leaky ReLU ``slope``, Adam 1e-3,
``T`` optimizer steps in all, "trained" = test MSE below 0.1 var(y_test).

* default: one calibrated draw (the callback's default: Lyapunov orthogonal, ``calibrate="layers"``,
  target 1, on the training inputs, seed ``s``), trained ``T`` steps;
* look-ahead ``K`` x ``B``: the ``K`` candidates of ``halving.candidate_seeds(s, K)`` (candidate 0 is
  the default's draw), each calibrated the same way, successive halving at
  ``halving.halving_cuts(K, B)`` ranked by the package's rule (``halving.Halving.rung_losses``: the
  mean training loss over the last half of the rung), then the kept candidate continues with its
  Adam state until the run has taken ``T`` steps in all, the look-ahead's included (as
  ``Trainer(max_steps=T)`` counts them).

Everything is trained stacked (one ``baddbmm`` per layer for all runs), on one thread: the runs are
independent (per-run losses, elementwise Adam, per-run step counts). A full-batch look-ahead is
exactly the package's sequential one (each candidate's trajectory does not depend on the others'):
``--check`` runs the package's look-ahead (one candidate at a time, ``torch.optim.Adam``) on the first
seeds and prints its decisions next to the stacked one's weights.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/lookahead_measure.py --seeds 40 --shape w2d40
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_lyapunov import InitSpec, apply_init
from lightning_lyapunov.examples.data import PolynomialRegression
from lightning_lyapunov.examples.models import DeepMLP
import lightning_lyapunov.halving as halving_module
from lightning_lyapunov.halving import Halving, candidate_seeds, halving_cost, halving_cuts
from lightning_lyapunov.lookahead import LookAhead, draw_candidates_

SHAPES = {"w2d40": (2, 40, 0.1), "w3d60": (3, 60, 0.05)}
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
TRAINED = 0.1


class Stack:
    """``R`` MLPs of one shape: weights ``(R, d_out, d_in)``, biases ``(R, d_out)``; Adam with a step
    count per run (``torch.optim.Adam``'s update, elementwise, so the runs are independent)."""

    def __init__(self, weights: list[Tensor], biases: list[Tensor], slope: float, t: Tensor | None = None,
                 moments: tuple[list[Tensor], list[Tensor]] | None = None) -> None:
        self.params = [p.detach().clone().requires_grad_(True) for p in (*weights, *biases)]
        self.layers = len(weights)
        self.slope = slope
        self.runs = weights[0].shape[0]
        self.t = torch.zeros(self.runs) if t is None else t.clone()
        self.m, self.v = moments if moments is not None else ([torch.zeros_like(p) for p in self.params],
                                                               [torch.zeros_like(p) for p in self.params])

    @classmethod
    def of(cls, nets: list[torch.nn.Module], slope: float) -> Stack:
        linear = [[m for m in net.modules() if isinstance(m, torch.nn.Linear)] for net in nets]
        weights = [torch.stack([n[i].weight.detach() for n in linear]) for i in range(len(linear[0]))]
        biases = [torch.stack([n[i].bias.detach() for n in linear]) for i in range(len(linear[0]))]
        return cls(weights, biases, slope)

    def forward(self, x: Tensor) -> Tensor:  # x (R, B, d_in) -> (R, B, d_out)
        h = x.transpose(1, 2)
        for i in range(self.layers):
            h = torch.baddbmm(self.params[self.layers + i].unsqueeze(2), self.params[i], h)
            if i < self.layers - 1:
                h = F.leaky_relu(h, self.slope)
        return h.transpose(1, 2)

    def step(self, loss: Tensor) -> None:
        for p in self.params:
            p.grad = None
        loss.sum().backward()
        b1, b2 = BETAS
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v):
                shape = (-1,) + (1,) * (p.dim() - 1)
                g = p.grad.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # a diverged run stays apart
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m / c1.view(shape), (v / c2.view(shape)).sqrt_().add_(EPS), value=-LR)

    def select(self, index: Tensor) -> Stack:
        out = Stack(self.params[:self.layers], self.params[self.layers:], self.slope)
        out.params = [p.detach()[index].clone().requires_grad_(True) for p in self.params]
        out.runs = len(index)
        out.t = self.t[index].clone()
        out.m, out.v = [m[index].clone() for m in self.m], [v[index].clone() for v in self.v]
        return out

    @staticmethod
    def join(stacks: list[Stack]) -> Stack:
        first = stacks[0]
        out = Stack(first.params[:first.layers], first.params[first.layers:], first.slope)
        out.params = [torch.cat([s.params[i].detach() for s in stacks]).requires_grad_(True)
                      for i in range(len(first.params))]
        out.runs = sum(s.runs for s in stacks)
        out.t = torch.cat([s.t for s in stacks])
        out.m = [torch.cat([s.m[i] for s in stacks]) for i in range(len(first.params))]
        out.v = [torch.cat([s.v[i] for s in stacks]) for i in range(len(first.params))]
        return out


class Task:
    """The seeds' data, stacked: run ``r`` trains on seed ``seed_of[r]``'s polynomial."""

    def __init__(self, seeds: list[int], width: int, depth: int, slope: float) -> None:
        self.seeds, self.width, self.depth, self.slope = seeds, width, depth, slope
        splits = [PolynomialRegression(in_features=1, degree=5, seed=s).build() for s in seeds]
        self.x = torch.stack([sp["train"][0] for sp in splits])
        self.y = torch.stack([sp["train"][1] for sp in splits])
        self.var = self.y.var(dim=(1, 2))
        self.xt = torch.stack([sp["test"][0] for sp in splits])
        self.yt = torch.stack([sp["test"][1] for sp in splits])
        self.var_test = self.yt.var(dim=(1, 2))

    def loss(self, stack: Stack, seed_of: Tensor) -> Tensor:
        return (stack.forward(self.x[seed_of]) - self.y[seed_of]).pow(2).mean(dim=(1, 2)) / self.var[seed_of]

    @torch.no_grad()
    def test(self, stack: Stack, seed_of: Tensor) -> np.ndarray:
        mse = (stack.forward(self.xt[seed_of]) - self.yt[seed_of]).pow(2).mean(dim=(1, 2)) / self.var_test[seed_of]
        values = mse.double().numpy()
        return np.where(np.isfinite(values), values, np.inf)

    def draw(self, index: int, seed: int) -> torch.nn.Module:
        """Candidate ``seed`` of seed index ``index``: the callback's default draw, calibrated on the inputs."""
        net = DeepMLP(1, 1, width=self.width, depth=self.depth, negative_slope=self.slope)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            apply_init(net, calibrate="layers", example_input=self.x[index], generator=torch.Generator().manual_seed(seed))
        return net


def check(task: Task, candidates: int, budget: int, seeds: int = 3) -> None:
    """The package's look-ahead (``draw_candidates_`` + ``LookAhead``, torch's Adam, one candidate at a
    time) against the stacked one, on the first ``seeds`` seeds: the same kept candidates and losses."""
    cuts = halving_cuts(candidates, budget)
    stacked, _ = halving(task, [[task.draw(i, s) for s in candidate_seeds(seed, candidates)]
                                for i, seed in enumerate(task.seeds[:seeds])], candidates, budget)
    for i, seed in enumerate(task.seeds[:seeds]):
        net = DeepMLP(1, 1, width=task.width, depth=task.depth, negative_slope=task.slope)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plans, drawn, targets = draw_candidates_(net, InitSpec(calibrate="layers"), candidate_seeds(seed, candidates),
                                                     example_input=task.x[i])
        optimizer = torch.optim.Adam(net.parameters(), lr=LR, betas=BETAS, eps=EPS)
        look = LookAhead(candidate_seeds(seed, candidates), cuts, plans)
        look.begin(net, [optimizer], [], drawn, targets)
        while look.running:
            optimizer.zero_grad()
            loss = (net(task.x[i]) - task.y[i]).pow(2).mean() / task.var[i]
            loss.backward()
            optimizer.step()
            look.step(float(loss.detach()))
        mine = torch.stack([p.detach() for p in net.parameters() if p.dim() == 2][-1:])
        print(f"  check seed {seed}: package kept candidate {look.report.kept}, losses at the last cut "
              f"{look.report.history[-1]}; stacked last-layer weight max difference "
              f"{(mine[0] - stacked.params[stacked.layers - 1][i]).abs().max():.2e}", flush=True)


def halving(task: Task, pool: list[list[torch.nn.Module]], candidates: int, budget: int) -> tuple[Stack, int]:
    """Successive halving for every seed at once; returns the kept candidates (one run per seed, in seed
    order) and the look-ahead's total steps per seed. Ranked by ``halving.WINDOW`` (see ``--configs``)."""
    cuts = halving_cuts(candidates, budget)
    seeds = len(pool)
    nets = [pool[s][k] for s in range(seeds) for k in range(candidates)]
    stack = Stack.of(nets, task.slope)
    seed_of = torch.arange(seeds).repeat_interleave(candidates)
    cand_of = torch.arange(candidates).repeat(seeds)
    done, used = 0, 0
    for cut in cuts:
        history = []
        for _ in range(cut - done):
            loss = task.loss(stack, seed_of)
            history.append(loss.detach().double().numpy())
            stack.step(loss)
        used += (cut - done) * (stack.runs // seeds)
        done = cut
        keep = []
        for s in range(seeds):
            runs = (seed_of == s).nonzero().flatten().tolist()
            h = Halving.start(candidates, cuts)  # the package's ranking rule, fed this rung's losses
            h.alive = [int(cand_of[r]) for r in runs]
            for r in runs:
                h.losses[int(cand_of[r])] = [float(x[r]) for x in history]
            before = list(h.alive)
            h.cut(h.rung_losses())
            keep += [runs[before.index(k)] for k in h.alive]
        index = torch.tensor(keep)
        stack, seed_of, cand_of = stack.select(index), seed_of[index], cand_of[index]
    assert stack.runs == seeds and used == halving_cost(candidates) * cuts[0]
    return stack, used


def continue_all(task: Task, stacks: list[Stack], used: list[int], points: list[int]) -> list[dict[int, np.ndarray]]:
    """Train each stack's runs until ``used + i`` reaches every total in ``points``; test losses there."""
    seeds = len(task.seeds)
    stack = Stack.join(stacks)
    seed_of = torch.arange(seeds).repeat(len(stacks))
    offset = torch.tensor(used).repeat_interleave(seeds)
    results: list[dict[int, np.ndarray]] = [{} for _ in stacks]
    last = max(points) - min(used)
    for i in range(last + 1):
        totals = offset + i
        due = {p for p in points if bool((totals == p).any())}
        for p in due:
            values = task.test(stack, seed_of)
            for j in range(len(stacks)):
                if used[j] + i == p:
                    results[j][p] = values[j * seeds:(j + 1) * seeds]
        if i == last:
            break
        stack.step(task.loss(stack, seed_of))  # a run past its last point trains on, unrecorded
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--first-seed", type=int, default=25000)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="w2d40")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--check", action="store_true", help="compare the first seeds with the package's look-ahead")
    parser.add_argument("--configs", default="8x256",
                        help="K x steps[@window], comma-separated: window = the share of the rung's last steps "
                             "whose mean loss ranks a candidate (the package's halving.WINDOW, 0.5)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    width, depth, slope = SHAPES[args.shape]
    configs = [(int(c.split("x")[0]), int(c.split("x")[1].split("@")[0]), float(c.split("@")[1]) if "@" in c else 0.5)
               for c in args.configs.split(",")]
    kmax = max(k for k, _, _ in configs)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    start = time.time()
    task = Task(seeds, width, depth, slope)
    pool = [[task.draw(i, cs) for cs in candidate_seeds(s, kmax)] for i, s in enumerate(seeds)]
    print(f"{args.shape}: {len(seeds)} seeds {seeds[0]}..{seeds[-1]}, {kmax} candidates each drawn in "
          f"{time.time() - start:.0f} s", flush=True)
    if args.check:
        check(task, *configs[0][:2])
    default = Stack.of([p[0] for p in pool], slope)
    stacks, used, labels = [default], [0], ["default (one calibrated draw)"]
    for k, budget, window in configs:
        t0 = time.time()
        halving_module.WINDOW = window
        kept, total = halving(task, [p[:k] for p in pool], k, budget)
        cuts = halving_cuts(k, budget)
        stacks.append(kept)
        used.append(total)
        rule = "" if window == 0.5 else f", ranked by the last {window:.0%} of each rung"
        labels.append(f"look-ahead K={k}, cuts {'/'.join(map(str, cuts))} ({total} steps, extra {total - cuts[-1]}"
                      f"{rule})")
        print(f"  {labels[-1]}: {time.time() - t0:.0f} s", flush=True)
    t0 = time.time()
    points = [args.steps, args.steps + args.steps // 10]
    results = continue_all(task, stacks, used, points)
    print(f"  continued to {points} total steps: {time.time() - t0:.0f} s", flush=True)
    print("\n| method | " + " | ".join(f"trained, median at T={p}" for p in points) + " |")
    print("|---|" + "---|" * len(points))
    for label, result in zip(labels, results):
        cells = [f"{int((result[p] < TRAINED).sum())}/{len(seeds)}, {np.median(result[p]):.4f}" for p in points]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\ntotal {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
