"""Decode throughput of DMC against dense caches, measured side by side in one run.

Methods, each measured in a fresh worker process (so its peak memory is its own):

* ``hf_generate``: transformers' ``generate`` with its default dynamic cache, which grows by
  concatenation, copying every layer's keys and values at every step;
* ``hf_static``: ``generate`` with a ``StaticCache`` allocated once for the whole run (the fair
  dense anchor);
* ``vanilla``: dynacomp's own greedy decode loop over the plain model and the same ``StaticCache``;
* ``dmc``: the same loop over the DMC model and a ``DMCCache`` (``force_cr`` = the ratio, or a
  retrofitted checkpoint's own decisions).

Per method: median time per decode step, tokens/s (batch / step time), the share of that time
spent in attention modules (timed by hooks), KV-cache bytes, and the worker's peak memory (its
resident set on CPU, the CUDA allocator's peak on a GPU). Every method runs in the same
``--dtype``, weights and caches alike, on the same ``--device``; on CUDA every clock reading
waits for the device first.
``measure_paired`` runs the dense loop and DMC at several ratios in one process with their steps
taken in turn, for comparisons that must not depend on the machine's drift between workers.
``max_batch`` answers the paper's headline question: how many sequences fit a KV budget, and how
fast does each method decode at its own largest batch.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Literal, get_args

import torch

from dynacomp.config import field, require_positive
from dynacomp.dmc.cache import DMCCache
from dynacomp.dmc.config import DMCConfig
from dynacomp.models import DEFAULT_MODEL
from dynacomp.runtime import DTYPES, Device, Dtype, check_device, peak_memory_bytes, synchronize

Method = Literal["hf_generate", "hf_static", "vanilla", "dmc"]
METHODS: tuple[str, ...] = get_args(Method)
MAX_BATCH_TRIES = 8


@dataclass
class BenchConfig:
    model: str = field(DEFAULT_MODEL, help="embedded name, model folder, or a DMC checkpoint folder")
    batch: int = field(16, help="sequences decoded together")
    context: int = field(4096, help="prompt tokens per sequence before decoding starts")
    new_tokens: int = field(32, help="decode steps timed per method")
    cr: tuple[float, ...] = field((4.0,), help="DMC compression ratios (force_cr; ignored for a "
                                                 "retrofitted checkpoint, which uses its own decisions)")
    methods: tuple[str, ...] = field(METHODS, help="methods to measure")
    page_size: int = field(DMCConfig.page_size, help="DMC cache page size (slots)")
    threads: int = field(0, help="torch threads per worker (0: torch's default)")
    device: Device = field("cpu", help="where every method runs")
    dtype: Dtype = field("float32", help="weights and KV caches of every method, dense and DMC alike")
    kv_budget_gb: float = field(0.0, help="if > 0: also find each method's largest batch within this "
                                          "KV-cache budget and measure its throughput there")

    def __post_init__(self) -> None:
        require_positive(self, "batch", "context", "new_tokens", "page_size")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
        if not self.cr or min(self.cr) < 1:
            raise ValueError(f"cr needs one or more ratios >= 1, got {self.cr}")
        check_device(self.device)


def prompt_ids(tokenizer, batch: int, context: int) -> torch.Tensor:
    """(batch, context) token ids of held-out English text, each row from a different offset."""
    from dynacomp.data.text import load_split

    ids = tokenizer(load_split("english", "test"), return_tensors="pt").input_ids[0]
    need = batch * context
    ids = ids.repeat(math.ceil(need / ids.numel()) + 1)
    stride = max(1, (ids.numel() - context) // max(batch, 1))
    return torch.stack([ids[i * stride: i * stride + context] for i in range(batch)])


class _AttentionTimer:
    """Forward hooks that add up the time spent inside attention modules: by the wall clock on CPU,
    by CUDA events on a GPU, read only once the device has finished (a hook that waited for the
    device would slow the step it measures)."""

    def __init__(self, modules, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: list[tuple] = []      # (start, end) of each call: clock readings or CUDA events
        for module in modules:
            module.register_forward_pre_hook(self._start)
            module.register_forward_hook(self._stop)

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _start(self, module, args):
        module._bench_start = self._now()

    def _stop(self, module, args, output):
        self.spans.append((module._bench_start, self._now()))

    def reset(self) -> None:
        self.spans = []

    @property
    def seconds(self) -> float:
        """Time inside attention since the last reset; on CUDA, after a synchronize."""
        if self.cuda:
            return sum(start.elapsed_time(end) for start, end in self.spans) / 1000
        return sum(end - start for start, end in self.spans)


def _kv_bytes(cache) -> int:
    """Bytes the cache holds: a static cache's allocation for the whole run; a DMC cache's page
    pools as reserved (they grow ahead of use) and its open runs."""
    if isinstance(cache, DMCCache):
        return cache.stats().reserved_bytes
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if t is not None)


class GreedyDecoder:
    """Greedy decoding of ``ids`` by ``model`` into ``cache``: the prefill and one untimed step (it
    loads the native decode kernel) on creation, then each ``step()`` times one decode step.
    ``steps`` holds the step times and ``timer`` the time spent in attention during them."""

    def __init__(self, model, ids: torch.Tensor, cache):
        self.model, self.cache, self.device = model, cache, ids.device
        self.timer = _AttentionTimer([layer.self_attn for layer in model.model.layers], ids.device)
        self.logits = self._forward(ids)
        self.logits = self._forward(self.logits.argmax(-1, keepdim=True))
        synchronize(self.device)
        self.timer.reset()
        self.steps: list[float] = []

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, cache=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def step(self) -> None:
        token = self.logits.argmax(-1, keepdim=True)
        synchronize(self.device)
        start = time.perf_counter()
        self.logits = self._forward(token)
        synchronize(self.device)
        self.steps.append(time.perf_counter() - start)


def _load(config: BenchConfig, cr: float):
    """(model, tokenizer, DMC config): a retrofitted checkpoint's base weights and own config, or
    the named model with ``force_cr`` = ``cr``, in the configured dtype on the configured device;
    sets this process's thread count first."""
    from dynacomp.dmc import is_dmc_checkpoint, load_base
    from dynacomp.models import load_causal_lm

    if config.threads:
        torch.set_num_threads(config.threads)
    dtype = DTYPES[config.dtype]
    if is_dmc_checkpoint(config.model):   # dense methods decode the same retrofitted weights
        model, tokenizer, dmc_config = load_base(config.model, dtype)
        dmc_config = replace(dmc_config, page_size=config.page_size)
    else:
        model, tokenizer = load_causal_lm(config.model, dtype)
        dmc_config = DMCConfig(force_cr=cr, page_size=config.page_size)
    return model.to(config.device), tokenizer, dmc_config


