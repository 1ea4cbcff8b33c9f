"""Bits per character with the paper's protocol, and the shortening factor.

The text is read in windows of ``window`` characters every ``stride``; the first window scores all
its predictions, every later one only its last ``stride`` (those not scored before), so each
character is predicted once, and after the first window with at least ``window - stride``
characters of context. A last window aligned to the end scores what remains: the paper's
protocol scores every character (``dynacomp.metrics.perplexity`` instead drops a tail that fills
no window, so that differently cached LMs score the same tokens). The shortening factor is the
scored characters divided by the boundaries among them (1 for the vanilla model; with no
boundary at all it is reported as the character count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dynacomp.config import field, require_positive
from dynacomp.console import progress
from dynacomp.dtp.model import HourglassLM
from dynacomp.metrics.bpc import bits_per_character, sum_nll


@dataclass
class EvalConfig:
    split: Literal["validation", "test"] = field("test", help="split scored")
    max_chars: int = field(0, help="score only the first N characters (0: all)")
    stride: int | None = field(None, help="window stride (default: the run's eval_stride)")
    batch_size: int = field(16, help="windows per forward pass")

    def __post_init__(self) -> None:
        require_positive(self, "batch_size", "stride")
        if self.max_chars < 0:
            raise ValueError(f"EvalConfig.max_chars (--max-chars) is >= 0 (0: all), got {self.max_chars}")


def eval_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, first scored offset)`` of each window over ``n`` predictions; together the scored
    parts cover ``0..n-1`` once."""
    if not 0 < stride <= window:
        raise ValueError(f"need 0 < stride <= window, got stride={stride}, window={window}")
    if n <= window:
        return [(0, 0)]
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)
    return [(starts[0], 0)] + [(s, prev + window - s) for prev, s in zip(starts, starts[1:])]


@torch.no_grad()
def evaluate(model: HourglassLM, ids: torch.Tensor, window: int, stride: int, batch_size: int = 16,
             max_chars: int = 0) -> dict[str, float]:
    """``ids (N,)``: the text; predicts ``ids[1:]``. ``max_chars``: only the first ones (0: all)."""
    if max_chars:
        ids = ids[:max_chars + 1]
    n = len(ids) - 1
    window = min(window, n)
    model.eval()
    windows = eval_windows(n, window, min(stride, window))
    device = next(model.parameters()).device
    nll, chars, groups = 0.0, 0, 0
    for i in progress(range(0, len(windows), batch_size), desc="eval", unit="batch"):
        chunk = windows[i:i + batch_size]
        index = torch.tensor([s for s, _ in chunk])[:, None] + torch.arange(window + 1)
        text = ids[index].to(device)
        out = model(text[:, :-1])
        for row, (_, first) in enumerate(chunk):
            nll += float(sum_nll(out.logits[row, first:], text[row, first + 1:]))
            chars += window - first
            groups += int(out.boundaries[row, first:].sum()) if out.boundaries is not None else window - first
    return {"bpc": bits_per_character(nll, chars), "shortening_factor": chars / max(groups, 1),
            "chars": chars, "groups": groups}
