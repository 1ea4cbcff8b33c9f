"""How well a codebook is used, from the indices a quantiser chose.

Normalised usage is the entropy of the code frequencies over its maximum, ``H / log K``: 1 when
every code is picked equally often, 0 when one code takes everything (the robust-VQ paper's
``vq_code_usage_frac``). Perplexity ``exp(H)`` is the number of equally used codes with the same
entropy; dead codes are never picked.
"""

from __future__ import annotations

import math

import torch


def code_counts(indices: torch.Tensor, codebook_size: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """How often each code occurs: ``(K,)`` int64 from indices of any shape (negative ones, the
    padding of a quantiser, and those where ``mask`` is False are left out)."""
    indices = indices.reshape(-1)
    keep = indices >= 0
    if mask is not None:
        keep &= mask.reshape(-1).to(torch.bool)
    return torch.bincount(indices[keep], minlength=codebook_size)


def entropy(counts: torch.Tensor) -> float:
    """Entropy in nats of the distribution ``counts / counts.sum()`` (0 for no counts)."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts.double() / total
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def normalized_usage(counts: torch.Tensor) -> float:
    """``H / log K`` in [0, 1] for ``K = len(counts)``."""
    return entropy(counts) / math.log(len(counts)) if len(counts) > 1 else 1.0


def perplexity(counts: torch.Tensor) -> float:
    """``exp(H)``: between 1 and ``K``."""
    return math.exp(entropy(counts))


def dead_codes(counts: torch.Tensor, threshold: float = 1.0) -> int:
    """Codes used fewer than ``threshold`` times."""
    return int((counts < threshold).sum())


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """``usage``, ``perplexity`` and ``dead_codes`` of one count vector, for logs and tables."""
    return {"usage": normalized_usage(counts), "perplexity": perplexity(counts), "dead_codes": dead_codes(counts)}
