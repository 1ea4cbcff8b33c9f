"""Boundaries as a stochastic policy, trained by REINFORCE (Williams 1992), as in hierarchical CPC.

A boundary tensor ``b (B, T)`` has ``b[:, t] = 1`` when position ``t`` closes a segment (the
convention of ``dynacomp.nn.pooling``). Each position is an independent Bernoulli decision with
probability ``sigmoid(logit / temperature)`` (a two-way softmax with temperature, as the official
hCPC code has it). Pure functions plus one small state class:

- ``bernoulli_boundaries``: sample (or take the most likely) decisions, with their log-probability;
- ``bernoulli_entropy``: the entropy of each decision;
- ``reinforce_loss``: the score-function loss for a per-sequence cost and a baseline;
- ``EMABaseline``: an exponential moving average of the batch-mean cost, the baseline;
- ``window_rate_loss``: a length prior on the decision probabilities (expected boundaries in
  every window of ``window`` positions against ``window / mean_length``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bernoulli_boundaries(logits: torch.Tensor, temperature: float, sample: bool,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(boundaries, log_prob)``, each ``(B, T)``, from ``logits (B, T)``.

    ``sample=True`` draws each decision from Bernoulli(sigmoid(logit / temperature)); ``False``
    takes the more likely one (``logits > 0``). ``boundaries`` carry no gradient, ``log_prob`` does.
    """
    scaled = logits / temperature
    if sample:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        boundaries = (u < torch.sigmoid(scaled.detach())).to(logits.dtype)
    else:
        boundaries = (logits.detach() > 0).to(logits.dtype)
    log_prob = boundaries * F.logsigmoid(scaled) + (1 - boundaries) * F.logsigmoid(-scaled)
    return boundaries, log_prob


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(logits)), elementwise."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


def reinforce_loss(log_prob: torch.Tensor, cost: torch.Tensor, baseline: float | torch.Tensor) -> torch.Tensor:
    """``mean_b[(cost_b - baseline) * sum_t log_prob[b, t]]``: minimising it makes decision patterns
    whose ``cost (B,)`` is above the baseline less likely. ``log_prob (B, T)``; ``cost`` is detached."""
    advantage = cost.detach() - baseline
    return (advantage * log_prob.sum(1)).mean()


class EMABaseline(nn.Module):
    """Running mean of the cost, ``value <- decay * value + (1 - decay) * mean(cost)``. Calling it
    with a batch's cost returns the baseline for that batch (the running mean before it; the batch
    mean on the first call), then takes the batch in. Kept as buffers, so it is saved with the model."""

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        mean = cost.detach().float().mean()
        baseline = torch.where(self.started, self.value, mean).clone()
        self.value.copy_(torch.where(self.started, self.decay * self.value + (1 - self.decay) * mean, mean))
        self.started.fill_(True)
        return baseline


def window_rate_loss(probs: torch.Tensor, window: int, mean_length: float) -> torch.Tensor:
    """``mean over windows of (sum of probs in the window - window / mean_length)^2``; ``probs (B, T)``,
    every window of ``window`` consecutive positions (the whole row when it is shorter)."""
    window = min(window, probs.shape[1])
    expected = F.avg_pool1d(probs[:, None], window, stride=1)[:, 0] * window    # (B, T - window + 1)
    return (expected - window / mean_length).square().mean()
