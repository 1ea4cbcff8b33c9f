"""Training recipe: a character LM task for ``dynacomp.train.train`` and saved runs.

A run folder holds ``dtp.json`` (model config, run config, vocabulary, language) beside the
loop's ``checkpoints/`` and ``metrics.jsonl``; ``load_run`` rebuilds the trained model from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dynacomp.config import field, require_positive, to_dict
from dynacomp.dtp.config import DTPConfig
from dynacomp.dtp.data import CharData, load_data, load_unigram_targets
from dynacomp.dtp.eval import EvalConfig, calibrate_threshold, evaluate
from dynacomp.dtp.flops import train_step_flops
from dynacomp.dtp.model import HourglassLM
from dynacomp.errors import Failure, UsageError
from dynacomp.io import write_json
from dynacomp.train import LoadedRun, TrainConfig, TrainResult, load_trained_run, seed_everything, train

RUN_FILE = "dtp.json"


@dataclass
class RunConfig:
    data: str = field("english", help="english, hebrew, finnish, vietnamese (embedded), text8:PATH, "
                      "enwik8:PATH or wiki40b:LANG:FOLDER")
    seq_len: int = field(512, help="characters per training sequence (paper: 2048)")
    batch_size: int = field(8, help="sequences per micro-batch, over all processes (paper: 8)")
    unigram_vocab: int = field(0, help="unigram source: SentencePiece vocabulary size (0: the paper's, "
                               "10k for English and Vietnamese, 200 for Finnish and Hebrew)")
    eval_stride: int = field(128, help="evaluation: windows of seq_len characters every eval_stride, each "
                             "after the first scoring its last eval_stride (paper: 2048 / 512)")

    def __post_init__(self) -> None:
        require_positive(self, "seq_len", "batch_size")
        if not 0 < self.eval_stride <= self.seq_len:
            raise ValueError(f"eval_stride={self.eval_stride} must be in 1..seq_len={self.seq_len}")


class DTPTask:
    """Random windows of the training split; loss = cross-entropy + the source's auxiliary loss.
    Its metrics count the FLOPs of each batch at its realised shortening (``dynacomp.dtp.flops``),
    which a FLOP budget spends."""

    def __init__(self, config: DTPConfig, run: RunConfig, data: CharData, seed: int = 0, grad_accum: int = 1) -> None:
        seed_everything(seed)  # the same initial weights on every rank
        self.config, self.run, self.seed = config, run, seed
        self.model = HourglassLM(config)
        self.stream = data.splits["train"]
        self.targets = (load_unigram_targets(data, run.unigram_vocab)
                        if config.boundaries == "unigram" else None)
        self.tokens_per_step = run.batch_size * run.seq_len * grad_accum

    def batch(self, step: int, micro: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        if self.run.batch_size % world_size:
            raise ValueError(f"batch_size={self.run.batch_size} is not divisible by {world_size} processes")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1009 + micro)
        starts = torch.randint(0, len(self.stream) - self.run.seq_len - 1, (self.run.batch_size,), generator=g)
        n = self.run.batch_size // world_size
        starts = starts[rank * n:(rank + 1) * n]
        window = starts[:, None] + torch.arange(self.run.seq_len + 1)
        chars = self.stream[window]
        batch = {"ids": chars[:, :-1], "targets": chars[:, 1:]}
        if self.targets is not None:
            batch["boundary_targets"] = self.targets[window[:, :-1]]
        return batch

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch["ids"], batch.get("boundary_targets"))
        lm = F.cross_entropy(out.logits.flatten(0, 1).float(), batch["targets"].flatten())
        rate = out.boundaries.float().mean().item() if out.boundaries is not None else 1.0
        groups = int(out.boundaries.sum(1).max()) if out.boundaries is not None else 0   # the middle pads rows to the most
        metrics = {"bpc": lm.item() / math.log(2), "aux": out.aux_loss.item(), "boundary_rate": rate,
                   "flops": train_step_flops(self.config, *batch["ids"].shape, groups)}
        return lm + out.aux_loss, metrics


def train_run(config: DTPConfig, run: RunConfig, train_config: TrainConfig, out_dir: str | Path,
              data: CharData | None = None) -> TrainResult:
    """Train a model on ``run.data`` into ``out_dir`` (resuming what is there); the vocabulary size
    and whitespace ids of ``config`` are set from the data."""
    data = data or load_data(run.data)
    config = dataclasses.replace(config, vocab_size=len(data.vocab), whitespace_ids=data.whitespace_ids)
    out_dir = Path(out_dir)
    write_json(out_dir / RUN_FILE, {"model": to_dict(config), "run": to_dict(run), "vocab": data.vocab,
                                    "language": data.language})
    return train(DTPTask(config, run, data, train_config.seed, train_config.grad_accum), train_config, out_dir)


def load_run(path: str | Path) -> LoadedRun[HourglassLM]:
    """The trained model of a run folder (its latest checkpoint) in eval mode, on the CPU; its record
    holds ``model`` (the ``DTPConfig``), ``run`` (the ``RunConfig``), ``vocab`` and ``language``."""
    return load_trained_run(path, RUN_FILE, "dynacomp dtp train --out DIR", {"model": DTPConfig, "run": RunConfig},
                            lambda record: HourglassLM(record["model"]))


def training_boundary_rate(path: str | Path) -> float:
    """The mean boundary rate a run trained at over the last tenth of its steps (its ``metrics.jsonl``)."""
    lines = (Path(path) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    if not records:
        raise Failure(f"{path}/metrics.jsonl has no metrics: train the run first")
    last = records[-1]["step"]
    rates = [r["boundary_rate"] for r in records if r["step"] > 0.9 * last]
    return sum(rates) / len(rates)


def evaluate_run(path: str | Path, loaded: LoadedRun[HourglassLM], data: CharData, config: EvalConfig) -> dict:
    """BPC and shortening factor of the run in folder ``path`` on ``config.split``; with
    ``config.calibrate`` (Gumbel runs) also ``calibrated``: the same at the threshold that gives the
    run's training boundary rate on the validation split."""
    model = loaded.model
    if config.calibrate and model.config.boundaries != "gumbel":
        raise UsageError(f"--calibrate is for gumbel runs; {path} has {model.config.boundaries} boundaries")
    run = loaded.record["run"]
    stride = config.stride or run.eval_stride
    scored = data.splits[config.split]
    result = evaluate(model, scored, run.seq_len, stride, config.batch_size, config.max_chars)
    if config.calibrate:
        rate = training_boundary_rate(path)
        threshold = calibrate_threshold(model, data.splits["validation"], run.seq_len, stride, rate,
                                        config.batch_size, config.calibrate_chars)
        model.source.threshold = threshold
        try:
            calibrated = evaluate(model, scored, run.seq_len, stride, config.batch_size, config.max_chars)
        finally:
            model.source.threshold = 0.0
        result["calibrated"] = {"threshold": threshold, "train_boundary_rate": rate, **calibrated}
    return result
