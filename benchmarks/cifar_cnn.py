"""Real-data benchmark 5: the ``configs/cifar10.yaml`` deep narrow plain CNN and a small ResNet on
CIFAR-10 (JPEG q75 copy), every scheme plus LSUV, test accuracy per epoch and time to a target
accuracy.

``python -m benchmarks cifar_cnn [--quick]``
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.classification import setup_torch, train_classifier  # noqa: E402
from benchmarks.common import Report  # noqa: E402
from benchmarks.realdata import CIFAR_NOTE, best_first, cifar10, init_modules, med_iqr, scheme_note, schemes  # noqa: E402
from lightning_lyapunov.examples.models import PlainCNN, SmallResNet  # noqa: E402

LR, WEIGHT_DECAY, BATCH, POOL, TARGET = 1e-3, 5e-4, 64, 4, 0.25
MODELS = {
    "plain CNN (config)": lambda: PlainCNN(3, 10, width=16, depth=20, activation="leaky_relu", negative_slope=0.1),
    "ResNet-8 (BN)": lambda: SmallResNet(3, 10, width=16, blocks_per_stage=(1, 1, 1)),
}


def _runs(build, data: dict, seeds: list[int], epochs: int) -> dict[str, list[dict]]:
    """Per scheme and seed: train with Adam, test accuracy after every epoch, CPU seconds per epoch."""
    per_epoch = len(data["train"][0]) // BATCH
    out = {}
    for scheme in schemes():
        out[scheme.label] = []
        for seed, model in zip(seeds, init_modules(build, scheme, seeds, data["train"][0][:256])):
            cpu = time.process_time()
            optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
            records = train_classifier(model, optimizer, data["train"], {"test": data["test"]},
                                       steps=epochs * per_epoch, eval_steps=[e * per_epoch for e in range(epochs + 1)],
                                       batch_size=BATCH, seed=seed)
            seconds = time.process_time() - cpu
            acc = np.array([r["test_acc"] for r in records])
            hit = np.flatnonzero(acc >= TARGET)
            epoch = int(hit[0]) if hit.size else None
            out[scheme.label].append({"acc": acc, "cpu_s": seconds, "epoch_to_target": epoch,
                                      "cpu_s_to_target": None if epoch is None else seconds * epoch / epochs})
    return out


def run(quick: bool = False) -> Report:
    setup_torch()
    seeds, epochs, n_train, n_test = ([0], 1, 512, 500) if quick else ([0, 1, 2], 3, 1920, 1000)
    data = cifar10(n_train=n_train, n_test=n_test, pool=POOL, seed=0)
    results = {name: _runs(build, data, seeds, epochs) for name, build in MODELS.items()}
    rows = []
    for name, by_scheme in results.items():
        for label, runs in by_scheme.items():
            row = {"model": name, "scheme": label}
            for e in range(1, epochs + 1):
                row[f"test acc epoch {e} (%)"] = med_iqr([r["acc"][e] for r in runs])
            reached = [r for r in runs if r["epoch_to_target"] is not None]
            row[f"runs reaching {100 * TARGET:.0f}%"] = f"{len(reached)}/{len(runs)}"
            row["epochs to target (median of those)"] = (
                f"{np.median([r['epoch_to_target'] for r in reached]):.1f}" if reached else "-")
            row["CPU s to target"] = f"{np.median([r['cpu_s_to_target'] for r in reached]):.1f}" if reached else "-"
            rows.append(row)
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (name, by_scheme) in zip(axes[0], results.items()):
        for label, runs in by_scheme.items():
            acc = 100 * np.stack([r["acc"] for r in runs])
            ax.plot(range(epochs + 1), np.median(acc, axis=0), marker="o", ms=3, label=label)
        ax.axhline(100 * TARGET, color="gray", lw=0.8)
        ax.set(title=f"{name} on {CIFAR_NOTE} (8x8)", xlabel="epoch", ylabel="test accuracy (%)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    setup = f"""
Models: the `configs/cifar10.yaml` net, `PlainCNN(width=16, depth=20, leaky_relu 0.1, no BatchNorm)`, and
`SmallResNet(width=16, blocks_per_stage=(1, 1, 1))` (ResNet-8 with BatchNorm). Adam (lr {LR:g}, weight
decay {WEIGHT_DECAY:g}, the config's optimizer), batch {BATCH}, no augmentation, {epochs} epochs, seeds
{seeds[0]}..{seeds[-1]} ({len(seeds)} per scheme; seed k draws the weights and the batch order).

{scheme_note()}

**Heavily reduced to fit the shared 2-core CPU** (the config trains 30 epochs on 45,000 full-size
images): {CIFAR_NOTE}, per-channel standardized, **average-pooled {POOL}x{POOL} to 8x8 pixels**, a random
**{n_train}-image training subset** and {n_test} random test images (seed 0). Absolute accuracies are
therefore far below full CIFAR-10 numbers; the comparison between schemes is the point.
Time to target: the first epoch whose test accuracy reaches {100 * TARGET:.0f}%, and the CPU seconds of
training up to it (one torch thread; per-epoch time = the run's CPU time / epochs).
"""
    return Report("cifar_cnn", f"Config plain CNN and ResNet-8 on {CIFAR_NOTE}: every scheme", setup, rows,
               _findings(results, epochs), fig)


def _findings(results: dict, epochs: int) -> str:
    lines = []
    for name, by_scheme in results.items():
        final = {label: float(np.median([r["acc"][-1] for r in runs])) for label, runs in by_scheme.items()}
        lines.append(f"- {name}, median test accuracy after {epochs} epochs, best first: {best_first(final)}.")
    return "\n".join(lines)
