"""Turning a Hugging Face causal LM into a DMC model, and saving / loading DMC checkpoints.

``convert`` swaps every attention module for the policy's attention (``DMCAttention`` or
``DMSAttention``) reusing its weights, and
changes the model's class to a DMC subclass of its own class whose ``forward`` and
``generate`` use a ``DMCCache``. Transformers is told to hand attention the plain 2D padding
mask (the mask function registered below), because DMC builds its own masks.

A saved DMC checkpoint is a transformers folder whose ``config.json`` names the model type
``dynacomp_dmc``, plus ``dmc_config.json``: plain ``from_pretrained`` refuses it with an unknown
model type instead of silently loading it without DMC; ``dynacomp.dmc.load`` reads it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from dynacomp.dmc.cache import DMCCache
from dynacomp.dmc.config import DMCConfig
from dynacomp.dmc.modeling.attention import DMCAttention, LearnedCacheAttention
from dynacomp.dmc.modeling.dms_attention import DMSAttention
from dynacomp.io import atomic_path
from dynacomp.nn.linear import pack_linears

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ATTENTIONS = {"dmc": DMCAttention, "dms": DMSAttention}
DMC_MODEL_TYPE = "dynacomp_dmc"
ATTN_IMPLEMENTATION = "dynacomp_dmc"


def _padding_mask(*, attention_mask=None, **_):
    """The 'mask' transformers builds for DMC attention: the 2D padding mask itself (or None)."""
    return attention_mask


def _unused_attention(*args, **kwargs):
    raise RuntimeError("DMC attention computes attention itself; this placeholder is never called")


def _register_attention() -> None:
    """Tell transformers about DMC's attention implementation (on ``convert``, not at import)."""
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, _padding_mask)
    ALL_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, _unused_attention)


