"""``dynacomp serve bench``: load a running server and measure what users feel.

Requests arrive as a Poisson process at ``request_rate`` per second (``inf``: all at once), at most
``max_concurrency`` in flight, with prompts cut from an embedded corpus and lengths drawn with a
fixed seed: uniform (``random``) or long-tailed like chat traffic (``chat``: log-normal, clipped).
Every request streams with ``ignore_eos``, so it generates exactly its drawn length. After warm-up
requests, the run reports vLLM's benchmark fields (request and token throughput; mean, median
and p99 of TTFT, TPOT, ITL and end-to-end latency, in ms) and, scraped from the server's
``/metrics`` every 0.2 s while it runs, the peak and mean of running sequences, the peak KV bytes and
the preemptions.
Only 127.0.0.1 / localhost is loaded; the run stops after ``num_prompts`` or ``time_limit_s``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

from dynacomp.config import field
from dynacomp.models import DEFAULT_MODEL


@dataclass
class LoadConfig:
    url: str = field("http://127.0.0.1:8000", help="the server (127.0.0.1 or localhost only)")
    num_prompts: int = field(64, help="measured requests")
    warmup: int = field(2, help="requests sent and discarded first")
    request_rate: float = field(math.inf, help="mean arrivals per second, Poisson; inf: all at once")
    max_concurrency: int | None = field(None, help="requests in flight at most (None: no limit)")
    lengths: Literal["random", "chat"] = field("random", help="uniform lengths, or a long tail like chat traffic")
    input_len: int = field(256, help="mean prompt tokens")
    output_len: int = field(64, help="mean output tokens")
    range_ratio: float = field(0.5, help="random: lengths uniform in mean x (1 +- this)")
    corpus: str = field("english", help="embedded corpus the prompts are cut from (its test split)")
    tokenizer: str = field(DEFAULT_MODEL, help="the served model's tokenizer (embedded name or folder), to cut "
                                                "prompts of exact token lengths")
    seed: int = field(0, help="seed of lengths, prompts and arrivals")
    time_limit_s: float = field(1800.0, help="stop sending after this long and report what finished")
    api_key: str | None = field(None, help="Bearer key, if the server wants one")

    def __post_init__(self) -> None:
        if urlparse(self.url).hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the load benchmark only loads this machine (127.0.0.1 or localhost), not {self.url}")
        if self.num_prompts < 1 or self.input_len < 1 or self.output_len < 1:
            raise ValueError("num_prompts, input_len and output_len must be >= 1")
        if self.request_rate <= 0:
            raise ValueError(f"request_rate must be > 0, got {self.request_rate}")


def draw_lengths(config: LoadConfig, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """(prompt tokens, output tokens) per request."""
    def draw(mean: int) -> int:
        if config.lengths == "chat":      # log-normal with sigma 1, the mean kept, clipped to 8x the mean
            return max(1, min(8 * mean, round(rng.lognormvariate(math.log(mean) - 0.5, 1.0))))
        spread = config.range_ratio * mean
        return max(1, round(rng.uniform(mean - spread, mean + spread)))
    return [(draw(config.input_len), draw(config.output_len)) for _ in range(count)]


def prompts_from_corpus(tokenizer_ids: list[int], lengths: list[tuple[int, int]], rng: random.Random) -> list[list[int]]:
    """Token-id prompts cut at random places of the corpus."""
    return [tokenizer_ids[start:start + n] for n, _ in lengths
            for start in [rng.randrange(0, len(tokenizer_ids) - n)]]


def percentiles(values: list[float], name: str) -> dict[str, float]:
    if not values:
        return {f"mean_{name}_ms": math.nan, f"median_{name}_ms": math.nan, f"p99_{name}_ms": math.nan}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {f"mean_{name}_ms": 1000 * statistics.fmean(values), f"median_{name}_ms": 1000 * statistics.median(values),
            f"p99_{name}_ms": 1000 * p99}


async def _one(client, url: str, headers: dict, prompt: list[int], output_len: int) -> dict:
    """Stream one completion; its token arrival times."""
    body = {"prompt": prompt, "max_tokens": output_len, "temperature": 0, "ignore_eos": True, "stream": True}
    start, times, ok = time.perf_counter(), [], False
    async with client.stream("POST", url + "/v1/completions", json=body, headers=headers) as response:
        if response.status_code == 200:
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    ok = True
                elif line.startswith("data: ") and json.loads(line[6:])["choices"]:
                    times.append(time.perf_counter())
    return {"ok": ok and bool(times), "start": start, "times": times, "prompt_len": len(prompt),
            "output_len": output_len}


async def _watch(client, url: str, headers: dict, seen: dict[str, list[float]], stop: asyncio.Event) -> None:
    """Scrape /metrics every 0.2 s until ``stop``: the values of the metrics named in ``seen``."""
    from prometheus_client.parser import text_string_to_metric_families

    while not stop.is_set():
        response = await client.get(url + "/metrics", headers=headers)
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name in seen:
                    seen[sample.name].append(sample.value)
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass


async def run_load(config: LoadConfig) -> dict:
    import httpx
    from transformers import AutoTokenizer

    from dynacomp.data.text import load_split
    from dynacomp.models import resolve

    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    rng = random.Random(config.seed)
    async with httpx.AsyncClient(timeout=httpx.Timeout(config.time_limit_s)) as client:
        served = (await client.get(config.url + "/v1/models", headers=headers)).json()["data"][0]["id"]
        tokenizer = AutoTokenizer.from_pretrained(resolve(config.tokenizer))
        ids = tokenizer(load_split(config.corpus, "test"), add_special_tokens=False)["input_ids"]
        lengths = draw_lengths(config, config.warmup + config.num_prompts, rng)
        prompts = prompts_from_corpus(ids, lengths, rng)
        for prompt, (_, out) in zip(prompts[:config.warmup], lengths[:config.warmup]):
            await _one(client, config.url, headers, prompt, out)
        before = await _scrape(client, config.url, headers)

        seen = {"vllm:num_requests_running": [], "dynacomp:kv_bytes": []}
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(client, config.url, headers, seen, stop))
        limit = asyncio.Semaphore(config.max_concurrency or config.num_prompts)
        started = time.perf_counter()

        async def send(prompt: list[int], output_len: int) -> dict:
            async with limit:
                return await _one(client, config.url, headers, prompt, output_len)

        tasks = []
        for prompt, (_, out) in zip(prompts[config.warmup:], lengths[config.warmup:]):
            if time.perf_counter() - started > config.time_limit_s:
                break
            tasks.append(asyncio.create_task(send(prompt, out)))
            if math.isfinite(config.request_rate):
                await asyncio.sleep(rng.expovariate(config.request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - started
        stop.set()
        await watcher
        after = await _scrape(client, config.url, headers)

    done = [r for r in results if r["ok"]]
    ttft = [r["times"][0] - r["start"] for r in done]
    tpot = [(r["times"][-1] - r["times"][0]) / (len(r["times"]) - 1) for r in done if len(r["times"]) > 1]
    itl = [b - a for r in done for a, b in zip(r["times"], r["times"][1:])]
    e2el = [r["times"][-1] - r["start"] for r in done]
    running = seen["vllm:num_requests_running"]
    output_tokens = sum(len(r["times"]) for r in done)
    input_tokens = sum(r["prompt_len"] for r in done)
    return {"model": served, "num_prompts": len(tasks), "completed": len(done), "duration_s": duration,
            "request_rate": config.request_rate, "max_concurrency": config.max_concurrency,
            "total_input_tokens": input_tokens, "total_output_tokens": output_tokens,
            "request_throughput": len(done) / duration, "output_throughput": output_tokens / duration,
            "total_token_throughput": (input_tokens + output_tokens) / duration,
            **percentiles(ttft, "ttft"), **percentiles(tpot, "tpot"), **percentiles(itl, "itl"),
            **percentiles(e2el, "e2el"),
            "peak_running": max(running, default=0.0), "mean_running": statistics.fmean(running) if running else 0.0,
            "peak_kv_bytes": max(seen["dynacomp:kv_bytes"], default=0.0),
            "preemptions": after["vllm:num_preemptions_total"] - before["vllm:num_preemptions_total"]}


async def _scrape(client, url: str, headers: dict) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = await client.get(url + "/metrics", headers=headers)
    return {sample.name: sample.value for family in text_string_to_metric_families(response.text)
            for sample in family.samples}
