"""Cache policies: one registry of the ways a model's KV cache is kept, DMC and its peers.

Each entry (``Policy``) says how to set a model up for it (a cache factory, possibly a converted
model), whether one forward over many tokens gives exactly the logits of feeding them one by one
(``exact_prefill``: then the harness may feed long chunks), and whether it is set by the
compression ratio ``cr``. The CLI choices, help texts, labels and benchmark groups are all derived
from ``POLICIES``: adding a policy is one entry here plus its cache class.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch
from transformers.cache_utils import Cache, DynamicCache

from dynacomp.config import field
from dynacomp.dmc.cache import CacheStats
from dynacomp.dmc.config import DMCConfig
from dynacomp.dmc.modeling.convert import DMCModelMixin, convert
from dynacomp.dmc.policies.eviction import H2O, TOVA, BudgetCache, StreamingLLM, use_budget_attention
from dynacomp.dmc.policies.quantized import QuantizedKVCache

Kind = Literal["dense", "learned", "eviction", "quantised"]   # learned: runs on a converted (DMC / DMS) model


@dataclass
class PolicyOptions:
    """Settings of the training-free peers."""
    sinks: int = field(4, help="StreamingLLM: first tokens always kept")
    h2o_recent: float = field(0.5, help="H2O: share of the budget kept for the most recent tokens")
    quant_group: int = field(64, help="int8/int4: numbers sharing a scale and zero point")
    quant_residual: int = field(128, help="int8/int4: newest tokens kept in full precision (a multiple of the group)")


@dataclass
class Setup:
    """A model ready to run one policy: the model to call and a factory of fresh caches."""
    model: torch.nn.Module
    new_cache: Callable[[], Cache]


class DenseCache(DynamicCache):
    """transformers' dynamic cache with the stats every cache here reports (ratio 1)."""

    def stats(self) -> CacheStats:
        layers = [layer for layer in self.layers if layer.is_initialized]
        if not layers:
            return CacheStats()
        b, h, tokens, d = layers[0].keys.shape
        held = sum(2 * layer.keys.numel() * layer.keys.element_size() for layer in layers)
        return CacheStats(tokens=b * tokens, slots=b * h * tokens * len(layers), bytes=held, dense_bytes=held,
                          allocated_bytes=held, reserved_bytes=held)


@dataclass(frozen=True)
class Policy:
    name: str
    label: str
    kind: Kind
    help: str
    setup: Callable[[torch.nn.Module, float, PolicyOptions], contextlib.AbstractContextManager[Setup]]
    exact_prefill: bool = False
    uses_cr: bool = True


def _plain(model, name: str) -> None:
    if isinstance(model, DMCModelMixin):
        raise ValueError(f"policy {name!r} runs on a plain model; this one is a DMC model (use 'dmc' or "
                         "'dmc_forced', or load the base model)")


@contextlib.contextmanager
def _dense(model, cr: float, options: PolicyOptions) -> Iterator[Setup]:
    _plain(model, "vanilla")
    yield Setup(model, lambda: DenseCache(config=model.config))


def _learned(name: str):
    """A retrofitted checkpoint's own decisions (DMC merges or DMS evictions)."""
    @contextlib.contextmanager
    def setup(model, cr: float, options: PolicyOptions) -> Iterator[Setup]:
        if (not isinstance(model, DMCModelMixin) or model.dmc_config.policy != name
                or model.dmc_config.force_cr is not None):
            raise ValueError(f"policy {name!r} needs a checkpoint retrofitted with learned {name} decisions "
                             f"(`dynacomp dmc retrofit --policy {name}`)" + (
                                 "; use 'dmc_forced' for the fixed pattern" if name == "dmc" else ""))
        yield Setup(model, model.new_cache)
    return setup


@contextlib.contextmanager
def _dmc_forced(model, cr: float, options: PolicyOptions) -> Iterator[Setup]:
    """A DMC model switched to the fixed pattern for the block, or a DMC copy of a plain model."""
    if not isinstance(model, DMCModelMixin):
        forced = convert(copy.deepcopy(model), DMCConfig(force_cr=cr))
        yield Setup(forced, forced.new_cache)
        return
    config = model.dmc_config
    convert(model, replace(config, force_cr=cr))
    try:
        yield Setup(model, model.new_cache)
    finally:
        convert(model, config)


def _eviction(name: str, make: Callable[[PolicyOptions], object]):
    @contextlib.contextmanager
    def setup(model, cr: float, options: PolicyOptions) -> Iterator[Setup]:
        _plain(model, name)
        rule = make(options)
        with use_budget_attention(model):
            yield Setup(model, lambda: BudgetCache.for_model(model, rule, cr))
    return setup


def _quantised(name: str, bits: int):
    @contextlib.contextmanager
    def setup(model, cr: float, options: PolicyOptions) -> Iterator[Setup]:
        _plain(model, name)
        yield Setup(model, lambda: QuantizedKVCache.for_model(model, bits, options.quant_group,
                                                              options.quant_residual))
    return setup


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("vanilla", "vanilla", "dense", "the model's own dense cache", _dense, exact_prefill=True, uses_cr=False),
    Policy("dmc", "DMC (trained)", "learned", "a retrofitted checkpoint's learned merges", _learned("dmc"),
           exact_prefill=True, uses_cr=False),
    Policy("dms", "DMS (trained)", "learned", "a retrofitted checkpoint's learned delayed evictions", _learned("dms"),
           exact_prefill=True, uses_cr=False),
    Policy("dmc_forced", "DMC (force_cr, untrained)", "learned", "DMC merging in a fixed pattern at CR", _dmc_forced,
           exact_prefill=True),
    Policy("streaming_llm", "StreamingLLM", "eviction", "attention sinks plus the newest tokens",
           _eviction("streaming_llm", lambda o: StreamingLLM(o.sinks))),
    Policy("h2o", "H2O", "eviction", "heavy hitters by attention received, plus recent tokens",
           _eviction("h2o", lambda o: H2O(o.h2o_recent))),
    Policy("tova", "TOVA", "eviction", "the tokens the current query attends to most", _eviction("tova", lambda o: TOVA())),
    Policy("int8", "int8 (KIVI)", "quantised", "KIVI-style 8-bit keys and values", _quantised("int8", 8), uses_cr=False),
    Policy("int4", "int4 (KIVI)", "quantised", "KIVI-style 4-bit keys and values", _quantised("int4", 4), uses_cr=False),
)}

NAMES: tuple[str, ...] = tuple(POLICIES)


def names_of(kind: Kind) -> tuple[str, ...]:
    return tuple(name for name, policy in POLICIES.items() if policy.kind == kind)


def get(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(NAMES)}")
    return POLICIES[name]


def describe() -> str:
    """One line per policy, for help texts."""
    return "; ".join(f"{name} ({policy.help}{', at --cr' if policy.uses_cr else ''})" for name, policy in POLICIES.items())
