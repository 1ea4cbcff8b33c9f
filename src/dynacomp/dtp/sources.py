"""The six boundary sources behind one interface.

A source maps the characters ``ids (B, T)`` and the pre-layer states ``hidden (B, T, D)`` to hard
boundaries ``(B, T)`` (1: the character closes its group), and gives the auxiliary loss that
trains its predictor, if it has one:

| source     | boundaries                              | auxiliary loss                           |
|------------|-----------------------------------------|------------------------------------------|
| none       | none: the vanilla model                 | 0                                        |
| fixed      | every ``fixed_k`` characters            | 0                                        |
| whitespace | at each whitespace character            | 0                                        |
| unigram    | predictor ``sigmoid > 0.5``             | BCE against SentencePiece piece ends     |
| entropy    | predictor ``sigmoid > 0.5``             | BCE against spikes of the LM's entropy   |
| gumbel     | Gumbel-sigmoid sample (eval: threshold) | -log Binomial(T, prior) of the count / T |

Two faults of the reference code are fixed here: the BCE gets the predictor's *logits* (not
probabilities, which the reference passes through a second sigmoid), and the Gumbel source adds
noise only in training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynacomp.dtp.config import DTPConfig
from dynacomp.nn.boundaries import binomial_rate_loss, entropy_spikes, gumbel_sigmoid_boundaries


class BoundarySource(nn.Module):
    """Base: no predictor, no auxiliary loss."""

    def forward(self, ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``ids (B, T)``, ``hidden (B, T, D)``, ``positions (T,)`` (absolute, for caching) ->
        ``(boundaries (B, T) float, predictor logits (B, T) or None)``."""
        raise NotImplementedError

    def aux_loss(self, predictor_logits: torch.Tensor | None, boundaries: torch.Tensor,
                 lm_logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Scalar loss; ``lm_logits (B, T, V)``, ``targets (B, T)`` supervision where the source uses it."""
        return lm_logits.new_zeros(())


class FixedBoundaries(BoundarySource):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, ids, hidden, positions):
        b = ((positions + 1) % self.k == 0).to(hidden.dtype)
        return b.expand(ids.shape[0], -1), None


class WhitespaceBoundaries(BoundarySource):
    def __init__(self, whitespace_ids: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("whitespace", torch.tensor(whitespace_ids, dtype=torch.long), persistent=False)

    def forward(self, ids, hidden, positions):
        return torch.isin(ids, self.whitespace).to(hidden.dtype), None


class PredictedBoundaries(BoundarySource):
    """An MLP on the pre-layer states (not detached, so its loss also trains the first layers)."""

    def __init__(self, config: DTPConfig) -> None:
        super().__init__()
        self.predictor = nn.Sequential(nn.Linear(config.d_model, config.d_ff), nn.GELU(),
                                       nn.Linear(config.d_ff, 1))

    def forward(self, ids, hidden, positions):
        logits = self.predictor(hidden).squeeze(-1)
        return (logits > 0).to(hidden.dtype), logits


class UnigramBoundaries(PredictedBoundaries):
    def aux_loss(self, predictor_logits, boundaries, lm_logits, targets):
        if targets is None:
            return super().aux_loss(predictor_logits, boundaries, lm_logits, targets)
        return F.binary_cross_entropy_with_logits(predictor_logits, targets.to(predictor_logits.dtype))


class EntropyBoundaries(PredictedBoundaries):
    def __init__(self, config: DTPConfig) -> None:
        super().__init__(config)
        self.k = config.entropy_k

    def aux_loss(self, predictor_logits, boundaries, lm_logits, targets):
        logp = F.log_softmax(lm_logits.detach().float(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        spikes = entropy_spikes(entropy, self.k)
        return F.binary_cross_entropy_with_logits(predictor_logits.float(), spikes)


class GumbelBoundaries(PredictedBoundaries):
    def __init__(self, config: DTPConfig) -> None:
        super().__init__(config)
        self.temperature, self.prior = config.temperature, config.prior
        # Evaluation: a boundary where the logit exceeds it. 0 rounds the probability; a calibrated
        # threshold (dynacomp.dtp.eval.calibrate_threshold) reproduces the training-time rate.
        self.threshold = 0.0

    def forward(self, ids, hidden, positions):
        logits = self.predictor(hidden).squeeze(-1)
        if self.training:
            return gumbel_sigmoid_boundaries(logits, self.temperature, sample=True), logits
        return gumbel_sigmoid_boundaries(logits - self.threshold, self.temperature, sample=False), logits

    def aux_loss(self, predictor_logits, boundaries, lm_logits, targets):
        return binomial_rate_loss(boundaries, self.prior)


def make_source(config: DTPConfig) -> BoundarySource | None:
    """The source ``config.boundaries`` names; ``None`` for the vanilla model."""
    if config.boundaries == "none":
        return None
    if config.boundaries == "fixed":
        return FixedBoundaries(config.fixed_k)
    if config.boundaries == "whitespace":
        return WhitespaceBoundaries(config.whitespace_ids)
    return {"unigram": UnigramBoundaries, "entropy": EntropyBoundaries,
            "gumbel": GumbelBoundaries}[config.boundaries](config)
