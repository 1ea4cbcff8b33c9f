"""k-means in torch: nearest-centre assignment, k-means++ seeding and Lloyd iterations.

A codebook is re-estimated from a few tens of thousands of vectors; on one device this takes well
under a second, so there is no need to leave torch. Both functions can keep some centres fixed
(live codes) and place only the others (dead codes).
"""

from __future__ import annotations

import torch


def assign(x: torch.Tensor, centres: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of each row: ``(index (N,), squared distance (N,))`` for ``x (N, D)``,
    ``centres (K, D)``; computed in chunks of rows so ``N x K`` never needs to fit at once."""
    c_sq = (centres * centres).sum(1)
    indices, dists = [], []
    for part in x.split(chunk):
        d = c_sq - 2 * part @ centres.T          # ||x - c||^2 - ||x||^2
        dist, index = d.min(1)
        indices.append(index)
        dists.append((dist + (part * part).sum(1)).clamp_min(0))
    return torch.cat(indices), torch.cat(dists)


def kmeans_plus_plus(x: torch.Tensor, k: int, fixed: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` new centres ``(k, D)`` drawn from the rows of ``x (N, D)`` by k-means++: each with
    probability proportional to its squared distance to the nearest centre chosen so far, the
    ``fixed (M, D)`` centres counting as chosen (so new ones go where the fixed ones are not)."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means++ needs at least one vector")
    x_sq = (x * x).sum(1)
    if fixed is not None and len(fixed):
        nearest = assign(x, fixed)[1]
    else:
        nearest = torch.full((n,), float("inf"), device=x.device)
    chosen = []
    for _ in range(k):
        total = nearest.sum()
        if torch.isinf(total) or total <= 0:     # nothing chosen yet, or every point already a centre
            i = torch.randint(n, (1,), generator=generator, device=x.device)
        else:
            i = torch.multinomial(nearest / total, 1, generator=generator)
        centre = x[i]
        chosen.append(centre)
        nearest = torch.minimum(nearest, (x_sq - 2 * x @ centre[0] + x_sq[i]).clamp_min(0))
    return torch.cat(chosen) if chosen else x.new_zeros(0, x.shape[1])


def kmeans(x: torch.Tensor, centres: torch.Tensor, iters: int, frozen: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm from ``centres (K, D)`` on ``x (N, D)``: ``(centres, counts (K,))``.

    Centres where ``frozen (K,)`` is True take part in the assignment but do not move. An empty
    cluster takes the point farthest from its centre (as scikit-learn does), so none is lost.
    Stops early once fewer than 0.1% of the points change cluster in an iteration.
    """
    centres = centres.clone()
    k = centres.shape[0]
    movable = torch.ones(k, dtype=torch.bool, device=x.device) if frozen is None else ~frozen
    previous = None
    for _ in range(iters):
        index, dist = assign(x, centres)
        counts = torch.bincount(index, minlength=k)
        if previous is not None and (index != previous).sum() * 1000 < len(index):
            break
        previous = index
        sums = torch.zeros_like(centres).index_add_(0, index, x)
        update = movable & (counts > 0)
        centres[update] = sums[update] / counts[update, None].to(x.dtype)
        empty = (movable & (counts == 0)).nonzero().squeeze(1)
        if len(empty):
            far = dist.topk(min(len(empty), len(dist))).indices
            centres[empty[:len(far)]] = x[far]
    return centres, torch.bincount(assign(x, centres)[0], minlength=k)
