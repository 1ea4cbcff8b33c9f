"""Holding the share of tokens a DMS sequence keeps, on any text, with one threshold for all layers.

A threshold calibrated on one text realises another ratio on another (the model keeps more of a
manual page than of a novel), and per-layer shares found on one text are wrong for another
(docs/results/dms.md). What carries over is the sequence's own distribution of eviction logits:
the threshold calibration would find *on this text*. ``KeepShareControl`` estimates it as the
sequence goes, pooling every layer and KV head: the threshold of block ``b`` (tokens
``b * block .. (b + 1) * block - 1``) is the ``1 - keep`` quantile of the logits of blocks
``b - 1 - history .. b - 2``, and the model's calibrated ``decision_threshold`` while there are none.

Skipping block ``b - 1`` is what keeps prefill exact: a forward over at most ``block`` tokens
spans blocks ``b - 1`` and ``b`` at most, so every logit its thresholds read came from earlier
forwards, all layers of them complete, however the tokens were split into chunks
(``DMCModelMixin.forward`` cuts longer forwards). Logits are counted in a histogram per block
(bins of 1/16 over [-32, 32], the quantile interpolated inside its bin), so the state is a few KB
per sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOW, HIGH, BINS = -32.0, 32.0, 1024


def keep_share_for_ratio(ratio: float, context: int, window: int) -> float:
    """The keep_share at which ``context`` tokens take ``context / ratio`` slots per KV head: the
    ``window`` newest stay, and the share kept of the rest fills what is left."""
    keep = (context / ratio - window) / (context - window)
    if not 0 < keep <= 1:
        raise ValueError(f"ratio {ratio} at {context} tokens cannot be held with eviction window {window}")
    return keep


class KeepShareControl:
    """Per sequence, a ring of ``history + 3`` block histograms of eviction logits (every layer and
    KV head), and the thresholds they give."""

    def __init__(self, keep: float, block: int, history: int, default: float):
        self.keep, self.block, self.default = keep, block, default
        self.history, self.ring = history, history + 3   # + the block skipped and the two a forward writes
        self.counts = torch.zeros(0, self.ring, BINS, dtype=torch.int32)   # (S, ring, bins)
        self.held = torch.zeros(0, self.ring, dtype=torch.long)            # (S, ring) block in each entry, -1: none
        self.edges = torch.linspace(LOW, HIGH, BINS + 1)[:-1]               # each bin's lower edge
        self._last: tuple[Tensor, Tensor] | None = None                     # (token_index, thresholds) of a forward

    def bytes_per_sequence(self) -> int:
        return self.ring * (BINS * 4 + 8)

    def grow(self, sequences: int) -> None:
        extra = sequences - self.counts.shape[0]
        if extra > 0:
            self.counts = torch.cat([self.counts, self.counts.new_zeros(extra, self.ring, BINS)])
            self.held = torch.cat([self.held, self.held.new_full((extra, self.ring), -1)])

    def reset(self, seqs: Tensor) -> None:
        self.counts[seqs] = 0
        self.held[seqs] = -1

    def thresholds(self, seqs: Tensor, token_index: Tensor, real: Tensor) -> Tensor:
        """(B, 1, L) the threshold at each position of the chunk (+inf at padding). Every layer of a
        forward gets the same (its logits are counted in blocks the forward does not read), so it is
        computed once per forward: the layers pass the same ``token_index``."""
        if self._last is not None and self._last[0] is token_index:
            return self._last[1]
        device = token_index.device
        seqs = seqs.cpu()
        blocks = token_index.clamp(min=0).cpu() // self.block                          # (B, L)
        first = blocks.masked_fill(~real.cpu(), 2**62).min(1).values.clamp(max=2**61)   # (B,) the chunk's first block
        result = torch.full(blocks.shape, float("inf"))
        held, histograms = self.held[seqs], self.counts[seqs]                            # (B, ring), (B, ring, bins)
        for step in (0, 1):                                 # a chunk of at most `block` tokens spans two blocks
            block = first + step                                                         # (B,)
            use = (held >= (block - 1 - self.history)[:, None]) & (held < (block - 1)[:, None]) & (held >= 0)
            counts = (histograms * use[..., None]).sum(1).double()                      # (B, bins)
            total = counts.sum(1)
            level = torch.where(total > 0, self._quantile(counts, total), total.new_full(total.shape, self.default))
            result = torch.where(blocks == block[:, None], level.float()[:, None], result)
        result = result.masked_fill(~real.cpu(), float("inf")).to(device)[:, None, :]
        self._last = (token_index, result)
        return result

    def _quantile(self, counts: Tensor, total: Tensor) -> Tensor:
        """(B,) the level above which ``1 - keep`` of the counted logits (B, bins) lie, interpolated
        linearly inside the bin it falls in."""
        evict = (1 - self.keep) * total
        above = counts.flip(1).cumsum(1).flip(1) - counts          # logits above each bin
        index = (above > evict[:, None]).sum(1).clamp(max=BINS - 1)  # the bin holding the level
        inside = counts.gather(1, index[:, None])[:, 0].clamp(min=1)
        share = ((evict - above.gather(1, index[:, None])[:, 0]) / inside).clamp(0, 1)
        return self.edges[index].double() + (1 - share) * (HIGH - LOW) / BINS

    def record(self, seqs: Tensor, token_index: Tensor, logits: Tensor, counted: Tensor) -> None:
        """Count one layer's eviction ``logits`` (B, H, L) at the ``counted`` (B, L) positions."""
        b, h, length = logits.shape
        seqs, counted = seqs.cpu(), counted.cpu()
        blocks = token_index.clamp(min=0).cpu() // self.block
        entry = blocks % self.ring
        rows = seqs[:, None].expand(b, length)
        stale = counted & (self.held[rows, entry] != blocks)
        if stale.any():                                      # an entry's first logits: it held an older block
            self.counts[rows[stale], entry[stale]] = 0
            self.held[rows[stale], entry[stale]] = blocks[stale]
        bins = ((logits.detach().float().cpu() - LOW) * (BINS / (HIGH - LOW))).floor().long().clamp(0, BINS - 1)
        where = counted[:, None, :].expand(b, h, length)
        flat = (rows[:, None, :].expand(b, h, length) * self.ring + entry[:, None, :]) * BINS + bins
        view = self.counts.view(-1)
        view.index_add_(0, flat[where], torch.ones(int(where.sum()), dtype=torch.int32))
