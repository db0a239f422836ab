"""Real-data benchmark 1: the fractional-moment paper's experiments on MNIST (width 64, depth 20, ReLU,
SGD, s = 0.8) and its small CNN (one conv + four fully connected layers of width 64) on MNIST and
CIFAR-10 (JPEG q75 copy), every scheme plus LSUV, all runs of a data set trained together.

``python -m benchmarks mnist_fractional [--quick]``
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
from benchmarks.fractional import FRACTIONAL  # noqa: E402
from benchmarks.realdata import (  # noqa: E402
    CIFAR_NOTE,
    cifar10,
    med_iqr,
    mnist,
    scheme_note,
    schemes,
    train_schemes,
)
from lightning_lyapunov.examples.models import DeepMLP  # noqa: E402

WIDTH, DEPTH, LR, BATCH = 64, 20, 0.01, 64
PAPER_TRAIN = {FRACTIONAL.label: 85.0, "he": 80.1, "glorot": 13.9}  # MNIST MLP, 30 epochs, means of 20 runs


def paper_cnn(in_channels: int, size: int) -> nn.Sequential:
    """One 5x5 conv (16 channels, stride 2) + ReLU, then four Linear+ReLU of width 64 and a Linear head."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, 5, stride=2, padding=2), nn.ReLU(), nn.Flatten()]
    d = 16 * (size // 2) ** 2
    for _ in range(4):
        layers += [nn.Linear(d, WIDTH), nn.ReLU()]
        d = WIDTH
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers)


def _experiment(name: str, data: dict, build, seeds: list[int], epochs: int, eval_epochs: list[int]) -> dict:
    """Initialize every (scheme, seed) net, train them all together with SGD; per-scheme curves."""
    per_epoch = len(data["train"][0]) // BATCH
    runs = train_schemes(build, [FRACTIONAL, *schemes()], seeds, data["train"],
                         {"train": data["train"], "test": data["test"]},
                         lambda model: torch.optim.SGD(model.parameters(), lr=LR), steps=epochs * per_epoch,
                         batch_size=BATCH, eval_steps=[e * per_epoch for e in eval_epochs])
    return {"name": name, "epochs": np.array(eval_epochs), "runs": runs.acc, "seconds": runs.seconds,
            "init_seconds": runs.init_seconds, "n_train": len(data["train"][0]), "n_test": len(data["test"][0])}


