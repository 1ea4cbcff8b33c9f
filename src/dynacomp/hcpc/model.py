"""Variable-rate hierarchical CPC (Cuervo, Łańcucki et al., NeurIPS 2022), written from the paper
and the facts of the official code (``chorowski-lab/hCPC``); see ``shared/reference``.

Low level: a strided conv encoder turns 16 kHz audio into 10 ms frames ``z``, an LSTM reads them
into contexts ``c``, and linear heads predict the next ``K`` frames (CPC), or ``M`` predictions
aligned to the next ``K`` frames (ACPC). High level: a boundary predictor on ``z`` decides where
segments close, ``z`` is mean-pooled per segment, a small MLP and an LSTM make segment contexts,
and linear heads predict the next segments' vectors, quantised by ``VectorQuantizer``, against
their immediate neighbour as the negative.

Boundary training (``boundary_training``):

- ``reinforce`` (the official code): decisions sampled from Bernoulli(sigmoid(logit / tau)); the
  detached high-level loss of each sequence is the cost of its decisions, REINFORCE with an EMA
  baseline; plus a length prior and an entropy bonus on the decision probabilities.
- ``straight_through``: hard Gumbel-sigmoid decisions whose gradient passes straight through to
  the logits; the high-level loss reaches the boundaries through the pooling weights. Same prior
  and entropy terms.

Deviations from the official code, for CPU budgets: linear prediction heads (official: one causal
transformer layer per step) and a convolutional boundary predictor seeing +-4 frames (official:
one non-causal transformer layer with relative positions). ``causal=True`` pads the encoder on
the left only, making ``c`` strictly causal (official padding looks a few ms ahead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from dynacomp.config import field
from dynacomp.hcpc.losses import aligned_cpc_loss, cpc_loss, frame_negatives, neighbour_cpc_loss
from dynacomp.metrics.segmentation import peak_boundaries
from dynacomp.nn.boundaries import gumbel_sigmoid_boundaries
from dynacomp.nn.policy import EMABaseline, bernoulli_boundaries, bernoulli_entropy, reinforce_loss, window_rate_loss
from dynacomp.nn.pooling import mean_pool
from dynacomp.nn.vq import VectorQuantizer

KERNELS, STRIDES, PADDING = (10, 8, 4, 4, 4), (5, 4, 2, 2, 2), (3, 2, 1, 1, 1)
FRAME = 160   # samples per frame: the product of the strides (10 ms at 16 kHz)


@dataclass
class HCPCConfig:
    dim: int = field(256, help="width of every layer (paper: 256)")
    causal: bool = field(False, help="left-only padding in the encoder, so contexts never see the future")
    context_layers: int = field(2, help="LSTM layers of the low-level context network (paper: 2)")
    predict_steps: int = field(12, help="K: future frames predicted (CPC) or aligned to (ACPC) (paper: 12)")
    aligned: bool = field(False, help="aligned-prediction loss (ACPC) instead of plain CPC")
    aligned_predictions: int = field(6, help="M: predictions aligned to the K frames with --aligned (paper: 6)")
    negatives: int = field(128, help="negatives per frame, drawn from the batch (paper: 128)")
    hierarchical: bool = field(True, help="add the boundary predictor and the high-level CPC")
    boundary_training: Literal["reinforce", "straight_through"] = field(
        "reinforce", help="how boundary decisions learn: policy gradient (paper) or straight-through Gumbel")
    temperature_start: float = field(2.0, help="decision temperature at step 0 (paper: 2)")
    temperature_min: float = field(0.5, help="lowest decision temperature (paper: 0.5)")
    temperature_decay: float = field(0.999992163431717, help="temperature factor per step (paper's value)")
    mean_segment_frames: float = field(7.580728, help="length prior: expected frames per segment "
                                       "(paper: the mean LibriSpeech phone, a statistic of the labels)")
    prior_window: int = field(8, help="length prior: frames per window (paper: 8)")
    prior_weight: float = field(1.0, help="weight of the length prior")
    entropy_start: float = field(1.0, help="entropy bonus weight at step 0 (paper: 1)")
    entropy_min: float = field(0.25, help="entropy bonus weight after the decay (paper: 0.25)")
    entropy_decay_steps: int = field(2000, help="steps over which the entropy weight falls linearly to its "
                                     "minimum (paper: 20 epochs)")
    baseline_decay: float = field(0.99, help="EMA decay of the REINFORCE baseline (paper: 0.99)")
    min_segment_frames: int = field(3, help="inference: shortest segment the argmax decisions may make")
    segment_predict_steps: int = field(2, help="segments predicted ahead by the high level (paper: 2)")
    codebook_size: int = field(512, help="codes of the high-level target quantiser (paper: 512)")
    codebook_lr_mult: float = field(10.0, help="learning-rate multiplier of the codebook (paper: 10)")
    low_level_steps: int = field(0, help="steps that train the low level alone before the boundaries and the "
                                 "high level join; their schedules start then (0: all from step 0, as the paper)")
    vq_bypass_steps: int = field(300, help="steps before targets are quantised (paper: 3 epochs)")
    vq_reestimate_every: int = field(300, help="steps between k-means re-estimations of the codebook "
                                     "(paper: every epoch)")

    def __post_init__(self) -> None:
        if self.aligned and self.aligned_predictions > self.predict_steps:
            raise ValueError(f"aligned_predictions={self.aligned_predictions} must not exceed "
                             f"predict_steps={self.predict_steps}")
        if self.boundary_training not in ("reinforce", "straight_through"):
            raise ValueError(f"boundary_training is 'reinforce' or 'straight_through', not {self.boundary_training!r}")
        if self.mean_segment_frames <= 1:
            raise ValueError(f"mean_segment_frames must exceed 1 frame, not {self.mean_segment_frames}")


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each time step of ``(B, C, T)``: causal, unlike BatchNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class Encoder(nn.Module):
    """Audio ``(B, L)`` -> frames ``(B, L // 160, D)``: five strided convolutions, each followed by
    channel norm and ReLU."""

    def __init__(self, dim: int, causal: bool) -> None:
        super().__init__()
        self.pads = [(k - s, 0) if causal else (p, p) for k, s, p in zip(KERNELS, STRIDES, PADDING)]
        self.convs = nn.ModuleList(nn.Conv1d(1 if i == 0 else dim, dim, k, s) for i, (k, s) in enumerate(zip(KERNELS, STRIDES)))
        self.norms = nn.ModuleList(ChannelNorm(dim) for _ in KERNELS)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio[:, None, :audio.shape[1] // FRAME * FRAME]
        for pad, conv, norm in zip(self.pads, self.convs, self.norms):
            x = torch.relu(norm(conv(nn.functional.pad(x, pad))))
        return x.transpose(1, 2)


class BoundaryPredictor(nn.Module):
    """Frames ``(B, T, D)`` -> logits ``(B, T)`` that frame ``t`` closes a segment; two
    non-causal convolutions (kernel 5) see four frames on each side."""

    def __init__(self, dim: int, initial_logit: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(dim, dim, 5, padding=2), nn.ReLU(), nn.Conv1d(dim, dim, 5, padding=2),
                                 nn.ReLU(), nn.Conv1d(dim, 1, 1))
        # The model starts it at the prior's boundary rate: at even odds the length prior's gradient
        # into the encoder is ~5x10^4 times the CPC loss's and, through Adam's second moments,
        # stalls the encoder for thousands of steps.
        nn.init.constant_(self.net[-1].bias, initial_logit)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.transpose(1, 2))[:, 0]


@dataclass
class Segmentation:
    """What the model makes of one utterance (``T`` frames, ``S`` segments)."""

    z: torch.Tensor            # (T, D) encoder frames
    c: torch.Tensor            # (T, D) low-level contexts
    closes: torch.Tensor       # (T,) 1 where a segment closes (the last frame always does); zeros without a high level
    high: torch.Tensor | None  # (T, D) the high-level context of each frame's segment (None without a high level)
    logits: torch.Tensor | None = None   # (T,) boundary logits behind ``closes`` (None without a high level)

    @property
    def boundaries(self) -> list[int]:
        """Frames that start a new segment (after the first): ``t + 1`` for each closing ``t < T - 1``."""
        return [t + 1 for t in torch.nonzero(self.closes[:-1]).flatten().tolist()]

    @property
    def closing_scores(self) -> np.ndarray:
        """(T - 1,) the logit that frame ``t`` closes a segment, i.e. that frame ``t + 1`` starts one."""
        return self.logits[:-1].numpy()


def enforce_min_width(closes: np.ndarray, min_width: int) -> np.ndarray:
    """Drop closing decisions that would end a segment shorter than ``min_width`` frames or leave
    one that short at the end (the last frame always closes). ``closes (T,)`` 0/1."""
    out, last = np.zeros_like(closes), -1
    for t in np.flatnonzero(closes[:-1]):
        if t - last >= min_width and len(closes) - 1 - t >= min_width:
            out[t], last = 1, t
    out[-1] = 1
    return out


class HCPC(nn.Module):
    def __init__(self, config: HCPCConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c.dim, c.causal)
        self.context = nn.LSTM(c.dim, c.dim, c.context_layers, batch_first=True)
        heads = c.aligned_predictions if c.aligned else c.predict_steps
        self.predictor = nn.Linear(c.dim, heads * c.dim)
        self.temperature, self.entropy_weight = c.temperature_start, c.entropy_start
        self.joint = c.low_level_steps <= 0       # the high level trains (set_step moves it on)
        if c.hierarchical:
            rate = 1 / c.mean_segment_frames
            self.boundary = BoundaryPredictor(c.dim, initial_logit=c.temperature_start * math.log(rate / (1 - rate)))
            self.segment_encoder = nn.Sequential(nn.Linear(c.dim, c.dim), nn.ReLU(), nn.Linear(c.dim, c.dim))
            self.segment_context = nn.LSTM(c.dim, c.dim, 1, batch_first=True)
            self.segment_predictor = nn.Linear(c.dim, c.segment_predict_steps * c.dim)
            # Re-estimated for the whole run, as the official code does (every epoch after the bypass).
            self.vq = VectorQuantizer(c.dim, c.codebook_size, batch_norm=True, codebook_lr_mult=c.codebook_lr_mult,
                                      bypass_steps=c.vq_bypass_steps, reestimate_every=c.vq_reestimate_every,
                                      reestimate_until=0)
            self.baseline = EMABaseline(c.baseline_decay)

    def set_step(self, step: int) -> None:
        """The schedules at training step ``step``: low level alone or joint training, then (counted
        from the start of joint training) decision temperature and entropy weight."""
        c = self.config
        self.joint = step >= c.low_level_steps
        step = max(step - c.low_level_steps, 0)
        self.temperature = max(c.temperature_start * c.temperature_decay ** step, c.temperature_min)
        fraction = min(step / c.entropy_decay_steps, 1.0) if c.entropy_decay_steps > 0 else 1.0
        self.entropy_weight = c.entropy_start + (c.entropy_min - c.entropy_start) * fraction

    def low_level(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio (B, L)`` -> frames ``z (B, T, D)`` and contexts ``c (B, T, D)``, ``T = L // 160``."""
        z = self.encoder(audio)
        return z, self.context(z)[0]

    def low_loss(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CPC or ACPC loss, prediction accuracy; NaN for ACPC) of one batch."""
        B, T, D = z.shape
        predictions = self.predictor(c).view(B, T, -1, D)
        negatives = frame_negatives(z, self.config.negatives)
        if self.config.aligned:
            return aligned_cpc_loss(predictions, z, negatives, self.config.predict_steps), torch.tensor(float("nan"))
        return cpc_loss(predictions, z, negatives)

    def high_level(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment means ``(B, S, D)`` -> segment vectors ``u`` and contexts ``h``, each ``(B, S, D)``."""
        u = self.segment_encoder(pooled)
        return u, self.segment_context(u)[0]

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of ``audio (B, L)`` and metrics to log."""
        z, c = self.low_level(audio)
        low, accuracy = self.low_loss(z, c)
        metrics = {"low_loss": low.item(), "low_accuracy": accuracy.item()}
        if not (self.config.hierarchical and self.joint):
            return low, metrics
        cfg = self.config
        logits = self.boundary(z)                                                   # (B, T)
        last = torch.zeros_like(logits)
        last[:, -1] = 1
        if cfg.boundary_training == "reinforce":
            closes, log_prob = bernoulli_boundaries(logits, self.temperature, sample=True)
            closes = torch.maximum(closes, last)
        else:
            # Decisions at rate sigmoid(logit / tau), the probabilities the prior and entropy see
            # (as the policy's); the relaxation that carries the gradient has temperature tau on
            # top, tau^2 in logit units, so it sharpens as the schedule lowers tau.
            closes = gumbel_sigmoid_boundaries(logits / self.temperature, self.temperature, sample=True)
            closes = closes * (1 - last) + last                                     # keeps the straight-through gradient
        probs = torch.sigmoid(logits / self.temperature)
        entropy = bernoulli_entropy(logits / self.temperature)
        lengths = closes.detach().sum(1).long()                                     # (B,) segments per row
        u, h = self.high_level(mean_pool(z, closes))
        S = u.shape[1]
        valid = torch.arange(S, device=z.device)[None] < lengths[:, None]
        targets, _, vq_loss = self.vq(u, valid)
        predictions = self.segment_predictor(h).view(*h.shape[:2], cfg.segment_predict_steps, cfg.dim)
        losses, scored = neighbour_cpc_loss(predictions, targets, lengths)
        high = (losses * scored).sum() / scored.sum().clamp(min=1)
        prior = window_rate_loss(probs[:, :-1], cfg.prior_window, cfg.mean_segment_frames)
        loss = (low + high) / 2 + vq_loss + cfg.prior_weight * prior - self.entropy_weight * entropy.mean()
        if cfg.boundary_training == "reinforce":
            per_row = scored.flatten(1).sum(1)
            cost = (losses * scored).flatten(1).sum(1) / per_row.clamp(min=1)        # (B,) mean high-level loss
            baseline = self.baseline(cost[per_row > 0]) if bool((per_row > 0).any()) else self.baseline.value
            cost = torch.where(per_row > 0, cost, baseline)                          # no prediction: no signal
            policy = reinforce_loss(log_prob[:, :-1], cost, baseline)
            loss = loss + policy
            metrics["policy_loss"] = policy.item()
        metrics.update(high_loss=high.item(), vq_loss=vq_loss.item(), prior=prior.item(),
                       entropy=entropy.mean().item(), frames_per_segment=closes.numel() / max(int(lengths.sum()), 1),
                       temperature=self.temperature)
        return loss, metrics

    @torch.no_grad()
    def segment(self, audio: torch.Tensor, prominence: float | None = None) -> Segmentation:
        """Features and segmentation of one utterance ``audio (L,)``: the most likely decisions
        (the official readout), or with ``prominence`` the peaks of the boundary logits, read out
        like a dissimilarity curve (a policy that is not yet decisive ranks frames well before any
        of them reaches even odds). The high-level contexts follow that segmentation."""
        z, c = self.low_level(audio[None])
        if not self.config.hierarchical:
            return Segmentation(z[0], c[0], torch.zeros(z.shape[1]), None)
        return self._read_out(z[0], c[0], self.boundary(z)[0], prominence)

    @torch.no_grad()
    def resegment(self, segmentation: Segmentation, prominence: float | None) -> Segmentation:
        """``segmentation`` read out again (see ``segment``), running only the high level."""
        return self._read_out(segmentation.z, segmentation.c, segmentation.logits, prominence)

    def _read_out(self, z: torch.Tensor, c: torch.Tensor, logits: torch.Tensor, prominence: float | None
                  ) -> Segmentation:
        """Segments of one utterance's frames ``z, c (T, D)`` from its boundary ``logits (T,)``."""
        if prominence is None:
            closes = enforce_min_width((logits > 0).cpu().numpy().astype(np.float32), self.config.min_segment_frames)
        else:
            closes = np.zeros(len(logits), dtype=np.float32)
            closes[np.array(peak_boundaries(logits[:-1].cpu().numpy(), prominence), dtype=int) - 1] = 1
            closes[-1] = 1
        closes = torch.from_numpy(closes).to(z)
        _, h = self.high_level(mean_pool(z[None], closes[None]))
        segment_of_frame = (torch.cumsum(closes, 0) - closes).long()
        return Segmentation(z, c, closes, h[0, segment_of_frame], logits)
