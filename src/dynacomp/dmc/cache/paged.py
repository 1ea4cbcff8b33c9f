"""DMCCache: a transformers ``Cache`` whose storage is ragged per (sequence, KV head), in pages.

Each layer owns a pool of pages ``(N, P, D)`` for keys and for values. A row is one
(sequence, KV head) pair, ``row = s * H + h`` for the cache's sequence id ``s``; it owns a list of
pages (its block table) and a slot count. Heads that merge more keep fewer slots and so fewer
pages: the memory is really saved, not masked. Pages of a freed sequence go back to the layer's
free list at once (``free``), and its id to the cache's (``add_sequences`` reuses it).

The cache owns every write and every piece of bookkeeping. A forward runs between
``begin_forward`` (which sequences it feeds, which of its tokens are real) and ``end_forward``;
in between, DMC attention hands each layer the chunk's states and decisions
(``write_chunk`` for a prefill chunk, ``append_token`` for a decoding step) and asks it to
``attend``. Nobody else touches the tensors.

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
import torch.nn.functional as F
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from dynacomp.dmc.cache import native
from dynacomp.dmc.cache.control import KeepShareControl
from dynacomp.dmc.cache.stats import CacheStats
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
    # The kernel gives lse 0 to a page with no valid slot.
    return out[:, 0].float(), lse[:, 0].float().masked_fill(~valid.any(1, keepdim=True), -math.inf)


def page_attention_bmm(queries: Tensor, keys: Tensor, values: Tensor, valid: Tensor, scale: float):
    scores = torch.bmm(queries, keys.transpose(1, 2)).float() * scale
    scores = scores.masked_fill(~valid.unsqueeze(1), -math.inf)
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse.nan_to_num(neginf=0.0).unsqueeze(-1))
    return torch.bmm(probs.to(values.dtype), values).float(), lse


def merge_attention(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two softmax attentions over disjoint key sets from their outputs (..., D) and
    log-sum-exps (...)."""
    lse = torch.logaddexp(lse_a, lse_b)
    weight_a = torch.exp(lse_a - lse).nan_to_num(0.0).unsqueeze(-1)
    weight_b = torch.exp(lse_b - lse).nan_to_num(0.0).unsqueeze(-1)
    return out_a * weight_a + out_b * weight_b, lse


@dataclass
class PageLayout:
    """owner: (N,) row of each page (-1 for a free one); slots: (N, P) the row slot each page
    position holds; table: (R, pages) the block table with empty entries pointing at page 0, which
    ``missing`` (R, pages, 1) marks."""
    owner: Tensor
    slots: Tensor
    table: Tensor
    missing: Tensor


@dataclass
class Chunk:
    """What one forward feeds. seqs: (B,) the cache's sequence id of every batch row; real: (B, L)
    True for tokens that are stored (not padding, not a freed sequence); token_index: (B, L) index
    of each token within its sequence."""
    seqs: Tensor
    real: Tensor
    token_index: Tensor


