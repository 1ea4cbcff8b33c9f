"""Boundary decisions: hard 0/1 per position from a predictor's logits, and losses that shape them.

A boundary tensor ``b`` has shape ``(B, T)`` with ``b[:, t] = 1`` when position ``t`` closes a
segment (it is the segment's last element). Pure functions, no system logic:

- ``gumbel_sigmoid_boundaries``: a Gumbel-sigmoid (relaxed Bernoulli) sample, thresholded, with a
  straight-through gradient; deterministic (``logits > 0``) when not sampling.
- ``binomial_rate_loss``: negative log-likelihood of the boundary count under Binomial(T, prior),
  which pulls the boundary rate towards ``prior`` (Nawrot et al. 2023, eq. 7).
- ``entropy_spikes``: 1 where a value is larger than each of its ``k`` predecessors (eq. 5-6).
"""

from __future__ import annotations

import math

import torch


def gumbel_sigmoid_boundaries(logits: torch.Tensor, temperature: float, sample: bool,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """Hard boundaries ``(B, T)`` from predictor logits ``(B, T)``.

    ``sample=True``: ``soft = sigmoid((logits + logistic noise) / temperature)``, ``hard = soft > 0.5``,
    with the gradient of ``soft`` (straight-through); the value is exactly 0 or 1.
    ``sample=False`` (evaluation): ``logits > 0``, i.e. the probability rounded; no noise.
    """
    if not sample:
        return (logits > 0).to(logits.dtype)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    u = u.clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    return _StraightThrough.apply(soft)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``soft > 0.5`` as 0/1; backward: the gradient passes to ``soft`` unchanged."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor) -> torch.Tensor:
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def binomial_rate_loss(boundaries: torch.Tensor, prior: float) -> torch.Tensor:
    """``-log Binomial(T, prior).pmf(sum_t b_t) / T``, averaged over the batch; ``boundaries (B, T)``.

    Differentiable in the count (through ``lgamma``), so straight-through boundaries get a gradient.
    """
    if not 0 < prior < 1:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    n = boundaries.shape[-1]
    k = boundaries.float().sum(-1)
    log_pmf = (math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
               + k * math.log(prior) + (n - k) * math.log1p(-prior))
    return (-log_pmf / n).mean()


def entropy_spikes(values: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, T)`` 0/1: 1 where ``values[:, t] > values[:, t - i]`` for every ``i = 1..k`` that exists
    (so position 0 is always 1). ``values (B, T)``, e.g. next-token entropies."""
    spikes = torch.ones_like(values, dtype=torch.bool)
    for i in range(1, k + 1):
        spikes[:, i:] &= values[:, i:] > values[:, :-i]
    return spikes.to(values.dtype)
