"""DMC math as pure functions: forced decisions, the Gumbel-sigmoid relaxation and the windowed
partial accumulation (the channels decisions are read from: ``channels``).

Shapes: B batch, H key-value heads, G query heads per KV head, L tokens, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gumbel_sigmoid_logits(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """(logits + g1 - g2) / temperature with g1, g2 ~ Gumbel(0, 1), i.e. logistic noise."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    u = u.clamp(1e-6, 1 - 1e-6)
    noise = (torch.log(u) - torch.log1p(-u)).to(logits.dtype)
    return (logits + noise) / temperature


def forced_decisions(token_index: Tensor, ratio: float) -> Tensor:
    """The fixed pattern of ``force_cr``: merge (1.) unless the token opens a new group of ``ratio``.

    token_index: (..., L) index of each token within its sequence (0 = first real token). A token
    appends when floor(n / ratio) steps up, so every head keeps exactly one slot per ``ratio``
    tokens (fractional ratios alternate group sizes).
    """
    n = token_index.to(torch.float64)
    opens = torch.floor(n / ratio) != torch.floor((n - 1) / ratio)
    return (~opens).to(torch.float32)


def accumulate(x: Tensor, alpha: Tensor, omega: Tensor, window: int) -> Tensor:
    """Partial accumulation: every position's state of its (soft) merge group, windowed.

    x: (B, H, L, D); alpha, omega: (B, H, L). alpha_i is how much token i merges into the
    group before it (1: merge, 0: append); omega_i its importance. Returns (B, H, L, D):

        x~_i = sum_d c_d(i) omega_{i-d} x_{i-d} / sum_d c_d(i) omega_{i-d},   d = 0 .. window-1,
        c_d(i) = alpha_i alpha_{i-1} ... alpha_{i-d+1}.

    With hard decisions this is the omega-weighted mean of the last ``window`` tokens of the run
    ending at i: exactly the slot that the cache holds for that run after token i.
    """
    width = min(window, x.shape[-2])
    # Windows ending at each position i, oldest first: entry w is token j = i - width + 1 + w.
    weighted = F.pad(omega.unsqueeze(-1) * x, (0, 0, width - 1, 0)).unfold(-2, width, 1)   # (B, H, L, D, W)
    omegas = F.pad(omega, (width - 1, 0)).unfold(-1, width, 1)                              # (B, H, L, W)
    alphas = F.pad(alpha, (width - 1, 0)).unfold(-1, width, 1)
    # How much of token j reaches i: alpha_{j+1} ... alpha_i, a reversed cumulative product.
    reach = torch.cumprod(alphas[..., 1:].flip(-1), dim=-1).flip(-1)
    reach = torch.cat([reach, torch.ones_like(alphas[..., :1])], dim=-1)
    num = (weighted * reach.unsqueeze(-2)).sum(-1)
    den = (omegas * reach).sum(-1)
    return num / den.clamp_min(torch.finfo(den.dtype).tiny).unsqueeze(-1)


def extend_run(run_x: Tensor, run_omega: Tensor, x: Tensor, alpha: Tensor, omega: Tensor) -> Tensor:
    """``accumulate`` for one new token after an open run (decoding), in fp32.

    run_x: (B, H, W-1, D) the run's last tokens, run_omega: (B, H, W-1) their importances (0 where
    empty); x: (B, H, 1, D); alpha, omega: (B, H, 1). The run's tokens are one group, so each
    reaches the new token through its alpha alone: (alpha sum omega_j x_j + omega x) /
    (alpha sum omega_j + omega).
    """
    alpha, omega = alpha.float().unsqueeze(-1), omega.float().unsqueeze(-1)
    num = alpha * torch.einsum("bhw,bhwd->bhd", run_omega, run_x.float()).unsqueeze(2) + omega * x.float()
    den = alpha * run_omega.sum(-1, keepdim=True).unsqueeze(-1) + omega
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def log_keep_probability(logits_next: Tensor) -> Tensor:
    """log(1 - alpha_{i+1}) = logsigmoid(-z_{i+1}): the additive attention bias that fades key i
    for later queries as token i+1 merges into it."""
    return F.logsigmoid(-logits_next)

