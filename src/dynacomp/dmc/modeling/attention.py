"""DMC attention: one module for training, teacher-forced evaluation, prefill and decoding.

Shapes: B batch, H KV heads, G query heads per KV head, L tokens of this call, D head dim.

Every call processes a *chunk* of L tokens that continues whatever the cache holds (nothing,
for training and teacher-forced evaluation). Token i of the chunk either appends a new group or
merges into the open one (alpha_i); every position keeps the state of its group so far (the
partial accumulation x~_i), rotated by RoPE at position i. Query t then sees

* its own state x~_t (the diagonal, always),
* chunk key i < t with the additive bias log(1 - alpha_{i+1}): with hard decisions 0 when the
  group of i closed at i, -inf when it went on merging,
* the cache's closed slots (and its open slot only if the chunk's first token appended).

Prefill is therefore exact and parallel, and decoding is the same code with L = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dynacomp.dmc.cache.paged import OpenRun, merge_attention
from dynacomp.dmc.config import DMCConfig
from dynacomp.dmc.modeling import channels, decisions


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, heads, L, D); cos, sin: (B, L, D), the model's own rotary tables for these positions."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def _block_bias(key_bias: Tensor, start: int, end: int, delay: int = 1, hidden: Tensor | None = None) -> Tensor:
    """(B, H, 1, C, end): key i's bias for queries start..end-1 at least ``delay`` after it, 0 for the
    nearer ones (the diagonal included), -inf for the future; ``hidden`` (B, H, L) keys get -inf
    off the diagonal."""
    distance = torch.arange(start, end, device=key_bias.device)[:, None] - torch.arange(end, device=key_bias.device)
    bias = key_bias[:, :, None, None, :end]
    bias = torch.where(distance >= delay, bias, torch.where(distance >= 0, 0.0, -math.inf))
    if hidden is not None:
        bias = bias.masked_fill(hidden[:, :, None, None, :end] & (distance != 0), -math.inf)
    return bias


def _block_attention(q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor, start: int, scale: float, delay: int = 1,
                     hidden: Tensor | None = None):
    """Queries start..start+C of a chunk against keys 0..start+C-1. q: (B, H, G, C, D)."""
    end = start + q.shape[-2]
    scores = torch.einsum("bhgqd,bhkd->bhgqk", q, k[:, :, :end]).float() * scale  # softmax in fp32
    scores = scores + _block_bias(key_bias, start, end, delay, hidden)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).to(v.dtype)
    out = torch.einsum("bhgqk,bhkd->bhgqd", probs, v[:, :, :end]).float()
    return out, lse


def _block_attention_fused(q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor, start: int, scale: float,
                           delay: int = 1, hidden: Tensor | None = None):
    """The same in PyTorch's fused CPU flash kernel (no gradient), which also gives the
    log-sum-exp: the G query heads of a KV head become one query sequence of G x C rows."""
    b, h, g, c, d = q.shape
    end = start + c
    mask = _block_bias(key_bias, start, end, delay, hidden).expand(b, h, g, c, end).reshape(b * h, 1, g * c, end)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.reshape(b * h, 1, g * c, d), k[:, :, :end].reshape(b * h, 1, end, d),
        v[:, :, :end].reshape(b * h, 1, end, d), attn_mask=mask.to(q.dtype), scale=scale)[:2]
    return out.view(b, h, g, c, d).float(), lse.view(b, h, g, c).float()


def masked_attention(q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None, scale: float, chunk: int,
                     delay: int = 1, hidden: Tensor | None = None):
    """Causal attention within a chunk with a per-key bias, block by block over queries.

    q: (B, H, G, L, D); k, v: (B, H, L, D); key_bias: (B, H, L), added to key i for queries at
    least ``delay`` after i (DMC: 1, every later query; DMS: its window), 0 for the nearer ones,
    -inf for the future; ``hidden`` (B, H, L): keys no other query sees (DMS's padding). Returns
    out (B, H, G, L, D), lse (B, H, G, L).
    Memory is O(chunk x L) per block; with gradients each block is recomputed in backward
    (activation checkpointing), so no L x L tensor is ever held.
    """
    length = q.shape[-2]
    if length == 1:  # decoding: the lone query sees only its own state
        return v.float().unsqueeze(2).expand_as(q), torch.einsum("bhgqd,bhqd->bhgq", q, k).float() * scale
    outs, lses = [], []
    fused = not torch.is_grad_enabled() and q.device.type == "cpu"
    for start in range(0, length, chunk):
        block = q[..., start:start + chunk, :]
        if fused:
            out, lse = _block_attention_fused(block, k, v, key_bias, start, scale, delay, hidden)
        elif torch.is_grad_enabled() and length > chunk:
            out, lse = checkpoint(_block_attention, block, k, v, key_bias, start, scale, delay, hidden,
                                  use_reentrant=False)
        else:
            out, lse = _block_attention(block, k, v, key_bias, start, scale, delay, hidden)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


class LearnedCacheAttention(nn.Module):
    """Drop-in replacement of a Llama-shaped attention (q/k/v/o projections, optional q/k norms),
    reusing its weights, whose KV heads decide token by token what the cache keeps (a policy's
    subclass: DMC merges, DMS evicts). ``last_alpha`` (B, H, L): the decisions of the last call,
    for losses and stats."""

    def __init__(self, attention: nn.Module, config: DMCConfig, num_heads: int, num_kv_heads: int):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj)
        # Qwen3 normalises q and k per head before RoPE; others have no such module.
        self.q_norm = getattr(attention, "q_norm", None)
        self.k_norm = getattr(attention, "k_norm", None)
        self.layer_idx = attention.layer_idx
        self.head_dim = attention.head_dim
        self.scaling = attention.scaling
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.dmc = config
        self.last_alpha: Tensor | None = None  # (B, H, L) decisions of the last call, for losses and stats

    def _project(self, hidden: Tensor, proj: nn.Module, norm: nn.Module | None) -> Tensor:
        b, length, _ = hidden.shape
        x = proj(hidden).view(b, length, -1, self.head_dim)
        if norm is not None:
            x = norm(x)
        return x.transpose(1, 2)

    def _positions(self, cache, attention_mask: Tensor | None, k: Tensor):
        """(layer, real (B, L), token_index (B, L), seqs (B,)): from the cache's current chunk, or
        from the padding mask when there is no cache (layer and seqs None)."""
        if cache is None:
            real = self._real_tokens(attention_mask, k.shape[0], k.shape[2], k.device)
            return None, real, real.long().cumsum(1) - 1, None
        chunk = cache.chunk
        return cache.layer(self.layer_idx, k), chunk.real, chunk.token_index, chunk.seqs

    @staticmethod
    def _real_tokens(attention_mask: Tensor | None, b: int, length: int, device) -> Tensor:
        """(B, L) True for real tokens of this chunk; the mask is the 2D padding mask (see convert.py)."""
        if attention_mask is None:
            return torch.ones(b, length, dtype=torch.bool, device=device)
        if attention_mask.dim() != 2:
            raise ValueError("DMC attention expects the 2D padding mask; was the model converted with "
                             "dynacomp.dmc.convert?")
        return attention_mask[:, -length:].bool()


class DMCAttention(LearnedCacheAttention):
    """DMC's append-or-merge key-value memory."""

    def forward(self, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor],
                attention_mask: Tensor | None = None, cache=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values      # a DMCCache (checked by the model)
        b, length, _ = hidden_states.shape
        h, g = self.num_kv_heads, self.num_heads // self.num_kv_heads
        q = self._project(hidden_states, self.q_proj, self.q_norm)           # (B, H*G, L, D)
        k = self._project(hidden_states, self.k_proj, self.k_norm)           # (B, H, L, D)
        v = self._project(hidden_states, self.v_proj, None)

        layer, real, token_index, seqs = self._positions(cache, attention_mask, k)

        alpha, key_bias = self._decide(k, token_index, real)
        omega = channels.importance(q, h, self.dmc.decision_bias) * real[:, None, :]
        q = channels.without_decision_channel(q)
        k = channels.without_decision_channel(k)

        cos, sin = position_embeddings
        kv = torch.cat([k, v], dim=-1)                                                   # (B, H, L, 2D)
        run = None if layer is None else layer.open_run(seqs)
        k_state, v_state = self._accumulate(run, kv, alpha, omega).to(k.dtype).chunk(2, dim=-1)
        k_rot = apply_rope(k_state, cos, sin)
        q_rot = apply_rope(q, cos, sin).view(b, h, g, length, self.head_dim)
        merges = alpha.detach() > 0.5

        if layer is None:
            out, _ = masked_attention(q_rot, k_rot, v_state, key_bias, self.scaling, self.dmc.query_chunk)
        elif length == 1:
            # Decoding: the token's state goes to its slot first, then the query reads every slot.
            layer.append_token(seqs, kv, k_rot, v_state, merges, omega, real)
            out, _ = layer.attend(seqs, q_rot.reshape(b * h, g, self.head_dim), self.scaling, with_lse=False)
        else:
            out, lse = masked_attention(q_rot, k_rot, v_state, key_bias, self.scaling, self.dmc.query_chunk)
            if layer.has_slots(seqs):
                past_out, past_lse = layer.attend(seqs, q_rot.reshape(b * h, g * length, self.head_dim), self.scaling,
                                                  hide_last=merges[..., 0].reshape(-1).long())
                out, lse = merge_attention(out, lse, past_out.view_as(out), past_lse.view_as(lse))
            layer.write_chunk(seqs, kv, k_rot, v_state, merges, omega, real)
        self.last_alpha = alpha
        out = out.reshape(b, self.num_heads, length, self.head_dim).transpose(1, 2).reshape(b, length, -1)
        return self.o_proj(out.to(hidden_states.dtype)), None

    def _decide(self, k: Tensor, token_index: Tensor, real: Tensor) -> tuple[Tensor, Tensor | None]:
        """alpha (B, H, L) and the key bias log(1 - alpha_{i+1}) (B, H, L; None for one token).

        Training: Gumbel-sigmoid relaxation, soft alpha. Otherwise hard decisions (straight-through
        when gradients flow). The first token of a sequence (and the one after each of the ``sinks``
        tokens kept alone) and padding never merge; padding keys are hidden from every later query.
        """
        can_merge = (real & (token_index > self.dmc.sinks))[:, None, :]
        if self.dmc.force_cr is not None:
            forced = decisions.forced_decisions(token_index, self.dmc.force_cr)[:, None, :].expand(-1, k.shape[1], -1)
            alpha = forced.to(k.dtype) * can_merge
            logits = torch.where(alpha > 0, math.inf, -math.inf)
        else:
            logits = channels.decision_logits(k, self.dmc.decision_bias).float()
            if self.training:
                logits = decisions.gumbel_sigmoid_logits(logits, self.dmc.temperature)
                alpha = torch.sigmoid(logits) * can_merge
            else:
                soft = torch.sigmoid(logits)
                hard = (logits > self.dmc.decision_threshold).float()
                alpha = (hard - soft.detach() + soft) * can_merge
                logits = torch.where(hard > 0, math.inf, -math.inf)
        if k.shape[2] == 1:                       # decoding: no later query of the chunk needs a bias
            return alpha, None
        logits = logits.masked_fill(~can_merge, -math.inf)                # appends keep key i visible
        bias = decisions.log_keep_probability(F.pad(logits[..., 1:], (0, 1), value=-math.inf))
        bias = bias.masked_fill(~real[:, None, :], -math.inf)
        return alpha, bias

    def _accumulate(self, run: OpenRun | None, kv: Tensor, alpha: Tensor, omega: Tensor) -> Tensor:
        """Partial accumulation of the chunk's keys and values (B, H, L, 2D), continuing each
        row's open run from the cache when there is one (in fp32)."""
        past = 0
        if run is not None:
            past = run.omega.shape[-1]
            if kv.shape[2] == 1:
                return decisions.extend_run(run.kv, run.omega, kv, alpha, omega)
            kv = torch.cat([run.kv.to(kv.dtype), kv], dim=2)
            alpha = torch.cat([alpha.new_ones(*alpha.shape[:2], past), alpha], dim=2)
            omega = torch.cat([run.omega, omega.float()], dim=2)
        state = decisions.accumulate(kv.float(), alpha.float(), omega.float(), self.dmc.window)
        return state[:, :, past:]
