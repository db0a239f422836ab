"""The look-ahead inside Lightning's training loop: the kept candidate is exactly the one trained alone
(schedulers, accumulation, manual optimization), it resumes from a checkpoint taken mid-way, DDP
processes agree, and the dashboard shows it."""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from helpers import DeepNarrow, snapshot, trainer_kwargs
from lightning_lyapunov import LyapunovInit


class Warmup(DeepNarrow):
    """DeepNarrow with a per-step warm-up schedule (the look-ahead must swap its state too)."""

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 3))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}


class Manual(Warmup):
    """Manual optimization; ``returns=False``: training_step returns nothing."""

    def __init__(self, returns: bool = True) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.returns = returns

    def training_step(self, batch, batch_idx):
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
        if isinstance(optimizer, list):  # the callback observes the first batch in setup, before the optimizers exist
            return loss
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        scheduler.step()
        return loss if self.returns else None


def same_batches(n: int = 4) -> DataLoader:
    """``n`` identical batches per epoch: every candidate sees the same data, whenever it trains."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    y = x.sum(1, keepdim=True).sin()
    return DataLoader(TensorDataset(x.repeat(n, 1), y.repeat(n, 1)), batch_size=16)


def run(tmp_path, callback, module=None, ckpt_path=None, callbacks=(), **overrides):
    torch.manual_seed(0)
    module = module or Warmup()
    trainer = pl.Trainer(callbacks=[callback, *callbacks], **trainer_kwargs(tmp_path, **{"logger": False, **overrides}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, same_batches(), ckpt_path=ckpt_path)
    return trainer, module


def assert_same_training(a, b) -> None:
    (trainer_a, module_a), (trainer_b, module_b) = a, b
    state_a, state_b = snapshot(module_a), snapshot(module_b)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    opt_a, opt_b = trainer_a.optimizers[0], trainer_b.optimizers[0]
    for p, q in zip(module_a.parameters(), module_b.parameters()):
        assert torch.equal(opt_a.state[p]["exp_avg"], opt_b.state[q]["exp_avg"])
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]


def alone(tmp_path, look: LyapunovInit, steps: int, **overrides):
    """The kept candidate's draw trained alone for its own steps in the look-ahead run."""
    report = look.look_ahead.look.report
    own = report.kept_steps + steps - report.steps
    return run(tmp_path / "alone", LyapunovInit(seed=report.kept_seed), max_steps=own, **overrides)


