"""Benchmark: delta vs full draws for convolutions (``conv="delta"`` vs ``conv="full"``).

A delta conv holds one drawn ``(C_out, C_in)`` matrix at the kernel's centre tap and zeros elsewhere
(Xiao et al. 2018); a full draw fills the whole kernel. Measured: the log-gain of a 20-layer 3x3 ReLU
CNN at init, and a short training of a 12-layer Conv1d ReLU net on MNIST-1D.

``python -m benchmarks conv_delta [--quick]``
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from benchmarks.classification import iqr, mnist1d, plot_curves, run_seeds, setup_torch, summarize  # noqa: E402
from benchmarks.common import Report, Scheme, spread  # noqa: E402

SCHEMES = (
    Scheme("lyapunov-orth full", "lyapunov", "orthogonal", conv="full"),
    Scheme("lyapunov-orth delta", "lyapunov", "orthogonal", conv="delta"),
    Scheme("orthogonal full", "orthogonal", "orthogonal", conv="full"),
    Scheme("orthogonal delta", "orthogonal", "orthogonal", conv="delta"),
    Scheme("lyapunov-gauss full", "lyapunov", "gaussian", conv="full"),
    Scheme("stiefel (delta)", "stiefel", "orthogonal"),
)
CHANNELS, DEPTH_2D, SIZE = 16, 20, 16
DEPTH_1D, LR, BATCH = 12, 1e-3, 128


def cnn2d() -> nn.Sequential:
    """``DEPTH_2D`` layers of 3x3 Conv2d(16, 16, padding 1) + ReLU (no head: a plain chain)."""
    return nn.Sequential(*[m for _ in range(DEPTH_2D) for m in (nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU())])


def cnn1d() -> nn.Sequential:
    """MNIST-1D classifier: ``DEPTH_1D`` Conv1d(k=3, padding 1) + ReLU layers of 16 channels, Linear head."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, 40))]
    for i in range(DEPTH_1D):
        layers += [nn.Conv1d(1 if i == 0 else CHANNELS, CHANNELS, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(CHANNELS * 40, 10))


def _log_r(v: Tensor) -> Tensor:
    flat = v.flatten(1)
    return flat.norm(dim=1).log() - 0.5 * math.log(flat.shape[1])


def log_gain_at_init(scheme: Scheme, seed: int) -> float:
    """Mean over 16 Gaussian inputs (16 x 16 pixels) of log r(output) - log r(input)."""
    model = cnn2d()
    scheme.apply(model, seed)
    x = torch.randn(16, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        return float((_log_r(model(x)) - _log_r(x)).mean())


def run(quick: bool = False) -> Report:
    setup_torch()
    init_seeds, train_seeds, steps = (list(range(4)), [0, 1], 40) if quick else (list(range(20)), [0, 1, 2], 250)
    every = steps // 5
    gains = {s.label: [log_gain_at_init(s, seed) for seed in init_seeds] for s in SCHEMES}
    data = mnist1d()
    evals = {"val": data["val"], "test": data["test"]}
    trained = {
        s.label: run_seeds(cnn1d, s, train_seeds, lambda m: torch.optim.Adam(m.parameters(), lr=LR),
                           data["train"], evals, steps=steps, eval_steps=range(0, steps + 1, every),
                           batch_size=BATCH)
        for s in SCHEMES
    }
    rows = [{
        "scheme": s.label,
        f"log-gain at init, {DEPTH_2D} layers (median [q25, q75])": iqr(spread(gains[s.label]), 1.0, 2),
        "log-gain at init, min / max": f"{min(gains[s.label]):+.2f} / {max(gains[s.label]):+.2f}",
        "val loss at step 0": iqr(summarize(trained[s.label], "val_loss", 0), 1.0, 3),
        f"val loss after {steps} steps": iqr(summarize(trained[s.label], "val_loss"), 1.0, 3),
        f"test acc after {steps} steps (%)": iqr(summarize(trained[s.label], "test_acc")),
    } for s in SCHEMES]

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [s.label for s in SCHEMES]
    axes[0].boxplot([gains[label] for label in labels], showfliers=True)
    axes[0].set_xticks(range(1, len(labels) + 1), labels, rotation=25, ha="right", fontsize=8)
    axes[0].axhline(0.0, color="k", lw=0.8)
    axes[0].set(title=f"log r(out) - log r(in) at init, {DEPTH_2D}-layer 3x3 ReLU CNN", ylabel="log-gain")
    axes[0].grid(alpha=0.3)
    plot_curves(axes[1], trained, "test_acc", x="step")
    axes[1].legend(fontsize=7)
    axes[1].set(title=f"MNIST-1D, {DEPTH_1D}-layer Conv1d ReLU, Adam lr {LR:g}", xlabel="step", ylabel="test acc (%)")
    fig.tight_layout()

    setup = f"""
At init: `{DEPTH_2D}` layers of `Conv2d({CHANNELS}, {CHANNELS}, 3, padding=1)` + ReLU, zero biases, initialized with the
project's `apply_init(model, scheme=..., distribution=..., conv=...)`, seeds 0..{init_seeds[-1]}; per seed the mean over
16 standard normal inputs ({CHANNELS} x {SIZE} x {SIZE}) of log r(output) - log r(input), r(v) = ||v|| / sqrt(numel).
`full`: the whole kernel drawn as the flattened (C_out, C_in * 9) matrix; `delta`: one (C_out, C_in) matrix at
the centre tap, the other taps 0. Stiefel always uses delta for convolutions (`conv="full"` is refused).

Training: MNIST-1D (generated locally, seed 0; 3500 train / 500 val / 1000 test), input reshaped to 1 x 40,
`{DEPTH_1D}` layers of Conv1d(k=3, padding 1, 16 channels) + ReLU and a Linear head, Adam lr {LR:g}, batch {BATCH},
{steps} steps, seeds {train_seeds[0]}..{train_seeds[-1]} (seed k draws the weights and the batch order);
median [q25, q75] over seeds. Float32, one torch thread.
"""
    return Report("conv_delta", "Delta vs full conv draws: log-gain at init and a short training",
               setup, rows, _findings(gains, trained, steps), fig)


def _verdict(test: dict[str, float]) -> str:
    pairs = [(k, k.replace("full", "delta")) for k in test if "full" in k and k.replace("full", "delta") in test]
    wins = [full for full, delta in pairs if test[delta] > test[full]]
    gaps = ", ".join(f"{delta} {100 * (test[delta] - test[full]):+.1f} points" for full, delta in pairs)
    if len(wins) == len(pairs):
        return f"- Delta draws train better than full ones here ({gaps} against the full draw)."
    return (f"- **Delta draws do not win this short training** ({gaps} against the full draw of the same "
            "scheme): the log-gain at init is as good, but a delta kernel starts as a 1x1 convolution and "
            "has to grow its spatial taps by training. Keep `conv=\"full\"` (the default) unless depth "
            "makes the full draw's spread a problem.")


def _findings(gains: dict[str, list[float]], trained: dict[str, list], steps: int) -> str:
    med = {k: spread(v)[0] for k, v in gains.items()}
    width = {k: spread(v)[2] - spread(v)[1] for k, v in gains.items()}
    test = {k: summarize(v, "test_acc")[0] for k, v in trained.items()}
    best = max(test, key=test.get)
    lines = [
        "- Log-gain over 20 layers at init (median, interquartile width): "
        + "; ".join(f"{k} {med[k]:+.2f} ({width[k]:.2f})" for k in med) + ".",
        "- The Stiefel conv used to flatten the kernel to (C_out, 9 C_in): row sums 3, the mean tripled per layer; "
        "on this 20-layer CNN that measured +19.35 log-gain at init (5 seeds, before the delta construction).",
        f"- Test accuracy after {steps} steps (median): "
        + "; ".join(f"{k} {100 * test[k]:.1f}%" for k in test) + f". Best: {best}.",
        _verdict(test),
    ]
    return "\n".join(lines)
