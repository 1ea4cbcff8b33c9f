"""Text generation from a prompt, with or without the incremental cache."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dynacomp.config import field
from dynacomp.dtp.model import HourglassLM


@dataclass
class SampleConfig:
    chars: int = field(200, help="characters to generate")
    temperature: float = field(1.0, help="sampling temperature (0: greedy)")
    top_k: int = field(0, help="sample among the k most likely (0: all)")
    seed: int = field(0, help="seed of the sampling")
    cache: bool = field(True, help="decode from a cache (--no-cache: re-read the whole text at every step)")


def _pick(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Next id ``(1, 1)`` from the last logits ``(1, V)``; temperature 0: the most likely."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.no_grad()
def generate(model: HourglassLM, prompt: torch.Tensor, n: int, temperature: float = 1.0, top_k: int = 0,
             use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """``prompt (1, T)`` ids (T >= 1) -> ``(1, T + n)``: the prompt and ``n`` sampled characters.

    With ``use_cache`` the prompt is read once and each new character costs one incremental step;
    without it every step re-reads the whole sequence. Both give the same distribution.
    """
    model.eval()
    ids = prompt
    cache = model.new_cache() if use_cache else None
    logits = model(ids, cache=cache).logits[:, -1]
    for i in range(n):
        nxt = _pick(logits, temperature, top_k, generator)
        ids = torch.cat([ids, nxt], dim=1)
        if i + 1 < n:
            logits = model(nxt if use_cache else ids, cache=cache).logits[:, -1]
    return ids


def generation_speed(model: HourglassLM, prompt: torch.Tensor, n: int, use_cache: bool) -> float:
    """Characters per second of greedy ``generate`` (prompt reading included)."""
    start = time.perf_counter()
    generate(model, prompt, n, temperature=0, use_cache=use_cache)
    return n / (time.perf_counter() - start)
