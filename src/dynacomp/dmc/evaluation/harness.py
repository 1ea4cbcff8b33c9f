"""DMC against the methods users would pick instead, at equal cache memory, on one harness.

A method is a cache policy of ``dynacomp.dmc.policies.POLICIES`` (vanilla, DMC trained or forced,
eviction, quantisation). Every token is decoded through the method's cache as it is built,
online: a window is fed as a prefix of ``prefix`` tokens, then ``chunk`` tokens per forward (1:
exactly token by token). Policies whose prefill is exact (one forward over many tokens gives
exactly the logits of feeding them one by one: vanilla and DMC, tested in tests/dmc) are fed
``parallel_chunk`` at a time.

The ``ratio`` reported for every method is a memory ratio at the cache's fullest, averaged over
windows: the bytes a dense cache holds at the end of the window over the most bytes the method's
cache held after any forward in it (the memory a user has to provision; ``CacheStats``). DMC and
eviction caches only grow, so theirs is taken at the end; a quantised cache holds the most just
before its full-precision residual window is packed. 1 for vanilla.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers.cache_utils import Cache

from dynacomp.config import field
from dynacomp.console import progress
from dynacomp.dmc import policies
from dynacomp.dmc.policies import POLICIES, PolicyOptions
from dynacomp.io import figure
from dynacomp.metrics.perplexity import perplexity


@dataclass
class EvalOptions:
    """How the harness feeds tokens and how the peers are set up."""
    batch_size: int = field(4, help="windows decoded together")
    max_tokens: int | None = field(None, help="use only the first N tokens of the text (None: all)")
    prefix: int = field(1, help="tokens of each window or prompt prefilled densely before online decoding")
    chunk: int = field(1, help="tokens per forward after the prefix, for methods that compress online "
                               "(1: exactly token by token; more is faster but lets a chunk see itself "
                               "uncompressed)")
    parallel_chunk: int = field(256, help="tokens per forward for vanilla and DMC, whose prefill is exact")

    def __post_init__(self) -> None:
        for name in ("batch_size", "prefix", "chunk", "parallel_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Runner:
    """A model ready to run one method: its cache factory and how tokens may be fed."""
    model: torch.nn.Module
    new_cache: Callable[[], Cache]
    exact_prefill: bool

    def pieces(self, length: int, options: EvalOptions) -> list[tuple[int, int]]:
        """(start, end) of the forwards that feed ``length`` tokens."""
        if self.exact_prefill:
            return _pieces(length, options.parallel_chunk, options.parallel_chunk)
        return _pieces(length, options.prefix, options.chunk)


def _pieces(length: int, first: int, size: int) -> list[tuple[int, int]]:
    bounds = [0, min(first, length)]
    while bounds[-1] < length:
        bounds.append(min(bounds[-1] + size, length))
    return list(zip(bounds[:-1], bounds[1:]))


@contextlib.contextmanager
def method_runner(model, method: str, cr: float, policy_options: PolicyOptions | None = None) -> Iterator[Runner]:
    """Set ``model`` up for ``method`` at ratio ``cr`` inside the block; ``model`` is left as it was."""
    policy = policies.get(method)
    if cr < 1:
        raise ValueError(f"the compression ratio must be >= 1, got {cr}")
    with policy.setup(model, cr, policy_options or PolicyOptions()) as setup:
        yield Runner(setup.model, setup.new_cache, policy.exact_prefill)


class PeakMemory:
    """The memory ratio of a cache at its fullest (module docstring): ``observe`` it after every
    forward; ``ratio`` is then the dense size at the last observation over the most memory held."""

    def __init__(self) -> None:
        self.tokens, self.held = 0, 0.0    # held: in tokens' worth of dense cache

    def observe(self, cache: Cache, tokens: int) -> None:
        self.tokens = tokens
        self.held = max(self.held, tokens / cache.stats().memory_ratio)

    @property
    def ratio(self) -> float:
        return self.tokens / self.held if self.held else 1.0


def _token_ids(tokens, text: str | None) -> Tensor:
    if isinstance(tokens, Tensor):
        return tokens.flatten()
    if text is None:
        from dynacomp.data.text import load_split
        text = load_split("english", "test")
    return torch.tensor(tokens(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def perplexity_online(model, tokens, method: str, cr: float, context: int, options: EvalOptions | None = None,
                      text: str | None = None, policy_options: PolicyOptions | None = None) -> dict:
    """Perplexity with every token decoded through ``method``'s cache at ratio ``cr``.

    ``tokens``: token ids (N,), or a tokenizer for ``text`` (default: the embedded English test
    split). The ids are cut into non-overlapping windows of ``context`` tokens (the tail that fills
    none is left out); each window scores all its tokens but the first.
    """
    options = options or EvalOptions()
    ids = _token_ids(tokens, text)[:options.max_tokens]
    if ids.numel() < context:
        raise ValueError(f"{ids.numel()} tokens do not fill one window of {context}; use a longer text "
                         "or a smaller --context")
    meters: list[PeakMemory] = []     # one per batch of windows, i.e. per cache
    started = time.perf_counter()
    with method_runner(model, method, cr, policy_options) as runner:
        def fresh_cache() -> Cache:
            meters.append(PeakMemory())
            return runner.new_cache()

        result = perplexity(runner.model, ids, context, batch_size=options.batch_size, cache_factory=fresh_cache,
                            pieces=runner.pieces(context, options), desc=f"{method} cr={cr:g}",
                            after_forward=lambda cache, tokens: meters[-1].observe(cache, tokens))
    count = result["windows"]
    rows = [min(options.batch_size, count - first) for first in range(0, count, options.batch_size)]
    ratio = sum(meter.ratio * n for meter, n in zip(meters, rows)) / count
    return {"method": method, "cr": cr, "ratio": ratio, **result, "context": context,
            "prefix": options.prefix, "chunk": options.chunk, "seconds": time.perf_counter() - started}


# -- passkey retrieval ------------------------------------------------------------------------------

PASSKEY_INTRO = ("Somewhere in the long text below a pass key is hidden among sentences that do not matter. "
                 "Find it and keep it in mind: you will be asked for it at the end.\n")
PASSKEY_FILLER = "The river runs to the sea. The hills are quiet. The wind turns the old mill. Day follows night. "
PASSKEY_NEEDLE = "The pass key is {key}. Keep it: {key} is the pass key. "
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"


def passkey_prompt(tokenizer, length: int, depth: float, key: int) -> Tensor:
    """Token ids (T,), T <= ``length`` (as close as whole filler units allow): the introduction,
    filler with the needle after a ``depth`` share (0..1) of it, and the question."""
    def build(units: int) -> Tensor:
        before = round(depth * units)
        text = (PASSKEY_INTRO + PASSKEY_FILLER * before + PASSKEY_NEEDLE.format(key=key)
                + PASSKEY_FILLER * (units - before) + PASSKEY_QUESTION)
        return torch.tensor(tokenizer(text)["input_ids"])

    per_unit = len(tokenizer(PASSKEY_FILLER * 8)["input_ids"]) / 8
    units = max(0, int((length - build(0).numel()) / per_unit))
    ids = build(units)
    while ids.numel() > length and units > 0:
        units -= 1
        ids = build(units)
    return ids


def greedy_answer(runner: Runner, prompt: Tensor, options: EvalOptions, new_tokens: int) -> tuple[list[int], float]:
    """Greedy continuation (token ids) of ``prompt`` (1, T), read through a fresh cache of
    ``runner``, and the cache's peak memory ratio (``PeakMemory``)."""
    cache, peak = runner.new_cache(), PeakMemory()
    for start, end in runner.pieces(prompt.shape[1], options):
        logits = runner.model(prompt[:, start:end], cache=cache, use_cache=True).logits
        peak.observe(cache, end)
    answer = []
    for _ in range(new_tokens):
        token = logits[:, -1].argmax(-1, keepdim=True)               # (1, 1)
        answer.append(int(token))
        if len(answer) < new_tokens:
            logits = runner.model(token, cache=cache, use_cache=True).logits
            peak.observe(cache, prompt.shape[1] + len(answer))
    return answer, peak.ratio


