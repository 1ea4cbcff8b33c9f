"""The hourglass character LM of dynamic token pooling (Nawrot et al. 2023), in one file.

    ids (B, T) -> embed -> pre layers ---------------------------------+ (residual)
                                |                                      |
                      boundary source: b (B, T)                        |
                                |                                      v
         mean pool closed groups, prepend null -> LN -> mid layers -> upsample (+) -> post layers -> head
                                                (B, 1 + S, D)                          (B, T, V)

Every layer is a post-LN Transformer block with Transformer-XL relative attention (sinusoidal
relative positions, one pair of content / position biases shared by all layers); each stack counts
distances in its own units (characters, or groups in the middle). With ``boundaries="none"``
the same layers all run at full length: the vanilla model.

Upsampling gives character ``t`` the middle output of group index ``sum_{i<=t} b_i`` (0: the null
group), so a group's summary reaches only characters at or after its last one. The logits at
``t`` therefore depend on characters ``<= t`` only, for every source.

``forward(ids, cache=...)`` also runs incrementally: a ``HourglassCache`` holds each stack's keys
and values, the running sum of the unclosed group and the latest middle output, so a new
character costs the pre and post layers plus, only when it closes a group, the middle layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dynacomp.dtp.config import DTPConfig
from dynacomp.dtp.sources import make_source
from dynacomp.nn.pooling import mean_pool, segment_sums, upsample


@dataclass
class DTPOutput:
    logits: torch.Tensor                   # (B, T, V)
    boundaries: torch.Tensor | None        # (B, T), 1: the character closes its group; None for vanilla
    aux_loss: torch.Tensor                 # scalar: the boundary source's loss (0 where it has none or from a cache)
    boundary_logits: torch.Tensor | None   # (B, T) the boundary predictor's logits; None without a predictor


class KVCache:
    """Keys and values of one attention layer, ``(B, H, L, Dh)``, grown by ``append``, and its
    projected relative position embeddings ``(L, D)``, grown by ``positions``."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.r: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], 2)
        self.v = v if self.v is None else torch.cat([self.v, v], 2)
        return self.k, self.v

    def positions(self, r_net: nn.Module, pos: torch.Tensor) -> torch.Tensor:
        """``r_net(pos)`` for ``pos (L, D)``, projecting only the distances not seen before."""
        have = 0 if self.r is None else self.r.shape[0]
        if have < pos.shape[0]:
            new = r_net(pos[have:])
            self.r = new if self.r is None else torch.cat([self.r, new])
        return self.r


@dataclass
class HourglassCache:
    """State for incremental decoding of one sequence (batch 1 when the model shortens)."""

    pre: list[KVCache]
    mid: list[KVCache]
    post: list[KVCache]
    length: int = 0                              # characters seen
    last_summary: torch.Tensor | None = None     # (1, 1, D) middle output of the latest closed group (or null)
    tail_sum: torch.Tensor | None = None         # (1, D) sum of the pre states of the unclosed group
    tail_size: torch.Tensor | None = None        # (1,) its size


