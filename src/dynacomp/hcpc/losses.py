"""The contrastive losses of hierarchical CPC, as pure functions.

Scores are dot products divided by the dimension D (the official code's unnormalised mode).

- ``frame_negatives``: for every frame of a batch, ``N`` frames drawn uniformly from the batch.
- ``cpc_loss``: InfoNCE of prediction ``k`` from context ``t`` against frame ``t + k``
  (van den Oord et al. 2018), ``k = 1..K``.
- ``aligned_cpc_loss``: the aligned-prediction loss (ACPC; Chorowski et al. 2021) of the official
  code: ``M`` predictions are softly aligned to the next ``K >= M`` frames, each prediction
  covering a run of at least one frame, in order; the loss is minus the log of the sum over all
  such alignments of the product of per-frame InfoNCE probabilities (a CTC with no blank).
- ``neighbour_cpc_loss``: segment-level CPC with focused negatives: the one negative of the target
  segment ``s + k`` is its neighbour ``s + k - 1`` or ``s + k + 1`` of the same sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def frame_negatives(z: torch.Tensor, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, T, N, D)``: for each frame of ``z (B, T, D)``, ``num`` frames drawn uniformly from the batch."""
    B, T, D = z.shape
    index = torch.randint(0, B * T, (B, T, num), generator=generator, device=z.device)
    return z.reshape(B * T, D)[index]


def _info_nce(pred: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the positive (index 0) and the negatives: ``pred (..., D)``,
    ``positive (..., D)``, ``negatives (..., N, D)`` -> ``(..., 1 + N)``."""
    D = pred.shape[-1]
    pos = (pred * positive).sum(-1, keepdim=True)
    neg = torch.einsum("...d,...nd->...n", pred, negatives)
    return F.log_softmax(torch.cat([pos, neg], -1) / D, -1)


def cpc_loss(predictions: torch.Tensor, z: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``predictions (B, T, K, D)`` (step ``k + 1`` from context ``t``), targets ``z (B, T, D)``,
    ``negatives (B, T, N, D)`` (per target frame) -> (mean loss, accuracy of the positive beating
    every negative), over all ``(t, k)`` with ``t + k + 1 < T``."""
    losses, correct = [], []
    T, K = z.shape[1], predictions.shape[2]
    for k in range(1, K + 1):
        pred = predictions[:, :T - k, k - 1]
        log_probs = _info_nce(pred, z[:, k:], negatives[:, k:])
        losses.append(-log_probs[..., 0].flatten())
        correct.append((log_probs.argmax(-1) == 0).flatten())
    return torch.cat(losses).mean(), torch.cat(correct).float().mean()


def aligned_cpc_loss(predictions: torch.Tensor, z: torch.Tensor, negatives: torch.Tensor,
                     window: int) -> torch.Tensor:
    """``predictions (B, T, M, D)`` aligned to the ``window`` (K) frames after each context,
    ``z (B, T, D)``, ``negatives (B, T, N, D)`` -> the mean over contexts ``t + K < T`` of
    ``-log sum_alignments prod_j p(frame t + j | prediction a_j) / K``."""
    B, T, M, D = predictions.shape
    if window < M or T <= window:
        raise ValueError(f"need M={M} <= K={window} < T={T}")
    contexts = T - window
    pred = predictions[:, :contexts]                                               # (B, C, M, D)
    log_p = torch.stack([
        _info_nce(pred, z[:, j:j + contexts, None].expand_as(pred),
                  negatives[:, j:j + contexts, None].expand(B, contexts, M, *negatives.shape[2:]))[..., 0]
        for j in range(1, window + 1)], dim=-1)                                    # (B, C, M, K)
    # "Unreachable" is a large negative finite log-probability, not -inf: logaddexp(-inf, -inf) is right
    # forwards but its gradient is NaN, which reached every weight.
    unreachable = torch.finfo(log_p.dtype).min / 4
    alpha = torch.full((B, contexts, M), unreachable, device=z.device, dtype=log_p.dtype)
    alpha[..., 0] = log_p[..., 0, 0]
    for j in range(1, window):
        stay = alpha
        advance = F.pad(alpha[..., :-1], (1, 0), value=unreachable)
        alpha = torch.logaddexp(stay, advance) + log_p[..., j]
    return -(alpha[..., -1] / window).mean()


def neighbour_cpc_loss(predictions: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment CPC with the neighbour of each target as its one negative.

    ``predictions (B, S, K, D)`` (step ``k + 1`` from segment ``s``), ``targets (B, S, D)``,
    ``lengths (B,)`` valid segments per row. Returns ``losses (B, S, K)`` (-log p of the positive
    in the 2-way softmax) and the mask ``(B, S, K)`` of valid entries (``s + k + 1 < length``).
    """
    B, S, K, D = predictions.shape
    s = torch.arange(S, device=targets.device)
    losses = predictions.new_zeros(B, S, K)
    valid = torch.zeros(B, S, K, dtype=torch.bool, device=targets.device)
    for k in range(1, K + 1):
        target = (s + k).clamp(max=S - 1)                                              # (S,)
        sign = torch.randint(0, 2, (B, S), generator=generator, device=targets.device) * 2 - 1
        neighbour = target[None] + sign                                                # (B, S)
        neighbour = torch.where(neighbour >= lengths[:, None], target[None] - 1, neighbour).clamp(0, S - 1)
        rows = torch.arange(B, device=targets.device)[:, None]
        pos = (predictions[:, :, k - 1] * targets[:, target]).sum(-1)
        neg = (predictions[:, :, k - 1] * targets[rows, neighbour]).sum(-1)
        losses[:, :, k - 1] = -F.log_softmax(torch.stack([pos, neg], -1) / D, -1)[..., 0]
        valid[:, :, k - 1] = (s + k)[None] < lengths[:, None]
    return losses, valid
