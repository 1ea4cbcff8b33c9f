"""Learning-rate schedule as a pure function of the step (or of the share of a budget spent)."""

from __future__ import annotations

import math
from typing import Any


def decay_progress(done: float, done_at_warmup: float, total: float) -> float:
    """Share of the decay after warm-up that is done, counted in steps or in a budget's units."""
    return min(1.0, (done - done_at_warmup) / max(1, total - done_at_warmup))


def lr_at(step: int, config: Any, progress: float | None = None) -> float:
    """Multiplier of ``config.lr`` for optimizer step ``step`` (0-based, the step about to be taken).

    Linear warm-up over ``warmup_steps`` (step 0 gets ``1 / warmup_steps``, never 0), then
    ``schedule``: ``cosine`` from 1 down to ``min_lr_ratio`` at ``steps``; ``linear`` the same on a
    straight line; ``constant`` stays at 1. Past ``steps`` it stays at the final value.
    ``progress`` (0 to 1) replaces ``decay_progress(step, warmup_steps, steps)`` where a budget,
    not ``steps``, sets the run's length.
    """
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    if progress is None:
        progress = decay_progress(step, config.warmup_steps, config.steps)
    if config.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif config.schedule == "linear":
        decay = 1.0 - progress
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}; choose cosine, constant or linear")
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * decay
