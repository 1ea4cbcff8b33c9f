"""Dynamic Memory Compression (Nawrot, Łańcucki et al., ICML 2024, arXiv 2403.09636).

Every KV head of a retrofitted LLM decides, token by token, to append its key-value pair to the
cache or to merge it into the last slot (an importance-weighted running mean), so the cache
really holds fewer slots.

    from dynacomp.dmc import DMCConfig, convert, save, load, DMCCache
    model = convert(model, DMCConfig(force_cr=4))
    out = model.generate(**inputs)          # uses a DMCCache

Rooms (docs/architecture.md): ``modeling`` (decisions, channels, attention, convert), ``cache``
(the paged cache, its stats, the native kernel), ``policies`` (the registry of cache policies:
DMC and its training-free peers), ``retrofit`` (the training recipe), ``evaluation`` (perplexity,
passkey, throughput).
"""

from dynacomp.dmc.cache import CacheStats, DMCCache
from dynacomp.dmc.config import DMCConfig
from dynacomp.dmc.modeling.channels import zero as zero_decision_channels
from dynacomp.dmc.modeling.convert import SUPPORTED_MODEL_TYPES, convert, is_dmc_checkpoint, load, load_base, save

__all__ = ["SUPPORTED_MODEL_TYPES", "CacheStats", "DMCCache", "DMCConfig", "convert", "is_dmc_checkpoint", "load",
           "load_base", "save", "zero_decision_channels"]
