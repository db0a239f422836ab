"""Real-data benchmark 3: the vanishing-empirical-variance paper's Fig. 3 on CIFAR-10 (JPEG q75 copy):
test accuracy after 500 Adam steps against depth, width 10 (depths 0..100), and width 200 at a few
depths with a smaller learning rate; every scheme plus LSUV, all nets of one depth trained together.

``python -m benchmarks cifar_depth [--quick]``
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.classification import setup_torch  # noqa: E402
from benchmarks.common import Report  # noqa: E402
from benchmarks.realdata import (  # noqa: E402
    CIFAR_NOTE, best_first, cifar10, med_iqr, non_finite_note, scheme_note, schemes, train_schemes)
from lightning_lyapunov.examples.models import DeepMLP  # noqa: E402

STEPS, BATCH = 500, 64
NARROW = {"width": 10, "lr": 1e-4}
WIDE = {"width": 200, "lr": 1e-5, "schemes": ("he", "lyapunov-gauss", "zero")}


def build(width: int, depth: int) -> nn.Module:
    """``depth`` hidden ReLU layers of ``width`` on flattened CIFAR images (depth 0: a linear classifier)."""
    if depth == 0:
        return nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    return DeepMLP(3072, 10, width, depth, activation="relu")


def _sweep(data: dict, width: int, lr: float, depths: list[int], seeds: list[int], steps: int,
           labels=None) -> dict:
    out = {}
    for depth in depths:
        runs = train_schemes(lambda: build(width, depth), schemes(labels), seeds, data["train"],
                             {"test": data["test"]},
                             lambda model: torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999)),
                             steps=steps, batch_size=BATCH, eval_steps=[0, steps])
        out[depth] = runs
    return out


def run(quick: bool = False) -> Report:
    setup_torch()
    if quick:
        depths, seeds, wide_depths, n_train, n_test = [0, 10], [0], [10], 2000, 1000
    else:
        depths, seeds, wide_depths, n_train, n_test = list(range(0, 101, 10)), [0, 1, 2, 3, 4], [20, 100, 500], 10000, 10000
    steps = 20 if quick else STEPS
    data = cifar10(n_train=n_train, n_test=n_test, seed=0)
    narrow = _sweep(data, NARROW["width"], NARROW["lr"], depths, seeds, steps)
    wide = _sweep(data, WIDE["width"], WIDE["lr"], wide_depths, seeds[:1], steps, WIDE["schemes"])
    rows = []
    for width, lr, sweep in ((NARROW["width"], NARROW["lr"], narrow), (WIDE["width"], WIDE["lr"], wide)):
        for depth, runs in sweep.items():
            for label, acc in runs.acc.items():
                rows.append({"width": width, "depth": depth, "lr": lr, "scheme": label, "reps": acc["test"].shape[1],
                             "test acc (%)": med_iqr(acc["test"][-1]),
                             "train s": round(runs.seconds, 1)})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for ax, (width, sweep) in zip(axes, ((NARROW["width"], narrow), (WIDE["width"], wide))):
        ds = sorted(sweep)
        for label in sweep[ds[0]].acc:
            finals = [100 * sweep[d].acc[label]["test"][-1] for d in ds]
            med = [np.median(f) for f in finals]
            (line,) = ax.plot(ds, med, marker="o", ms=3, label=label)
            ax.fill_between(ds, [np.quantile(f, 0.25) for f in finals], [np.quantile(f, 0.75) for f in finals],
                            color=line.get_color(), alpha=0.15, lw=0)
        ax.set(title=f"{CIFAR_NOTE}: width {width}, test accuracy after {steps} Adam steps", xlabel="depth",
               ylabel="test accuracy (%)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    setup = f"""
The vanishing-empirical-variance paper's Fig. 3 protocol on {CIFAR_NOTE} (per-channel standardized,
flattened to 3072 features): fully connected ReLU nets with `depth` hidden layers (depth 0: a linear
classifier), Adam (betas 0.9 / 0.999, no weight decay), {steps} steps, batch {BATCH}; test accuracy on
{n_test} test images after the last step.

- Width {NARROW['width']}, learning rate {NARROW['lr']:g}, depths {depths[0]}..{depths[-1]} (step 10), {len(seeds)}
  repetitions per scheme (seed k draws the weights; all runs see the same batches).
- Width {WIDE['width']}, learning rate {WIDE['lr']:g}, depths {wide_depths}, schemes {", ".join(WIDE['schemes'])},
  **1 repetition** (the paper sweeps more depths up to 500; three here to fit a 2-core CPU).

{scheme_note()}

**Subsampled**: training batches are drawn from a random {n_train}-image subset of the 50,000 training
images (seed 0); {steps} x {BATCH} = {steps * BATCH} samples is about {steps * BATCH / n_train:.1f} passes over it.
All nets of one (width, depth) are trained together as one stacked model (exactly independent runs).
The batch size of the paper was not available to us.
"""
    return Report("cifar_depth", f"Test accuracy against depth on {CIFAR_NOTE} after {steps} Adam steps", setup,
               rows, _findings(narrow, wide), fig)


def _findings(narrow: dict, wide: dict) -> str:
    lines = []
    deepest = max(narrow)
    final = {label: float(np.median(acc["test"][-1])) for label, acc in narrow[deepest].acc.items()}
    lines.append(f"- Width 10, depth {deepest}: median test accuracy {best_first(final)}.")
    for label in ("he", "lyapunov-gauss", "lyapunov-orth", "lyapunov-calibrated", "zero", "stiefel", "lsuv"):
        if label in narrow[min(narrow)].acc:
            trace = ", ".join(f"{d}: {100 * float(np.median(narrow[d].acc[label]['test'][-1])):.1f}"
                              for d in sorted(narrow))
            lines.append(f"- {label} by depth (median %): {trace}.")
    for depth, runs in sorted(wide.items()):
        lines.append(f"- Width 200, depth {depth}: " + "; ".join(
            f"{k} {100 * float(np.median(a['test'][-1])):.1f}%" for k, a in runs.acc.items()) + ".")
    lines.append(non_finite_note({f"width 10, depth {d}": r for d, r in narrow.items()}
                                 | {f"width 200, depth {d}": r for d, r in wide.items()}))
    lines.append("- Paper (Fig. 3): He-family inits lose accuracy with depth at width 10 and fail at large depths; "
                 "ZerO keeps training. Compare the rows above.")
    return "\n".join(line for line in lines if line)
