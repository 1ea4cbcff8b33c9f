"""Training recipe: hierarchical CPC on random windows of a speech set, with ``dynacomp.train``.

A run folder holds ``hcpc.json`` (model and run configs) beside the loop's ``checkpoints/`` and
``metrics.jsonl``; ``load_run`` rebuilds the trained model from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynacomp.config import field, require_positive, to_dict
from dynacomp.data.speech import SAMPLE_RATE, Utterance, read_audio
from dynacomp.data.speech_corpora import load_speech, speech_set_id
from dynacomp.hcpc.model import HCPC, HCPCConfig
from dynacomp.io import write_json
from dynacomp.nn import VectorQuantizer
from dynacomp.train import LoadedRun, TrainConfig, Trainer, TrainResult, load_trained_run, seed_everything, train

RUN_FILE = "hcpc.json"


@dataclass
class RunConfig:
    data: Path = field(Path("runs/speech_1h"), help="speech set: a synthetic set folder (from `dynacomp data "
                       "speech`), or timit:ROOT, buckeye:ROOT or librispeech:ROOT:ALIGNMENTS")
    window: int = field(20480, help="samples per training window (paper: 20480 = 1.28 s)")
    batch_size: int = field(8, help="windows per micro-batch, over all processes (paper: 64)")

    def __post_init__(self) -> None:
        require_positive(self, "window", "batch_size")


def load_split_audio(data: Path, split: str) -> tuple[list[Utterance], list[torch.Tensor]]:
    """The utterances of ``split`` and their waveforms ``(L,)`` at 16 kHz."""
    utterances = load_speech(data, split)
    if not utterances:
        raise ValueError(f"{data} has no utterances in its {split} split")
    if utterances[0].sample_rate != SAMPLE_RATE:
        raise ValueError(f"{data} is at {utterances[0].sample_rate} Hz; the encoder expects {SAMPLE_RATE}")
    return utterances, [read_audio(u) for u in utterances]


class HCPCTask:
    """Random windows of the training utterances (one utterance per window); loss from the model."""

    strategies = VectorQuantizer.strategies   # the quantiser's limits are the task's

    def __init__(self, config: HCPCConfig, run: RunConfig, audio: list[torch.Tensor], seed: int = 0) -> None:
        seed_everything(seed)   # the same initial weights on every rank
        self.model = HCPC(config)
        self.run, self.seed = run, seed
        # DDP: while the low level trains alone, the boundary predictor and the high level get no gradient
        self.find_unused_parameters = config.hierarchical and config.low_level_steps > 0
        self.audio = [a for a in audio if len(a) >= run.window]
        if not self.audio:
            raise ValueError(f"no training utterance is as long as the window ({run.window} samples): "
                             "lower --window")

    def batch(self, step: int, micro: int, rank: int, world_size: int) -> torch.Tensor:
        """``(batch_size / world_size, window)`` samples: this rank's share of step ``step``."""
        if self.run.batch_size % world_size:
            raise ValueError(f"batch_size={self.run.batch_size} is not divisible by {world_size} processes")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1009 + micro)
        chosen = torch.randint(0, len(self.audio), (self.run.batch_size,), generator=g).tolist()
        offsets = torch.rand(self.run.batch_size, generator=g).tolist()
        n = self.run.batch_size // world_size
        windows = []
        for i, fraction in list(zip(chosen, offsets))[rank * n:(rank + 1) * n]:
            start = int(fraction * (len(self.audio[i]) - self.run.window + 1))
            windows.append(self.audio[i][start:start + self.run.window])
        return torch.stack(windows)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return model(batch)

    def on_step_start(self, step: int, model: HCPC, trainer: Trainer) -> None:
        model.set_step(step)
        joint_step = step - model.config.low_level_steps
        if model.config.hierarchical and joint_step >= 0 and model.vq.on_step_start(joint_step):
            trainer.optimizer.state.pop(model.vq.codebook, None)   # Adam's moments belong to the old codes

    def param_groups(self, model: HCPC) -> list[dict[str, Any]]:
        """The codebook with its lr multiplier (no weight decay), the rest with decay on matrices."""
        vq_groups = model.vq.param_groups() if model.config.hierarchical else []
        taken = {id(p) for g in vq_groups for p in g["params"]}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
        return vq_groups + [{"params": [p for p in rest if p.ndim >= 2]},
                            {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}]

    def state_dict(self) -> dict[str, Any]:
        return {"reservoir": self.model.vq.reservoir_state()} if self.model.config.hierarchical else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "reservoir" in state:
            self.model.vq.load_reservoir_state(state["reservoir"])


def train_run(config: HCPCConfig, run: RunConfig, train_config: TrainConfig, out_dir: str | Path,
              audio: list[torch.Tensor] | None = None) -> TrainResult:
    """Train into ``out_dir`` (resuming what is there) on the train split of ``run.data``."""
    audio = audio if audio is not None else load_split_audio(run.data, "train")[1]
    out_dir = Path(out_dir)
    record = replace(run, data=Path(speech_set_id(run.data)))   # valid from any working folder
    write_json(out_dir / RUN_FILE, {"model": to_dict(config), "run": to_dict(record)})
    return train(HCPCTask(config, run, audio, train_config.seed), train_config, out_dir)


def load_run(path: str | Path) -> LoadedRun[HCPC]:
    """The trained model of a run folder (its latest checkpoint) in eval mode, on the CPU; its record
    holds ``model`` (the ``HCPCConfig``) and ``run`` (the ``RunConfig``)."""
    return load_trained_run(path, RUN_FILE, "dynacomp hcpc train --out DIR", {"model": HCPCConfig, "run": RunConfig},
                            lambda record: HCPC(record["model"]))
