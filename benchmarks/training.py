"""A compact, fast training loop for many tiny networks at once, and the scheme-comparison protocol.

Deep narrow nets (width 2, depth 40) are so small that per-step Python overhead dominates: one
Lightning ``Trainer`` per run would spend nearly all its time outside the arithmetic. Here ``R``
independent runs (schemes x seeds x learning rates) are trained together:

* :class:`StackedMLP` holds ``R`` fully connected nets of the same shape, weights stacked as
  ``(R, d_out, d_in)``, and evaluates them with one ``torch.baddbmm`` per layer. Build it from ``R``
  ordinary ``nn.Module`` s initialized by the project's ``apply_init`` / ``sample_lyapunov_``.
* :func:`train` runs Adam with one learning rate per run on a flat parameter buffer (the update of
  all runs is a handful of tensor operations) and records per-run loss curves on held-out sets.

The runs are exactly independent: every loss is per run, the summed loss gives each run its own
gradient, and Adam is elementwise (``torch.optim.Adam`` semantics, L2 weight decay added to the
gradient).

The second half (:data:`SCHEMES` of ``benchmarks.common.Scheme``, :func:`initialize`,
:func:`compare_schemes`, :func:`summary_rows`, :func:`comparison_figure`) is the protocol shared by the scheme-comparison benchmarks: initialize one
``nn.Module`` per (scheme, seed), train every learning rate of a small grid, pick each scheme's
learning rate by the median final validation loss over seeds, report test numbers at that rate.

Example::

    nets = [DeepMLP(1, 1, width=2, depth=40) for _ in range(4)]
    for seed, net in enumerate(nets):
        apply_init(net, scheme="lyapunov", generator=torch.Generator().manual_seed(seed))
    model = StackedMLP.from_modules(nets, negative_slope=0.1)
    result = train(model, mse_loss, (x, y), {"val": (xv, yv)}, lr=torch.full((4,), 1e-3), steps=500)
    result.curves["val"][-1]        # final validation loss of each of the 4 runs
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import Scheme
from lightning_lyapunov.log_norm import log_gain

__all__ = [
    "StackedMLP",
    "TrainResult",
    "train",
    "mse_loss",
    "SCHEMES",
    "initialize",
    "select_lr",
    "quantiles",
    "plot_curves",
    "color_of",
    "Comparison",
    "compare_schemes",
    "summary_rows",
    "comparison_figure",
    "describe",
    "STIEFEL_WIDTH_2",
]


# ---------------------------------------------------------------------------------------------
# R networks at once


class StackedMLP(nn.Module):
    """``R`` independent MLPs ``x -> W_L phi(... phi(W_1 x + b_1) ...) + b_L`` evaluated together.

    ``weights[l]`` has shape ``(R, d_out, d_in)``, ``biases[l]`` ``(R, d_out)``; ``phi`` is Leaky ReLU
    with ``negative_slope`` after every layer but the last. Input ``(B, d_in)`` (shared by all runs)
    or ``(R, B, d_in)``; output ``(R, B, d_out)``.
    """

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor], negative_slope: float) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w.detach().clone()) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(b.detach().clone()) for b in biases])
        self.negative_slope = negative_slope
        self.runs = weights[0].shape[0]

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module], negative_slope: float) -> StackedMLP:
        """Stack the ``nn.Linear`` layers (in registration order) of ``R`` modules of the same shape.

        The modules must be plain chains Linear -> activation -> ... -> Linear (e.g. ``DeepMLP``) with
        Leaky ReLU ``negative_slope``; missing biases become zero biases.
        """
        layers = [[m for m in module.modules() if isinstance(m, nn.Linear)] for module in modules]
        weights = [torch.stack([net[i].weight.detach() for net in layers]) for i in range(len(layers[0]))]
        biases = [
            torch.stack([
                net[i].bias.detach() if net[i].bias is not None else torch.zeros(net[i].out_features)
                for net in layers
            ])
            for i in range(len(layers[0]))
        ]
        return cls(weights, biases, negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        # features-first layout (R, d, B): one (d_out x d_in) @ (d_in x B) product per run, about 4x
        # faster than (B x d_in) @ (d_in x d_out) for d = 2
        h = x.t().expand(self.runs, -1, -1) if x.dim() == 2 else x.transpose(1, 2)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(2), w, h)
            if i < last:
                h = F.relu(h) if self.negative_slope == 0 else F.leaky_relu(h, self.negative_slope)
        return h.transpose(1, 2)


def mse_loss(model: nn.Module, batch: tuple[Tensor, ...], generator: torch.Generator | None) -> Tensor:
    """Per-run mean squared error ``mean_{b,j} (model(x)_{r,b,j} - y_{b,j})^2``, shape ``(R,)``.

    ``batch`` is ``(x, y)`` with x ``(B, d_in)`` or ``(R, B, d_in)`` and y of matching shape.
    """
    x, y = batch
    return (model(x) - y).pow(2).flatten(1).mean(1)


# ---------------------------------------------------------------------------------------------
# training loop


@dataclass
class TrainResult:
    """Loss curves of ``R`` runs.

    ``steps``: the optimizer steps at which the curves were recorded (0 = at initialization);
    ``curves[name]``: array ``(len(steps), R)`` per evaluation set, plus ``"train"``: the mean
    training minibatch loss since the previous record (at step 0: the loss of the first batch).
    Non-finite losses are stored as ``inf``.
    """

    steps: np.ndarray
    curves: dict[str, np.ndarray]
    seconds: float


class _FlatAdam:
    """Adam on a flat buffer holding every parameter of every run, one learning rate per run.

    Each parameter ``(R, ...)`` becomes a contiguous block of ``flat`` (its ``.data`` and ``.grad`` are
    views), so one step is a few elementwise operations on ``flat``:
    ``g += wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr_r * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.
    """

    def __init__(self, params: Sequence[Tensor], lr: Tensor, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        runs = lr.numel()
        sizes = [p.numel() for p in params]
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.flat)
        self.lr = torch.cat([lr.float().repeat_interleave(n // runs) for n in sizes])
        start = 0
        for p, n in zip(params, sizes):
            p.data = self.flat[start:start + n].view_as(p)
            p.grad = self.grad[start:start + n].view_as(p)
            start += n
        self.m, self.v = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.weight_decay, self.betas, self.eps, self.t = weight_decay, betas, eps, 0

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        g = self.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # a diverged run must not poison Adam
        if self.weight_decay:
            g.add_(self.flat, alpha=self.weight_decay)
        self.m.lerp_(g, 1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.v / (1 - b2**self.t)).sqrt_().add_(self.eps)
        self.flat.addcdiv_(self.m * self.lr, denom, value=-1 / (1 - b1**self.t))
        self.grad.zero_()


LossFn = Callable[[nn.Module, tuple[Tensor, ...], "torch.Generator | None"], Tensor]


def _per_run(loss: Tensor) -> np.ndarray:
    values = loss.detach().double().numpy()
    return np.where(np.isfinite(values), values, np.inf)


def train(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: tuple[Tensor, ...],
    eval_data: Mapping[str, tuple[Tensor, ...]],
    *,
    lr: Tensor,
    steps: int,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    eval_every: int = 50,
    streams: Tensor | None = None,
    seed: int = 0,
    eval_fns: Mapping[str, LossFn] | None = None,
) -> TrainResult:
    """Train the ``R`` runs of ``model`` with Adam for ``steps`` steps; return per-run loss curves.

    ``loss_fn(model, batch, generator)`` returns the per-run loss ``(R,)``; ``batch`` is a tuple of
    tensors, ``(B, ...)`` when shared by all runs or ``(R, B, ...)``; ``generator`` is the loop's
    generator during training (for noise the loss draws itself) and ``None`` on evaluation sets
    (which must then carry any noise they need). ``lr``: ``(R,)`` learning rates.
    ``batch_size=None``: full batch. Otherwise each step draws ``batch_size`` training rows with
    replacement, one draw per *stream*: runs with equal ``streams[r]`` (e.g. the same seed) see the
    same minibatches; ``streams=None`` gives every run its own stream. Runs whose loss becomes
    non-finite get zero gradient from then on and ``inf`` losses. ``eval_fns``: per evaluation set
    name, a function used instead of ``loss_fn`` (e.g. an error against a known target).

    Example::

        result = train(model, mse_loss, (x, y), {"test": (xt, yt)}, lr=torch.full((R,), 1e-3),
                       steps=1000, batch_size=128, weight_decay=1e-4)
    """
    runs = lr.numel()
    generator = torch.Generator().manual_seed(seed)
    stream_of = torch.arange(runs) if streams is None else torch.as_tensor(streams)
    n_streams, n_train = int(stream_of.max()) + 1, len(train_data[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="grad and param do not obey")
        optimizer = _FlatAdam(list(model.parameters()), lr, weight_decay)

    def evaluate() -> dict[str, np.ndarray]:
        with torch.no_grad():
            fns = eval_fns or {}
            return {name: _per_run(fns.get(name, loss_fn)(model, data, None)) for name, data in eval_data.items()}

    records, recorded_steps, window = [], [], []
    start = time.perf_counter()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            record = evaluate()
            if window:
                record["train"] = np.mean(window, axis=0)
            records.append(record)
            recorded_steps.append(step)
            window = []
        if step == steps:
            break
        if batch_size is None:
            batch = train_data
        else:
            idx = torch.randint(n_train, (n_streams, batch_size), generator=generator)[stream_of]
            batch = tuple(t[idx] for t in train_data)
        loss = loss_fn(model, batch, generator)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            loss.nan_to_num(nan=0.0, posinf=0.0).sum().backward()
        window.append(_per_run(loss))
        if step == 0:
            records[0]["train"] = window[0]
        optimizer.step()
    curves = {name: np.stack([r[name] for r in records]) for name in records[-1]}
    return TrainResult(np.array(recorded_steps), curves, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# the scheme-comparison protocol


SCHEMES: tuple[Scheme, ...] = (
    Scheme("He", "he"),
    Scheme("Glorot", "glorot"),
    Scheme("orthogonal", "orthogonal"),
    Scheme("Lyapunov Gaussian", "lyapunov", "gaussian"),
    Scheme("Lyapunov orthogonal", "lyapunov", "orthogonal"),
    Scheme("sampled Lyapunov Gaussian", "lyapunov", "gaussian", sampled="network"),
    Scheme("sampled Lyapunov orthogonal", "lyapunov", "orthogonal", sampled="network"),
    Scheme("layer-wise sampled Lyapunov Gaussian", "lyapunov", "gaussian", sampled="layerwise"),
    Scheme("layer-wise sampled Lyapunov orthogonal", "lyapunov", "orthogonal", sampled="layerwise"),
    Scheme("fractional s=1 (Gaussian)", "fractional", "gaussian", moment=1.0),
    Scheme("Stiefel", "stiefel"),
)


def initialize(model: nn.Module, scheme: Scheme, probe: Tensor, seed: int) -> float:
    """Initialize ``model`` in place by ``scheme`` (draws from ``torch.Generator().manual_seed(seed)``;
    sampled schemes select on ``probe``); return the measured log-gain ``mean_b log r(model(x_b)) -
    log r(x_b)`` on ``probe`` (``r(v) = ||v|| / sqrt(dim)``, see ``sampling.log_gain``)."""
    scheme.apply(model, seed, probe)
    with torch.no_grad():
        return log_gain(probe, model(probe))


def quantiles(values: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, 25th, 75th percentile) along ``axis``, ``inf`` (diverged runs) counted as the largest
    values rather than dropped ("nearest rank" quantiles, so an ``inf`` never makes a ``nan``)."""
    values = np.where(np.isnan(values), np.inf, values)
    q = np.quantile(values, [0.5, 0.25, 0.75], axis=axis, method="nearest")
    return q[0], q[1], q[2]