class PagedLayer(CacheLayerMixin):
    """One layer's pages, block tables and slot counts, and the per-row state of its policy
    (``_row_state``). Every method takes the batch's sequence ids ``seqs`` (B,); tensors of a chunk
    are (B, H, ...). Subclasses say how a chunk and a decoded token are written."""

    def __init__(self, page_size: int, window: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.page_size = page_size
        self.window = window
        self.pool_dtype = dtype                    # of the pages; None: the keys' dtype
        self.heads = 0
        self.rows = 0
        self._slots: Tensor | None = None          # (R,) slots stored per row
        self._block_table: Tensor | None = None    # (R, max pages) page ids, -1 where none
        self._k_pool: Tensor | None = None         # (N, P, D) rotated keys
        self._v_pool: Tensor | None = None         # (N, P, D)
        self._page_row: Tensor | None = None       # (N,) owner row, -1 for a free page
        self._page_index: Tensor | None = None     # (N,) position of the page in its row
        self._free: list[int] = []
        self._pages_high = 0                       # every page in use has an id below this
        self._layout: PageLayout | None = None     # derived from the block table, for attend
        self._state: dict[str, Tensor] = {}        # the policy's per-row state (R, ...)
        self._empty: dict[str, float] = {}         # ... and its value in an empty row

    def _row_state(self, keys: Tensor) -> dict[str, tuple[Tensor, float]]:
        """The policy's per-row tensors, with no rows yet, and the value of an empty row."""
        return {}

    # -- transformers' CacheLayerMixin ---------------------------------------------------------

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor | None = None) -> None:
        """key_states: (B, H, L, D), only for sizes, dtype (unless the layer has its own) and device;
        rows grow with ``reserve``."""
        self.heads, dim = key_states.shape[1], key_states.shape[-1]
        self.dtype, self.device = self.pool_dtype or key_states.dtype, key_states.device
        self._slots = torch.zeros(0, dtype=torch.long, device=self.device)
        self._block_table = torch.full((0, 0), -1, dtype=torch.long, device=self.device)
        self._k_pool = key_states.new_zeros(0, self.page_size, dim, dtype=self.dtype)
        self._v_pool = key_states.new_zeros(0, self.page_size, dim, dtype=self.dtype)
        self._page_row = torch.zeros(0, dtype=torch.long, device=self.device)
        self._page_index = torch.zeros(0, dtype=torch.long, device=self.device)
        state = self._row_state(key_states)
        self._state = {name: t for name, (t, _) in state.items()}
        self._empty = {name: empty for name, (_, empty) in state.items()}
        self.is_initialized = True

    def update(self, key_states, value_states, cache_kwargs=None):
        raise NotImplementedError("paged layers are read and written by DMC / DMS attention; "
                                  "a stock attention cannot use a ragged cache")

    def get_seq_length(self) -> int:
        raise NotImplementedError("DMCCache tracks the sequence length, not its layers")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        raise NotImplementedError("DMCCache answers mask sizes, not its layers")

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__(self.page_size, self.window, self.pool_dtype)

    # -- rows -----------------------------------------------------------------------------------

    def reserve(self, sequences: int) -> None:
        """Room for the rows of ``sequences`` sequences (new rows are empty)."""
        grow = sequences * self.heads - self.rows
        if grow <= 0:
            return
        self._slots = torch.cat([self._slots, self._slots.new_zeros(grow)])
        self._block_table = torch.cat([self._block_table, self._block_table.new_full(
            (grow, self._block_table.shape[1]), -1)])
        self._state = {name: torch.cat([t, t.new_full((grow, *t.shape[1:]), self._empty[name])])
                       for name, t in self._state.items()}
        self.rows += grow
        self._layout = None

    def rows_of(self, seqs: Tensor) -> Tensor:
        """(B * H,) rows of the sequences, sequence-major (as (B, H, ...) tensors flatten)."""
        return (seqs[:, None] * self.heads + torch.arange(self.heads, device=seqs.device)).flatten()

    # -- pages ----------------------------------------------------------------------------------
    def _allocate(self, rows: Tensor, page_index: Tensor) -> Tensor:
        """New pages for (rows[i], page_index[i]); returns their ids. Grows the pool when needed."""
        need = rows.numel()
        if len(self._free) < need:
            old = self._k_pool.shape[0]
            new = max(old + need - len(self._free), math.ceil(old * 1.25))
            grow = new - old
            self._k_pool = torch.cat([self._k_pool, self._k_pool.new_zeros(grow, *self._k_pool.shape[1:])])
            self._v_pool = torch.cat([self._v_pool, self._v_pool.new_zeros(grow, *self._v_pool.shape[1:])])
            self._page_row = torch.cat([self._page_row, self._page_row.new_full((grow,), -1)])
            self._page_index = torch.cat([self._page_index, self._page_index.new_zeros(grow)])
            self._free.extend(range(new - 1, old - 1, -1))
        ids = torch.tensor([self._free.pop() for _ in range(need)], dtype=torch.long, device=self.device)
        self._page_row[ids] = rows
        self._page_index[ids] = page_index
        self._pages_high = max(self._pages_high, int(ids.max()) + 1)
        width = int(page_index.max()) + 1 if need else 0
        if width > self._block_table.shape[1]:
            self._block_table = torch.cat([self._block_table, self._block_table.new_full(
                (self.rows, width - self._block_table.shape[1]), -1)], 1)
        self._block_table[rows, page_index] = ids
        self._layout = None
        return ids

    def _write(self, rows: Tensor, slots: Tensor, keys: Tensor, values: Tensor) -> None:
        """Store keys/values (n, D) at (rows[i], slots[i]); allocates the pages these reach."""
        page_index = slots // self.page_size
        have = self._block_table.shape[1]
        table = self._block_table[rows, page_index.clamp(max=have - 1)] if have else torch.full_like(rows, -1)
        missing = (page_index >= have) | (table < 0)
        if missing.any():
            pairs = torch.unique(torch.stack([rows[missing], page_index[missing]], 1), dim=0)
            self._allocate(pairs[:, 0], pairs[:, 1])
        pages = self._block_table[rows, page_index]
        offsets = slots % self.page_size
        self._k_pool[pages, offsets] = keys.to(self._k_pool.dtype)
        self._v_pool[pages, offsets] = values.to(self._v_pool.dtype)

    def free(self, seqs: Tensor) -> None:
        """Give the pages of these sequences back to the free list and empty their rows."""
        self._free_rows(self.rows_of(seqs))

    def _free_rows(self, rows: Tensor) -> None:
        pages = self._block_table[rows]
        pages = pages[pages >= 0]
        self._page_row[pages] = -1
        self._free.extend(pages.tolist())
        self._block_table[rows] = -1
        self._layout = None
        self._slots[rows] = 0
        for name, t in self._state.items():
            t[rows] = self._empty[name]

    def _gather(self, rows: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (n, S, D) at (rows[i], slots[i, j]); slots (n, S) may be -1 (zeros there)."""
        have = slots >= 0
        safe = slots.clamp(min=0)
        pages = self._block_table[rows[:, None], safe // self.page_size].clamp(min=0)
        offsets = safe % self.page_size
        keys = self._k_pool[pages, offsets] * have[..., None]
        return keys, self._v_pool[pages, offsets] * have[..., None]

    # -- attention ------------------------------------------------------------------------------

    def has_slots(self, seqs: Tensor) -> bool:
        return bool(self._slots[self.rows_of(seqs)].any())

    def _page_layout(self) -> PageLayout:
        """Where each page sits, rebuilt only after pages were allocated or released."""
        if self._layout is None:
            high = self._pages_high
            slots = self._page_index[:high, None] * self.page_size + torch.arange(self.page_size, device=self.device)
            self._layout = PageLayout(owner=self._page_row[:high], slots=slots, table=self._block_table.clamp(min=0),
                                      missing=self._block_table[..., None] < 0)
        return self._layout

    def attend(self, seqs: Tensor, queries: Tensor, scale: float, hide_last: Tensor | None = None,
               with_lse: bool = True) -> tuple[Tensor, Tensor | None]:
        """Attention of each row's queries over its slots, its last one hidden where ``hide_last``.

        queries: (B * H, M, D), M = query heads per KV head x query tokens; hide_last: (B * H,) 0/1
        (a DMC chunk whose first token merges reopens its row's last slot, which it then replaces).
        Returns out (B * H, M, D) (0 where nothing is visible) and, if ``with_lse``, the
        log-sum-exp (B * H, M) (-inf where nothing is visible) for merging with attention over other
        keys. Without the log-sum-exp (decoding), one call of the native kernel where it applies
        (``dynacomp.dmc.cache.native``), else ``attend_split_k``.
        """
        rows = self.rows_of(seqs)
        visible = self._slots[rows] if hide_last is None else self._slots[rows] - hide_last
        if not with_lse and native.supports(self._k_pool):
            return native.paged_decode_attention(queries, self._k_pool, self._v_pool, self._block_table[rows],
                                                 visible, scale), None
        return self.attend_split_k(rows, queries, visible, scale, with_lse)

    def attend_split_k(self, rows: Tensor, queries: Tensor, visible: Tensor, scale: float,
                       with_lse: bool = True, hidden: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``attend`` of ``rows`` in PyTorch ops, split-K over pages as flash-decoding does: every
        page below the high-water mark yields its own partial softmax (output and log-sum-exp), with
        K and V read in place; each row then weighs the partials of its pages, found through its
        block table, by their softmax. ``hidden`` (n, S): slots below S that no query of the row sees.
        """
        layout = self._page_layout()
        high, n = self._pages_high, rows.numel()
        # Batch position of every row; pages of other rows (and free ones, owner -1) map to n, which sees nothing.
        position = torch.full((self.rows + 1,), n, dtype=torch.long, device=self.device)
        position[rows] = torch.arange(n, device=self.device)
        owner = position[layout.owner]
        valid = layout.slots < torch.cat([visible, visible.new_zeros(1)])[owner][:, None]      # (N, P)
        if hidden is not None:
            padded = F.pad(hidden, (0, 1, 0, 1))                        # owner n and slots >= S: not hidden
            valid &= ~padded[owner[:, None], layout.slots.clamp(max=hidden.shape[1])]
        # index_select, not advanced indexing: the same gathers, several times faster on CPU.
        page_out, page_lse = page_attention(queries.index_select(0, owner.clamp(max=n - 1)),
                                            self._k_pool[:high], self._v_pool[:high], valid, scale)
        table = layout.table.index_select(0, rows)
        shape = table.shape
        row_lse = page_lse.index_select(0, table.flatten()).view(*shape, -1).masked_fill(
            layout.missing.index_select(0, rows), -math.inf)
        weight = torch.softmax(row_lse, 1).nan_to_num(0.0)                           # (R, pages, M); 0: nothing visible
        out = (weight.unsqueeze(-1) * page_out.index_select(0, table.flatten()).view(*shape, *page_out.shape[1:])).sum(1)
        return out, torch.logsumexp(row_lse, 1) if with_lse else None

    # -- accounting -----------------------------------------------------------------------------

    def slots_of(self, seqs: Tensor) -> Tensor:
        """(B, H) slots held by these sequences."""
        return self._slots[self.rows_of(seqs)].view(seqs.numel(), self.heads)

    def pages_in_use(self) -> int:
        return int((self._block_table >= 0).sum()) if self.is_initialized else 0

    def pages_of(self, seqs: Tensor) -> Tensor:
        """(B,) pages held by each of these sequences in this layer."""
        if self.rows < (int(seqs.max()) + 1) * self.heads:
            self.reserve(int(seqs.max()) + 1)
        return (self._block_table[self.rows_of(seqs)] >= 0).view(seqs.numel(), -1).sum(1)

    def bytes_per_slot(self) -> int:
        return 2 * self._k_pool.shape[-1] * self._k_pool.element_size()

    def state_bytes(self) -> int:
        """Bytes of the policy's per-row state (DMC's open runs, DMS's window ring)."""
        return sum(t.numel() * t.element_size() for t in self._state.values())

    def reserved_bytes(self) -> int:
        return self._k_pool.shape[0] * self.page_size * self.bytes_per_slot()


class DMCLayer(PagedLayer):
    """DMC's layer: a row's last slot is its open merge group, whose last ``window - 1`` tokens
    (pre-RoPE keys and values, importances) it keeps to recompute the windowed mean."""

    def _row_state(self, keys: Tensor) -> dict[str, tuple[Tensor, float]]:
        dim = keys.shape[-1]
        return {"run_kv": (keys.new_zeros(0, self.window - 1, 2 * dim), 0.0),
                "run_omega": (keys.new_zeros(0, self.window - 1, dtype=torch.float32), 0.0)}

    def open_run(self, seqs: Tensor) -> OpenRun:
        """The open runs of these sequences, (B, H, W-1, 2D) and (B, H, W-1), read only."""
        rows = self.rows_of(seqs)
        b = seqs.numel()
        return OpenRun(self._state["run_kv"][rows].view(b, self.heads, *self._state["run_kv"].shape[1:]),
                       self._state["run_omega"][rows].view(b, self.heads, -1))

    @torch.no_grad()
    def write_chunk(self, seqs: Tensor, kv: Tensor, k_rot: Tensor, v_state: Tensor, merges: Tensor,
                    omega: Tensor, real: Tensor) -> None:
        """Store a chunk: its group ends as slots, and its newest tokens as the new open runs.

        kv: (B, H, L, 2D) pre-RoPE keys and values; k_rot, v_state: (B, H, L, D) every position's
        group state (keys rotated); merges: (B, H, L) bool; omega: (B, H, L); real: (B, L).
        """
        b, h, length, _ = kv.shape
        rows = self.rows_of(seqs)
        closes = torch.cat([~merges[..., 1:], merges.new_ones(b, h, 1)], dim=2) & real[:, None, :]
        first_slot = self._slots[rows] - merges[..., 0].reshape(-1).long()                  # (R,)
        slot = first_slot.view(b, h, 1) + closes.long().cumsum(2) - 1
        bi, hi, ti = closes.nonzero(as_tuple=True)
        self._write(rows.view(b, h)[bi, hi], slot[bi, hi, ti], k_rot[bi, hi, ti], v_state[bi, hi, ti])
        self._slots[rows] = first_slot + closes.sum(2).reshape(-1)

        # Open run: tokens since the last append (in the cache's run or in this chunk), newest last.
        w = self.window - 1
        if w == 0:
            return
        run = self.open_run(seqs)
        appends = (~merges) & real[:, None, :]
        index = torch.arange(length, device=kv.device)
        last_append = torch.where(appends, index + w, 0).amax(2, keepdim=True)       # in extended coordinates
        keep = torch.arange(w + length, device=kv.device) >= last_append              # (B, H, w+L)
        ext_kv = torch.cat([run.kv, kv.to(run.kv.dtype)], 2)
        ext_w = torch.cat([run.omega, omega.float()], 2) * keep
        self._state["run_kv"][rows] = ext_kv[:, :, -w:].reshape(b * h, w, -1)
        self._state["run_omega"][rows] = ext_w[:, :, -w:].reshape(b * h, w)

    @torch.no_grad()
    def append_token(self, seqs: Tensor, kv: Tensor, k_rot: Tensor, v_state: Tensor, merges: Tensor,
                     omega: Tensor, real: Tensor) -> None:
        """``write_chunk`` for one token per sequence (decoding), in a few whole-row operations: a
        real token's state always goes to its row's last slot (a new one when it appends), and the
        open run shifts by one, emptied first when the token appends. Shapes as there, L = 1."""
        rows = self.rows_of(seqs)
        n = rows.numel()
        merges = merges.reshape(n)
        real = real.expand(-1, kv.shape[1]).reshape(n)
        slot = self._slots[rows] - merges.long()
        if bool(real.all()):
            self._write(rows, slot, k_rot.reshape(n, -1), v_state.reshape(n, -1))
        else:
            index = real.nonzero()[:, 0]
            self._write(rows[index], slot[index], k_rot.reshape(n, -1)[index], v_state.reshape(n, -1)[index])
        self._slots[rows] = slot + real.long()
        if self.window == 1:
            return
        run_kv, run_omega = self._state["run_kv"][rows], self._state["run_omega"][rows]
        self._state["run_kv"][rows] = torch.cat([run_kv[:, 1:], kv.reshape(n, 1, -1).to(run_kv.dtype)], 1)
        self._state["run_omega"][rows] = torch.cat([run_omega[:, 1:] * merges[:, None], omega.reshape(n, 1).float()], 1)


class DMCCache(Cache):
    """The DMC key-value cache of a set of sequences, each with an id (its rows in every layer).

    ``get_seq_length`` is the number of token positions fed (padding included), so that
    transformers' positions, RoPE and masks stay right for a batch fed together; ``stats`` says
    how many slots hold them. A server feeding sequences of different lengths passes their own
    ``position_ids`` and the ``seqs`` each batch row belongs to.
    """

    def __init__(self, num_layers: int, page_size: int = DMCConfig.page_size, window: int = DMCConfig.window,
                 layer_class: type[PagedLayer] = DMCLayer, dtype: torch.dtype | None = None):
        super().__init__(layers=[layer_class(page_size, window, dtype) for _ in range(num_layers)])
        self.seen = 0                                        # token positions fed, padding included
        self.tokens = torch.zeros(0, dtype=torch.long)       # (S,) real tokens stored per sequence id
        self.finished = torch.zeros(0, dtype=torch.bool)     # (S,) freed: later tokens are not stored
        self._free_ids: list[int] = []
        self.chunk: Chunk | None = None                      # the forward in progress
        self.heads_per_layer = 0                             # KV heads, known from the model (for_model)
        self.control: KeepShareControl | None = None         # DMS's keep_share, shared by the layers (for_model)

    @classmethod
    def for_model(cls, model, dtype: torch.dtype | None = None) -> DMCCache:
        """The cache of a converted model's policy: DMC's merging layers, or DMS's evicting ones;
        pages in ``dtype`` (default: the model's)."""
        from dynacomp.dmc.cache.dms import DMSLayer

        config, layers = model.dmc_config, model.config.num_hidden_layers
        if config.policy == "dms":
            cache = cls(layers, config.page_size, config.eviction_window, DMSLayer, dtype)
        else:
            cache = cls(layers, config.page_size, config.window, dtype=dtype)
        cache.heads_per_layer = model.config.num_key_value_heads
        if config.keep_share is not None:
            cache.control = KeepShareControl(config.keep_share, config.control_block,
                                             max(1, config.control_window // config.control_block),
                                             config.decision_threshold)
        return cache

    # -- sequences ------------------------------------------------------------------------------

    def add_sequences(self, n: int) -> Tensor:
        """Ids for ``n`` new, empty sequences (freed ids first)."""
        reused = [self._free_ids.pop() for _ in range(min(n, len(self._free_ids)))]
        start = self.tokens.numel()
        ids = torch.tensor(reused + list(range(start, start + n - len(reused))), dtype=torch.long)
        grow = n - len(reused)
        self.tokens = torch.cat([self.tokens, self.tokens.new_zeros(grow)])
        self.finished = torch.cat([self.finished, self.finished.new_zeros(grow)])
        self.tokens[ids] = 0
        self.finished[ids] = False
        if self.control is not None:
            self.control.grow(self.tokens.numel())
            self.control.reset(ids)
        return ids

    def free(self, seqs: list[int] | Tensor) -> None:
        """These sequences have ended: their pages go back to the pools at once for the others to
        grow into, tokens still fed for them (generate pads finished rows) are not stored, and
        their ids can be handed out again."""
        seqs = torch.as_tensor(seqs, dtype=torch.long).flatten()
        fresh = seqs[~self.finished[seqs]]
        for layer in self.layers:
            if layer.is_initialized:
                layer.free(fresh)
        self.finished[fresh] = True
        self._free_ids.extend(fresh.tolist())

    @property
    def active(self) -> Tensor:
        """(S,) True for sequences that hold tokens and were not freed."""
        return ~self.finished

    # -- a forward ------------------------------------------------------------------------------

    def begin_forward(self, real: Tensor, seqs: Tensor | None = None) -> Chunk:
        """Start a forward over the batch ``real`` (B, L) (True for real tokens, False for padding)
        whose rows are the sequences ``seqs`` (B,); by default the batch is the cache's sequences
        0..B-1, created on the first forward."""
        b = real.shape[0]
        if seqs is None:
            if self.tokens.numel() == 0:
                self.add_sequences(b)
            if self.tokens.numel() != b:
                raise ValueError(f"the cache holds {self.tokens.numel()} sequences but the batch has {b}; "
                                 "pass the sequence ids of the batch rows (seqs)")
            seqs = torch.arange(b)
        real = real.bool() & ~self.finished[seqs].to(real.device)[:, None]
        past = self.tokens[seqs].to(real.device)
        self.chunk = Chunk(seqs.to(real.device), real, past[:, None] + real.long().cumsum(1) - 1)
        return self.chunk

    def end_forward(self) -> None:
        """The forward is done: its positions and real tokens are counted."""
        chunk, self.chunk = self.chunk, None
        self.seen += chunk.real.shape[1]
        self.tokens[chunk.seqs.cpu()] += chunk.real.sum(1).cpu()

    def layer(self, index: int, keys: Tensor) -> PagedLayer:
        """Layer ``index`` ready to store the current chunk's keys (B, H, L, D)."""
        layer = self.layers[index]
        if not layer.is_initialized:
            layer.lazy_initialization(keys)
        layer.reserve(self.tokens.numel())
        return layer

    # -- transformers' Cache --------------------------------------------------------------------

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
        raise NotImplementedError("DMCCache cannot select batch rows; free finished sequences instead")

    @property
    def is_compileable(self) -> bool:
        return False

    # -- accounting -----------------------------------------------------------------------------

    def slots(self, seqs: Tensor | None = None) -> Tensor:
        """(layers, B, H) slots held by ``seqs`` (default: every sequence id)."""
        seqs = torch.arange(self.tokens.numel()) if seqs is None else seqs
        return torch.stack([layer.slots_of(seqs) for layer in self.layers if layer.is_initialized])

    def pages_held(self, seqs: Tensor) -> Tensor:
        """(B,) pages held by each of these sequences, over all layers and KV heads."""
        return sum(layer.pages_of(seqs) for layer in self.layers if layer.is_initialized)

    def pages_needed(self, seqs: Tensor, tokens: Tensor) -> int:
        """An upper bound on the pages that storing ``tokens`` (B,) more tokens of these sequences
        can take: every token a new slot (no merge, no eviction), from each row's slot count. A
        layer not yet initialised counts as empty rows of ``heads_per_layer``."""
        total = 0
        for layer in self.layers:
            if layer.is_initialized and layer.rows >= (int(seqs.max()) + 1) * layer.heads:
                count = layer.slots_of(seqs).to(tokens.device)                     # (B, H)
            else:
                count = torch.zeros(seqs.numel(), self.heads_per_layer, dtype=torch.long)
            after = count + tokens[:, None]
            total += int((-(-after // layer.page_size) - (-(-count // layer.page_size))).sum())
        return total

    def bytes_in_use(self) -> int:
        """Bytes of the pages in use, over all layers."""
        return sum(layer.pages_in_use() * layer.page_size * layer.bytes_per_slot()
                   for layer in self.layers if layer.is_initialized)

    def stats(self) -> CacheStats:
        """Tokens, slots, the paper's compression ratio (tokens / slots), bytes, per-layer-per-head ratios.

        ``bytes`` counts the stored slots plus the open runs (a fixed ``window - 1`` entries per row
        that the slot count leaves out), so ``memory_ratio`` is what equal-memory comparisons use.
        """
        layers = [layer for layer in self.layers if layer.is_initialized]
        if not layers:
            return CacheStats()
        slots = self.slots()                                                   # (layers, S, H)
        tokens = int(self.tokens.sum())
        heads = slots.shape[-1]
        total_slots = int(slots.sum())
        slot_bytes = layers[0].bytes_per_slot()
        control = self.control.bytes_per_sequence() * int(self.active.sum()) if self.control is not None else 0
        return CacheStats(
            tokens=tokens, slots=total_slots,
            bytes=total_slots * slot_bytes + sum(layer.state_bytes() for layer in layers) + control,
            dense_bytes=tokens * len(layers) * heads * slot_bytes,
            compression_ratio=tokens * len(layers) * heads / max(total_slots, 1),
            allocated_bytes=self.bytes_in_use(),
            reserved_bytes=sum(layer.reserved_bytes() + layer.state_bytes() for layer in layers) + control,
            pages=sum(layer.pages_in_use() for layer in layers),
            per_layer_head=(tokens / slots.sum(1).clamp_min(1).double()).tolist())
