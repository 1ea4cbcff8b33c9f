"""The cache side of DMC: the paged per-(sequence, KV head) cache, its stats, its native kernel."""

from dynacomp.dmc.cache.paged import Chunk, DMCCache, DMCLayer
from dynacomp.dmc.cache.stats import CacheStats

__all__ = ["CacheStats", "Chunk", "DMCCache", "DMCLayer"]