def sinusoid(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-XL relative position embedding: ``(L,) -> (L, dim)``."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=distances.device, dtype=torch.float32) / dim))
    angles = distances.float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RelativeAttention(nn.Module):
    """Causal multi-head attention with Transformer-XL relative positions:
    ``score(i, j) = (q_i + u) . k_j + (q_i + v) . W_r pos(i - j)``."""

    def __init__(self, config: DTPConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.d_model // config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.r_net = nn.Linear(config.d_model, config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                cache: KVCache | None) -> torch.Tensor:
        """``x (B, T, D)``; ``pos (L, D)`` embeddings of distances ``0..L-1`` with ``L`` = keys after
        this call; ``u, v (H, Dh)`` shared biases; ``cache`` this layer's keys and values, extended here."""
        B, T, D = x.shape
        H, Dh = self.n_heads, self.head_dim
        q, k, val = self.qkv(x).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)     # each (B, H, T, Dh)
        offset = 0
        if cache is not None:
            offset = cache.length
            k, val = cache.append(k, val)
        L = k.shape[2]
        r = (cache.positions(self.r_net, pos) if cache is not None else self.r_net(pos)).view(L, H, Dh)
        content = (q + u[:, None]) @ k.transpose(-1, -2)                          # (B, H, T, L)
        by_distance = torch.einsum("bhtd,lhd->bhtl", q + v[:, None], r)          # (B, H, T, L)
        distance = (offset + torch.arange(T, device=x.device))[:, None] - torch.arange(L, device=x.device)
        position = by_distance.gather(-1, distance.clamp(min=0).expand(B, H, T, L))
        scores = (content + position) / math.sqrt(Dh)
        scores = scores.masked_fill(distance < 0, float("-inf"))
        weights = self.drop(F.softmax(scores.float(), dim=-1).to(q.dtype))
        y = (weights @ val).transpose(1, 2).reshape(B, T, D)
        return self.proj(y)


class Block(nn.Module):
    """Post-LN Transformer layer: ``x = LN(x + attn(x))``, ``x = LN(x + ff(x))``."""

    def __init__(self, config: DTPConfig) -> None:
        super().__init__()
        self.attn = RelativeAttention(config)
        self.ln1 = nn.LayerNorm(config.d_model)
        self.ff = nn.Sequential(nn.Linear(config.d_model, config.d_ff), nn.GELU(),
                                nn.Linear(config.d_ff, config.d_model))
        self.ln2 = nn.LayerNorm(config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, pos, u, v, cache):
        x = self.ln1(x + self.drop(self.attn(x, pos, u, v, cache)))
        return self.ln2(x + self.drop(self.ff(x)))


class HourglassLM(nn.Module):
    """Character LM: ``forward(ids (B, T)) -> DTPOutput(logits (B, T, V), boundaries (B, T), aux_loss)``."""

    def __init__(self, config: DTPConfig) -> None:
        super().__init__()
        self.config = config
        D, H = config.d_model, config.n_heads
        self.embed = nn.Embedding(config.vocab_size, D)
        self.drop = nn.Dropout(config.dropout)
        self.pre = nn.ModuleList(Block(config) for _ in range(config.n_pre))
        self.mid = nn.ModuleList(Block(config) for _ in range(config.n_mid))
        self.post = nn.ModuleList(Block(config) for _ in range(config.n_post))
        self.u = nn.Parameter(0.02 * torch.randn(H, D // H))   # content bias, shared by all layers
        self.v = nn.Parameter(0.02 * torch.randn(H, D // H))   # position bias, shared by all layers
        self.source = make_source(config)
        if config.shortens:
            self.null = nn.Parameter(torch.randn(D))            # the group before the first one
            self.down_ln = nn.LayerNorm(D)
        self.head = nn.Linear(D, config.vocab_size)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight, mean=1.0, std=0.02)
            nn.init.zeros_(module.bias)

    def new_cache(self) -> HourglassCache:
        return HourglassCache([KVCache() for _ in self.pre], [KVCache() for _ in self.mid],
                              [KVCache() for _ in self.post])

    def _stack(self, layers: nn.ModuleList, x: torch.Tensor, caches: list[KVCache] | None) -> torch.Tensor:
        """Run ``layers`` on ``x (B, T, D)``, appending to ``caches`` when given."""
        if not len(layers):
            return x
        keys = x.shape[1] + (caches[0].length if caches else 0)
        pos = sinusoid(torch.arange(keys, device=x.device), self.config.d_model).to(x.dtype)
        for i, layer in enumerate(layers):
            x = layer(x, pos, self.u, self.v, caches[i] if caches else None)
        return x

    def forward(self, ids: torch.Tensor, boundary_targets: torch.Tensor | None = None,
                cache: HourglassCache | None = None) -> DTPOutput:
        """``ids (B, T)`` character ids. ``boundary_targets (B, T)``: the unigram source's supervision.
        ``cache``: continue the sequence it holds (and extend it), batch 1 for shortening models."""
        offset = cache.length if cache is not None else 0
        positions = torch.arange(offset, offset + ids.shape[1], device=ids.device)
        h = self._stack(self.pre, self.drop(self.embed(ids)), cache.pre if cache else None)
        boundaries = predictor_logits = None
        if self.source is None:
            h = self._stack(self.mid, h, cache.mid if cache else None)
        else:
            boundaries, predictor_logits = self.source(ids, h, positions)
            summaries = self._middle(h, boundaries) if cache is None else self._middle_cached(h, boundaries, cache)
            h = h + upsample(summaries, boundaries)
        h = self._stack(self.post, h, cache.post if cache else None)
        logits = self.head(h)
        if cache is not None:
            cache.length += ids.shape[1]
        # decoding from a cache needs no auxiliary loss (the entropy source's costs a softmax per character)
        aux = (self.source.aux_loss(predictor_logits, boundaries, logits, boundary_targets)
               if self.source is not None and cache is None else logits.new_zeros(()))
        return DTPOutput(logits, boundaries, aux, predictor_logits)

    def _middle(self, h: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
        """Middle outputs ``(B, 1 + S, D)`` of the null group and the closed groups of ``h (B, T, D)``."""
        groups = torch.cat([self.null.expand(h.shape[0], 1, -1), mean_pool(h, boundaries)], dim=1)
        return self._stack(self.mid, self.down_ln(groups), None)

    def _middle_cached(self, h: torch.Tensor, boundaries: torch.Tensor, cache: HourglassCache) -> torch.Tensor:
        """``_middle`` continued from ``cache``: ``(1, 1 + n, D)``, index 0 the latest summary before
        this call, then the ``n`` groups closed in it; the unclosed tail is carried in the cache."""
        if h.shape[0] != 1:
            raise ValueError(f"cached decoding of a shortening model takes batch 1, got {h.shape[0]}")
        if cache.last_summary is None:   # a fresh cache: the middle stack starts with the null group
            cache.last_summary = self._stack(self.mid, self.down_ln(self.null)[None, None], cache.mid)
            cache.tail_sum, cache.tail_size = h.new_zeros(1, h.shape[-1]), h.new_zeros(1)
        n = int(boundaries.detach().sum().round())
        sums, sizes = segment_sums(h, boundaries, n + 1)
        sums[:, 0] += cache.tail_sum
        sizes[:, 0] += cache.tail_size
        closed = self._stack(self.mid, self.down_ln(sums[:, :n] / sizes[:, :n, None]), cache.mid) if n else h[:, :0]
        summaries = torch.cat([cache.last_summary, closed], dim=1)
        cache.last_summary, cache.tail_sum, cache.tail_size = summaries[:, -1:], sums[:, n], sizes[:, n]
        return summaries
