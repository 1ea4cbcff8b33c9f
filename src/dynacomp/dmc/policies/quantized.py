"""A KIVI-style quantised KV cache (Liu et al. 2024, arXiv 2402.02750), int8 or int4.

Shapes: B batch, H KV heads, n tokens, D head dim.

Keys are quantised per channel (a scale and a zero point per channel for every ``group``
consecutive tokens: key outliers live in fixed channels), values per token (a scale and a zero
point per ``group`` consecutive channels of one token). Codes are asymmetric min-max integers of
``bits`` bits, two int4 codes packed per byte. The newest tokens stay in full precision in a
residual window; each time it reaches ``residual`` tokens (a multiple of ``group``) they are
quantised as one block. Attention reads the de-quantised keys and values, so any attention
implementation works.

Memory convention (``stats``): every full-precision number (residual keys and values, scales,
zero points) counts 16 bits, as in a bf16/fp16 deployment, whatever dtype the model runs in
here; codes count ``bits`` bits. The compression ratio is the bytes of a 16-bit dense cache of
the same tokens over these bytes, so it is comparable with the tokens-per-slot ratio of
eviction and DMC.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from dynacomp.dmc.cache import CacheStats

FULL_PRECISION_BITS = 16


@dataclass
class Quantized:
    """Codes (packed along the last dim when bits < 8), and per-group scale and minimum."""
    codes: Tensor
    scale: Tensor
    low: Tensor
    bits: int


def quantize(x: Tensor, bits: int, dim: int) -> Quantized:
    """Asymmetric min-max quantisation; the numbers along ``dim`` share one scale and zero point
    (computed in fp32, stored in ``x``'s dtype)."""
    x32 = x.float()
    low = x32.amin(dim, keepdim=True)
    levels = 2 ** bits - 1
    scale = (x32.amax(dim, keepdim=True) - low).clamp_min(torch.finfo(torch.float32).tiny) / levels
    codes = ((x32 - low) / scale).round().clamp(0, levels).to(torch.uint8)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return Quantized(codes, scale.to(x.dtype), low.to(x.dtype), bits)


def dequantize(q: Quantized) -> Tensor:
    """The fp32 values the codes stand for."""
    codes = q.codes
    if q.bits == 4:
        codes = torch.stack([codes & 15, codes >> 4], dim=-1).flatten(-2)
    return codes.float() * q.scale.float() + q.low.float()


def _cat(a: Quantized | None, b: Quantized, dim: int) -> Quantized:
    if a is None:
        return b
    return Quantized(torch.cat([a.codes, b.codes], dim), torch.cat([a.scale, b.scale], dim),
                     torch.cat([a.low, b.low], dim), b.bits)


class QuantizedLayer(CacheLayerMixin):
    """One layer: quantised blocks of keys (B, H, n_q / group, group, D) and values
    (B, H, n_q, D / group, group), plus the full-precision residual (B, H, r, D), r < residual."""

    is_sliding = False

    def __init__(self, bits: int, group: int = 64, residual: int = 128):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        if group < 2 or group % 2 or residual % group:
            raise ValueError(f"need an even group and a residual that is a multiple of it, "
                             f"got group={group}, residual={residual}")
        self.bits, self.group, self.residual = bits, group, residual
        self.quantized_keys: Quantized | None = None
        self.quantized_values: Quantized | None = None
        self.quantized_tokens = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor | None = None) -> None:
        b, h, _, d = key_states.shape
        if d % min(self.group, d):
            raise ValueError(f"head dim {d} is not a multiple of the quantisation group {self.group}")
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_zeros(b, h, 0, d)       # the full-precision residual
        self.values = key_states.new_zeros(b, h, 0, d)
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Append (B, H, L, D); returns all keys and values (B, H, n, D), old ones de-quantised."""
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        self.keys = torch.cat([self.keys, key_states], dim=2)
        self.values = torch.cat([self.values, value_states], dim=2)
        if self.quantized_keys is None:
            keys, values = self.keys, self.values
        else:
            keys = torch.cat([self._old_keys(), self.keys], dim=2)
            values = torch.cat([self._old_values(), self.values], dim=2)
        while self.keys.shape[2] >= self.residual:
            self._quantize_block()
        return keys, values

    def _quantize_block(self) -> None:
        """Quantise the oldest ``residual`` tokens of the residual window."""
        b, h, _, d = self.keys.shape
        keys, self.keys = self.keys[:, :, :self.residual], self.keys[:, :, self.residual:]
        values, self.values = self.values[:, :, :self.residual], self.values[:, :, self.residual:]
        value_group = min(self.group, d)
        k = quantize(keys.reshape(b, h, -1, self.group, d), self.bits, dim=3)
        v = quantize(values.reshape(b, h, self.residual, d // value_group, value_group), self.bits, dim=4)
        self.quantized_keys = _cat(self.quantized_keys, k, dim=2)
        self.quantized_values = _cat(self.quantized_values, v, dim=2)
        self.quantized_tokens += self.residual

    def _old_keys(self) -> Tensor:
        b, h, _, d = self.keys.shape
        return dequantize(self.quantized_keys).reshape(b, h, self.quantized_tokens, d).to(self.dtype)

    def _old_values(self) -> Tensor:
        b, h, _, d = self.values.shape
        return dequantize(self.quantized_values).reshape(b, h, self.quantized_tokens, d).to(self.dtype)

    def get_seq_length(self) -> int:
        return self.quantized_tokens + (self.keys.shape[2] if self.is_initialized else 0)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reorder_cache(self, beam_idx: Tensor) -> None:
        raise NotImplementedError("beam search is not supported with the quantised cache")

    def bits_stored(self) -> tuple[int, int]:
        """(bits of this layer as stored under the 16-bit convention, bits of a 16-bit dense cache)."""
        full = self.keys.numel() + self.values.numel()
        codes = 0
        for q in (self.quantized_keys, self.quantized_values):
            if q is not None:
                full += q.scale.numel() + q.low.numel()
                codes += q.codes.numel() * 8          # packed: 8 bits per stored byte
        dense = 2 * self.keys.shape[0] * self.keys.shape[1] * self.get_seq_length() * self.keys.shape[3]
        return full * FULL_PRECISION_BITS + codes, dense * FULL_PRECISION_BITS


class QuantizedKVCache(Cache):
    """KIVI-style int8 / int4 cache for every layer of a model."""

    def __init__(self, num_layers: int, bits: int, group: int = 64, residual: int = 128):
        super().__init__(layers=[QuantizedLayer(bits, group, residual) for _ in range(num_layers)])

    @classmethod
    def for_model(cls, model, bits: int, group: int = 64, residual: int = 128) -> QuantizedKVCache:
        return cls(model.config.num_hidden_layers, bits, group, residual)

    def stats(self) -> CacheStats:
        """Bytes under the 16-bit convention (module docstring) and the ratio to a 16-bit dense cache;
        every token counts as one slot per layer and KV head."""
        layers = [layer for layer in self.layers if layer.is_initialized]
        if not layers:
            return CacheStats()
        sizes = [layer.bits_stored() for layer in layers]
        stored, dense = sum(s for s, _ in sizes), sum(d for _, d in sizes)
        b, h = layers[0].keys.shape[:2]
        tokens = layers[0].get_seq_length()
        return CacheStats(tokens=b * tokens, slots=b * h * tokens * len(layers), bytes=stored // 8,
                          dense_bytes=dense // 8, compression_ratio=dense / max(stored, 1),
                          allocated_bytes=stored // 8, reserved_bytes=stored // 8)
