"""Bits per character with the paper's protocol, and the shortening factor.

The text is read in windows of ``window`` characters every ``stride``; the first window scores all
its predictions, every later one only its last ``stride`` (those not scored before), so each
character is predicted once, and after the first window with at least ``window - stride``
characters of context. A last window aligned to the end scores what remains: the paper's
protocol scores every character (``dynacomp.metrics.perplexity`` instead drops a tail that fills
no window, so that differently cached LMs score the same tokens). The shortening factor is the
scored characters divided by the boundaries among them (1 for the vanilla model; with no
boundary at all it is reported as the character count).

The Gumbel source, evaluated, puts a boundary where its logit exceeds a threshold (0: the
probability rounded). ``calibrate_threshold`` finds the threshold that gives a wanted boundary
rate (the one the model trained at) on a text.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    calibrate: bool = field(False, help="gumbel runs: also score at the threshold whose boundary rate on the "
                            "validation split is the training one (metrics.jsonl, the last tenth of the steps)")
    calibrate_chars: int = field(0, help="validation characters the threshold is chosen on (0: all)")

    def __post_init__(self) -> None:
        require_positive(self, "batch_size", "stride")
        if self.max_chars < 0 or self.calibrate_chars < 0:
            raise ValueError(f"EvalConfig.max_chars and calibrate_chars (--max-chars, --calibrate-chars) are >= 0 "
                             f"(0: all), got {self.max_chars} and {self.calibrate_chars}")


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
def scored_parts(model: HourglassLM, ids: torch.Tensor, window: int, stride: int, batch_size: int = 16,
                 max_chars: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
    """The scored part of each window over ``ids (N,)``, predicting ``ids[1:]`` (with ``max_chars``:
    only the first ones): ``(logits (n, V), targets (n,), boundaries (n,) or None, boundary
    logits (n,) or None)``."""
    if max_chars:
        ids = ids[:max_chars + 1]
    n = len(ids) - 1
    window = min(window, n)
    model.eval()
    windows = eval_windows(n, window, min(stride, window))
    device = next(model.parameters()).device
    for i in progress(range(0, len(windows), batch_size), desc="eval", unit="batch"):
        chunk = windows[i:i + batch_size]
        index = torch.tensor([s for s, _ in chunk])[:, None] + torch.arange(window + 1)
        text = ids[index].to(device)
        out = model(text[:, :-1])
        for row, (_, first) in enumerate(chunk):
            yield (out.logits[row, first:], text[row, first + 1:],
                   None if out.boundaries is None else out.boundaries[row, first:],
                   None if out.boundary_logits is None else out.boundary_logits[row, first:])


def evaluate(model: HourglassLM, ids: torch.Tensor, window: int, stride: int, batch_size: int = 16,
             max_chars: int = 0) -> dict[str, float]:
    """``ids (N,)``: the text; predicts ``ids[1:]``. ``max_chars``: only the first ones (0: all)."""
    nll, chars, groups = 0.0, 0, 0
    for logits, targets, boundaries, _ in scored_parts(model, ids, window, stride, batch_size, max_chars):
        nll += float(sum_nll(logits, targets))
        chars += len(targets)
        groups += int(boundaries.sum()) if boundaries is not None else len(targets)
    return {"bpc": bits_per_character(nll, chars), "shortening_factor": chars / max(groups, 1),
            "chars": chars, "groups": groups}


def calibrate_threshold(model: HourglassLM, ids: torch.Tensor, window: int, stride: int, rate: float,
                        batch_size: int = 16, max_chars: int = 0) -> float:
    """The Gumbel threshold under which a share ``rate`` of the scored characters of ``ids`` close a
    group. The predictor's logits come before the threshold acts, so they do not depend on it: the
    threshold a bisection would converge to is a quantile of them, found here in one pass."""
    logits = torch.cat([part[3] for part in scored_parts(model, ids, window, stride, batch_size, max_chars)]).float()
    wanted = round(rate * len(logits))
    ordered = logits.sort(descending=True).values
    # halfway between the last logit in and the first one out (past either end: none in, all in)
    edges = torch.cat([ordered[:1] + 1, ordered, ordered[-1:] - 1])
    return float((edges[wanted] + edges[wanted + 1]) / 2)
