"""Perplexity of a causal LM over a token stream, in fixed windows.

The stream is cut into windows of ``context`` tokens starting every ``stride`` tokens (only full
windows; the tail that fills none is left out, so two models compared on the same stream and
settings score exactly the same tokens). The first window scores every token but its first;
each later window scores only its last ``min(stride, context - 1)`` tokens, the rest being
context. With ``stride == context`` (the default) windows do not overlap and every token but
the first of each window is scored once.

``cache_factory`` makes the model run as it really generates: each batch of windows is
prefilled through a fresh cache from the factory (e.g. a ``DMCCache`` with hard decisions), and
the logits of that prefill are scored. Without it the model is called with ``use_cache=False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def window_starts(num_tokens: int, context: int, stride: int) -> list[int]:
    """Start offsets of the full windows of ``context`` tokens, every ``stride`` tokens."""
    if context < 2 or not 1 <= stride <= context:
        raise ValueError(f"need context >= 2 and 1 <= stride <= context, got context={context}, stride={stride}")
    return list(range(0, num_tokens - context + 1, stride))


@torch.no_grad()
def perplexity(model: torch.nn.Module, token_ids: Tensor, context: int, stride: int | None = None,
               batch_size: int = 1, cache_factory: Callable[[], Any] | None = None) -> dict[str, float]:
    """Perplexity of ``model`` on ``token_ids`` (N,), windows as in the module docstring.

    Returns ``{"perplexity", "nll" (mean per scored token, nats), "tokens" (scored), "windows"}``.
    """
    stride = stride or context
    starts = window_starts(token_ids.numel(), context, stride)
    if not starts:
        raise ValueError(f"{token_ids.numel()} tokens do not fill one window of {context}")
    device = next(model.parameters()).device
    total_nll, scored = 0.0, 0
    for first in range(0, len(starts), batch_size):
        batch_starts = starts[first:first + batch_size]
        ids = torch.stack([token_ids[s:s + context] for s in batch_starts]).to(device)      # (B, context)
        if cache_factory is None:
            logits = model(ids, use_cache=False).logits
        else:
            logits = model(ids, cache=cache_factory()).logits
        nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(),
                              reduction="none").view(len(batch_starts), context - 1)       # (B, context - 1)
        for row, start in enumerate(batch_starts):
            keep = context - 1 if start == 0 else min(stride, context - 1)   # the last `keep` predictions
            total_nll += float(nll[row, -keep:].sum())
            scored += keep
    mean = total_nll / scored
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": scored, "windows": len(starts)}
