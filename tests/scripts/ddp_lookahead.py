"""Run by tests/test_lookahead_fit.py: DDP with 2 CPU processes (gloo) and a look-ahead. No seed is
given and the ranks' global generators differ, so each rank draws other candidates in setup; each
rank trains on its own shard of the data. Each rank saves its final weights, the look-ahead's report
and the candidates' losses it saw itself (before they were averaged over the processes)."""

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

import lightning_lyapunov.lookahead_fit as lookahead_fit
from helpers import DeepNarrow, loader
from lightning_lyapunov import LyapunovInit

LOCAL: list[list[float]] = []
_reduce = lookahead_fit._reduce


def recording(trainer, pl_module, losses):
    LOCAL.append(list(losses))
    return _reduce(trainer, pl_module, losses)


class Save(pl.Callback):
    def __init__(self, out: Path):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        (callback,) = [c for c in trainer.callbacks if isinstance(c, LyapunovInit)]
        torch.save({"weights": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
                    "report": callback.look_ahead.look.report.state_dict(), "local": LOCAL},
                   self.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    lookahead_fit._reduce = recording
    torch.manual_seed(1234 + int(os.environ.get("LOCAL_RANK", 0)))  # ranks differ
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=14, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[LyapunovInit(look_ahead=4, look_ahead_steps=12), Save(out)])
    trainer.fit(DeepNarrow(), loader(n=256))
    if torch.distributed.is_initialized():  # gloo's threads ended in order: without it, an occasional abort at exit
        torch.distributed.destroy_process_group()
