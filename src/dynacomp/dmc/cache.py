"""DMCCache: a transformers ``Cache`` whose storage is ragged per (sequence, KV head), in pages.

Each layer owns a pool of pages ``(N, P, D)`` for keys and for values. A row is one
(sequence, KV head) pair, ``row = b * H + h``; it owns a list of pages (its block table) and a slot
count. Heads that merge more keep fewer slots and so fewer pages: the memory is really saved,
not masked. Pages of a finished sequence go back to the layer's free list (``release``).

Attention over the pool (``attend``) runs over pages, not over a padded (B, H, max_len) tensor,
so its cost follows the slots actually stored. All query heads of a KV head are scored against
its pages together, so K/V are never repeated for grouped-query attention.

Besides the slots, each row keeps its *open run*: the pre-RoPE keys, values and importances of
the last ``window - 1`` tokens merged into its last slot, which the next merge needs to
recompute the windowed weighted mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from dynacomp.dmc import native
from dynacomp.dmc.config import DMCConfig


@dataclass
class OpenRun:
    """The last ``window - 1`` tokens of every row's open merge group, oldest first.

    kv: (R, W-1, 2D) pre-RoPE keys and values side by side; omega: (R, W-1), 0 for empty entries.
    """
    kv: Tensor
    omega: Tensor


def page_attention(queries: Tensor, keys: Tensor, values: Tensor, valid: Tensor, scale: float):
    """Softmax attention of each page's queries over its valid slots, with the log-sum-exp.

    queries: (N, M, D); keys, values: (N, P, D); valid: (N, P). Returns out (N, M, D) and lse
    (N, M) in fp32; a page with no valid slot gives lse -inf (and out 0 or NaN, never used).
    On CPU one fused flash-attention kernel, the only PyTorch attention there that returns the
    log-sum-exp; elsewhere the same maths in batched matrix products.
    """
    queries = queries.to(keys.dtype)
    attention = page_attention_fused if keys.device.type == "cpu" else page_attention_bmm
    return attention(queries, keys, values, valid, scale)


def page_attention_fused(queries: Tensor, keys: Tensor, values: Tensor, valid: Tensor, scale: float):
    mask = torch.where(valid, 0.0, -math.inf).to(keys.dtype)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        queries[:, None], keys[:, None], values[:, None], attn_mask=mask[:, None, None], scale=scale)[:2]
    # The kernel gives lse 0 to a page with no valid slot; valid slots are a prefix of the page.
    return out[:, 0].float(), lse[:, 0].float().masked_fill(~valid[:, :1], -math.inf)


def page_attention_bmm(queries: Tensor, keys: Tensor, values: Tensor, valid: Tensor, scale: float):
    scores = torch.bmm(queries, keys.transpose(1, 2)).float() * scale
    scores = scores.masked_fill(~valid.unsqueeze(1), -math.inf)
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse.nan_to_num(neginf=0.0).unsqueeze(-1))
    return torch.bmm(probs.to(values.dtype), values).float(), lse


@dataclass
class PageLayout:
    """owner: (N,) row of each page (R for a free one); slots: (N, P) the row slot each page
    position holds; table: (R, pages) the block table with empty entries pointing at page 0, which
    ``missing`` (R, pages, 1) marks."""
    owner: Tensor
    slots: Tensor
    table: Tensor
    missing: Tensor


class DMCLayer(CacheLayerMixin):
    """One layer's pages, block tables, slot counts and open runs."""

    def __init__(self, page_size: int, window: int):
        super().__init__()
        self.page_size = page_size
        self.window = window
        self.rows = 0
        self.slots: Tensor | None = None          # (R,) slots stored per row
        self.block_table: Tensor | None = None    # (R, max pages) page ids, -1 where none
        self.k_pool: Tensor | None = None         # (N, P, D) rotated keys
        self.v_pool: Tensor | None = None         # (N, P, D)
        self.page_row: Tensor | None = None       # (N,) owner row, R for a free page
        self.page_index: Tensor | None = None     # (N,) position of the page in its row
        self.free: list[int] = []
        self.pages_high = 0                       # every page in use has an id below this
        self.layout: PageLayout | None = None     # derived from the block table, for attend
        self.run: OpenRun | None = None

    # -- transformers' CacheLayerMixin ---------------------------------------------------------

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor | None = None) -> None:
        """key_states: (B, H, L, D), only for sizes, dtype and device."""
        batch, heads, _, dim = key_states.shape
        self.rows, self.dtype, self.device = batch * heads, key_states.dtype, key_states.device
        rows, w = self.rows, self.window - 1
        self.slots = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.block_table = torch.full((rows, 0), -1, dtype=torch.long, device=self.device)
        self.k_pool = key_states.new_zeros(0, self.page_size, dim)
        self.v_pool = key_states.new_zeros(0, self.page_size, dim)
        self.page_row = torch.zeros(0, dtype=torch.long, device=self.device)
        self.page_index = torch.zeros(0, dtype=torch.long, device=self.device)
        self.run = OpenRun(key_states.new_zeros(rows, w, 2 * dim), key_states.new_zeros(rows, w, dtype=torch.float32))
        self.is_initialized = True

    def update(self, key_states, value_states, cache_kwargs=None):
        raise NotImplementedError("DMC layers are read and written by DMC attention (DMCAttention); "
                                  "a stock attention cannot use a ragged cache")

    def get_seq_length(self) -> int:
        raise NotImplementedError("DMCCache tracks the sequence length, not its layers")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        raise NotImplementedError("DMCCache answers mask sizes, not its layers")

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__(self.page_size, self.window)

    # -- pages ----------------------------------------------------------------------------------

    def _allocate(self, rows: Tensor, page_index: Tensor) -> Tensor:
        """New pages for (rows[i], page_index[i]); returns their ids. Grows the pool when needed."""
        need = rows.numel()
        if len(self.free) < need:
            old = self.k_pool.shape[0]
            new = max(old + need - len(self.free), math.ceil(old * 1.25))
            grow = new - old
            self.k_pool = torch.cat([self.k_pool, self.k_pool.new_zeros(grow, *self.k_pool.shape[1:])])
            self.v_pool = torch.cat([self.v_pool, self.v_pool.new_zeros(grow, *self.v_pool.shape[1:])])
            self.page_row = torch.cat([self.page_row, self.page_row.new_full((grow,), self.rows)])
            self.page_index = torch.cat([self.page_index, self.page_index.new_zeros(grow)])
            self.free.extend(range(new - 1, old - 1, -1))
        ids = torch.tensor([self.free.pop() for _ in range(need)], dtype=torch.long, device=self.device)
        self.page_row[ids] = rows
        self.page_index[ids] = page_index
        self.pages_high = max(self.pages_high, int(ids.max()) + 1)
        width = int(page_index.max()) + 1 if need else 0
        if width > self.block_table.shape[1]:
            self.block_table = torch.cat(
                [self.block_table, self.block_table.new_full((self.rows, width - self.block_table.shape[1]), -1)], 1)
        self.block_table[rows, page_index] = ids
        self.layout = None
        return ids

    def write(self, rows: Tensor, slots: Tensor, keys: Tensor, values: Tensor) -> None:
        """Store keys/values (n, D) at (rows[i], slots[i]); allocates the pages these reach."""
        page_index = slots // self.page_size
        have = self.block_table.shape[1]
        table = self.block_table[rows, page_index.clamp(max=have - 1)] if have else torch.full_like(rows, -1)
        missing = (page_index >= have) | (table < 0)
        if missing.any():
            pairs = torch.unique(torch.stack([rows[missing], page_index[missing]], 1), dim=0)
            self._allocate(pairs[:, 0], pairs[:, 1])
        pages = self.block_table[rows, page_index]
        offsets = slots % self.page_size
        self.k_pool[pages, offsets] = keys.to(self.k_pool.dtype)
        self.v_pool[pages, offsets] = values.to(self.v_pool.dtype)

    def release(self, rows: Tensor) -> None:
        """Give the pages of ``rows`` back to the free list and empty the rows."""
        pages = self.block_table[rows]
        pages = pages[pages >= 0]
        self.page_row[pages] = self.rows
        self.free.extend(pages.tolist())
        self.block_table[rows] = -1
        self.layout = None
        self.slots[rows] = 0
        self.run.omega[rows] = 0

    # -- attention ------------------------------------------------------------------------------

    def _page_layout(self) -> PageLayout:
        """Where each page sits, rebuilt only after pages were allocated or released."""
        if self.layout is None:
            high = self.pages_high
            slots = self.page_index[:high, None] * self.page_size + torch.arange(self.page_size, device=self.device)
            self.layout = PageLayout(owner=self.page_row[:high], slots=slots,
                                     table=self.block_table.clamp(min=0), missing=self.block_table[..., None] < 0)
        return self.layout

    def attend(self, queries: Tensor, visible: Tensor, scale: float,
               with_lse: bool = True) -> tuple[Tensor, Tensor | None]:
        """Attention of each row's queries over the first ``visible`` slots of that row.

        queries: (R, M, D), M = query heads per KV head x query tokens; visible: (R,).
        Returns out (R, M, D) (0 where nothing is visible) and, if ``with_lse``, the log-sum-exp
        (R, M) (-inf where nothing is visible) for merging with attention over other keys.
        Without the log-sum-exp (decoding), one call of the native kernel where it applies
        (``dynacomp.dmc.native``), else ``attend_split_k``.
        """
        if not with_lse and native.supports(self.k_pool):
            return native.paged_decode_attention(queries, self.k_pool, self.v_pool, self.block_table, visible,
                                                 scale), None
        return self.attend_split_k(queries, visible, scale, with_lse)

    def attend_split_k(self, queries: Tensor, visible: Tensor, scale: float,
                       with_lse: bool = True) -> tuple[Tensor, Tensor | None]:
        """``attend`` in PyTorch ops, split-K over pages as flash-decoding does: every page below
        the high-water mark yields its own partial softmax (output and log-sum-exp), with K and V
        read in place; each row then weighs the partials of its pages, found through its block
        table, by their softmax.
        """
        layout = self._page_layout()
        high = self.pages_high
        padded_visible = torch.cat([visible, visible.new_zeros(1)])      # free pages (owner R) see nothing
        valid = layout.slots < padded_visible[layout.owner][:, None]      # (N, P)
        # index_select, not advanced indexing: the same gathers, several times faster on CPU.
        page_out, page_lse = page_attention(queries.index_select(0, layout.owner.clamp(max=queries.shape[0] - 1)),
                                            self.k_pool[:high], self.v_pool[:high], valid, scale)
        table, shape = layout.table.flatten(), layout.table.shape
        row_lse = page_lse.index_select(0, table).view(*shape, -1).masked_fill(layout.missing, -math.inf)
        weight = torch.softmax(row_lse, 1).nan_to_num(0.0)                           # (R, pages, M); 0: nothing visible
        out = (weight.unsqueeze(-1) * page_out.index_select(0, table).view(*shape, *page_out.shape[1:])).sum(1)
        return out, torch.logsumexp(row_lse, 1) if with_lse else None

    # -- accounting -----------------------------------------------------------------------------

    def pages_in_use(self) -> int:
        return int((self.block_table >= 0).sum()) if self.block_table is not None else 0

    def bytes_per_slot(self) -> int:
        return 2 * self.k_pool.shape[-1] * self.k_pool.element_size()


