"""DMS attention: learned delayed eviction (Łańcucki, Staniszewski, Nawrot, Ponti 2025, arXiv 2506.05345).

Shapes: B batch, H KV heads, G query heads per KV head, L tokens of this call, D head dim, W the
eviction window.

Every KV head decides, for each token j, whether to evict it, from the eviction logit that the
*next* token j+1 reads off its queries (``channels.eviction_logits``). An evicted token stays
visible while it is among the last W tokens of the sequence and disappears after; a kept one
stays forever. Training relaxes the decision with a Gumbel-sigmoid: key j gets log(1 - alpha_j)
added to its score for every query at least W after it, nothing for nearer ones. Inference uses
hard decisions (logit > threshold), so a forward over a chunk is exact and equals decoding one
token at a time; the cache (``dynacomp.dmc.cache.dms``) frees an evicted token's slot when it
leaves the window.

The decision of a chunk's last real token is read from the next chunk's first real token
(``decided``); real tokens of a row are assumed contiguous (left or right padding only).

A threshold calibrated on one text realises another ratio on another (docs/results/dms.md), so
``keep_share`` replaces it by a quantile of the sequence's own logits, all layers pooled
(``dynacomp.dmc.cache.control``), and ``hold_keep`` by a per-layer trailing quantile: a token is
evicted when its logit is above the ``keep`` quantile of its layer's last ``control_window`` logits
(every KV head of the layer), so each layer keeps its share of tokens on any text, and its heads
share them as their logits say.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynacomp.dmc.cache.paged import merge_attention
from dynacomp.dmc.modeling import channels, decisions
from dynacomp.dmc.modeling.attention import LearnedCacheAttention, apply_rope, masked_attention


class DMSAttention(LearnedCacheAttention):
    """DMS's evict-after-a-window key-value memory. With ``eviction_probe`` the logits come from
    ``self.eviction_probe`` (hidden -> H, zero at first) and the queries keep all their channels."""

    def __init__(self, attention: nn.Module, config, num_heads: int, num_kv_heads: int):
        super().__init__(attention, config, num_heads, num_kv_heads)
        if config.eviction_probe:
            weight = self.q_proj.weight
            self.eviction_probe = nn.Linear(weight.shape[1], num_kv_heads, bias=False, device=weight.device,
                                            dtype=weight.dtype)
            nn.init.zeros_(self.eviction_probe.weight)

    def forward(self, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor],
                attention_mask: Tensor | None = None, cache=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values      # a DMCCache of DMS layers (checked by the model)
        b, length, _ = hidden_states.shape
        h, g, d, w = self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim, self.dmc.eviction_window
        q = self._project(hidden_states, self.q_proj, self.q_norm)           # (B, H*G, L, D)
        k = self._project(hidden_states, self.k_proj, self.k_norm)           # (B, H, L, D)
        v = self._project(hidden_states, self.v_proj, None)
        layer, real, token_index, seqs = self._positions(cache, attention_mask, k)

        if self.dmc.eviction_probe:
            logits = self.eviction_probe(hidden_states).transpose(1, 2).float() - self.dmc.decision_bias
        else:
            logits = channels.eviction_logits(q, h, self.dmc.decision_bias).float()   # (B, H, L): decides the token before
            q = channels.without_eviction_channel(q, h)
        if self.dmc.hold_keep is not None and not self.training:
            # A repeated token repeats its first-layer logit, up to float noise that depends on the batch;
            # on a grid of 2^-10 such logits tie exactly, so a quantile ranks them alike in every batch.
            logits = torch.round(logits * 1024) / 1024
        control = cache.control if cache is not None and not self.training else None
        if control is not None:                  # keep_share: one threshold per block from the sequence's logits
            threshold, history = control.thresholds(seqs, token_index, real), None
            control.record(seqs, token_index, logits, real & (token_index > self.dmc.sinks))
        else:
            threshold, history = self._threshold(logits, real, layer, seqs)
        alpha, key_bias = self._decide(logits, real & (token_index >= self.dmc.sinks), threshold)
        cos, sin = position_embeddings
        k_rot = apply_rope(k, cos, sin)
        q_rot = apply_rope(q, cos, sin).view(b, h, g, length, d)
        hidden = ~real[:, None, :].expand(b, h, length)

        if layer is None:
            out, _ = masked_attention(q_rot, k_rot, v, key_bias, self.scaling, self.dmc.query_chunk, w, hidden)
        else:
            first = real.float().argmax(1)                                               # the first real token
            at_first = first.view(b, 1, 1)
            decided = (logits.gather(2, at_first.expand(b, h, 1)) > threshold.gather(2, at_first))[..., 0]
            decided &= (token_index.gather(1, first[:, None]) > self.dmc.sinks)      # the token before is no sink
            if length == 1:
                layer.append_token(seqs, k_rot, v, decided, real)
                out, _ = layer.attend(seqs, q_rot.reshape(b * h, g, d), self.scaling, with_lse=False)
            else:
                out, lse = masked_attention(q_rot, k_rot, v, key_bias, self.scaling, self.dmc.query_chunk, w, hidden)
                if layer.has_slots(seqs):
                    rank = real.long().cumsum(1) - 1
                    past_out, past_lse = layer.attend_past(seqs, q_rot.reshape(b * h, g * length, d), rank, decided,
                                                           real, self.scaling)
                    out, lse = merge_attention(out, lse, past_out.view_as(out), past_lse.view_as(lse))
                layer.write_chunk(seqs, k_rot, v, alpha.detach() > 0.5, decided, real)
            if history is not None:                      # after the write, which empties the rows' state
                layer.keep_logit_history(seqs, history)
        self.last_alpha = alpha
        out = out.reshape(b, self.num_heads, length, d).transpose(1, 2).reshape(b, length, -1)
        return self.o_proj(out.to(hidden_states.dtype)), None

    def _threshold(self, logits: Tensor, real: Tensor, layer, seqs) -> tuple[Tensor, Tensor | None]:
        """(B, 1, L) what each position's inference logit must exceed to evict: ``decision_threshold``,
        or with ``hold_keep`` the trailing quantile continuing the layer's logit history; and the
        history the layer keeps after this chunk (None: nothing to keep)."""
        b, h, length = logits.shape
        if self.dmc.hold_keep is None or self.training:
            return logits.new_full((b, 1, length), self.dmc.decision_threshold), None
        size = self.dmc.control_window - 1
        history = (layer.logit_history(seqs, size) if layer is not None
                   else logits.new_full((b, h, size), math.nan))
        keep = self.dmc.hold_keep
        threshold, history = trailing_quantile(history, logits, real, keep[self.layer_idx] if len(keep) > 1 else keep[0])
        return threshold, history if layer is not None else None

    def _decide(self, logits: Tensor, evictable: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
        """alpha (B, H, L), token j's eviction decided by token j+1's logit (0 where j is not
        ``evictable`` (B, L): padding or a sink, or no real token follows in this chunk), and the key
        bias log(1 - alpha) for queries a window or more later.

        Training: Gumbel-sigmoid relaxation, the bias from the soft decision, alpha straight-through
        (the ratio loss counts hard evictions). Otherwise hard decisions (logit > ``threshold``
        (B, 1, L) of the deciding position): the bias is 0 or -inf.
        """
        follows = F.pad(evictable[:, 1:] & evictable[:, :-1], (0, 1), value=False)[:, None, :]     # (B, 1, L)
        z = F.pad(logits[..., 1:], (0, 1), value=-math.inf)
        if self.training:
            z = decisions.gumbel_sigmoid_logits(z, self.dmc.temperature)
            soft = torch.sigmoid(z)
            alpha = ((soft > 0.5).float() - soft.detach() + soft) * follows
            return alpha, decisions.log_keep_probability(z).masked_fill(~follows, 0.0)
        hard = (z > F.pad(threshold[..., 1:], (0, 1), value=math.inf)) & follows
        return hard.float(), torch.zeros_like(z).masked_fill(hard, -math.inf)


def trailing_quantile(history: Tensor, logits: Tensor, real: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """The ``level`` quantile, at each real token, of the layer's logits over its last M tokens
    (all H heads: M x H values, fewer at the start of a sequence; the value at or below the level,
    never an interpolation), and the history to continue from.

    history: (B, H, M - 1) the logits before this chunk, oldest first, NaN where none; logits: (B, H, L);
    real: (B, L), contiguous per row. Returns ((B, 1, L) thresholds, +inf at padding; (B, H, M - 1)).
    The real logits are packed after the history, so padding never shortens a window.
    """
    b, h, length = logits.shape
    m = history.shape[-1] + 1
    count, first = real.sum(1), real.float().argmax(1)
    position = torch.arange(length, device=logits.device)
    source = (first[:, None] + position).clamp(max=length - 1)                           # (B, L) packed -> chunk
    packed = logits.gather(2, source[:, None, :].expand(b, h, length))
    packed = packed.masked_fill(~(position < count[:, None])[:, None, :], math.nan)
    series = torch.cat([history, packed], 2)                                             # (B, H, M - 1 + L)
    windows = series.unfold(2, m, 1).permute(0, 2, 1, 3).reshape(b, length, h * m)
    levels = windows.nanquantile(level, dim=-1, interpolation="lower")                   # (B, L) packed order
    threshold = levels.gather(1, (position - first[:, None]).clamp(0, length - 1)).masked_fill(~real, math.inf)
    keep = (count[:, None] + torch.arange(m - 1, device=logits.device))[:, None, :].expand(b, h, m - 1)
    return threshold[:, None, :], series.gather(2, keep)
