"""Perplexity of a causal LM over a token stream, in fixed windows.

The stream is cut into windows of ``context`` tokens starting every ``stride`` tokens (only full
windows; the tail that fills none is left out, so two models compared on the same stream and
settings score exactly the same tokens). The first window scores every token but its first;
each later window scores only its last ``min(stride, context - 1)`` tokens, the rest being
context. With ``stride == context`` (the default) windows do not overlap and every token but
the first of each window is scored once.

``cache_factory`` makes the model run as it really generates: each batch of windows is read
through a fresh cache from the factory (e.g. a ``DMCCache`` with hard decisions), in forwards of
``pieces`` (start, end) token ranges (default: the whole window at once), and the logits of
those forwards are scored; ``after_forward(cache, tokens_read)`` sees the cache after each one.
Without a factory the model is called with ``use_cache=False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dynacomp.console import progress


def window_starts(num_tokens: int, context: int, stride: int) -> list[int]:
    """Start offsets of the full windows of ``context`` tokens, every ``stride`` tokens."""
    if context < 2 or not 1 <= stride <= context:
        raise ValueError(f"need context >= 2 and 1 <= stride <= context, got context={context}, stride={stride}")
    return list(range(0, num_tokens - context + 1, stride))


@torch.no_grad()
def perplexity(model: torch.nn.Module, token_ids: Tensor, context: int, stride: int | None = None,
               batch_size: int = 1, cache_factory: Callable[[], Any] | None = None,
               pieces: list[tuple[int, int]] | None = None, desc: str = "perplexity",
               after_forward: Callable[[Any, int], None] | None = None) -> dict[str, float]:
    """Perplexity of ``model`` on ``token_ids`` (N,), windows as in the module docstring.

    Returns ``{"perplexity", "nll" (mean per scored token, nats), "tokens" (scored), "windows",
    "window_nll" (summed per window, for paired intervals), "window_tokens"}``.
    """
    if pieces is not None and cache_factory is None:
        raise ValueError("reading a window in pieces needs a cache to carry the context between them")
    stride = stride or context
    starts = window_starts(token_ids.numel(), context, stride)
    if not starts:
        raise ValueError(f"{token_ids.numel()} tokens do not fill one window of {context}")
    device = next(model.parameters()).device
    window_nll_sums, window_tokens = [], []
    for first in progress(range(0, len(starts), batch_size), desc=desc, unit="batch"):
        batch_starts = starts[first:first + batch_size]
        ids = torch.stack([token_ids[s:s + context] for s in batch_starts]).to(device)      # (B, context)
        nll = window_nll(model, ids, cache_factory() if cache_factory else None, pieces or [(0, context)],
                         after_forward)
        for row, start in enumerate(batch_starts):
            keep = context - 1 if start == 0 else min(stride, context - 1)   # the last `keep` predictions
            window_nll_sums.append(float(nll[row, -keep:].sum()))
            window_tokens.append(keep)
    scored = sum(window_tokens)
    mean = sum(window_nll_sums) / scored
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": scored, "windows": len(starts),
            "window_nll": window_nll_sums, "window_tokens": window_tokens}


def window_nll(model: torch.nn.Module, ids: Tensor, cache, pieces: list[tuple[int, int]],
               after_forward: Callable[[Any, int], None] | None = None) -> Tensor:
    """Negative log-likelihood (B, T-1) of tokens 1..T-1 of ``ids`` (B, T), read in forwards over the
    (start, end) ``pieces`` through ``cache`` (None: one forward without a cache). Scored piece by
    piece, so the logits of a whole window are never held at once."""
    scored = []
    for start, end in pieces:
        logits = (model(ids[:, start:end], use_cache=False) if cache is None
                  else model(ids[:, start:end], cache=cache, use_cache=True)).logits
        if after_forward is not None:
            after_forward(cache, end)
        targets = ids[:, start + 1:end + 1]
        scored.append(F.cross_entropy(logits[:, :targets.shape[1]].float().transpose(1, 2), targets, reduction="none"))
    return torch.cat(scored, 1)