def select_lr(final_val: np.ndarray, lrs: Sequence[float]) -> int:
    """Index of the learning rate with the lowest median (over seeds) final validation loss;
    ``final_val`` has shape ``(len(lrs), seeds)``. Ties go to the smaller rate."""
    medians = [float(quantiles(row)[0]) for row in final_val]
    return int(min(range(len(lrs)), key=lambda i: (medians[i], lrs[i])))


@dataclass
class Comparison:
    """Outcome of :func:`compare_schemes`.

    ``gains[j, k]``: measured initial log-gain of scheme j, seed k; ``curves[name]``: array
    ``(len(steps), len(lrs), len(schemes), len(seeds))``; ``chosen[j]``: index into ``lrs`` picked on
    validation for scheme j; ``at_chosen(name)``: ``(len(steps), len(schemes), len(seeds))``.
    """

    schemes: tuple[Scheme, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: np.ndarray
    gains: np.ndarray
    curves: dict[str, np.ndarray]
    chosen: list[int]
    init_seconds: float
    train_seconds: float

    def at_chosen(self, name: str) -> np.ndarray:
        values = self.curves[name]
        return np.stack([values[:, self.chosen[j], j] for j in range(len(self.schemes))], axis=1)


def compare_schemes(
    make_net: Callable[[], nn.Module],
    probe: Tensor,
    loss_fn: LossFn,
    train_data: tuple[Tensor, ...],
    eval_data: Mapping[str, tuple[Tensor, ...]],
    *,
    seeds: Sequence[int],
    lrs: Sequence[float],
    steps: int,
    batch_size: int | None,
    weight_decay: float,
    negative_slope: float,
    eval_every: int = 50,
    schemes: Sequence[Scheme] = SCHEMES,
    eval_fns: Mapping[str, LossFn] | None = None,
    val_name: str = "val",
) -> Comparison:
    """The protocol: one ``make_net()`` per (scheme, seed) initialized by :func:`initialize` (log-gain
    measured on ``probe``), copied once per learning rate, all ``len(lrs) * len(schemes) * len(seeds)``
    runs trained together by :func:`train`; runs of the same seed share their minibatch stream. Each
    scheme's learning rate is the one with the lowest median final ``val_name`` loss over seeds."""
    start = time.perf_counter()
    nets, gains = [], np.zeros((len(schemes), len(seeds)))
    for j, scheme in enumerate(schemes):
        for k, seed in enumerate(seeds):
            net = make_net()
            gains[j, k] = initialize(net, scheme, probe, seed)
            nets.append(net)
    init_seconds = time.perf_counter() - start
    model = StackedMLP.from_modules(nets * len(lrs), negative_slope)
    lr = torch.tensor(lrs, dtype=torch.float32).repeat_interleave(len(nets))
    streams = torch.arange(len(seeds)).repeat(len(lrs) * len(schemes))
    result = train(model, loss_fn, train_data, eval_data, lr=lr, steps=steps, batch_size=batch_size,
                   weight_decay=weight_decay, eval_every=eval_every, streams=streams, eval_fns=eval_fns)
    shape = (len(result.steps), len(lrs), len(schemes), len(seeds))
    curves = {name: values.reshape(shape) for name, values in result.curves.items()}
    chosen = [select_lr(curves[val_name][-1, :, j], lrs) for j in range(len(schemes))]
    return Comparison(tuple(schemes), tuple(lrs), tuple(seeds), result.steps, gains, curves, chosen,
                      init_seconds, result.seconds)


def summary_rows(comparison: Comparison, test_name: str, trained: Callable[[np.ndarray], np.ndarray],
                 val_name: str = "val") -> list[dict[str, object]]:
    """One table row per scheme: chosen learning rate, median and IQR of the final ``test_name`` loss
    at that rate, fraction of seeds with ``trained(final test losses)`` true, the median
    ``test_name`` loss at initialization, median and IQR of the
    initial log-gain, and the median final validation loss at every learning rate of the grid."""
    values = comparison.at_chosen(test_name)
    initial, final = values[0], values[-1]
    rows = []
    for j, scheme in enumerate(comparison.schemes):
        med, lo, hi = quantiles(final[j])
        g_med, g_lo, g_hi = quantiles(comparison.gains[j])
        row: dict[str, object] = {
            "scheme": scheme.label,
            "lr": comparison.lrs[comparison.chosen[j]],
            "test median": float(med),
            "test q25": float(lo),
            "test q75": float(hi),
            "trained": f"{int(trained(final[j]).sum())}/{final.shape[1]}",
            "init test median": float(quantiles(initial[j])[0]),
            "init log-gain median": float(g_med),
            "init log-gain q25": float(g_lo),
            "init log-gain q75": float(g_hi),
        }
        for i, lr in enumerate(comparison.lrs):
            row[f"val median @{lr:g}"] = float(np.median(comparison.curves[val_name][-1, i, j]))
        rows.append(row)
    return rows


def color_of(i: int) -> str:
    """The i-th line color: tab10, then black, then tab10 again."""
    import matplotlib.pyplot as plt

    palette = [*plt.get_cmap("tab10").colors, "black"]
    return palette[i % len(palette)]


def plot_curves(ax, steps: np.ndarray, curves: Mapping[str, np.ndarray], ylabel: str, title: str) -> None:
    """Median (line) and interquartile band over seeds of each labelled curve ``(len(steps), seeds)``
    on a log-scale loss axis (colors from tab20, Lyapunov orthogonal variants dashed)."""
    for i, (label, values) in enumerate(curves.items()):
        color = color_of(i)
        med, lo, hi = quantiles(values, axis=1)
        style = "--" if "Lyapunov orthogonal" in label else "-"
        ax.plot(steps, med, style, color=color, label=label, lw=1.6)
        ax.fill_between(steps, np.minimum(lo, 1e30), np.minimum(hi, 1e30), color=color, alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("Adam step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)


def comparison_figure(comparison: Comparison, test_name: str, ylabel: str, title: str,
                      reference: float | None = None, reference_label: str = "",
                      limits: tuple[float, float] | None = None):
    """Left: median and IQR band over seeds of the ``test_name`` curve of every scheme at its chosen
    learning rate. Right: every seed's final value per scheme (dots) with the median (bar). Log axes;
    ``reference``: a horizontal line (e.g. the "trained" threshold); ``limits``: the loss axis range
    (values outside are drawn at its edge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.2), gridspec_kw={"width_ratios": [1.35, 1]})
    values = comparison.at_chosen(test_name)
    labels = [f"{s.label} (lr {comparison.lrs[c]:g})" for s, c in zip(comparison.schemes, comparison.chosen)]
    plot_curves(left, comparison.steps, {label: values[:, j] for j, label in enumerate(labels)}, ylabel, title)
    final = np.where(np.isnan(values[-1]), np.inf, values[-1])
    finite_max = np.nanmax(np.where(np.isfinite(final), final, np.nan))
    for j in range(len(comparison.schemes)):
        color = color_of(j)
        ys = np.where(np.isfinite(final[j]), final[j], finite_max * 3)
        if limits is not None:
            ys = np.clip(ys, *limits)
        jitter = np.linspace(-0.25, 0.25, len(ys))
        right.scatter(ys, j + jitter, s=12, color=color, alpha=0.8)
        right.plot([np.median(ys)] * 2, [j - 0.4, j + 0.4], color="black", lw=2)
    right.set_yticks(range(len(comparison.schemes)), [s.label for s in comparison.schemes])
    right.invert_yaxis()
    right.set_xscale("log")
    right.set_xlabel(f"final {ylabel} per seed (bar: median)")
    right.set_title("final value, every seed")
    right.grid(True, axis="x", alpha=0.3)
    if reference is not None:
        for ax, line in ((left, left.axhline), (right, right.axvline)):
            line(reference, color="grey", ls=":", lw=1.2, label=reference_label)
    if limits is not None:
        left.set_ylim(*limits)
        right.set_xlim(limits[0] / 1.05, limits[1] * 1.05)
    left.legend(fontsize=7.5, loc="upper right", ncol=1, framealpha=0.85)
    fig.tight_layout()
    return fig


def _trained_count(row: Mapping[str, object]) -> int:
    return int(str(row["trained"]).split("/")[0])


STIEFEL_WIDTH_2 = (
    "Stiefel at width 2 is degenerate: a 2x2 orthogonal matrix whose rows and columns sum to 1 is the "
    "identity or the coordinate swap, so every hidden layer only permutes the two units (every seed draws "
    "essentially the same network) and a unit that is negative after the first layer is multiplied by "
    "0.1 at every layer; its measured log-gain is -inf when a probe point's output underflows to 0."
)


def describe(rows: Sequence[Mapping[str, object]], metric: str) -> str:
    """Plain findings from :func:`summary_rows`: the ranking by median final ``metric``, the best
    Lyapunov variant against the best baseline, Lyapunov against He, and network-level against
    layer-wise sampling. Says so plainly when a baseline beats every Lyapunov variant."""
    by = {str(r["scheme"]): r for r in rows}
    ranked = sorted(rows, key=lambda r: (float(r["test median"]), -_trained_count(r)))
    lines = [f"Ranking by median final {metric} (IQR over seeds in brackets; seeds trained; chosen lr; "
             "median initial log-gain):", ""]
    for r in ranked:
        lines.append(f"{ranked.index(r) + 1}. {r['scheme']}: {r['test median']:.3g} "
                     f"[{r['test q25']:.3g}, {r['test q75']:.3g}], {r['trained']} trained, lr {r['lr']:g}, "
                     f"log-gain {r['init log-gain median']:+.2f}")
    lyap = [r for r in ranked if "Lyapunov" in str(r["scheme"])]
    base = [r for r in ranked if "Lyapunov" not in str(r["scheme"])]
    lines.append("")
    if lyap and base:
        best_l, best_b = lyap[0], base[0]
        if float(best_l["test median"]) <= float(best_b["test median"]):
            lines.append(f"- The best Lyapunov variant ({best_l['scheme']}, {best_l['test median']:.3g}) beats the "
                         f"best other scheme ({best_b['scheme']}, {best_b['test median']:.3g}) in median.")
        else:
            lines.append(f"- Lyapunov init does not win here: {best_b['scheme']} ({best_b['test median']:.3g}) has a "
                         f"lower median than the best Lyapunov variant ({best_l['scheme']}, "
                         f"{best_l['test median']:.3g}).")
        best_q = min(rows, key=lambda r: float(r["test q25"]))
        lines.append(f"- Best quarter of seeds (lowest 25th percentile): {best_q['scheme']} ({best_q['test q25']:.3g}; "
                     f"best Lyapunov variant {min(float(r['test q25']) for r in lyap):.3g})"
                     + ("." if "Lyapunov" in str(best_q["scheme"]) else
                        ": Lyapunov init does not give the best individual runs here."))
        better_l = [str(r["scheme"]) for r in base if float(r["test median"]) < float(best_l["test median"])]
        if better_l:
            lines.append(f"- Schemes with a lower median than every Lyapunov variant: {', '.join(better_l)}.")
    if "He" in by and "Lyapunov Gaussian" in by:
        he, ly = by["He"], by["Lyapunov Gaussian"]
        lines.append(f"- Lyapunov Gaussian vs He: median {ly['test median']:.3g} vs {he['test median']:.3g}, "
                     f"trained {ly['trained']} vs {he['trained']}; initial log-gain "
                     f"{ly['init log-gain median']:+.2f} vs {he['init log-gain median']:+.2f}.")
    for dist in ("Gaussian", "orthogonal"):
        names = (f"Lyapunov {dist}", f"sampled Lyapunov {dist}", f"layer-wise sampled Lyapunov {dist}")
        if all(n in by for n in names):
            plain, net, lw = (by[n] for n in names)
            winner = min((plain, net, lw), key=lambda r: float(r["test median"]))
            lines.append(
                f"- {dist}: unsampled / network-level sampled / layer-wise sampled: median "
                f"{plain['test median']:.3g} / {net['test median']:.3g} / {lw['test median']:.3g}, trained "
                f"{plain['trained']} / {net['trained']} / {lw['trained']}, initial log-gain IQR "
                f"[{plain['init log-gain q25']:+.2f}, {plain['init log-gain q75']:+.2f}] / "
                f"[{net['init log-gain q25']:+.2f}, {net['init log-gain q75']:+.2f}] / "
                f"[{lw['init log-gain q25']:+.2f}, {lw['init log-gain q75']:+.2f}]; lowest median: "
                f"{winner['scheme']}.")
    return "\n".join(lines)