def run(quick: bool = False) -> Report:
    setup_torch()
    seeds = [0] if quick else [0, 1, 2]
    n_train = 1000 if quick else 3000
    mlp_epochs, cnn_epochs = (2, 1) if quick else (30, 5)
    mnist_data = mnist(n_train=n_train, seed=0)
    cifar_data = cifar10(n_train=n_train, n_test=1000 if quick else 2000, seed=0)
    experiments = [
        _experiment("MNIST, MLP 64x20", mnist_data, lambda: DeepMLP(784, 10, WIDTH, DEPTH, activation="relu"),
                    seeds, mlp_epochs, sorted({0, 1, 5, 10, 20, mlp_epochs} & set(range(mlp_epochs + 1)))),
        _experiment("MNIST, CNN", mnist_data, lambda: paper_cnn(1, 28), seeds, cnn_epochs,
                    sorted({0, 1, 2, cnn_epochs} & set(range(cnn_epochs + 1)))),
        _experiment(f"{CIFAR_NOTE}, CNN", cifar_data, lambda: paper_cnn(3, 32), seeds, cnn_epochs,
                    sorted({0, 1, 2, cnn_epochs} & set(range(cnn_epochs + 1)))),
    ]
    rows = []
    for exp in experiments:
        for label, acc in exp["runs"].items():
            paper = PAPER_TRAIN.get(label) if exp["name"].startswith("MNIST, MLP") else None
            rows.append({
                "data, model": exp["name"], "scheme": label, "epochs": int(exp["epochs"][-1]),
                "train acc (%)": med_iqr(acc["train"][-1]), "test acc (%)": med_iqr(acc["test"][-1]),
                "paper train acc (%)": "-" if paper is None else f"{paper:.1f}",
                "train acc after 1 epoch (%)": med_iqr(acc["train"][1]),
            })

    fig, axes = plt.subplots(1, len(experiments), figsize=(5.2 * len(experiments), 4.2), squeeze=False)
    for ax, exp in zip(axes[0], experiments):
        for label, acc in exp["runs"].items():
            med = 100 * np.median(acc["train"], axis=1)
            lo, hi = (100 * np.quantile(acc["train"], q, axis=1) for q in (0.25, 0.75))
            (line,) = ax.plot(exp["epochs"], med, marker=".", label=label)
            ax.fill_between(exp["epochs"], lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.set(title=f"{exp['name']}: train accuracy", xlabel="epoch", ylabel="accuracy (%)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()

    times = "; ".join(f"{e['name']}: {e['seconds']:.0f} s training (all runs together), {e['init_seconds']:.0f} s init"
                      for e in experiments)
    setup = f"""
The fractional-moment paper's experiment (Gürbüzbalaban & Hu): `DeepMLP(784, 10, {WIDTH}, {DEPTH},
activation="relu")` on MNIST, plain SGD (learning rate {LR}, no momentum, no weight decay, batch {BATCH},
the same for every scheme; the paper's learning rate was not available), {mlp_epochs} epochs.
Their CNN, as we read "one convolutional layer and four fully connected layers of width 64": a 5x5
conv with 16 channels, stride 2, ReLU, then four Linear+ReLU of width 64 and a Linear head, on MNIST
and on {CIFAR_NOTE} (per-channel standardized), same SGD, {cnn_epochs} epochs.

{scheme_note()} `{FRACTIONAL.label}`: the paper's scheme (sigma^2 = 2.048/d at width 64).

**Reduced to fit the shared 2-core CPU** (the paper: full MNIST, 30 epochs, 20 runs): every model is
trained on a random subset of **{n_train} training images** (seed 0; CIFAR-10 test accuracy on a random
{experiments[2]['n_test']} of the 10,000 test images, MNIST on all {experiments[0]['n_test']}), seeds
{seeds[0]}..{seeds[-1]} ({len(seeds)} per scheme; seed k draws the weights; every run sees the same batches),
the CNNs for {cnn_epochs} epochs instead of 30. Train accuracy is measured on that training subset.
Cells: median [q25, q75] over seeds. All runs of one data set and model are trained together as one
stacked model (weights `(R, d_out, d_in)`, summed per-run losses; SGD is elementwise, so every run
trains exactly as alone). Times: {times}.
"""
    return Report("mnist_fractional", "Fractional-moment paper on MNIST and CIFAR-10 (JPEG q75 copy): every scheme",
               setup, rows, _findings(experiments), fig)


def _findings(experiments: list[dict]) -> str:
    lines = []
    for exp in experiments:
        final = {label: float(np.median(acc["train"][-1])) for label, acc in exp["runs"].items()}
        test = {label: float(np.median(acc["test"][-1])) for label, acc in exp["runs"].items()}
        ranked = sorted(final, key=final.get, reverse=True)
        lines.append(f"- **{exp['name']}**, after {exp['epochs'][-1]} epochs, median train / test accuracy, best "
                     "train first: " + "; ".join(f"{k} {100 * final[k]:.1f} / {100 * test[k]:.1f}" for k in ranked)
                     + ".")
    mlp = experiments[0]["runs"]
    frac, he, gl = (float(np.median(mlp[k]["train"][-1])) * 100 for k in (FRACTIONAL.label, "he", "glorot"))
    lyap = float(np.median(mlp["lyapunov-gauss"]["train"][-1])) * 100
    lines.append(
        f"- Paper (MNIST MLP, 30 epochs, means of 20 runs): s = 0.8 85.0%, He 80.1%, Glorot 13.9% train accuracy. "
        f"Ours (medians, {len(next(iter(mlp.values()))['train'][-1])} seeds): s = 0.8 {frac:.1f}%, He {he:.1f}%, "
        f"Glorot {gl:.1f}%, Lyapunov Gaussian {lyap:.1f}%. "
        + ("The s = 0.8 margin over He is reproduced in direction. " if frac - he > 1.0 else
           "The paper's s = 0.8 margin over He is **not** reproduced (gap "
           f"{frac - he:+.1f} points): at width 64 the two scales differ by 2.4% in variance. ")
        + ("Glorot is far behind, as in the paper." if gl < he - 10 else "Glorot is not far behind here.")
    )
    return "\n".join(lines)
