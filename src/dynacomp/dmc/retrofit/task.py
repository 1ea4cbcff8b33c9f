"""One retrofit stage as a ``dynacomp.train`` task: the losses (LM or distillation, the ratio
loss) and the batches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynacomp.dmc.modeling import channels
from dynacomp.dmc.retrofit.config import STAGES, RetrofitConfig

# ------------------------------------------------------------------------------------------ losses

def ratio_loss(alpha: Tensor, target_cr: float) -> tuple[Tensor, Tensor]:
    """The one-sided auxiliary loss and the mean alpha of every sequence.

    alpha: (layers, B, H, L) merge decisions (soft while training). Returns
    ``(mean_b max(0, (1 - 1/target_cr) - mean_alpha_b), mean_alpha (B,))``.
    """
    mean_alpha = alpha.float().mean(dim=(0, 2, 3))
    return F.relu((1 - 1 / target_cr) - mean_alpha).mean(), mean_alpha


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, direction: str = "forward") -> Tensor:
    """Per token, averaged: KL(teacher || student) ("forward": the student covers every token the
    teacher finds likely) or KL(student || teacher) ("reverse": it may drop some, never add). Both (N, V)."""
    student, teacher = F.log_softmax(student_logits.float(), -1), F.log_softmax(teacher_logits.float(), -1)
    if direction == "reverse":
        student, teacher = teacher, student
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


# ------------------------------------------------------------------------------------------ the task

class RetrofitTask:
    """One stage as a ``dynacomp.train`` task. ``tokens``: (N,) the tokenised train split."""

    def __init__(self, model: nn.Module, tokens: Tensor, config: RetrofitConfig, stage: str,
                 teacher: nn.Module | None = None) -> None:
        self.model, self.tokens, self.config, self.stage, self.teacher = model, tokens, config, stage, teacher
        self.target_cr = config.target_at(stage, 0)
        self.tokens_per_step = config.batch_size * config.seq_len
        self.channel_scale = 1.0 if stage == "zero_out" else config.decision_scale
        channels.add_scaling_hooks(model, config.policy, lambda: self.channel_scale)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """The trained subset (``train_params``); weight decay on matrices only."""
        if self.config.train_params == "decisions":
            return [{"params": channels.train_decision_rows_only(model, self.config.policy), "weight_decay": 0.0}]
        probe = ("eviction_probe",)           # where decisions come from a probe, it trains with the rest
        names = {"all": None, "attention": ("q_proj", "k_proj", "v_proj", "o_proj", *probe),
                 "qk": ("q_proj", "k_proj", *probe)}
        wanted = names[self.config.train_params]
        params = []
        for name, param in model.named_parameters():
            param.requires_grad_(wanted is None or any(f".{w}." in name for w in wanted))
            if param.requires_grad:
                params.append(param)
        return [{"params": [p for p in params if p.ndim >= 2]},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]

    def on_step_start(self, step: int, model: nn.Module, trainer) -> None:
        if self.teacher is not None:   # beside the student, wherever the loop placed it
            self.teacher.to(trainer.device)
        steps = self.config.stage_steps(self.stage)
        if self.stage == "zero_out":
            self.channel_scale = max(0.0, 1 - step / (0.8 * steps))
        self.target_cr = self.config.target_at(self.stage, step)
        self.tokens_per_step = math.prod(self.config.sequence_shape(self.stage, step))

    def batch(self, step: int, micro: int, rank: int, world_size: int) -> Tensor:
        """(sequences / (grad_accum x world_size), length) random windows of the train split."""
        sequences, length = self.config.sequence_shape(self.stage, step)
        parts = self.config.grad_accum * world_size
        if sequences % parts:
            raise ValueError(f"{sequences} sequences per step do not split over {self.config.grad_accum} "
                             f"micro-batches x {world_size} processes; change batch_size")
        seed = ((self.config.seed * len(STAGES) + STAGES.index(self.stage)) * 2**32 + step) * 1024 + micro
        g = torch.Generator().manual_seed(seed % 2**63)
        starts = torch.randint(0, self.tokens.numel() - length, (sequences // self.config.grad_accum,), generator=g)
        mine = starts.view(world_size, -1)[rank]
        return torch.stack([self.tokens[s:s + length] for s in mine.tolist()])

    def loss(self, model: nn.Module, ids: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = model(ids, use_cache=False).logits[:, :-1].flatten(0, 1)
        ce = F.cross_entropy(logits.float(), ids[:, 1:].flatten())
        loss, metrics = ce, {"ce": ce.item()}
        if self.config.distill > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(ids, use_cache=False).logits[:, :-1].flatten(0, 1)
            kl = distillation_loss(logits, teacher_logits, self.config.distill_direction)
            loss = (1 - self.config.distill) * ce + self.config.distill * kl
            metrics["kl"] = kl.item()
        if self.stage != "zero_out":
            alpha = torch.stack([a.last_alpha for a in self.model.dmc_attentions()])     # (layers, B, H, L)
            aux, mean_alpha = ratio_loss(alpha, self.target_cr)
            loss = loss + self.config.aux_weight * aux
            mean = mean_alpha.mean().item()
            metrics.update(aux=aux.item(), mean_alpha=mean, cr=1 / max(1 - mean, 1e-6), target_cr=self.target_cr)
        return loss, metrics

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        return list(model.model.layers)
