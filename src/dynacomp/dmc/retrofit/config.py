"""RetrofitConfig: every default of the DMC retrofit recipe, once, and the schedule it implies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from dynacomp.config import field
from dynacomp.dmc.config import DMCConfig
from dynacomp.models import DEFAULT_MODEL
from dynacomp.runtime import Device, check_device
from dynacomp.train import TrainConfig

STAGES = ("zero_out", "retrofit", "finetune")


def _default_of(config_cls: type, name: str, help: str | None = None):
    """A field with the default and help of ``config_cls.name``, so each default lives once."""
    source = config_cls.__dataclass_fields__[name]
    return field(source.default, help=help or source.metadata["help"])


@dataclass
class RetrofitConfig:
    model: str = field(DEFAULT_MODEL, help="embedded model name, local transformers folder or Hugging Face id")
    policy: Literal["dmc", "dms"] = _default_of(DMCConfig, "policy")
    eviction_window: int = _default_of(DMCConfig, "eviction_window")
    eviction_probe: bool = _default_of(DMCConfig, "eviction_probe")
    data: str = field("english", help="corpus name (dynacomp data), a mixture NAME+NAME+... (alternating pieces), "
                                      "or a text file (split 90/5/5 %% by position); "
                                      "trains on its train split, reports on its test split")
    target_cr: float = field(2.0, help="target compression ratio (tokens per KV slot)")
    init: str | None = field(None, help="a DMC checkpoint folder to continue from (e.g. a ratio-2 retrofit on the "
                                        "way to 4) instead of the base model; its stage 1 is skipped")
    ramp_from: float = field(1.0, help="the ratio the retrofit stage's linear ramp starts from: 1 for a base "
                                       "model, the ratio an --init checkpoint was trained to")
    seq_len: int = field(512, help="training sequence length in tokens")
    batch_size: int = field(4, help="sequences per optimizer step, over all processes and micro-batches")
    # The paper's 250 / 6000 / 2000 steps of 4M tokens, scaled down keeping the proportions 1 : 24 : 8.
    zero_out_steps: int = field(8, help="stage 1 steps: ramp the repurposed channels to zero (paper: 250)")
    retrofit_steps: int = field(192, help="stage 2 steps: target ratio rising linearly to target_cr (paper: 6000); "
                                          "0 with --init: only fine-tune the checkpoint at target_cr")
    finetune_steps: int = field(64, help="stage 3 steps at the fixed target ratio (paper: 2000)")
    lr: float = field(1e-4, help="learning rate of all stages; the paper's 3e-5 is for a 7B model with 4M-token "
                                 "batches, small models and a few hundred steps need larger ones")
    warmup_steps: int = field(4, help="linear warm-up at the start of each stage (a stage starts a fresh optimizer)")
    aux_weight: float = field(100.0, help="weight of the one-sided ratio loss next to the per-token LM loss; the "
                                          "official code's 1 is for 4M-token batches: at a few thousand tokens per "
                                          "step the LM gradient's noise drowns it and the ratio hardly rises "
                                          "(docs/results/dmc_retrofit.md)")
    distill: float = field(0.0, help="share of the LM loss taken by distillation, the KL divergence between the "
                                     "next-token distributions of the frozen original model and the retrofit; 0: "
                                     "plain cross-entropy, 1: distillation only")
    distill_direction: Literal["forward", "reverse"] = field(
        "forward", help="forward: KL(original || retrofit), which makes the retrofit cover everything the original "
                        "finds likely; reverse: KL(retrofit || original)")
    train_params: Literal["all", "attention", "qk", "decisions"] = field(
        "all", help="which weights train: all, the attention projections, only q/k projections (which hold "
                    "the decision and importance channels), or only the rows those channels are read from "
                    "(decisions: the model stays the base model, only where to compress is learned)")
    short_seq_len: int | None = field(
        None, help="train stage 1 and the first short_seq_until of stage 2 on sequences this long, with the "
                   "same tokens per step (more sequences); None: seq_len throughout")
    short_seq_until: float = field(0.5, help="fraction of the retrofit stage trained on short sequences")
    temperature: float = _default_of(DMCConfig, "temperature")
    decision_bias: float = field(2.0, help="DMC decision bias (official: 5, alpha starts at 0.007); 2 starts at "
                                           "0.12, so decisions get gradient from the first step")
    window: int = _default_of(DMCConfig, "window")
    decision_scale: float = field(
        10.0, help="the repurposed q/k channels are computed as scale x (their weights) while training and the "
                   "scale is folded into the saved weights: a scale-times larger learning rate for the decision "
                   "and importance rows only, so decisions can move in hundreds of steps instead of thousands "
                   "(1: the paper)")
    eval_tokens: int = field(16384, help="test-split tokens for the final perplexity (whole windows only)")
    eval_context: int | None = field(None, help="evaluation window in tokens, the same for both models; None: seq_len")
    eval_batch: int = field(4, help="evaluation windows per forward pass")
    grad_accum: int = _default_of(TrainConfig, "grad_accum")
    bf16: bool = _default_of(TrainConfig, "bf16")
    seed: int = _default_of(TrainConfig, "seed")
    checkpoint_every: int = field(50, help="checkpoint every this many steps of a stage (and at its end)")
    log_every: int = field(1, help="write a metrics line every this many steps")
    strategy: Literal["auto", "single", "ddp", "fsdp"] = _default_of(TrainConfig, "strategy")
    device: Device = field("cpu", help="where the final evaluation runs; training, and its distillation teacher "
                                       "beside it, run on CUDA whenever the machine has it (dynacomp.train)")

    def __post_init__(self) -> None:
        check_device(self.device)
        if not 1 <= self.ramp_from <= self.target_cr:
            raise ValueError(f"need 1 <= ramp_from <= target_cr, got {self.ramp_from} and {self.target_cr}")
        if not 0 <= self.distill <= 1:
            raise ValueError(f"distill is a share of the LM loss, between 0 and 1; got {self.distill}")
        if min(self.zero_out_steps, self.retrofit_steps, self.finetune_steps) < 0:
            raise ValueError("stage steps must be >= 0")
        if self.retrofit_steps == 0 and not self.init:
            # The retrofit stage is where a base model's decision channels are zeroed and DMC first trains.
            raise ValueError("retrofit_steps 0 needs --init: only a DMC checkpoint can skip the retrofit stage")
        if self.short_seq_len is not None and (self.short_seq_len > self.seq_len
                                               or (self.batch_size * self.seq_len) % self.short_seq_len):
            raise ValueError(f"short_seq_len must be at most seq_len, and batch_size x seq_len = "
                             f"{self.batch_size * self.seq_len} tokens must split into whole sequences of it")

    def dmc_config(self) -> DMCConfig:
        return DMCConfig(policy=self.policy, eviction_window=self.eviction_window, eviction_probe=self.eviction_probe,
                         decision_bias=self.decision_bias,
                         temperature=self.temperature, window=self.window)

    def stage_steps(self, stage: str) -> int:
        """Steps of ``stage``; an --init checkpoint has been through stage 1 already, and DMS needs no
        ramp: the one channel it reads is zeroed when the retrofit stage starts."""
        if stage == "zero_out" and (self.init or self.policy == "dms"):
            return 0
        return getattr(self, f"{stage}_steps")

    def sequence_shape(self, stage: str, step: int) -> tuple[int, int]:
        """(sequences, tokens each) of one optimizer step."""
        short = self.short_seq_len is not None and (
            stage == "zero_out" or (stage == "retrofit" and step < self.short_seq_until * self.retrofit_steps))
        length = self.short_seq_len if short else self.seq_len
        return self.batch_size * self.seq_len // length, length

    def tokens_trained(self) -> int:
        return sum(math.prod(self.sequence_shape(stage, step)) for stage in STAGES
                   for step in range(self.stage_steps(stage)))

    def train_config(self, stage: str) -> TrainConfig:
        return TrainConfig(
            steps=self.stage_steps(stage), lr=self.lr, warmup_steps=min(self.warmup_steps, self.stage_steps(stage)),
            schedule="cosine" if stage == "finetune" else "constant", grad_accum=self.grad_accum, bf16=self.bf16,
            seed=self.seed, checkpoint_every=self.checkpoint_every, log_every=self.log_every, strategy=self.strategy)

    def target_at(self, stage: str, step: int) -> float:
        """The ratio the auxiliary loss asks for at ``step`` (0-based) of ``stage``."""
        if stage == "zero_out":
            return 1.0
        if stage == "retrofit":
            return self.ramp_from + (self.target_cr - self.ramp_from) * min(1.0, (step + 1) / self.retrofit_steps)
        return self.target_cr


@dataclass
class CalibrateConfig:
    """``dmc calibrate``: tune a retrofitted checkpoint's decision threshold to a target ratio."""
    model: str = field(None, help="a DMC / DMS checkpoint folder (e.g. RUN/model of a retrofit)")
    target_cr: float = field(None, help="the ratio to realise on the validation split")
    base: str = field(DEFAULT_MODEL, help="the unmodified model, for the base perplexity")
    data: str = field("english", help="corpus name, mixture or text file (as for retrofit): calibrate on its "
                                      "validation split, report on its test split")
    tokens: int = field(4096, help="validation tokens for the bisection")
    context: int = field(512, help="window of every evaluation, in tokens")
    eval_tokens: int = field(16384, help="test tokens for the report")
    hold: bool = field(False, help="dms: save the per-layer shares of kept tokens at the calibrated threshold, held "
                                   "on any text by ranking eviction logits (DMCConfig.hold_keep), instead of the "
                                   "threshold, whose ratio does not carry over to other text; the ratio then holds "
                                   "but quality does not (docs/results/dms.md)")
    device: Device = field("cpu", help="where the bisection and the report's evaluations run")

    def __post_init__(self) -> None:
        if self.model is None or self.target_cr is None:
            raise ValueError("calibrate needs --model and --target-cr")
        check_device(self.device)
        if self.target_cr < 1:
            raise ValueError(f"target_cr is a compression ratio and must be >= 1, got {self.target_cr}")
