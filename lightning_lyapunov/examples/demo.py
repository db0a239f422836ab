"""The demo: a width-2, depth-40 Leaky ReLU net learns a degree-5 polynomial, He against Lyapunov.

``python -m lightning_lyapunov.examples.demo [--epochs 20] [--seeds 3] [--logdir runs/demo]``

With He init the log-norm of the signal shrinks by 0.82 per layer at width 2 (e^-33 over 40
layers): the net outputs a constant and the loss stays at the variance of the target. Lyapunov
init sets the drift to zero; the sampled variant also picks, among ceil(2 sqrt(L)) candidates,
the network whose gain on a training batch is closest to 1. Each run logs the per-layer signal
statistics to TensorBoard; the command to open them is printed at the end. Every run gets a
verdict (healthy, vanishing, exploding, collapsed from layer k, dead units), at its last measured
step and wherever it changed before.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_lyapunov import LyapunovInit, theory
from lightning_lyapunov._warn import LyapunovWarning
from lightning_lyapunov.callbacks import log as callback_log
from lightning_lyapunov.examples.data import PolynomialRegression
from lightning_lyapunov.examples.models import DeepMLP, RegressionModule

WIDTH, DEPTH, SLOPE = 2, 40, 0.1
SCHEMES = {
    "he": dict(scheme="he"),
    "lyapunov": dict(scheme="lyapunov", distribution="orthogonal"),
    "lyapunov-sampled": dict(scheme="lyapunov", distribution="orthogonal", sampled=True),
}


@contextlib.contextmanager
def quiet(callback_output: bool) -> Iterator[None]:
    """Lightning's banners and hints off; the callback's plan, warnings and summary only if asked."""
    loggers = {logging.getLogger("lightning.pytorch.utilities.rank_zero"): logging.WARNING,
               callback_log: logging.INFO if callback_output else logging.WARNING}
    levels = {logger: logger.level for logger in loggers}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=pl.utilities.warnings.PossibleUserWarning)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        if not callback_output:
            warnings.filterwarnings("ignore", category=LyapunovWarning)
        try:
            for logger, level in loggers.items():
                logger.setLevel(level)
            yield
        finally:
            for logger, level in levels.items():
                logger.setLevel(level)


@dataclass
class Result:
    """One run: the validation MSE after the last epoch, the measured exponents at step 0 (of the
    input-dependent part and of h), the verdict at the last measured step and the verdicts before it."""

    loss: float
    centred_exponent: float
    exponent: float
    verdict: str
    label: str
    before: list[tuple[int, str]]

    def short(self) -> str:
        """The last verdict's label, with ``*`` when another verdict came before it."""
        return self.label + ("*" if any(found != self.verdict for _, found in self.before) else "")

    def verdicts(self) -> str:
        """``collapsed from layer 'model.net.46' (#23) (before: vanishing at step 0)``."""
        earlier = [f"{found} at step {step}" for step, found in self.before if found != self.verdict]
        return self.verdict + (f" (before: {'; '.join(earlier)})" if earlier else "")


def run(label: str, seed: int, epochs: int, logdir: Path) -> Result:
    """Train one net; return its :class:`Result`."""
    pl.seed_everything(seed, verbose=False)
    callback = LyapunovInit(seed=seed, **SCHEMES[label])
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(logdir, name=label, version=f"seed{seed}", default_hp_metric=False),
        callbacks=[callback],
        log_every_n_steps=8,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    data = PolynomialRegression(batch_size=64, seed=0)
    model = RegressionModule(DeepMLP(1, 1, width=WIDTH, depth=DEPTH, negative_slope=SLOPE),
                             lr=1e-3, weight_decay=1e-4)
    trainer.fit(model, data)
    report = callback.report
    first = report.first
    return Result(float(trainer.callback_metrics["val/loss"]), first.centred_exponent, first.exponent_estimate,
                  str(report.verdict), report.verdict.label, [(step, str(found)) for step, found in report.verdicts[:-1]])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_lyapunov.examples.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--logdir", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a width-2 net gains nothing from threads; on a busy machine they cost a lot
    start = time.perf_counter()
    print(f"{len(SCHEMES)} schemes x {args.seeds} seeds, {args.epochs} epochs each; LyapunovInit's console "
          "output (plan, warnings, summary) is shown for seed 0 of each scheme\n")
    results: dict[str, list[Result]] = {}
    for label in SCHEMES:
        for seed in range(args.seeds):
            if seed == 0:
                print(f"--- {label}, seed 0")
            began = time.perf_counter()
            with quiet(callback_output=seed == 0):
                result = run(label, seed, args.epochs, args.logdir)
            results.setdefault(label, []).append(result)
            print(f"{label} seed {seed}: val MSE {result.loss:.3g}, verdict {result.verdicts()} "
                  f"({time.perf_counter() - began:.0f} s)")
    he_exponent = theory.lyapunov_exponent(WIDTH, WIDTH, SLOPE, theory.he_scale(WIDTH, SLOPE))
    print(f"\nwidth {WIDTH}, depth {DEPTH}, LeakyReLU({SLOPE}), degree-5 polynomial, {args.epochs} epochs, "
          f"Adam 1e-3; theory's exponent per hidden layer: He {he_exponent:+.4f}, Lyapunov +0.0000")
    print("measured exponent at step 0: slope over depth of the centred log-norm (the input-dependent part, "
          "typical sample); verdict at the last measured step")
    print(f"{'scheme':<18} {'median val MSE':>15} {'per seed':>20} {'exponent at step 0':>20}  verdict per seed")
    for label, runs in results.items():
        per_seed = " ".join(f"{r.loss:.3g}" for r in runs)
        exponent = statistics.median(r.centred_exponent for r in runs)
        verdicts = ", ".join(r.short() for r in runs)
        print(f"{label:<18} {statistics.median(r.loss for r in runs):>15.4g} {per_seed:>20} {exponent:>+20.3f}  {verdicts}")
    if any(r.short().endswith("*") for runs in results.values() for r in runs):
        print("*: another verdict before the last measured step (the run's line above says which and when)")
    print(f"\n({time.perf_counter() - start:.0f} s) TensorBoard logs in {args.logdir}; open them with:\n"
          f"    .venv/bin/tensorboard --logdir {args.logdir}\n"
          "and start with the CUSTOM SCALARS tab (summary first), then IMAGES (depth profiles).")


if __name__ == "__main__":
    main()
