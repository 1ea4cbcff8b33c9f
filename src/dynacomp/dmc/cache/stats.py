"""CacheStats: what a KV cache holds, in one shape for every cache kind (DMC, eviction, quantised)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class CacheStats:
    """tokens: token positions held, summed over sequences; slots: stored key-value entries over
    layers x KV heads x sequences (a quantised cache stores one per token).

    ``bytes`` is what the cache holds now under its memory convention (DMC: slots plus the open runs
    it keeps for merging; eviction: its slots plus the per-slot statistics its policy reads;
    quantised: codes plus 16-bit scales), ``dense_bytes`` what a dense cache of the same convention
    holds for the same tokens: ``memory_ratio`` compares caches at equal memory. The paper's
    ``compression_ratio`` is tokens per slot. ``allocated_bytes`` / ``reserved_bytes`` are physical:
    the pages in use, and all memory held (pools grown ahead of use, DMC's open runs); both equal
    ``bytes`` for caches without pages.
    """
    tokens: int = 0
    slots: int = 0
    bytes: int = 0
    dense_bytes: int = 0
    compression_ratio: float = 1.0
    allocated_bytes: int = 0
    reserved_bytes: int = 0
    pages: int = 0
    per_layer_head: list[list[float]] = field(default_factory=list)   # tokens per slot, (layers, KV heads)

    @property
    def memory_ratio(self) -> float:
        return self.dense_bytes / self.bytes if self.bytes else 1.0

    def to_dict(self, per_head: bool = True) -> dict:
        values = asdict(self) | {"memory_ratio": self.memory_ratio}
        if not per_head:
            values.pop("per_layer_head")
        return values
