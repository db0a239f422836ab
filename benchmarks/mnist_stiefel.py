"""Real-data benchmark 4: the Stiefel paper's claim (stable training of deep narrow ReLU nets) on MNIST:
width 32, depths 50 / 100 / 200, test accuracy after a fixed budget of Adam steps, every scheme plus
LSUV; all nets of one depth trained together.

``python -m benchmarks mnist_stiefel [--quick]``
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.classification import setup_torch  # noqa: E402
from benchmarks.common import Report  # noqa: E402
from benchmarks.realdata import best_first, med_iqr, mnist, non_finite_note, scheme_note, schemes, train_schemes  # noqa: E402
from lightning_lyapunov.examples.models import DeepMLP  # noqa: E402

WIDTH, LR, BATCH = 32, 1e-3, 128


def run(quick: bool = False) -> Report:
    setup_torch()
    depths, seeds, steps = ([20, 50], [0], 30) if quick else ([50, 100, 200], [0, 1], 200)
    data = mnist(n_train=5000 if quick else None, seed=0)
    results = {}
    for depth in depths:
        results[depth] = train_schemes(
            lambda: DeepMLP(784, 10, WIDTH, depth, activation="relu"), schemes(), seeds, data["train"],
            {"test": data["test"]}, lambda model: torch.optim.Adam(model.parameters(), lr=LR), steps=steps,
            batch_size=BATCH, eval_steps=[0, steps // 3, 2 * steps // 3, steps])
    rows = [{"depth": depth, "scheme": label, "seeds": acc["test"].shape[1],
             "test acc at init (%)": med_iqr(acc["test"][0]),
             f"test acc after {steps} steps (%)": med_iqr(acc["test"][-1]),
             "train s (all schemes)": round(runs.seconds, 1)}
            for depth, runs in results.items() for label, acc in runs.acc.items()]
    fig, axes = plt.subplots(1, len(depths), figsize=(4.8 * len(depths), 4.0), squeeze=False)
    for ax, (depth, runs) in zip(axes[0], results.items()):
        for label, acc in runs.acc.items():
            ax.plot(runs.steps, 100 * np.median(acc["test"], axis=1), marker=".", label=label)
        ax.set(title=f"MNIST, width {WIDTH}, depth {depth}", xlabel="Adam step", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    setup = f"""
The Stiefel paper's claim (Choi, Lee & Kim: stable training of deep narrow ReLU FFNNs) on MNIST (all
60,000 training images, standardized; test accuracy on the 10,000 test images):
`DeepMLP(784, 10, {WIDTH}, depth, activation="relu")` for depth in {depths}; Adam (lr {LR:g}, the same for
every scheme, not tuned; no weight decay), batch {BATCH}, **{steps} steps** ({steps * BATCH / 60000:.2f} epochs —
a fixed budget sized to the shared 2-core CPU), seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} per scheme; seed k
draws the weights; every run sees the same batches). Median [q25, q75] over seeds.

{scheme_note()}
The Stiefel scheme is our reconstruction of the paper's construction, not the authors' code.
"""
    return Report("mnist_stiefel", f"Deep narrow ReLU nets on MNIST (width {WIDTH}, depths {depths})", setup, rows,
               _findings(results, steps), fig)


def _findings(results: dict, steps: int) -> str:
    lines = []
    for depth, runs in results.items():
        final = {label: float(np.median(acc["test"][-1])) for label, acc in runs.acc.items()}
        lines.append(f"- Depth {depth}, median test accuracy after {steps} steps, best first: {best_first(final)}.")
    deepest = results[max(results)].acc
    trainable = [k for k, a in deepest.items() if float(np.median(a["test"][-1])) > 0.5]
    lines.append(f"- At depth {max(results)} the schemes above 50% test accuracy: "
                 + (", ".join(trainable) if trainable else "none") + ". Paper's claim: Stiefel init trains deep "
                 "narrow ReLU nets stably where Gaussian inits fail.")
    lines.append(non_finite_note({f"depth {d}": r for d, r in results.items()}))
    return "\n".join(line for line in lines if line)