def test_the_kept_candidate_trains_exactly_as_alone_and_the_dashboard_shows_the_look_ahead(tmp_path):
    look = LyapunovInit(seed=0, look_ahead=4, look_ahead_steps=12)  # cuts at 2 and 4 steps
    result = run(tmp_path, look, max_steps=16, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    report = look.look_ahead.look.report
    assert report.steps == 12 and report.cuts == (2, 4) and report.kept_steps == 4
    assert result[0].lr_scheduler_configs[0].scheduler.last_epoch == 4 + 16 - 12
    assert_same_training(result, alone(tmp_path, look, 16))
    # the dashboard: which candidate trained at each step, the losses at the cuts, the kept one
    with open(glob.glob(str(tmp_path / "lightning_logs" / "*" / "metrics.csv"))[0]) as f:
        rows = list(csv.DictReader(f))
    trained = {int(r["step"]): int(float(r["lyapunov/lookahead/candidate"])) for r in rows
               if r.get("lyapunov/lookahead/candidate")}
    survivors = sorted(report.history[1])
    assert [trained[s] for s in range(12)] == [0, 0, 1, 1, 2, 2, 3, 3] + [survivors[0]] * 2 + [survivors[1]] * 2
    assert max(trained) == 11  # nothing after the look-ahead
    kept = [r for r in rows if r.get("lyapunov/lookahead/kept")]
    assert [(int(r["step"]), int(float(r["lyapunov/lookahead/kept"]))) for r in kept] == [(11, report.kept)]
    cut = [r for r in rows if r.get(f"lyapunov/lookahead/cut/{survivors[0]}")]
    assert [int(r["step"]) for r in cut] == [7, 11]
    summary = look.summary()
    assert "look-ahead kept candidate" in summary and "loss at 2" in summary and "loss at 4" in summary


def test_gradient_accumulation_swaps_only_after_an_optimizer_step(tmp_path):
    look = LyapunovInit(seed=1, look_ahead=2, look_ahead_steps=4)  # 2 steps each, one cut
    result = run(tmp_path, look, max_steps=6, accumulate_grad_batches=2)
    report = look.look_ahead.look.report
    assert report.steps == 4 and result[0].global_step == 6
    assert_same_training(result, alone(tmp_path, look, 6, accumulate_grad_batches=2))


def test_manual_optimization_is_supported_when_training_step_returns_the_loss(tmp_path):
    look = LyapunovInit(seed=2, look_ahead=2, look_ahead_steps=4)
    result = run(tmp_path, look, module=Manual(), max_steps=6)
    report = look.look_ahead.look.report
    own = report.kept_steps + 6 - report.steps
    assert_same_training(result, run(tmp_path / "alone", LyapunovInit(seed=report.kept_seed), module=Manual(),
                                     max_steps=own))
    with pytest.raises(RuntimeError, match="training_step returned NoneType at step 1: return the loss"):
        run(tmp_path / "none", LyapunovInit(seed=2, look_ahead=2, look_ahead_steps=4), module=Manual(returns=False),
            max_steps=6)


class SkipsOne(Warmup):
    """``training_step`` returns None (Lightning skips the batch) at the fourth training batch."""

    batches = 0

    def on_train_batch_start(self, batch, batch_idx):
        self.batches += 1

    def training_step(self, batch, batch_idx):
        return None if self.batches == 4 else super().training_step(batch, batch_idx)


def test_a_skipped_batch_does_not_count_as_a_candidate_step(tmp_path):
    look = LyapunovInit(seed=0, look_ahead=4, look_ahead_steps=12)
    logger = CSVLogger(tmp_path)
    trainer, module = run(tmp_path, look, module=SkipsOne(), max_steps=16, logger=logger)
    report = look.look_ahead.look.report
    assert report.steps == sum(report.candidate_steps) == 12
    with open(glob.glob(str(tmp_path / "lightning_logs" / "*" / "metrics.csv"))[0]) as f:
        trained = {int(r["step"]): int(float(r["lyapunov/lookahead/candidate"])) for r in csv.DictReader(f)
                   if r.get("lyapunov/lookahead/candidate")}
    assert list(trained.values())[:8] == [0, 0, 1, 1, 2, 2, 3, 3] and 3 not in trained  # step 3 was skipped


@pytest.mark.parametrize("resume_at", [4, 5])
def test_resuming_from_a_checkpoint_taken_during_the_look_ahead_continues_it_exactly(tmp_path, resume_at):
    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    full = run(tmp_path, LyapunovInit(seed=0, look_ahead=4, look_ahead_steps=12), max_steps=16, callbacks=[every],
               enable_checkpointing=True)
    (path,) = glob.glob(str(tmp_path / "ckpt" / f"*step={resume_at}.ckpt"))
    saved = torch.load(path, weights_only=True)  # plain Python values and tensors only
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("LyapunovInit")]
    assert state["look_ahead"]["candidates"]["current"] == 2  # candidate 2 trains at steps 4 and 5
    resumed_callback = LyapunovInit(seed=0, look_ahead=4, look_ahead_steps=12)
    resumed = run(tmp_path / "resumed", resumed_callback, ckpt_path=path, max_steps=16)
    assert_same_training(full, resumed)
    assert resumed_callback.look_ahead.look.report == full[0].callbacks[0].look_ahead.look.report
    after = LyapunovInit(seed=0).state_dict()
    assert "look_ahead" not in after  # without a look-ahead the state is as before


