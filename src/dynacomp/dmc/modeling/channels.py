"""Every piece of decision-channel surgery in one place: which channels DMC reads, how they are
read, and how their weights are zeroed or scaled.

DMC adds no parameters: it reads the merge decision from one key channel and the importance from
one query channel of every head, and sets both channels to zero *before* RoPE so their values
never reach the attention scores. We use the last channel, as the official code does. Under the
rotate-half RoPE of Llama, Qwen and Mistral, channel D-1 pairs with channel D/2-1, the lowest
rotary frequency (for SmolLM2, theta=1e5, D=64: 1.4e-5 rad per token). Zeroing it pre-RoPE leaves
the partner channel's contribution q_p k_p cos(delta), which for that frequency is almost exactly
q_p k_p: the head loses the least positional information of any channel choice. It also makes a
converted model whose two channels were zeroed compute exactly what the unconverted zeroed model
computes.

DMS (``policy="dms"``) reads one eviction logit per KV head from the last channel of the *first*
query head of its group, as the public DMS code does, and zeroes only that channel: the other heads
keep all their channels, so the model loses less than under DMC. With ``eviction_probe`` it reads
them from an added linear probe instead and no channel is touched; the functions below then zero,
scale and train the probe's weights.

Shapes: B batch, H KV heads, G query heads per KV head, L tokens, D head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def head_dim(config) -> int:
    """The head dimension of a transformers config (explicit, or hidden size over heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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


def eviction_logits(queries: Tensor, kv_heads: int, bias: float) -> Tensor:
    """DMS's logits q_t[first head of the group, -1] - bias from pre-RoPE queries (B, H*G, L, D) -> (B, H, L)."""
    b, hq, length, d = queries.shape
    return queries.view(b, kv_heads, hq // kv_heads, length, d)[:, :, 0, :, -1] - bias


def without_eviction_channel(queries: Tensor, kv_heads: int) -> Tensor:
    """Queries (B, H*G, L, D) with the channel DMS reads set to zero (out of place)."""
    b, hq, length, d = queries.shape
    grouped = queries.view(b, kv_heads, hq // kv_heads, length, d)
    first = without_decision_channel(grouped[:, :, :1])
    return torch.cat([first, grouped[:, :, 1:]], dim=2).view_as(queries)


def eviction_rows(config) -> list[int]:
    """The q projection's output rows DMS reads: the last channel of the first query head of each group."""
    d, group = head_dim(config), config.num_attention_heads // config.num_key_value_heads
    return [kv * group * d + d - 1 for kv in range(config.num_key_value_heads)]


def decision_rows(config, policy: str) -> dict[str, list[int]]:
    """Output rows of the q / k projections that hold the policy's decision channels: DMC's last
    channel of every query and KV head, DMS's eviction rows."""
    if policy == "dms":
        return {"q_proj": eviction_rows(config)}
    d = head_dim(config)
    return {"q_proj": list(range(d - 1, config.num_attention_heads * d, d)),
            "k_proj": list(range(d - 1, config.num_key_value_heads * d, d))}


def scale_decision_channel(heads_output: Tensor, dim: int, scale: float) -> Tensor:
    """What produces pre-RoPE q / k, (B, L, heads * D) or (B, L, heads, D), with the last channel
    of every head times ``scale`` (the retrofit's forward hook)."""
    heads = heads_output.unflatten(-1, (-1, dim))
    return torch.cat([heads[..., :-1], heads[..., -1:] * scale], dim=-1).flatten(-2)


def source_modules(attention: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules whose outputs are the pre-RoPE q and k: the per-head norms where the model has
    them (Qwen3), else the projections."""
    return (getattr(attention, "q_norm", None) or attention.q_proj,
            getattr(attention, "k_norm", None) or attention.k_proj)


def _weights(modules: tuple[nn.Module | None, ...], dim: int):
    """(tensor, index) of the weights behind the repurposed channel in each module given."""
    for module in modules:
        if isinstance(module, nn.Linear):
            yield from ((t, slice(dim - 1, None, dim)) for t in (module.weight, module.bias) if t is not None)
        elif module is not None:
            yield module.weight, -1


def eviction_probes(model: nn.Module) -> list[nn.Linear]:
    """The eviction probes of a DMS model converted with ``eviction_probe`` (else none)."""
    return [layer.self_attn.eviction_probe for layer in model.model.layers
            if hasattr(layer.self_attn, "eviction_probe")]


@torch.no_grad()
def scale_eviction_rows(model: nn.Module, scale: float) -> None:
    """Multiply the q projection rows (and biases) DMS reads, or its probes, by ``scale`` in every layer."""
    for probe in eviction_probes(model):
        probe.weight *= scale
    if eviction_probes(model):
        return
    rows = eviction_rows(model.config)
    for layer in model.model.layers:
        for weight in (layer.self_attn.q_proj.weight, layer.self_attn.q_proj.bias):
            if weight is not None:
                weight[rows] *= scale


@torch.no_grad()
def scale_weights(model: nn.Module, scale: float) -> None:
    """Multiply what produces the repurposed channels (``source_modules``) by ``scale`` in every
    layer: the rows of the q/k projections, or the last weight of a per-head norm."""
    d = head_dim(model.config)
    for layer in model.model.layers:
        for weight, index in _weights(source_modules(layer.self_attn), d):
            weight[index] *= scale


@torch.no_grad()
def zero(model: nn.Module, policy: str = "dmc") -> None:
    """Zero the repurposed channels, projection rows and per-head norm weights alike (the end of the
    official zero-out stage), so decisions start at alpha = sigmoid(-bias) and the model computes
    what it did with those channels zeroed. DMS: only the q projection rows it reads."""
    if policy == "dms":
        scale_eviction_rows(model, 0.0)
        return
    d = head_dim(model.config)
    for layer in model.model.layers:
        attn = layer.self_attn
        modules = (attn.q_proj, attn.k_proj, getattr(attn, "q_norm", None), getattr(attn, "k_norm", None))
        for weight, index in _weights(modules, d):
            weight[index] = 0


def fold_scale(model: nn.Module, scale: float, policy: str = "dmc") -> None:
    """Multiply the weights behind the policy's decision channels by ``scale`` (what
    ``add_scaling_hooks`` does to their outputs while training)."""
    (scale_eviction_rows if policy == "dms" else scale_weights)(model, scale)


def add_scaling_hooks(model: nn.Module, policy: str, scale_of) -> None:
    """Forward hooks multiplying the policy's decision channels by ``scale_of()`` as they are
    computed: a larger learning rate for those rows alone, folded into the weights at the end
    (``fold_scale``)."""
    d = head_dim(model.config)
    for probe in eviction_probes(model):
        probe.register_forward_hook(lambda module, inputs, output: output * scale_of())
    if eviction_probes(model):
        return
    if policy == "dms":
        rows = eviction_rows(model.config)

        def scale_rows(module, inputs, output: Tensor) -> Tensor:
            factor = torch.ones(output.shape[-1], dtype=output.dtype, device=output.device)
            factor[rows] = scale_of()
            return output * factor

        for layer in model.model.layers:
            layer.self_attn.q_proj.register_forward_hook(scale_rows)
        return
    for layer in model.model.layers:
        for module in source_modules(layer.self_attn):
            module.register_forward_hook(lambda module, inputs, output: scale_decision_channel(output, d, scale_of()))


def train_decision_rows_only(model: nn.Module, policy: str) -> list[Tensor]:
    """Freeze everything but the weights the policy reads its decisions from, and mask their
    gradients to those rows: the model itself stays the base model (with the read channels
    zeroed), only where it compresses is learned. Returns the trained weights (no weight decay:
    it would shrink the frozen rows too)."""
    for param in model.parameters():
        param.requires_grad_(False)
    if eviction_probes(model):
        return [probe.weight.requires_grad_(True) for probe in eviction_probes(model)]
    trained = []
    for layer in model.model.layers:
        for name, rows in decision_rows(model.config, policy).items():
            weight = getattr(layer.self_attn, name).weight
            mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype)
            mask[rows] = 1
            weight.requires_grad_(True)
            weight.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))
            trained.append(weight)
    return trained
