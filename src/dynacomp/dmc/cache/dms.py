"""DMS's layer: learned delayed eviction (Łańcucki et al. 2025, arXiv 2506.05345) with the memory of
evicted tokens really freed.

Every row keeps a ring of its last ``window`` real tokens, oldest first and right-aligned (entry
r of a full ring holds the token ``window - r`` positions back), with each token's slot and its
eviction flag; the newest token's flag is pending until the next token decides it. A token that
leaves the ring is dropped if flagged, its slot given to the next token, and kept otherwise: a row
stores its kept tokens plus at most ``window`` recent ones, always in slots 0..count-1, so a
decoding query reads every stored slot (the native kernel's prefix). A prefill query at rank q
(0 = the chunk's first real token) still sees a flagged ring entry r exactly when q < r.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dynacomp.dmc.cache.paged import PagedLayer, merge_attention


class DMSLayer(PagedLayer):
    """Pages plus, per row, ``ring_slot`` (R, W) slot of each of the last W tokens (-1: none) and
    ``ring_evict`` (R, W) their eviction flags."""

    def _row_state(self, keys: Tensor) -> dict[str, tuple[Tensor, float]]:
        return {"ring_slot": (torch.zeros(0, self.window, dtype=torch.long, device=keys.device), -1),
                "ring_evict": (torch.zeros(0, self.window, dtype=torch.bool, device=keys.device), False)}

    def logit_history(self, seqs: Tensor, length: int) -> Tensor:
        """(B, H, length) the last eviction logits of each row, oldest first, NaN where a row has
        fewer; kept only for the ratio control (``DMCConfig.hold_keep``), created on first use."""
        if "logit_history" not in self._state:
            self._state["logit_history"] = torch.full((self.rows, length), math.nan, device=self.device)
            self._empty["logit_history"] = math.nan
        return self._state["logit_history"][self.rows_of(seqs)].view(seqs.numel(), self.heads, length)

    def keep_logit_history(self, seqs: Tensor, history: Tensor) -> None:
        self._state["logit_history"][self.rows_of(seqs)] = history.reshape(-1, history.shape[-1])

    def _ring(self, rows: Tensor, decided: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
        """The rows' ring with the pending flag of its newest token set to ``decided`` (n,) where
        the row feeds a real token now (``real`` (n,))."""
        slot, evict = self._state["ring_slot"][rows], self._state["ring_evict"][rows].clone()
        evict[:, -1] = torch.where(real & (slot[:, -1] >= 0), decided, evict[:, -1])
        return slot, evict

    @torch.no_grad()
    def append_token(self, seqs: Tensor, k_rot: Tensor, values: Tensor, decided: Tensor, real: Tensor) -> None:
        """Store one decoded token per sequence. k_rot, values: (B, H, 1, D); decided: (B, H) the
        eviction flag of each row's previous token; real: (B, 1)."""
        rows = self.rows_of(seqs)
        n = rows.numel()
        real = real.expand(-1, self.heads).reshape(n)
        slot, evict = self._ring(rows, decided.reshape(n), real)
        count = self._slots[rows]
        reuse = (slot[:, 0] >= 0) & evict[:, 0]                   # the token leaving the ring was evicted
        target = torch.where(reuse, slot[:, 0], count)
        index = real.nonzero()[:, 0]
        self._write(rows[index], target[index], k_rot.reshape(n, -1)[index], values.reshape(n, -1)[index])
        self._slots[rows] = count + (real & ~reuse).long()
        keep = ~real[:, None]
        self._state["ring_slot"][rows] = torch.where(keep, slot, torch.cat([slot[:, 1:], target[:, None]], 1))
        self._state["ring_evict"][rows] = torch.where(keep, evict, F.pad(evict[:, 1:], (0, 1), value=False))

    @torch.no_grad()
    def write_chunk(self, seqs: Tensor, k_rot: Tensor, values: Tensor, evict: Tensor, decided: Tensor,
                    real: Tensor) -> None:
        """Store a prefill chunk. k_rot, values: (B, H, L, D); evict: (B, H, L) flags of the chunk's
        tokens (False for the last real one, still pending); decided: (B, H) the flag of each row's
        token before the chunk; real: (B, L), real tokens contiguous in each row.

        The rows are rewritten compactly: survivors are the stored slots and the chunk's tokens,
        less the flagged tokens that leave the ring during the chunk.
        """
        b, h, length, d = k_rot.shape
        rows = self.rows_of(seqs)
        n, w = rows.numel(), self.window
        real_rows = real[:, None, :].expand(b, h, length).reshape(n, length)
        ring_slot, ring_evict = self._ring(rows, decided.reshape(n), real_rows.any(1))
        count = self._slots[rows]
        stored = int(count.max()) if n else 0
        old_k, old_v = self._gather(rows, torch.arange(stored, device=rows.device).expand(n, -1))
        # The window order: the ring, then the chunk's real tokens; an index into [stored slots, chunk].
        chunk_index = torch.where(real_rows, stored + torch.arange(length, device=rows.device), -1)
        order = torch.cat([ring_slot, chunk_index], 1)                                      # (n, W + L)
        flags = torch.cat([ring_evict, evict.reshape(n, length) & real_rows], 1)
        present = order >= 0
        from_end = present.flip(1).long().cumsum(1).flip(1) - 1            # 0: the newest token of the row
        dropped = present & (from_end >= w) & flags
        survive = torch.cat([torch.arange(stored, device=rows.device) < count[:, None], real_rows], 1)
        survive = F.pad(survive, (0, 1)).scatter(1, torch.where(dropped, order, stored + length), False)[:, :-1]
        new_slot = survive.long().cumsum(1) - 1                                              # (n, stored + L)
        stays = present & (from_end < w)
        ri, ci = stays.nonzero(as_tuple=True)
        position = w - 1 - from_end[ri, ci]
        ring_slot = torch.full_like(ring_slot, -1)
        ring_slot[ri, position] = new_slot[ri, order[ri, ci]]
        ring_evict = torch.zeros_like(ring_evict)
        ring_evict[ri, position] = flags[ri, ci]
        keys = torch.cat([old_k, k_rot.reshape(n, length, d).to(old_k.dtype)], 1)
        vals = torch.cat([old_v, values.reshape(n, length, d).to(old_v.dtype)], 1)
        self._free_rows(rows)
        ri, ci = survive.nonzero(as_tuple=True)
        self._write(rows[ri], new_slot[ri, ci], keys[ri, ci], vals[ri, ci])
        self._slots[rows] = survive.sum(1)
        self._state["ring_slot"][rows] = ring_slot
        self._state["ring_evict"][rows] = ring_evict

    def attend_past(self, seqs: Tensor, queries: Tensor, rank: Tensor, decided: Tensor, real: Tensor,
                    scale: float) -> tuple[Tensor, Tensor]:
        """Attention of a prefill chunk's queries over the stored slots, with the log-sum-exp.

        queries: (B * H, G * L, D) grouped per query token as (G, L); rank: (B, L) index of each
        query among the chunk's real tokens; decided: (B, H) the flag of each row's newest stored
        token; real: (B, L). Flagged ring tokens are seen only by queries of lower rank than their
        ring entry; every other slot by all (split-K over pages, then merged).
        """
        rows = self.rows_of(seqs)
        n, w = rows.numel(), self.window
        slot, evict = self._ring(rows, decided.reshape(n), real.any(1).repeat_interleave(self.heads))
        flagged = evict & (slot >= 0)
        count = self._slots[rows]
        hidden = torch.zeros(n, int(count.max()) + 1 if n else 1, dtype=torch.bool, device=rows.device)
        hidden.scatter_(1, torch.where(flagged, slot, hidden.shape[1] - 1), True)
        hidden[:, -1] = False
        out, lse = self.attend_split_k(rows, queries, count, scale, hidden=hidden)
        keys, values = self._gather(rows, slot)                                              # (n, W, D)
        group = queries.shape[1] // rank.shape[1]
        q_rank = rank.repeat_interleave(self.heads, 0).repeat(1, group)                     # (n, G * L)
        sees = flagged[:, None, :] & (q_rank[:, :, None] < torch.arange(w, device=rows.device))
        scores = torch.bmm(queries.to(keys.dtype), keys.transpose(1, 2)).float() * scale
        ring_lse = torch.logsumexp(scores.masked_fill(~sees, -math.inf), -1)
        probs = torch.exp(scores - ring_lse.nan_to_num(neginf=0.0).unsqueeze(-1)).masked_fill(~sees, 0.0)
        ring_out = torch.bmm(probs.to(values.dtype), values).float()
        return merge_attention(out, lse, ring_out, ring_lse)
