"""Training-free peers of DMC at equal memory: KV eviction policies on a budgeted cache.

Shapes: B batch, H KV heads, G query heads per KV head, L tokens of this call, n cached slots,
D head dim.

``BudgetCache`` is a transformers ``Cache`` that stores post-RoPE keys and values densely,
``(B, H, n, D)`` per layer, with a few statistics per slot (its token position, the attention
it has received, the attention of the latest query). After the model has seen ``t`` tokens of
a sequence it holds at most ``ceil(t / cr)`` slots per (sequence, KV head), the memory DMC
reaches at the same compression ratio: whenever a forward step leaves more, every (sequence,
KV head) drops its lowest-scoring slots. The step's own tokens are attended to before the
eviction, as DMC's newest token sees its own state before it is merged.

A policy is a small class with one method, ``score(layer) -> (B, H, n)``, higher = keep:

* ``StreamingLLM`` (Xiao et al. 2023): the first ``sinks`` tokens and the most recent ones.
* ``H2O`` (Zhang et al. 2023): the heavy hitters, by attention received so far, plus a
  protected window of the most recent tokens (a share of the budget).
* ``TOVA`` (Oren et al. 2024): the attention weights of the current query.

Attention statistics are per KV head: the weights of its query heads are averaged.

The policies need the attention weights, which transformers' fused attentions do not give:
run the model with the attention implementation ``ATTN_IMPLEMENTATION`` (see
``use_budget_attention``), an eager grouped-query attention that never repeats K/V in memory and
hands its weights to the cache layer that produced the keys. Batches must be unpadded
(windows of equal length), which is how the evaluation harness uses them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from dynacomp.dmc.cache import CacheStats

ATTN_IMPLEMENTATION = "dynacomp_budget"
# Memory of the statistics a policy keeps per slot beside its key and value: the token position
# and one score (attention received, or the latest query's), 4 bytes each in a deployment.
STAT_BYTES_PER_SLOT = 8

# The layer whose keys the next attention call receives: Cache.update runs right before the
# attention function inside every attention module, and the attention function has no other way
# to reach the cache.
_UPDATED_LAYER: ContextVar[BudgetLayer | None] = ContextVar("dynacomp_budget_layer", default=None)


# -- policies ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamingLLM:
    """Attention sinks plus a sliding window: keep the first ``sinks`` tokens and the newest."""
    sinks: int = 4

    def score(self, layer: BudgetLayer) -> Tensor:
        position = layer.positions.float()
        return position.masked_fill(layer.positions < self.sinks, math.inf)


@dataclass(frozen=True)
class H2O:
    """Heavy hitters: keep the slots that received the most attention (summed over all queries so
    far), and always the newest ``floor(recent * budget)`` tokens (the paper splits half-half)."""
    recent: float = 0.5

    def score(self, layer: BudgetLayer) -> Tensor:
        protected = math.floor(self.recent * layer.budget)
        return layer.mass.masked_fill(layer.positions >= layer.seen - protected, math.inf)


@dataclass(frozen=True)
class TOVA:
    """Token omission via attention: keep the slots the current (last) query attends to most."""

    def score(self, layer: BudgetLayer) -> Tensor:
        return layer.attention


Policy = StreamingLLM | H2O | TOVA


# -- cache --------------------------------------------------------------------------------------------

class BudgetLayer(CacheLayerMixin):
    """One layer's slots and statistics.

    keys, values: (B, H, n, D) post-RoPE; positions: (B, H, n) token index of each slot;
    mass: (B, H, n) attention received so far; attention: (B, H, n) that of the latest query.
    """

    is_sliding = False

    def __init__(self, policy: Policy, cr: float):
        super().__init__()
        if cr < 1:
            raise ValueError(f"the compression ratio must be >= 1, got {cr}")
        self.policy, self.cr = policy, cr
        self.seen = 0                  # tokens of each sequence seen so far
        self.awaiting = False          # keys handed out, attention weights not yet observed
        self.positions: Tensor | None = None
        self.mass: Tensor | None = None
        self.attention: Tensor | None = None

    @property
    def budget(self) -> int:
        """Slots allowed per (sequence, KV head) after ``seen`` tokens."""
        return math.ceil(self.seen / self.cr)

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor | None = None) -> None:
        b, h, _, d = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros(b, h, 0, d)
        self.values = key_states.new_zeros(b, h, 0, d)
        self.positions = torch.zeros(b, h, 0, dtype=torch.long, device=self.device)
        self.mass = torch.zeros(b, h, 0, device=self.device)
        self.attention = torch.zeros(b, h, 0, device=self.device)
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Append L new tokens (B, H, L, D); returns all keys and values (B, H, n + L, D)."""
        if self.awaiting:
            raise RuntimeError(f"BudgetCache evicts by attention weights, but the last step's were never seen: "
                               f"run the model with the {ATTN_IMPLEMENTATION!r} attention "
                               "(dynacomp.dmc.policies.eviction.use_budget_attention(model))")
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        b, h, length, _ = key_states.shape
        new = torch.arange(self.seen, self.seen + length, device=self.device).expand(b, h, -1)
        self.keys = torch.cat([self.keys, key_states], dim=2)
        self.values = torch.cat([self.values, value_states], dim=2)
        self.positions = torch.cat([self.positions, new], dim=2)
        self.mass = torch.cat([self.mass, self.mass.new_zeros(b, h, length)], dim=2)
        self.attention = torch.cat([self.attention, self.attention.new_zeros(b, h, length)], dim=2)
        self.seen += length
        self.awaiting = True
        _UPDATED_LAYER.set(self)
        return self.keys, self.values

    def observe(self, weights: Tensor) -> None:
        """Take the step's attention weights (B, H, G, L, n), then evict down to the budget."""
        per_head = weights.float().mean(2)                   # (B, H, L, n)
        self.mass += per_head.sum(2)
        self.attention = per_head[:, :, -1]
        self.awaiting = False
        self.evict()

    def evict(self) -> None:
        """Keep the ``budget`` highest-scoring slots of every (sequence, KV head), in token order."""
        budget = self.budget
        if self.keys.shape[2] <= budget:
            return
        keep = self.policy.score(self).topk(budget, dim=-1).indices.sort(dim=-1).values   # (B, H, budget)
        rows = keep.unsqueeze(-1).expand(-1, -1, -1, self.keys.shape[-1])
        self.keys = self.keys.gather(2, rows)
        self.values = self.values.gather(2, rows)
        self.positions = self.positions.gather(2, keep)
        self.mass = self.mass.gather(2, keep)
        self.attention = self.attention.gather(2, keep)

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reorder_cache(self, beam_idx: Tensor) -> None:
        raise NotImplementedError("beam search is not supported with BudgetCache")