class DMCModelMixin:
    """Mixed into the converted model's class: DMCCache by default in forward and generate."""

    dmc_config: DMCConfig

    def new_cache(self, dtype: torch.dtype | None = None) -> DMCCache:
        """An empty cache whose pages hold ``dtype`` (default: the model's dtype)."""
        return DMCCache.for_model(self, dtype)

    def forward(self, *args, cache=None, past_key_values=None, use_cache=None, seqs=None, **kwargs):
        """transformers' forward with a DMCCache; ``seqs`` (B,) names the cache's sequence of every
        batch row (default: the cache's sequences 0..B-1), for a server that batches a changing set."""
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, DMCCache):
            raise TypeError(f"a DMC model needs a DMCCache, got {type(cache).__name__}; "
                            "generate() and forward() create one when none is passed")
        if use_cache is None:   # a cache handed in is used, whatever the config's use_cache says
            use_cache = cache is not None or (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = self.new_cache()
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        inputs = ids if ids is not None else embeds
        self._check_positions(cache, inputs.shape[1], seqs)
        if not use_cache:
            if self.dmc_config.keep_share is not None and not self.training:
                raise ValueError("keep_share holds each sequence's share through its cache: call with a cache")
            return super().forward(*args, cache=None, use_cache=False, **kwargs)
        if cache.control is not None and inputs.shape[1] > self.dmc_config.control_block:
            return self._forward_in_blocks(cache, seqs, *args, **kwargs)
        mask = kwargs.get("attention_mask")
        length = inputs.shape[1]
        real = mask[:, -length:] if mask is not None else torch.ones(inputs.shape[:2], dtype=torch.bool,
                                                                           device=inputs.device)
        chunk = cache.begin_forward(real, seqs)
        if seqs is not None and kwargs.get("position_ids") is None:
            kwargs["position_ids"] = chunk.token_index.clamp(min=0)     # each sequence at its own position
        out = super().forward(*args, cache=cache, use_cache=True, **kwargs)
        cache.end_forward()
        return out

    def _forward_in_blocks(self, cache, seqs, input_ids=None, attention_mask=None, position_ids=None,
                           inputs_embeds=None, cache_position=None, logits_to_keep: int = 0, **kwargs):
        """The forward cut into pieces of ``control_block`` tokens, each continuing the cache: DMS's
        keep_share sets a threshold per block from earlier blocks' logits, exact for pieces that long.
        Returns the last piece's output with the logits ``logits_to_keep`` asks for (0: all); the
        attentions' ``last_alpha`` are the last piece's."""
        if not isinstance(logits_to_keep, int) or kwargs.get("labels") is not None:
            raise ValueError("a forward longer than control_block takes logits_to_keep as a count and no labels")
        inputs = input_ids if input_ids is not None else inputs_embeds
        length, block = inputs.shape[1], self.dmc_config.control_block
        past = 0 if attention_mask is None else attention_mask.shape[1] - length
        first_kept = length - logits_to_keep if logits_to_keep else 0
        logits = []
        for start in range(0, length, block):
            end = min(start + block, length)
            piece = {"input_ids" if input_ids is not None else "inputs_embeds": inputs[:, start:end],
                     "attention_mask": None if attention_mask is None else attention_mask[:, :past + end],
                     "position_ids": None if position_ids is None else position_ids[:, start:end],
                     "cache_position": None if cache_position is None else cache_position[start:end]}
            wanted = end - max(start, first_kept)
            out = self.forward(**piece, cache=cache, use_cache=True, seqs=seqs, logits_to_keep=max(wanted, 1),
                               **kwargs)
            if wanted > 0:
                logits.append(out.logits)
        out.logits = torch.cat(logits, 1)
        return out

    def _check_positions(self, cache, tokens: int, seqs) -> None:
        """A forward must not reach past the model's positions: the batch's (or, for sequences
        named by ``seqs``, each one's) positions so far plus the new tokens."""
        if cache is None:
            past = 0
        elif seqs is None:
            past = cache.get_seq_length()
        else:
            past = int(cache.tokens[torch.as_tensor(seqs)].max())
        total = tokens + past
        limit = self.config.max_position_embeddings
        if total > limit:
            raise ValueError(f"{total} token positions exceed the model's {limit} positions; "
                             "shorten the prompt or the generation")

    def generate(self, *args, **kwargs):
        """``transformers`` generate with a DMCCache; a sequence's pages are freed when it ends."""
        config = kwargs.get("generation_config") or self.generation_config
        if kwargs.get("use_cache", config.use_cache) is not False:
            cache = kwargs.pop("past_key_values", None) if kwargs.get("cache") is None else kwargs["cache"]
            kwargs["cache"] = cache = self.new_cache() if cache is None else cache
            eos = kwargs.get("eos_token_id", config.eos_token_id)
            if eos is not None:
                criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
                criteria.append(_ReleaseFinished(cache, eos))
                kwargs["stopping_criteria"] = criteria
        return super().generate(*args, **kwargs)

    def dmc_attentions(self) -> list[LearnedCacheAttention]:
        return [m for m in self.modules() if isinstance(m, LearnedCacheAttention)]


class _ReleaseFinished(StoppingCriteria):
    """Frees the cache pages of sequences that just emitted a stop token; never stops anything itself."""

    def __init__(self, cache: DMCCache, eos_token_id: int | list[int]):
        self.cache = cache
        self.eos = torch.as_tensor(eos_token_id).flatten()

    def __call__(self, input_ids, scores, **kwargs):
        ended = torch.isin(input_ids[:, -1], self.eos.to(input_ids.device))
        if self.cache.finished.numel():
            ended &= ~self.cache.finished.to(ended.device)
            if ended.any():
                self.cache.free(ended.nonzero().flatten().cpu())
        return torch.zeros_like(ended)


_DMC_CLASSES: dict[type, type] = {}


def _dmc_class(base: type) -> type:
    if base not in _DMC_CLASSES:
        _DMC_CLASSES[base] = type(f"DMC{base.__name__}", (DMCModelMixin, base), {})
    return _DMC_CLASSES[base]


def check_supported(config) -> None:
    """Refuse architectures whose attention is not Llama-shaped, naming the supported ones."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"DMC supports the model types {', '.join(SUPPORTED_MODEL_TYPES)} "
                         f"(Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3); got {config.model_type!r}")
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", window is not None)
    if uses_window and window is not None and window < config.max_position_embeddings:
        raise ValueError(f"sliding-window attention (window {window}) is not supported with DMC; "
                         "load the model with sliding_window=None")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 2:
        raise ValueError(f"DMC repurposes a rotary channel and needs an even head_dim, got {head_dim}")


def convert(model: PreTrainedModel, config: DMCConfig | None = None) -> PreTrainedModel:
    """Make ``model`` (in place) a DMC model; returns it. No parameters are added."""
    config = config or DMCConfig()
    if config.hold_keep is not None and len(config.hold_keep) not in (1, model.config.num_hidden_layers):
        raise ValueError(f"hold_keep has {len(config.hold_keep)} shares; give one, or one per layer "
                         f"({model.config.num_hidden_layers})")
    if isinstance(model, DMCModelMixin):
        if (config.policy, config.eviction_probe) != (model.dmc_config.policy, model.dmc_config.eviction_probe):
            raise ValueError(f"this model was converted for {model.dmc_config.policy}"
                             f"{' with an eviction probe' if model.dmc_config.eviction_probe else ''}; convert the "
                             "base model for another policy or decision source")
        model.dmc_config = config
        for attention in model.dmc_attentions():
            attention.dmc = config
        return model
    check_supported(model.config)
    _register_attention()
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    for layer in model.model.layers:
        layer.self_attn = ATTENTIONS[config.policy](layer.self_attn, config, heads, kv_heads).train(model.training)
    pack_linears(model)                         # decoding multiplies each weight by a few rows: see PackedLinear
    model.__class__ = _dmc_class(type(model))
    model.dmc_config = config
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    return model


def save(model: PreTrainedModel, directory: str | Path, tokenizer=None) -> Path:
    """Save a DMC model (weights, config, ``dmc_config.json``, tokenizer) atomically."""
    if not isinstance(model, DMCModelMixin):
        raise TypeError("save() expects a model converted with dynacomp.dmc.convert")
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        config = model.config
        base_type, architectures = config.model_type, config.architectures
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        saved = json.loads((tmp / "config.json").read_text())
        saved["model_type"] = DMC_MODEL_TYPE
        saved["architectures"] = [f"DMC{(architectures or [type(model).__name__])[0]}"]
        saved.pop("_attn_implementation_autoset", None)
        (tmp / "config.json").write_text(json.dumps(saved, indent=2))
        model.dmc_config.save(tmp / "dmc_config.json", base_model_type=base_type,
                              base_architectures=architectures)
    return directory


def is_dmc_checkpoint(directory: str | Path) -> bool:
    """A folder saved by ``save``, or the name of a delta dynacomp ships (``dynacomp.dmc.delta``)."""
    from dynacomp.dmc.delta import shipped

    return (Path(directory) / "dmc_config.json").exists() or shipped(directory) is not None


def load_base(directory: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer, dmc_config)`` of a checkpoint saved by ``save`` (or a shipped delta), the
    model *not* yet converted: the plain transformers model with the retrofitted weights (an
    eviction probe, which only a converted model has, is left out)."""
    return _read_checkpoint(directory, dtype)[:3]


def _read_checkpoint(directory: str | Path, dtype: torch.dtype):
    """``load_base``'s answer and the tensors of the checkpoint that only the converted model holds."""
    from dynacomp.dmc.delta import load_delta_base, shipped

    if shipped(directory) is not None:
        return load_delta_base(shipped(directory), dtype)
    directory = Path(directory)
    if not is_dmc_checkpoint(directory):
        raise FileNotFoundError(f"{directory} is not a DMC checkpoint (no dmc_config.json); "
                                "convert a plain model with dynacomp.dmc.convert")
    dmc_config, extra = DMCConfig.load(directory / "dmc_config.json")
    values = json.loads((directory / "config.json").read_text())
    values["model_type"] = extra["base_model_type"]
    values["architectures"] = extra.get("base_architectures")
    base_config = AutoConfig.for_model(**values)
    model = AutoModelForCausalLM.from_config(base_config, dtype=dtype)
    state = {}
    for shard in sorted(directory.glob("*.safetensors")):
        state.update(load_file(shard))
    converted = {name: state.pop(name) for name in list(state) if ".eviction_probe." in name}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and base_config.tie_word_embeddings)]
    if missing or unexpected or bool(converted) != dmc_config.eviction_probe:
        raise ValueError(f"{directory}: checkpoint does not match the model "
                         f"(missing {missing[:5]}, unexpected {(unexpected or list(converted))[:5]})")
    model.tie_weights()
    # The base config is passed so that the tokenizer does not read config.json's DMC model type.
    tokenizer = (AutoTokenizer.from_pretrained(directory, config=base_config)
                 if (directory / "tokenizer_config.json").exists() else None)
    return model.eval(), tokenizer, dmc_config, {name: t.to(dtype) for name, t in converted.items()}


def load(directory: str | Path, dtype: torch.dtype = torch.float32, **overrides):
    """Load ``(model, tokenizer)`` saved by ``save``, or a shipped delta by its name (e.g.
    ``smollm2-135m-dms4``); ``overrides`` replace DMCConfig fields (e.g. ``force_cr=4``,
    ``page_size=32``)."""
    model, tokenizer, dmc_config, converted = _read_checkpoint(directory, dtype)
    return convert_restoring(model, replace(dmc_config, **overrides), converted, directory), tokenizer


def convert_restoring(model: PreTrainedModel, dmc_config: DMCConfig, converted: dict[str, torch.Tensor],
                      source: str | Path) -> PreTrainedModel:
    """``convert`` a loaded base model, then put back the tensors ``source`` stores for modules
    that only a converted model has (an eviction probe)."""
    model = convert(model, dmc_config)
    unexpected = model.load_state_dict(converted, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{source}: {unexpected[:3]} belong to no module of the converted model")
    return model
