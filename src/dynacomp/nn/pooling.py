"""Segment pooling and future-safe upsampling for variable-length segments.

Boundaries ``b`` ``(B, T)`` mark with 1 the *last* position of each segment, as in dynamic token
pooling (Nawrot et al. 2023) following Bhati et al. (2021). Position ``t`` belongs to segment
``cumsum(b)[t] - b[t]``; the trailing positions after a row's last boundary form an unclosed
segment, which pooling leaves out.

- ``segment_sums``: per-segment sums and sizes, all segments including the unclosed one.
- ``mean_pool``: ``(B, T, D) -> (B, S, D)``, the mean of each closed segment (S: the most closed
  segments in any row; rows with fewer are zero-padded at the end).
- ``upsample``: ``(B, 1 + S, D) -> (B, T, D)`` where index 0 is a "null" summary (e.g. a learned
  vector) and index ``s + 1`` the summary of segment ``s``: position ``t`` reads index
  ``cumsum(b)[t]``, so a segment's summary reaches only positions at or after its last element.

Pooling carries gradient to ``b`` (useful for straight-through boundaries): every position's
weight is exactly 1 in value but is computed as ``1 + g - stopgrad(g)`` with ``g`` the segment
index as a float, as the dense assignment matrix of the reference implementation does.
"""

from __future__ import annotations

import torch


def segment_sums(x: torch.Tensor, boundaries: torch.Tensor, num_segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums ``(B, G, D)`` and sizes ``(B, G)`` of segments ``0..G-1`` of ``x (B, T, D)``.

    ``num_segments`` (G) must exceed the largest segment index, i.e. ``G >= max_b sum(b) + 1`` when
    the unclosed trailing segment is wanted too.
    """
    b = boundaries.to(x.dtype)
    segment = torch.cumsum(b, dim=1) - b                      # (B, T), float, carries gradient
    index = segment.detach().round().long()                   # (B, T)
    if index.numel() and int(index.max()) >= num_segments:
        raise ValueError(f"num_segments={num_segments} but a position is in segment {int(index.max())}")
    weight = 1 + segment - segment.detach()                   # (B, T), value 1
    B, T, D = x.shape
    sums = x.new_zeros(B, num_segments, D).scatter_add(1, index[..., None].expand(B, T, D), weight[..., None] * x)
    sizes = x.new_zeros(B, num_segments).scatter_add(1, index, weight)
    return sums, sizes


def mean_pool(x: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Mean of each closed segment: ``x (B, T, D)``, ``boundaries (B, T)`` -> ``(B, S, D)``."""
    closed = boundaries.detach().sum(1).round().long()        # (B,) closed segments per row
    S = int(closed.max()) if closed.numel() else 0
    sums, sizes = segment_sums(x, boundaries, S + 1)
    valid = torch.arange(S, device=x.device)[None, :] < closed[:, None]   # (B, S)
    means = sums[:, :S] / sizes[:, :S].clamp(min=1)[..., None]
    return means * valid[..., None]


def upsample(summaries: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """``summaries (B, 1 + S, D)`` (index 0: null) to positions: ``(B, T, D)``, position ``t`` taking
    index ``sum_{i <= t} b_i``."""
    index = torch.cumsum(boundaries.detach(), dim=1).round().long()       # (B, T)
    D = summaries.shape[-1]
    return summaries.gather(1, index[..., None].expand(*index.shape, D))
