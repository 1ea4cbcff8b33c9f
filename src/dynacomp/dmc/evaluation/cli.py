"""``dynacomp dmc eval`` and ``dynacomp dmc passkey``: DMC and its peers at equal cache memory.

``register_eval(dmc_subparsers)`` adds both commands to the ``dmc`` group's sub-parsers.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dynacomp.config import add_config_args, config_from_args, field, require_positive
from dynacomp.console import add_json_flag, emit
from dynacomp.dmc import policies
from dynacomp.dmc.evaluation.harness import EvalOptions, passkey, perplexity_online
from dynacomp.dmc.policies import POLICIES, PolicyOptions
from dynacomp.errors import Failure, UsageError
from dynacomp.io import read_text
from dynacomp.models import DEFAULT_MODEL
from dynacomp.runtime import DTYPES, Device, Dtype, check_device


@dataclass
class MethodConfig:
    model: str = field(DEFAULT_MODEL, help="embedded name, local folder, Hugging Face id, or a DMC checkpoint "
                                            "folder (other methods run on its weights, decision channels zeroed)")
    method: Literal[policies.NAMES] = field("vanilla", help="the cache policy (how the KV cache is kept)")
    cr: float = field(4.0, help="compression ratio: eviction keeps ceil(tokens / CR) slots per KV head; "
                                "dmc_forced merges at this ratio; ignored by "
                                + ", ".join(n for n, p in POLICIES.items() if not p.uses_cr))
    device: Device = field("cpu", help="where the model and its cache run")
    dtype: Dtype = field("float32", help="model weights and cache dtype")

    def __post_init__(self) -> None:
        check_device(self.device)


@dataclass
class PerplexityConfig(MethodConfig):
    context: int = field(512, help="tokens per window (windows do not overlap)")
    data: Path | None = field(None, help="a UTF-8 text file to score; None: the embedded English test split")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "context")


@dataclass
class PasskeyConfig(MethodConfig):
    lengths: tuple[int, ...] = field((512, 1024, 2048, 4096), help="prompt lengths in tokens")
    trials: int = field(10, help="prompts per length")
    seed: int = field(0, help="seed of the keys and their depths")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "trials")
        if not self.lengths or min(self.lengths) < 1:
            raise UsageError(f"--lengths needs prompt lengths >= 1, got {self.lengths}")


def register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity with every token decoded through a compressed cache",
                       description="Perplexity of a model whose KV cache is compressed online while it reads, at "
                                   "equal cache memory across methods: " + policies.describe() + ".")
    add_config_args(p, PerplexityConfig)
    add_config_args(p, EvalOptions)
    add_config_args(p, PolicyOptions)
    add_json_flag(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("passkey", help="passkey retrieval accuracy against context length",
                       description="A 5-digit key hidden at a random depth of filler text, asked for at the end; "
                                   "the prompt is read through the method's compressed cache, the answer is greedy.")
    add_config_args(p, PasskeyConfig)
    add_config_args(p, EvalOptions)
    add_config_args(p, PolicyOptions)
    add_json_flag(p)
    p.set_defaults(func=_passkey)


def load_for_eval(config: MethodConfig):
    """``(model, tokenizer)`` on the configured device: a plain causal LM, or a DMC checkpoint.

    A DMC checkpoint asked for a method that is not DMC (vanilla, int8/int4, an eviction policy)
    loads as a plain model of its own weights with the decision channels zeroed, i.e. the model
    that would append every token: peers then differ from its DMC cache by the policy alone, not
    by the retrofit's fine-tuning.
    """
    from dynacomp.dmc import is_dmc_checkpoint, load, load_base, zero_decision_channels
    from dynacomp.models import load_causal_lm

    dtype = DTYPES[config.dtype]
    if not is_dmc_checkpoint(config.model):
        model, tokenizer = load_causal_lm(config.model, dtype=dtype)
    elif POLICIES[config.method].kind == "learned":
        model, tokenizer = load(config.model, dtype=dtype)
    else:
        model, tokenizer, _ = load_base(config.model, dtype=dtype)
        zero_decision_channels(model)
    if tokenizer is None:
        raise Failure(f"{config.model} holds no tokenizer: save the checkpoint with its tokenizer")
    return model.to(config.device), tokenizer


def check_context(model, config: MethodConfig, longest: int, flag: str) -> None:
    """A window or prompt must fit the model's positions."""
    limit = model.config.max_position_embeddings
    if longest > limit:
        raise UsageError(f"{flag} {longest} is longer than {config.model}'s context of {limit} tokens: "
                         f"pass {flag} {limit} or less")


def _eval(args: argparse.Namespace) -> None:
    config = config_from_args(PerplexityConfig, args)
    options = config_from_args(EvalOptions, args)
    text = read_text(config.data, "--data file") if config.data is not None else None
    model, tokenizer = load_for_eval(config)
    check_context(model, config, config.context, "--context")
    result = perplexity_online(model, tokenizer, config.method, config.cr, config.context, options, text=text,
                               policy_options=config_from_args(PolicyOptions, args))
    result.update(model=config.model, data=str(config.data) if config.data else "english test split")
    emit(result, args.json, lambda r: (f"{POLICIES[r['method']].label}: perplexity {r['perplexity']:.3f} at memory ratio "
                                       f"{r['ratio']:.2f} ({r['tokens']} tokens in {r['windows']} windows of "
                                       f"{r['context']}, {r['seconds']:.0f} s)"))


def _passkey(args: argparse.Namespace) -> None:
    config = config_from_args(PasskeyConfig, args)
    options = config_from_args(EvalOptions, args)
    model, tokenizer = load_for_eval(config)
    check_context(model, config, max(config.lengths), "--lengths")
    result = passkey(model, tokenizer, config.method, config.cr, config.lengths, config.trials, config.seed, options,
                     policy_options=config_from_args(PolicyOptions, args))
    result["model"] = config.model

    def render(r: dict) -> str:
        lines = [f"{POLICIES[r['method']].label}, memory ratio {r['ratio']:.2f}", "context  accuracy"]
        lines += [f"{row['context']:>7}  {row['correct']}/{row['trials']}" for row in r["results"]]
        return "\n".join(lines)

    emit(result, args.json, render)