def _dense_cache(model, config: BenchConfig):
    """A dense cache for the whole run, allocated on its first use in the model's dtype and device."""
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=config.context + config.new_tokens + 1)


def _bytes_read(model, cache) -> int:
    """What one decode step must read at least: every weight once (a tied output layer is the
    embedding, read whole) and the cache's stored entries (a static cache is read whole, masked)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + (cache.stats().bytes if isinstance(cache, DMCCache) else _kv_bytes(cache))


def _row(method: str, realised_cr: float, config: BenchConfig, steps: list[float], attention: float,
         model, cache) -> dict:
    step, kv = statistics.median(steps), _kv_bytes(cache)
    return {
        "method": method, "cr": realised_cr, "batch": config.batch, "context": config.context,
        "step_seconds": step, "tokens_per_s": config.batch / step,
        "attention_share": attention / sum(steps), "kv_bytes": kv,
        "kv_bytes_per_sequence": kv / config.batch, "bytes_read_per_step": _bytes_read(model, cache),
        "peak_memory_bytes": peak_memory_bytes(torch.device(config.device)),
        "device": config.device, "dtype": config.dtype, "steps": len(steps),
    }


@torch.no_grad()
def measure(method: Method, cr: float, config: BenchConfig) -> dict:
    """One method at one ratio, in this process."""
    from transformers.generation.stopping_criteria import StoppingCriteria

    from dynacomp.dmc import convert

    model, tokenizer, dmc_config = _load(config, cr)
    if method == "dmc":
        convert(model, dmc_config)
    ids = prompt_ids(tokenizer, config.batch, config.context).to(config.device)

    if method in ("hf_generate", "hf_static"):
        timer = _AttentionTimer([layer.self_attn for layer in model.model.layers], ids.device)
        marks: list[float] = []

        class StepClock(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                synchronize(ids.device)
                marks.append(time.perf_counter())
                if len(marks) == 2:   # after the prefill and one untimed step, as in GreedyDecoder
                    timer.reset()
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=config.new_tokens + 2,
                             min_new_tokens=config.new_tokens + 2, do_sample=False,
                             stopping_criteria=[StepClock()], return_dict_in_generate=True,
                             pad_token_id=tokenizer.pad_token_id,
                             cache=_dense_cache(model, config) if method == "hf_static" else None)
        steps = [b - a for a, b in zip(marks[1:], marks[2:])]
        cache = out.past_key_values if hasattr(out, "past_key_values") else out.cache
        return _row(method, 1.0, config, steps, timer.seconds, model, cache)
    cache = model.new_cache() if method == "dmc" else _dense_cache(model, config)
    decoder = GreedyDecoder(model, ids, cache)
    for _ in range(config.new_tokens):
        decoder.step()
    realised = cache.stats().compression_ratio if method == "dmc" else 1.0
    return _row(method, realised, config, decoder.steps, decoder.timer.seconds, model, cache)


@torch.no_grad()
def measure_paired(crs: list[float], config: BenchConfig) -> dict:
    """The dense loop and DMC at each of ``crs`` in one process, their decode steps taken in turn,
    so that the machine's drift falls on all alike. Returns their rows (peak memory is the whole
    process's) and, per ratio, the median over rounds of DMC's speed relative to the dense loop."""
    from dynacomp.dmc import convert

    model, tokenizer, dmc_config = _load(config, crs[0])
    ids = prompt_ids(tokenizer, config.batch, config.context).to(config.device)
    dense = GreedyDecoder(model, ids, _dense_cache(model, config))
    dmc = []
    for cr in crs:
        # force_cr is None for a retrofitted checkpoint, whose own decisions then set the ratio
        forced = replace(dmc_config, force_cr=cr) if dmc_config.force_cr is not None else dmc_config
        dmc_model = convert(copy.deepcopy(model), forced)
        dmc.append(GreedyDecoder(dmc_model, ids, dmc_model.new_cache()))
    for _ in range(config.new_tokens):
        dense.step()
        for decoder in dmc:
            decoder.step()
    rows = []
    for decoder in dmc:
        row = _row("dmc", decoder.cache.stats().compression_ratio, config, decoder.steps,
                   decoder.timer.seconds, decoder.model, decoder.cache)
        row["speedup_vs_vanilla"] = statistics.median(d / m for d, m in zip(dense.steps, decoder.steps))
        rows.append(row)
    return {"context": config.context,
            "vanilla": _row("vanilla", 1.0, config, dense.steps, dense.timer.seconds, model, dense.cache),
            "dmc": rows}


def measure_in_worker(method: str, cr: float | list[float], config: BenchConfig) -> dict:
    """``measure`` (``measure_paired`` for method "paired") in a fresh Python process; its peak
    memory is then the method's own."""
    payload = json.dumps({"method": method, "cr": cr, "config": asdict(config)})
    done = subprocess.run([sys.executable, "-m", "dynacomp.dmc.evaluation.bench_worker", payload], capture_output=True, text=True)
    if done.returncode != 0:
        last = ([line for line in done.stderr.splitlines() if line.strip()] or ["no output"])[-1]
        raise RuntimeError(f"the benchmark worker for {method} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(config: BenchConfig, progress=None) -> dict:
    """All methods (and DMC at every ratio; once for a retrofitted checkpoint, whose own decisions
    set its ratio) at ``config``'s batch and context."""
    from dynacomp.dmc import is_dmc_checkpoint

    dmc_crs = config.cr[:1] if is_dmc_checkpoint(config.model) else config.cr
    jobs = [(m, cr) for m in config.methods for cr in (dmc_crs if m == "dmc" else (1.0,))]
    rows = []
    for method, cr in jobs:
        rows.append(measure_in_worker(method, cr, config))
        if progress is not None:
            progress(rows[-1])
    base = {r["method"]: r for r in rows if r["method"] != "dmc"}
    for row in rows:
        for reference in ("hf_generate", "hf_static", "vanilla"):
            if reference in base:
                row[f"speedup_vs_{reference}"] = row["tokens_per_s"] / base[reference]["tokens_per_s"]
    result = {"config": asdict(config), "rows": rows}
    if config.kv_budget_gb > 0:
        result["max_batch"] = max_batch(config, jobs, rows)
    return result


def max_batch(config: BenchConfig, jobs: list[tuple[str, float]], rows: list[dict]) -> list[dict]:
    """Each method's largest batch whose KV cache fits the budget, and its throughput there.

    ``jobs``: the (method, configured ratio) of each of ``rows``. Pools grow in steps, so bytes are
    not proportional to the batch: each measured batch gives the next guess by proportion, kept
    strictly between the largest batch known to fit and the smallest known to overshoot, until the
    two are neighbours (or ``MAX_BATCH_TRIES`` measurements, each a worker at the full context)."""
    budget = config.kv_budget_gb * 2**30
    out = []
    for (method, cr), row in zip(jobs, rows):
        if method in ("hf_generate", "hf_static"):   # generate's caches take vanilla's memory or more
            continue
        batch, best, overshoots = int(budget // row["kv_bytes_per_sequence"]), None, math.inf
        for _ in range(MAX_BATCH_TRIES):
            fits = best["batch"] if best else 0
            batch = min(max(batch, fits + 1), overshoots - 1)
            if batch <= fits:
                break
            measured = measure_in_worker(method, cr, replace(config, batch=batch))
            if measured["kv_bytes"] <= budget:
                best = {"batch": batch, **measured}
            else:
                overshoots = batch
            batch = int(batch * budget / measured["kv_bytes"])
        if best is None:
            out.append({"method": method, "cr": row["cr"], "max_batch": 0})
            continue
        out.append({"method": method, "cr": row["cr"], "max_batch": best["batch"],
                    "tokens_per_s": best["tokens_per_s"], "kv_bytes": best["kv_bytes"]})
    return out
