"""DMC math as pure functions: decisions, importances, and the windowed partial accumulation.

Shapes: B batch, H key-value heads, G query heads per KV head, L tokens, D head dim.

Which channels are repurposed, and why the last one: DMC adds no parameters; it reads the
merge decision from one key channel and the importance from one query channel of every head,
and sets both channels to zero *before* RoPE so their values never reach the attention scores.
We use the last channel, as the official code does. Under the rotate-half RoPE of Llama, Qwen and
Mistral, channel D-1 pairs with channel D/2-1, the lowest rotary frequency (for SmolLM2,
theta=1e5, D=64: 1.4e-5 rad per token). Zeroing it pre-RoPE leaves the partner channel's
contribution q_p k_p cos(delta), which for that frequency is almost exactly q_p k_p: the head
loses the least positional information of any channel choice. It also makes a converted model
whose two channels were zeroed compute exactly what the unconverted zeroed model computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def decision_logits(keys: Tensor, bias: float) -> Tensor:
    """Merge logits a_t = k_t[-1] - bias from pre-RoPE keys (B, H, L, D) -> (B, H, L)."""
    return keys[..., -1] - bias


def importance(queries: Tensor, kv_heads: int, bias: float) -> Tensor:
    """Importance omega_t = sigmoid(mean over the query group of q_t[-1] + bias).

    queries: pre-RoPE (B, H*G, L, D) -> (B, H, L). Averaging the logits over the group lets one KV
    head's merge weight come from all query heads that read it (GQA).
    """
    b, hq, length, _ = queries.shape
    logits = queries[..., -1].view(b, kv_heads, hq // kv_heads, length).mean(2)
    return torch.sigmoid(logits + bias)


def without_decision_channel(x: Tensor) -> Tensor:
    """x (..., D) with its last channel set to zero (out of place, autograd-friendly)."""
    return torch.cat([x[..., :-1], torch.zeros_like(x[..., -1:])], dim=-1)


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

