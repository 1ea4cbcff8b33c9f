from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig


def tiny_config(model_type: str = "llama", **overrides):
    """A small random model of the given family with grouped-query attention (4 query, 2 KV heads)."""
    from transformers import AutoConfig
    values = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    if model_type == "llama":
        return LlamaConfig(**{**values, **overrides})
    return AutoConfig.for_model(model_type, **{**values, **overrides})


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=torch.float32).eval()


def save_tiny_model(root: Path) -> tuple[Path, Path]:
    """A tiny random Llama with the SmolLM2 tokenizer saved in ``root / "model"``, and a text file
    to train on; returns both paths."""
    from transformers import AutoTokenizer

    from dynacomp.data.text import load_split
    from dynacomp.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    model = tiny_model(vocab_size=len(tokenizer), tie_word_embeddings=True)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "text.txt").write_text(load_split("english", "validation")[:40_000])
    return root / "model", root / "text.txt"


def half_merging_bias(model, ids, target: float = 0.5) -> float:
    """The decision bias at which about ``target`` of the decisions merge on ``ids``."""
    captured = []
    handles = [layer.self_attn.k_proj.register_forward_hook(lambda m, i, o: captured.append(o))
               for layer in model.model.layers]
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in handles:
        h.remove()
    head_dim = model.config.head_dim
    channel = torch.cat([c[..., head_dim - 1::head_dim].flatten() for c in captured])
    return float(channel.quantile(1 - target))




def decode_step_by_step(model, ids, prefix: int, dtype: torch.dtype | None = None):
    """Logits of a prefill of ``prefix`` tokens, then one token per forward, and the cache (pages
    in ``dtype``, default the model's)."""
    cache = model.new_cache(dtype)
    with torch.no_grad():
        logits = [model(ids[:, :prefix], cache=cache).logits]
        for t in range(prefix, ids.shape[1]):
            logits.append(model(ids[:, t:t + 1], cache=cache).logits)
    return torch.cat(logits, 1), cache


def half_evicting_bias(model, ids, target: float = 0.5) -> float:
    """The DMS decision bias at which about ``target`` of the tokens are marked for eviction on ``ids``."""
    from dynacomp.dmc.modeling.channels import eviction_rows

    rows = eviction_rows(model.config)
    captured = []
    handles = [layer.self_attn.q_proj.register_forward_hook(lambda m, i, o: captured.append(o[..., rows]))
               for layer in model.model.layers]
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in handles:
        h.remove()
    return float(torch.cat([c.flatten() for c in captured]).quantile(1 - target))


def per_token_view(attn, hidden, cos, sin):
    """What the per-token references read: q (B, L, Hq, D), k and v (B, L, H, D) straight from the
    projections, and rope(x, b, t) rotating one head vector at position t of sequence b."""
    from dynacomp.dmc.modeling.attention import apply_rope

    b, length, _ = hidden.shape
    d = attn.head_dim
    q = attn.q_proj(hidden).view(b, length, attn.num_heads, d)
    k = attn.k_proj(hidden).view(b, length, attn.num_kv_heads, d)
    v = attn.v_proj(hidden).view(b, length, attn.num_kv_heads, d)

    def rope(x, bi, t):
        return apply_rope(x[None, None, None], cos[bi, t][None, None], sin[bi, t][None, None])[0, 0, 0]
    return q, k, v, rope
