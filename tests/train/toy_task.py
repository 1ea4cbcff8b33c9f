"""A tiny regression task for the training-loop tests, and a script that trains it.

The tests import ``ToyTask`` and also run this file as a process (plain or under torchrun):

    python tests/train/toy_task.py --out DIR [--dropout P --jitter J --sleep S --die-at STEP --count-flops]
                                   [TrainConfig flags]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynacomp.config import add_config_args, config_from_args
from dynacomp.train import TrainConfig, seed_everything, train, world_info

IN, HIDDEN, OUT = 8, 16, 4


class ToyModel(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.inp = nn.Linear(IN, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(HIDDEN, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, IN) -> (B, OUT)
        return self.out(self.drop(torch.tanh(self.norm(self.inp(x)))))


class ToyTask:
    """Fit a fixed linear teacher. The global batch of (step, micro) is the same for any world
    size; each rank takes an equal slice, so DDP equals one process on the whole batch.
    ``dropout`` and ``jitter`` (noise from numpy's and python's generators) make the losses
    depend on all three random streams; ``ema`` is task state kept in checkpoints. ``count_flops``
    reports a cost per micro-batch that drifts as the model learns (as learned boundaries do)."""

    global_batch = 8

    def __init__(self, dropout: float = 0.0, jitter: float = 0.0, sleep: float = 0.0,
                 die_at: int | None = None, seed: int = 0, count_flops: bool = False) -> None:
        seed_everything(seed)  # the same initial model on every rank
        self.model = ToyModel(dropout)
        self.teacher = torch.randn(IN, OUT, generator=torch.Generator().manual_seed(1234))
        self.jitter, self.sleep, self.die_at, self.count_flops = jitter, sleep, die_at, count_flops
        self.ema = 0.0
        self.tokens_per_step = self.global_batch

    def batch(self, step: int, micro: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(10_000 * step + micro)
        x = torch.randn(self.global_batch, IN, generator=g)
        y = x @ self.teacher + 0.1 * torch.randn(self.global_batch, OUT, generator=g)
        n = self.global_batch // world_size
        return {"x": x[rank * n:(rank + 1) * n], "y": y[rank * n:(rank + 1) * n]}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["x"]
        if self.jitter:
            x = x + self.jitter * torch.from_numpy(np.random.randn(*x.shape).astype(np.float32))
            x = x * (1.0 + self.jitter * random.random())
        loss = F.mse_loss(model(x).float(), batch["y"])
        self.ema = 0.9 * self.ema + 0.1 * loss.item()
        metrics = {"ema": self.ema}
        if self.count_flops:
            metrics["flops"] = 1000 + int(1000 * loss.item())
        return loss, metrics

    def on_step_start(self, step: int, model: nn.Module, trainer) -> None:
        if self.die_at is not None and step == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.sleep:
            time.sleep(self.sleep)

    def state_dict(self) -> dict:
        return {"ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"]

    def fsdp_units(self, model: ToyModel) -> list[nn.Module]:
        return [model.inp, model.out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep before each step")
    parser.add_argument("--die-at", type=int, default=None, help="SIGKILL this process at the start of this step")
    parser.add_argument("--count-flops", action="store_true", help="report a drifting FLOP count per micro-batch")
    add_config_args(parser, TrainConfig)
    args = parser.parse_args()
    config = config_from_args(TrainConfig, args)
    task = ToyTask(args.dropout, args.jitter, args.sleep, args.die_at, seed=config.seed, count_flops=args.count_flops)
    result = train(task, config, args.out)

    # Each rank's view of the final full weights, for the tests to compare across ranks.
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    rank, _ = world_info()
    state = get_model_state_dict(task.model, options=StateDictOptions(full_state_dict=True))
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(args.out / f"final_rank{rank}.safetensors"))
    if rank == 0:
        (args.out / "result.json").write_text(json.dumps({"step": result.step, "checkpoint": str(result.checkpoint)}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
