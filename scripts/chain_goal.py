"""Issue 23's goal, measured: deep square chains drawn at the chain theory's scales, against its prediction.

For each activation, width and weight law: ``chain_theory.predict_chain`` chooses the per-layer scales
of a ``depth``-layer chain (square layers, the last without activation) for an operating scale of 1;
then ``seeds`` networks are drawn at those scales with torch (float64; Gaussian weights, or Haar
orthogonal ones by the QR construction of ``torch.nn.init.orthogonal_``), each run on one input of
per-unit rms 1 through the real ``torch.nn.functional`` activation, and the per-unit log-norm of every
pre-activation is recorded (a network whose log-norm falls 40 below the operating scale counts as dead,
as in the theory). Reported per row:

* ``slope``: least-squares slope of the seed-averaged log-norm over the layers, and ``in->out``:
  (seed-averaged log-norm of the output - log-norm of the input) / depth; the goal is |.| <= 0.02;
* ``mean ok`` / ``std ok``: at how many depths the measured mean (std) is within 2 (3) standard
  errors of the prediction, and the largest |z|;
* ``alive``: the fraction of networks alive at the output, measured and predicted.

With ``--api`` the chains go through the package's real API instead: a ``depth``-layer ``nn.Sequential``
of ``nn.Linear`` layers and torch's activation modules is planned once by
``lightning_lyapunov.apply_init(model, scheme="lyapunov", distribution=law)`` (uncalibrated: no example
input), then each seed draws and writes new weights with ``plan.draw(generator)`` / ``plan.write`` (what
``apply_init`` does), runs the same input of per-unit rms 1 through the model (float64), and the plan's
own prediction, the line and band the diagnostics show (``log r0 + cumsum(exponent)``,
``sqrt(cumsum(variance))``), is compared with the measured mean and spread at every depth.

Usage::

    OMP_NUM_THREADS=1 python scripts/chain_goal.py --widths 8 32 256 --seeds 2000 1000 128 --depth 60
    OMP_NUM_THREADS=1 python scripts/chain_goal.py --api --widths 8 32 256 --seeds 1000 1000 64
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from lightning_lyapunov import chain_theory

ACTIVATIONS = {
    "gelu": (chain_theory.activation("gelu"), lambda x: F.gelu(x)),
    "gelu_tanh": (chain_theory.activation("gelu", approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "silu": (chain_theory.activation("silu"), F.silu),
    "mish": (chain_theory.activation("mish"), F.mish),
    "elu": (chain_theory.activation("elu"), F.elu),
    "celu": (chain_theory.activation("celu"), F.celu),
    "selu": (chain_theory.activation("selu"), F.selu),
    "softplus": (chain_theory.activation("softplus"), F.softplus),
    "tanh": (chain_theory.activation("tanh"), torch.tanh),
    "sigmoid": (chain_theory.activation("sigmoid"), torch.sigmoid),
    "hardswish": (chain_theory.activation("hardswish"), F.hardswish),
    "relu6": (chain_theory.activation("relu6"), F.relu6),
}


def haar(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` square Haar orthogonal matrices, as ``torch.nn.init.orthogonal_`` builds each one."""
    q, r = torch.linalg.qr(torch.randn(n, d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def simulate(phi, d: int, law: str, scales: np.ndarray, seeds: int, floor: float, chunk: int, seed: int) -> np.ndarray:
    """Per-unit log-norms of the pre-activations, (depth, seeds); NaN once a network is dead."""
    generator = torch.Generator().manual_seed(seed)
    depth = len(scales)
    out = np.full((depth, seeds), np.nan)
    for start in range(0, seeds, chunk):
        n = min(chunk, seeds - start)
        x = torch.randn(n, d, 1, generator=generator, dtype=torch.float64)
        x = x * math.sqrt(d) / x.norm(dim=1, keepdim=True)
        dead = torch.zeros(n, dtype=torch.bool)
        for layer, scale in enumerate(scales):
            if law == "gaussian":
                w = torch.randn(n, d, d, generator=generator, dtype=torch.float64) * float(scale)
            else:
                w = haar(n, d, generator) * float(scale)
            h = torch.bmm(w, x)
            log_r = torch.log(h.norm(dim=(1, 2)) / math.sqrt(d))
            dead |= ~(log_r > -floor)
            out[layer, start:start + n] = torch.where(dead, torch.nan, log_r).numpy()
            x = phi(h) if layer < depth - 1 else h
    return out


MODULES = {
    "gelu": lambda: torch.nn.GELU(), "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh"), "silu": torch.nn.SiLU,
    "mish": torch.nn.Mish, "elu": torch.nn.ELU, "celu": torch.nn.CELU, "selu": torch.nn.SELU,
    "softplus": torch.nn.Softplus, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "hardswish": torch.nn.Hardswish,
    "relu6": torch.nn.ReLU6,
}


def through_api(name: str, d: int, law: str, depth: int, seeds: int, floor: float, seed: int):
    """Plan a ``depth``-layer nn.Sequential with apply_init, draw ``seeds`` networks from the plan, measure.

    Returns the per-unit log-norms (depth, seeds; NaN once dead) and the plan's predicted mean and std."""
    import warnings

    from lightning_lyapunov import apply_init

    layers = []
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(d, d), MODULES[name]()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(d, d)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # narrow unstable chains warn that the prediction is approximate
        plan = apply_init(model, scheme="lyapunov", distribution=law, generator=torch.Generator().manual_seed(seed))
    exponents = np.array([layer.init.exponent for layer in plan.layers])
    variances = np.array([layer.init.variance for layer in plan.layers])
    predicted = (np.cumsum(exponents), np.sqrt(np.cumsum(variances)))  # input log-norm 0
    out = measure(model, plan, seeds, torch.Generator().manual_seed(seed + 1), floor)
    return out, predicted, float(plan.chain.alive[-1])


def measure(model: torch.nn.Sequential, plan, seeds: int, generator: torch.Generator, floor: float = 40.0) -> np.ndarray:
    """Per seed, ``plan.write(plan.draw(generator))`` and one input of per-unit rms 1 through ``model``
    (a Sequential): the per-unit log-norm of every Linear output, (layers, seeds); NaN once below ``-floor``."""
    depth = sum(isinstance(m, torch.nn.Linear) for m in model)
    d = next(m for m in model if isinstance(m, torch.nn.Linear)).in_features
    out = np.full((depth, seeds), np.nan)
    with torch.no_grad():
        for k in range(seeds):
            plan.write(plan.draw(generator))
            x = torch.randn(1, d, generator=generator, dtype=torch.float64)
            x = x * math.sqrt(d) / x.norm()
            i = 0
            for module in model:
                x = module(x)
                if isinstance(module, torch.nn.Linear):
                    log_r = math.log(max(float(x.norm()), 1e-300) / math.sqrt(x.shape[-1]))
                    if not log_r > -floor:
                        break
                    out[i, k] = log_r
                    i += 1
    return out


class _Predicted:
    """The plan's predicted mean and std per depth, and the chain's alive probability at the output."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, alive: float) -> None:
        self.mean_log_norm, self.std_log_norm, self.alive = mean, std, np.array([alive])


def compare(measured: np.ndarray, plan: chain_theory.ChainPrediction) -> dict:
    alive = np.isfinite(measured)
    count = alive.sum(1)
    mean = np.array([row[ok].mean() for row, ok in zip(measured, alive)])
    centred = [row[ok] - m for row, ok, m in zip(measured, alive, mean)]
    var = np.array([np.mean(c**2) for c in centred])
    fourth = np.array([np.mean(c**4) for c in centred])
    std = np.sqrt(var)
    se_mean = std / np.sqrt(count)
    se_std = np.sqrt(np.maximum(fourth - var**2, 0.0) / count) / (2.0 * np.maximum(std, 1e-300))
    # a square orthogonal first layer keeps the norm: no spread predicted, float32 rounding (1e-8) measured
    exact = (np.asarray(plan.std_log_norm) < 1e-6) & (std < 1e-6)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_mean = np.where((se_mean > 1e-12) & ~exact, (mean - plan.mean_log_norm) / se_mean, 0.0)
        z_std = np.where((se_std > 1e-12) & ~exact, (std - plan.std_log_norm) / se_std, 0.0)
    depth = len(mean)
    return {
        "slope": float(np.polyfit(np.arange(depth), mean, 1)[0]),
        "in_out": float(mean[-1] / depth),  # the input's log-norm is 0
        "mean_ok": (int((np.abs(z_mean) <= 2).sum()), int((np.abs(z_mean) <= 3).sum())),
        "std_ok": (int((np.abs(z_std) <= 2).sum()), int((np.abs(z_std) <= 3).sum())),
        "z_max": (float(np.abs(z_mean).max()), float(np.abs(z_std).max())),
        "alive": (float(alive[-1].mean()), float(plan.alive[-1])),
        "std_end": (float(std[-1]), float(plan.std_log_norm[-1])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2000, 1000, 128], help="one per width")
    parser.add_argument("--depth", type=int, default=60)
    parser.add_argument("--laws", nargs="+", default=["gaussian", "orthogonal"])
    parser.add_argument("--activations", nargs="+", default=list(ACTIVATIONS))
    parser.add_argument("--floor", type=float, default=40.0)
    parser.add_argument("--api", action="store_true", help="plan and draw through apply_init (module docstring)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| activation | width | law | seeds | slope | in->out | mean ok (2se/3se of {args.depth}) "
          f"| std ok (2se/3se) | max z mean/std | std at output meas/pred | alive meas/pred "
          f"| {'plan+draw' if args.api else 'plan'} s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for width, seeds in zip(args.widths, args.seeds):
        for law in args.laws:
            for name in args.activations:
                act, phi = ACTIVATIONS[name]
                layers = [(width, width, act)] * (args.depth - 1) + [(width, width, None)]
                start = time.perf_counter()
                if args.api:
                    measured, (mean, std), alive = through_api(name, width, law, args.depth, seeds, args.floor, seed=width)
                    plan = _Predicted(mean, std, alive)
                    seconds = time.perf_counter() - start
                else:
                    plan = chain_theory.predict_chain(layers, law, floor=args.floor)
                    seconds = time.perf_counter() - start
                    chunk = max(1, min(seeds, 2_000_000 // (width * width)))
                    measured = simulate(phi, width, law, plan.weight_scales, seeds, args.floor, chunk, seed=width)
                r = compare(measured, plan)
                print(f"| {name} | {width} | {law} | {seeds} | {r['slope']:+.4f} | {r['in_out']:+.4f} "
                      f"| {r['mean_ok'][0]}/{r['mean_ok'][1]} | {r['std_ok'][0]}/{r['std_ok'][1]} "
                      f"| {r['z_max'][0]:.1f}/{r['z_max'][1]:.1f} | {r['std_end'][0]:.3f}/{r['std_end'][1]:.3f} "
                      f"| {r['alive'][0]:.3f}/{r['alive'][1]:.3f} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
