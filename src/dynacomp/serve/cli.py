"""``dynacomp serve``: an OpenAI-compatible server over a compressed KV cache, and its load benchmark."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

from dynacomp.config import add_config_args, config_from_args, field
from dynacomp.console import add_json_flag, emit, format_mapping
from dynacomp.models import DEFAULT_MODEL
from dynacomp.runtime import Device, check_device

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}

DESCRIPTION = """\
Serve MODEL over HTTP with continuous batching: POST /v1/completions and /v1/chat/completions
(streamed as server-sent events or not), GET /v1/models, /health, /metrics (Prometheus). The KV
cache is DMC's paged cache, so a retrofitted DMC or DMS checkpoint holds fewer slots per token and
the same --kv-budget admits more sequences; --dense serves the same weights with compression off.

example: dynacomp serve --model runs/dms4/model --kv-budget 256MiB
         curl 127.0.0.1:8000/v1/completions -d '{"prompt": "Once upon a time", "max_tokens": 20}'
"""


def parse_bytes(text: str) -> int:
    """'256MiB', '1.5GB', '4096' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 256MiB, 1GB, 4096)")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


@dataclass
class ServeConfig:
    model: str = field(DEFAULT_MODEL, help="a DMC / DMS checkpoint folder, or a plain model (embedded name, folder, "
                                           "Hugging Face id), served with --force-cr or uncompressed")
    dense: bool = field(False, help="the same weights, engine and pool with compression off (the baseline)")
    force_cr: float | None = field(None, help="a fixed DMC merge pattern at this ratio (engine tests, benchmarks)")
    keep_share: float | None = field(None, help="DMS checkpoints: each sequence keeps this share of its tokens beyond "
                                                "the eviction window, its threshold set from its own eviction logits, "
                                                "so the ratio holds on any text (ratio R at T tokens, window w: "
                                                "(T/R - w) / (T - w))")
    kv_budget: str = field("256MiB", help="KV memory of the pool: pages of (layer, KV head) plus per-sequence state")
    page_size: int = field(64, help="slots per cache page (smaller pages waste less per sequence)")
    max_num_seqs: int = field(64, help="running sequences at most")
    max_batched_tokens: int = field(512, help="prompt tokens prefilled per engine step (chunked prefill)")
    max_tokens_cap: int = field(1024, help="largest max_tokens a request may ask for")
    reserve_by_output: bool = field(True, help="admit a request only with room for the share of max_tokens finished "
                                               "requests generated (--no-reserve-by-output: the reserve decays to 10 %% "
                                               "as in SGLang, admitting more and preempting by recompute when wrong)")
    max_waiting: int = field(256, help="queued requests at most; more get 429 with Retry-After")
    host: str = field("127.0.0.1", help="address to bind (only this machine by default)")
    port: int = field(8000, help="port")
    api_key: str | None = field(None, help="if set, /v1/ requests need Authorization: Bearer API_KEY")
    served_name: str | None = field(None, help="the model name clients use (default: MODEL)")
    device: Device = field("cpu", help="where the model and its KV pool run (on CUDA, decoding reads the pages "
                                       "through the cache's PyTorch path)")

    def __post_init__(self) -> None:
        parse_bytes(self.kv_budget)
        check_device(self.device)
        if self.dense and self.force_cr is not None:
            raise ValueError("--dense and --force-cr contradict each other")
        if self.keep_share is not None and (self.dense or self.force_cr is not None or not 0 < self.keep_share <= 1):
            raise ValueError(f"--keep-share is a share of tokens in (0, 1] that a DMS checkpoint keeps, without --dense "
                             f"or --force-cr; got {self.keep_share}")


def load_engine(config: ServeConfig):
    """The engine of ``config``: a converted model, its tokenizer, the pool."""
    from dynacomp.dmc import DMCConfig, convert, is_dmc_checkpoint, load, zero_decision_channels
    from dynacomp.models import load_causal_lm
    from dynacomp.serve.engine import Engine, EngineConfig

    overrides = {"page_size": config.page_size} | ({"decision_threshold": math.inf, "hold_keep": None, "keep_share": None}
                                                   if config.dense else {})
    if config.keep_share is not None:
        if not is_dmc_checkpoint(config.model):
            raise ValueError(f"--keep-share needs a DMS checkpoint; {config.model} is a plain model")
        overrides |= {"keep_share": config.keep_share, "hold_keep": None}
    if is_dmc_checkpoint(config.model):
        model, tokenizer = load(config.model, **overrides, **({"force_cr": config.force_cr} if config.force_cr else {}))
    else:
        model, tokenizer = load_causal_lm(config.model)
        zero_decision_channels(model)          # untrained channels: the model appends every token unless forced
        model = convert(model, DMCConfig(force_cr=config.force_cr, **overrides))
    if tokenizer is None:
        raise ValueError(f"{config.model} holds no tokenizer: save the checkpoint with its tokenizer")
    model.to(config.device)
    engine_config = EngineConfig(kv_budget=parse_bytes(config.kv_budget), max_num_seqs=config.max_num_seqs,
                                 max_batched_tokens=config.max_batched_tokens,
                                 reserve_by_output=config.reserve_by_output)
    return Engine(model, tokenizer, engine_config, name=config.served_name or config.model)


def run_server(args: argparse.Namespace) -> int:
    config = config_from_args(ServeConfig, args)   # bad options fail before the server's imports

    import uvicorn

    from dynacomp.serve.async_engine import AsyncEngine
    from dynacomp.serve.server import create_app

    engine = AsyncEngine(load_engine(config), max_waiting=config.max_waiting)
    app = create_app(engine, engine.engine.name, config.api_key, config.max_tokens_cap)
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    finally:
        engine.shutdown()
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import asyncio

    from dynacomp.serve.bench import LoadConfig, run_load

    config = config_from_args(LoadConfig, args)
    result = asyncio.run(run_load(config))
    emit(result, args.json, lambda r: format_mapping({k: v for k, v in r.items() if not isinstance(v, (list, dict))}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from dynacomp.serve.bench import LoadConfig

    group = sub.add_parser("serve", help="an OpenAI-compatible server whose compressed cache holds more users",
                           description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(group, ServeConfig)
    group.set_defaults(func=run_server)
    commands = group.add_subparsers(dest="command", metavar="COMMAND")
    bench = commands.add_parser("bench", help="load a running server: throughput and latency under offered load",
                                description="Poisson arrivals (or all at once) of prompts drawn from an embedded "
                                            "corpus, to a server on this machine; bounded in requests and time. "
                                            "Reports vLLM's benchmark fields as JSON.")
    add_config_args(bench, LoadConfig)
    add_json_flag(bench)
    bench.set_defaults(func=run_bench)