class BudgetCache(Cache):
    """The budgeted cache of one batch of equal-length sequences; ``get_seq_length`` counts the
    tokens seen (so positions and RoPE stay right), ``stats`` the slots that hold them."""

    def __init__(self, num_layers: int, policy: Policy, cr: float):
        super().__init__(layers=[BudgetLayer(policy, cr) for _ in range(num_layers)])

    @classmethod
    def for_model(cls, model, policy: Policy, cr: float) -> BudgetCache:
        return cls(model.config.num_hidden_layers, policy, cr)

    def stats(self) -> CacheStats:
        """Tokens (summed over sequences) and slots (over layers, KV heads and sequences); the
        memory of the kept slots' keys, values and per-slot statistics against a dense cache of
        every token."""
        layers = [layer for layer in self.layers if layer.is_initialized]
        if not layers:
            return CacheStats()
        b, h, _, d = layers[0].keys.shape
        slot_bytes = 2 * d * layers[0].keys.element_size()
        slots = sum(b * h * layer.keys.shape[2] for layer in layers)
        dense_slots = sum(b * h * layer.seen for layer in layers)
        held = slots * (slot_bytes + STAT_BYTES_PER_SLOT)
        return CacheStats(tokens=b * layers[0].seen, slots=slots, bytes=held, dense_bytes=dense_slots * slot_bytes,
                          compression_ratio=dense_slots / max(slots, 1), allocated_bytes=held, reserved_bytes=held)


# -- attention ----------------------------------------------------------------------------------------

def budget_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                     scaling: float, dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """Causal grouped-query eager attention; reports its weights to the BudgetLayer that gave the keys.

    query: (B, H*G, L, D); key, value: (B, H, n, D), the last L of them this step's tokens.
    Returns the output (B, L, H*G, D) and None (the weights are not returned to the model).
    """
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(f"the {ATTN_IMPLEMENTATION!r} attention does not support padding; "
                         "feed sequences of equal length without an attention mask")
    b, heads, length, d = query.shape
    kv_heads, n = key.shape[1], key.shape[2]
    g = heads // kv_heads
    scores = torch.matmul(query.reshape(b, kv_heads, g * length, d), key.transpose(2, 3)) * scaling
    scores = scores.view(b, kv_heads, g, length, n)
    future = torch.arange(n, device=key.device) > torch.arange(n - length, n, device=key.device)[:, None]
    weights = torch.softmax(scores.masked_fill(future, -math.inf).float(), dim=-1)   # (B, H, G, L, n)
    out = torch.matmul(weights.to(value.dtype).view(b, kv_heads, g * length, n), value)
    layer = _UPDATED_LAYER.get()
    if layer is not None and layer.keys is key:
        _UPDATED_LAYER.set(None)
        layer.observe(weights)
    return out.view(b, heads, length, d).transpose(1, 2), None


def _padding_mask(*, attention_mask: Tensor | None = None, **_) -> Tensor | None:
    """The 'mask' transformers builds for this attention: the 2D padding mask itself (or None)."""
    return attention_mask


@contextlib.contextmanager
def use_budget_attention(model) -> Iterator[None]:
    """Run ``model`` with ``budget_attention`` inside the block; its own attention afterwards."""
    ALL_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, budget_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, _padding_mask)
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = ATTN_IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = previous
