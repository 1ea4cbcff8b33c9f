"""Intervals for claims that one method beats another: a paired bootstrap over evaluation windows
for perplexity ratios, and Wilson's interval for accuracies."""

from __future__ import annotations

import math

import torch


def paired_perplexity_ratio(nll_a: list[float], nll_b: list[float], tokens: list[int], samples: int = 2000,
                            seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Perplexity of A over perplexity of B on the same windows, with a paired bootstrap interval.

    nll_a, nll_b: summed negative log-likelihood (nats) of each window under A and B; tokens: the
    tokens each window scores. Windows are resampled with replacement, the same ones for A and B,
    so the interval reflects how the difference varies over text, not the text's own difficulty.
    """
    a, b, n = (torch.tensor(x, dtype=torch.float64) for x in (nll_a, nll_b, tokens))
    if not (a.shape == b.shape == n.shape) or a.numel() < 2:
        raise ValueError("need the same two or more windows for both methods")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, a.numel(), (samples, a.numel()), generator=generator)
    log_ratios = ((a[picks] - b[picks]).sum(1) / n[picks].sum(1)).sort().values
    tail = (1 - level) / 2
    low, high = log_ratios[int(tail * samples)], log_ratios[min(samples - 1, int((1 - tail) * samples))]
    point = float((a.sum() - b.sum()) / n.sum())
    return {"ratio": math.exp(point), "low": math.exp(float(low)), "high": math.exp(float(high)), "level": level}


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's score interval (95 % by default) for a proportion."""
    if trials < 1:
        raise ValueError("no trials")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
