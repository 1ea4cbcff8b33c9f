"""Training the VQ-VAE on log-mel crops with ``dynacomp.train``, and reading a trained run back.

A run folder holds what ``train`` writes (checkpoints, ``metrics.jsonl``) and ``run.json``: the
data set, the configs and the feature normalisation, everything ``load_run`` needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynacomp.config import to_dict
from dynacomp.data.speech_corpora import speech_set_id
from dynacomp.io import write_json
from dynacomp.metrics.codebook import code_counts, normalized_usage, perplexity
from dynacomp.nn import VectorQuantizer, VQConfig
from dynacomp.train import (
    LoadedRun,
    TrainConfig,
    Trainer,
    TrainResult,
    default_param_groups,
    is_main_process,
    load_trained_run,
    seed_everything,
    train,
)
from dynacomp.vqvae.features import SpeechFrames, load_frames
from dynacomp.vqvae.model import VQVAE, VQVAEConfig

RUN_FILE = "run.json"


def pad_batch(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x (B, T_max, n_mels), mask (B, T_max))`` of variable-length ``(T_i, n_mels)`` frames."""
    longest = max(len(f) for f in features)
    x = features[0].new_zeros(len(features), longest, features[0].shape[1])
    mask = torch.zeros(len(features), longest, dtype=torch.bool)
    for i, f in enumerate(features):
        x[i, :len(f)] = f
        mask[i, :len(f)] = True
    return x, mask


class VQVAETask:
    """Random crops of the training utterances (each frame equally likely to be in a crop),
    the masked reconstruction MSE plus the quantiser's loss, and the quantiser's schedule."""

    strategies = VectorQuantizer.strategies   # the quantiser's limits are the task's

    def __init__(self, model: VQVAE, frames: SpeechFrames, config: VQVAEConfig, seed: int = 0,
                 grad_accum: int = 1) -> None:
        self.model, self.config, self.seed = model, config, seed
        self.features = frames.features
        self.lengths = torch.tensor([len(f) for f in self.features])
        self.tokens_per_step = config.batch_size * config.crop_frames * grad_accum
        vq = model.vq
        # DDP must not wait for the codebook's gradient while the warm-up bypasses it.
        self.find_unused_parameters = isinstance(vq, VectorQuantizer) and vq.config.bypass_steps > 0

    def batch(self, step: int, micro: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        if self.config.batch_size % world_size:
            raise ValueError(f"batch_size {self.config.batch_size} does not split over {world_size} processes")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1009 + micro)
        crop, n = self.config.crop_frames, self.config.batch_size
        utts = torch.multinomial(self.lengths.double(), n, replacement=True, generator=g)
        starts = (torch.rand(n, generator=g, dtype=torch.float64) * (self.lengths[utts] - crop + 1).clamp_min(1)).long()
        per = n // world_size
        mine = range(rank * per, (rank + 1) * per)
        x, mask = pad_batch([self.features[int(utts[i])][int(starts[i]):int(starts[i]) + crop] for i in mine])
        return {"x": x, "mask": mask}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x, mask = batch["x"], batch["mask"]
        reconstruction, indices, vq_loss, _ = model(x, mask)
        recon = ((reconstruction.float() - x) ** 2).mean(-1)[mask].mean()
        counts = code_counts(indices, self.model.vq.codebook_size)
        return recon + vq_loss, {"recon": recon.item(), "vq_loss": vq_loss.item(),
                                 "usage": normalized_usage(counts), "perplexity": perplexity(counts)}

    def on_step_start(self, step: int, model: nn.Module, trainer: Trainer) -> None:
        vq = model.vq
        if isinstance(vq, VectorQuantizer) and vq.on_step_start(step) and vq.config.update == "gradient":
            trainer.optimizer.state.pop(vq.codebook, None)   # Adam's moments belong to the old codes

    def param_groups(self, model: VQVAE) -> list[dict[str, Any]]:
        """The codebook's group (its lr multiplier), then the loop's default groups for the rest."""
        vq_groups = model.vq.param_groups() if isinstance(model.vq, VectorQuantizer) else []
        taken = {id(p) for g in vq_groups for p in g["params"]}
        return vq_groups + [{**g, "params": [p for p in g["params"] if id(p) not in taken]}
                            for g in default_param_groups(model)]

    def state_dict(self) -> dict[str, Any]:
        return {"reservoir": self.model.vq.reservoir_state()} if isinstance(self.model.vq, VectorQuantizer) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "reservoir" in state:
            self.model.vq.load_reservoir_state(state["reservoir"])


def train_vqvae(data: str | Path, out: str | Path, model_config: VQVAEConfig, vq_config: VQConfig | None,
                train_config: TrainConfig, *, frames: SpeechFrames | None = None,
                quantizer: nn.Module | None = None) -> tuple[VQVAE, TrainResult]:
    """Train a VQ-VAE on the train split of ``data`` into ``out`` (resuming a run there); returns
    the trained model (in eval mode) and the loop's result.

    ``frames``: the train split already loaded (unnormalised), to spare reading it again;
    ``quantizer``: a module to use instead of a ``VectorQuantizer`` built from ``vq_config``.
    """
    out = Path(out)
    frames = frames or load_frames(data, "train", model_config.n_mels)
    mean, std = frames.stats()
    seed_everything(train_config.seed)   # the same initial model on every rank
    model = VQVAE(model_config, vq_config, quantizer)
    task = VQVAETask(model, frames.normalized(mean, std), model_config, train_config.seed, train_config.grad_accum)
    if is_main_process():
        write_json(out / RUN_FILE, {"data": speech_set_id(data), "model": to_dict(model_config),
                                    "vq": to_dict(vq_config) if quantizer is None else None,
                                    "train": to_dict(train_config),
                                    "quantizer": "dynacomp" if quantizer is None else type(quantizer).__name__,
                                    "mean": mean.tolist(), "std": std.tolist()})
    result = train(task, train_config, out)
    return model.eval(), result


def load_run(out: str | Path) -> LoadedRun[VQVAE]:
    """The trained model of a run folder (its latest checkpoint) in eval mode, on the CPU; its record
    holds ``data``, ``model`` (the ``VQVAEConfig``), ``vq`` (the ``VQConfig``), ``quantizer``, ``mean``, ``std``."""
    def build(record: dict[str, Any]) -> VQVAE:
        if record["quantizer"] != "dynacomp":
            raise ValueError(f"{out} was trained with the quantiser {record['quantizer']}; only runs of "
                             "dynacomp's VectorQuantizer can be loaded from their folder")
        return VQVAE(record["model"], record["vq"])

    return load_trained_run(out, RUN_FILE, f"dynacomp vq train --data DIR --out {out}",
                            {"model": VQVAEConfig, "vq": VQConfig}, build)