@torch.no_grad()
def passkey(model, tokenizer, method: str, cr: float, context_lengths: tuple[int, ...] | list[int], trials: int,
            seed: int = 0, options: EvalOptions | None = None, answer_tokens: int = 8,
            policy_options: PolicyOptions | None = None) -> dict:
    """Passkey retrieval accuracy per context length: a random 5-digit key at a random depth of
    filler text, asked for at the end; the greedy answer's first number must equal the key."""
    options = options or EvalOptions()
    rng = random.Random(seed)
    device = next(model.parameters()).device
    rows, ratios = [], []
    started = time.perf_counter()
    with method_runner(model, method, cr, policy_options) as runner:
        bar = progress(total=len(context_lengths) * trials, desc=f"passkey {method} cr={cr:g}", unit="trial")
        for length in context_lengths:
            correct, tokens = 0, 0
            for _ in range(trials):
                key, depth = rng.randint(10000, 99999), rng.random()
                prompt = passkey_prompt(tokenizer, length, depth, key)
                answer, ratio = greedy_answer(runner, prompt[None].to(device), options, answer_tokens)
                found = re.search(r"\d+", tokenizer.decode(answer, skip_special_tokens=True))
                correct += found is not None and found.group() == str(key)
                tokens += prompt.numel()
                ratios.append(ratio)
                bar.update()
            rows.append({"context": length, "accuracy": correct / trials, "correct": correct, "trials": trials,
                         "mean_prompt_tokens": tokens / trials})
        bar.close()
    return {"method": method, "cr": cr, "ratio": sum(ratios) / len(ratios), "results": rows,
            "prefix": options.prefix, "chunk": options.chunk, "seconds": time.perf_counter() - started}


# -- plots --------------------------------------------------------------------------------------------

def plot_perplexity(results: list[dict], path: str | Path, title: str = "") -> None:
    """Perplexity against the measured memory ratio, one line per method (``perplexity_online`` dicts)."""
    from matplotlib.ticker import ScalarFormatter

    with figure(path, figsize=(6.4, 4.4)) as (_, ax):
        for method, policy in POLICIES.items():
            points = sorted((r["ratio"], r["perplexity"]) for r in results if r["method"] == method)
            if not points:
                continue
            if method == "vanilla":
                ax.axhline(points[0][1], color="black", linestyle="--", linewidth=1, label=policy.label)
                continue
            ax.plot(*zip(*points), marker="o", label=policy.label)
        ax.set_xlabel("memory ratio (dense 16-bit cache / this cache)")
        ax.set_ylabel("perplexity")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())   # 21.5, not 2.15 x 10^1, over a narrow range
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)


def plot_passkey(results: list[dict], path: str | Path, title: str = "") -> None:
    """Passkey accuracy against context length, one line per (method, ratio) (``passkey`` dicts)."""
    with figure(path, figsize=(6.4, 4.4)) as (_, ax):
        for result in results:
            rows = result["results"]
            policy = POLICIES[result["method"]]
            label = policy.label + ("" if policy.kind == "dense" else f", ratio {result['ratio']:.2g}")
            ax.plot([r["context"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=label)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("passkey accuracy")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
