"""Run by tests/test_callbacks.py: DDP with 2 CPU processes (gloo); each rank saves its weights
at the start of training. No seed is given, so the ranks draw different weights in setup and
only DDP's broadcast of rank 0's weights makes them equal, as DESIGN section 7 says. An optional
second argument is LyapunovInit's ``calibrate=`` (each rank calibrates on its own batch)."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from helpers import DeepNarrow, loader
from lightning_lyapunov import LyapunovInit


class SaveWeights(pl.Callback):
    def __init__(self, out: Path):
        self.out = out

    def on_train_start(self, trainer, pl_module):
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
                   self.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.manual_seed(1234 + int(__import__("os").environ.get("LOCAL_RANK", 0)))  # ranks differ
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[LyapunovInit(calibrate=sys.argv[2] if len(sys.argv) > 2 else None),
                                    SaveWeights(out)])
    trainer.fit(DeepNarrow(), loader())
    if torch.distributed.is_initialized():  # gloo's threads ended in order: without it, an occasional abort at exit
        torch.distributed.destroy_process_group()