class DMCCache(Cache):
    """The DMC key-value cache of one batch of sequences.

    ``get_seq_length`` is the number of token positions seen (padding included), so that
    transformers' positions, RoPE and masks stay right; ``stats`` says how many slots hold them.
    """

    def __init__(self, num_layers: int, page_size: int = DMCConfig.page_size, window: int = DMCConfig.window):
        super().__init__(layers=[DMCLayer(page_size, window) for _ in range(num_layers)])
        self.seen = 0                       # token positions fed, padding included
        self.tokens: Tensor | None = None    # (B,) real tokens per sequence
        self.finished: Tensor | None = None  # (B,) released sequences: later tokens are not stored

    @classmethod
    def for_model(cls, model) -> DMCCache:
        config = model.dmc_config
        return cls(model.config.num_hidden_layers, config.page_size, config.window)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen + query_length, 0

    def reorder_cache(self, beam_idx: Tensor) -> None:
        raise NotImplementedError("beam search is not supported with DMCCache (per-head ragged storage)")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("merged slots cannot be un-merged: DMCCache cannot be cropped")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("expand the batch before the first forward when using DMCCache")

    def batch_select_indices(self, indices: Tensor) -> None:
        raise NotImplementedError("DMCCache cannot select batch rows; release finished rows instead")

    @property
    def is_compileable(self) -> bool:
        return False

    def release(self, sequences: list[int] | Tensor) -> None:
        """A sequence has ended: its pages go back to the pools for the others to grow into, and
        tokens still fed for it (generate pads finished rows) are no longer stored."""
        sequences = torch.as_tensor(sequences, dtype=torch.long)
        for layer in self.layers:
            if layer.is_initialized:
                heads = layer.rows // self.tokens.numel()
                rows = (sequences[:, None] * heads + torch.arange(heads)).flatten().to(layer.slots.device)
                layer.release(rows)
        self.finished[sequences.to(self.finished.device)] = True

    def stats(self) -> dict:
        """Tokens, slots, compression ratio (tokens / slots, the paper's), bytes, per-layer-per-head ratios.

        ``memory_ratio`` is what equal-memory comparisons use: the bytes a dense cache would hold
        for these tokens over the bytes of the stored slots plus the open runs (``open_run_bytes``,
        a fixed ``window - 1`` entries per row that the slot count leaves out). ``bytes_reserved``
        is the pools' physical size (they grow ahead of use), ``bytes_allocated`` the pages in use.
        """
        layers = [layer for layer in self.layers if layer.is_initialized]
        if not layers:
            return {"tokens": 0, "slots": 0, "compression_ratio": 1.0, "memory_ratio": 1.0, "bytes_allocated": 0,
                    "bytes_reserved": 0, "open_run_bytes": 0, "pages": 0, "per_layer_head": []}
        batch = self.tokens.numel()
        slots = torch.stack([layer.slots.view(batch, -1) for layer in layers])     # (layers, B, H)
        tokens = int(self.tokens.sum())
        heads = slots.shape[-1]
        per_head = (tokens / slots.sum(1).clamp_min(1).double()).tolist()
        total_slots = int(slots.sum())
        slot_bytes = layers[0].bytes_per_slot()
        open_run_bytes = sum(t.numel() * t.element_size() for layer in layers for t in (layer.run.kv, layer.run.omega))
        dense_bytes = tokens * len(layers) * heads * slot_bytes
        return {
            "tokens": tokens,
            "slots": total_slots,
            "compression_ratio": tokens * len(layers) * heads / max(total_slots, 1),
            "memory_ratio": dense_bytes / max(total_slots * slot_bytes + open_run_bytes, 1),
            "open_run_bytes": open_run_bytes,
            "bytes_allocated": sum(layer.pages_in_use() * layer.page_size * layer.bytes_per_slot()
                                   for layer in layers),
            "bytes_reserved": sum(layer.k_pool.shape[0] * layer.page_size * layer.bytes_per_slot()
                                  for layer in layers),
            "bytes_per_slot": slot_bytes,
            "pages": sum(layer.pages_in_use() for layer in layers),
            "page_size": layers[0].page_size,
            "per_layer_head": per_head,
        }