def test_training_that_ends_during_the_look_ahead_keeps_the_best_so_far(tmp_path):
    look = LyapunovInit(seed=0, look_ahead=4, look_ahead_steps=12)
    with pytest.warns(UserWarning, match="training ended at step 5, before the look-ahead's last cut: kept candidate"):
        torch.manual_seed(0)
        trainer = pl.Trainer(callbacks=[look], **trainer_kwargs(tmp_path, logger=False, max_steps=5))
        trainer.fit(Warmup(), same_batches())
    report = look.look_ahead.look.report
    assert report.candidate_steps == [2, 2, 1, 0] and report.kept_steps == report.candidate_steps[report.kept]
    (ranking,) = report.history  # no cut was due: one ranking by the latest losses
    assert ranking[3] == float("inf") and report.kept == min(ranking, key=ranking.get)
    assert "latest loss" in report.describe() and "ended early: training ended at step 5" in look.summary()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"look_ahead": 1}, ValueError, "look_ahead=1 is invalid: it must be an integer >= 2"),
    ({"look_ahead": "8"}, TypeError, "look_ahead='8' is invalid: .* not a str"),
    ({"look_ahead_steps": 100}, ValueError, "look_ahead_steps=100 is only used with look_ahead="),
    ({"look_ahead": 8, "look_ahead_steps": 10}, ValueError, "10 look-ahead steps are too few for 8 candidates"),
    ({"look_ahead": 8, "scheme": "zero"}, ValueError, "needs a random scheme"),
    ({"look_ahead": 8, "initialize": False}, ValueError, "initialize=False leaves the weights alone, so look_ahead=8"),
])
def test_bad_arguments_are_refused_when_the_callback_is_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        LyapunovInit(**kwargs)


def test_ddp_processes_hold_the_same_candidates_and_keep_the_same_one(tmp_path):
    script = Path(__file__).parent / "scripts" / "ddp_lookahead.py"
    here = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here), str(here.parent)]))
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (torch.load(p, weights_only=True) for p in sorted(glob.glob(str(tmp_path / "rank*.pt"))))
    assert first["report"] == second["report"] and first["report"]["ended_early"] is None
    assert first["local"] != second["local"]  # each process ranked its own batches' losses ...
    for key in first["weights"]:  # ... and their mean: one decision, one model
        assert torch.equal(first["weights"][key], second["weights"][key]), key


@pytest.mark.parametrize("diagnostics", [True, False])
def test_the_dashboard_layout_has_the_look_ahead_charts_and_each_shows_its_tags(tmp_path, diagnostics):
    import re

    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    from lightning_lyapunov.dashboard import LOOK_AHEAD_CATEGORY

    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    look = LyapunovInit(seed=0, look_ahead=4, look_ahead_steps=12, diagnostics=diagnostics)
    run(tmp_path, look, max_steps=14, logger=logger, log_every_n_steps=1)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    config = layout_pb2.Layout()
    config.ParseFromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    titles = [category.title for category in config.category]
    assert titles.index(LOOK_AHEAD_CATEGORY) == (1 if diagnostics else 0) and (len(titles) > 1) == diagnostics
    charts = config.category[titles.index(LOOK_AHEAD_CATEGORY)].chart
    tags = events.Tags()["scalars"]
    shown = [sorted(t for t in tags for r in chart.multiline.tag if re.search(r, t)) for chart in charts]
    report = look.look_ahead.look.report
    assert shown == [["lyapunov/lookahead/candidate"], [f"lyapunov/lookahead/loss/{k}" for k in range(4)],
                     [f"lyapunov/lookahead/cut/{k}" for k in range(4)], ["lyapunov/lookahead/kept"]]
    assert [e.value for e in events.Scalars("lyapunov/lookahead/kept")] == [report.kept]
    assert [e.step for e in events.Scalars("lyapunov/lookahead/candidate")] == list(range(12))  # its steps only
