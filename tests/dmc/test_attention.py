"""DMC attention: its definition, teacher forcing = prefill + decoding, every model family."""

import copy

import pytest
import torch

from dynacomp.dmc import DMCConfig, convert, zero_decision_channels

from .tiny import decode_step_by_step, half_evicting_bias, half_merging_bias, per_token_view, tiny_model


def naive_dmc_attention(attn, hidden, cos, sin, config: DMCConfig):
    """DMC by its definition: one token at a time, an explicit list of slots per (sequence, KV head)."""
    b, length, _ = hidden.shape
    d, hq, hk = attn.head_dim, attn.num_heads, attn.num_kv_heads
    g = hq // hk
    q, k, v, rope = per_token_view(attn, hidden, cos, sin)
    out = torch.zeros(b, length, hq, d)
    for bi in range(b):
        for j in range(hk):
            slots, run = [], []
            for t in range(length):
                merge = t > 0 and (k[bi, t, j, -1] - config.decision_bias) > 0
                omega = torch.sigmoid(q[bi, t, j * g:(j + 1) * g, -1].mean() + config.decision_bias)
                key = k[bi, t, j].clone()
                key[-1] = 0
                if merge:
                    run = (run + [(key, v[bi, t, j], omega)])[-config.window:]
                    slots.pop()
                else:
                    run = [(key, v[bi, t, j], omega)]
                total = sum(w for _, _, w in run)
                merged_k = sum(w * kk for kk, _, w in run) / total
                merged_v = sum(w * vv for _, vv, w in run) / total
                slots.append((rope(merged_k, bi, t), merged_v))
                keys = torch.stack([s[0] for s in slots])
                values = torch.stack([s[1] for s in slots])
                for h in range(j * g, (j + 1) * g):
                    query = q[bi, t, h].clone()
                    query[-1] = 0
                    weights = torch.softmax(keys @ rope(query, bi, t) * attn.scaling, dim=0)
                    out[bi, t, h] = weights @ values
    return attn.o_proj(out.reshape(b, length, -1))


def test_attention_matches_its_definition():
    model = tiny_model(num_hidden_layers=1)
    ids = torch.randint(0, 97, (2, 24))
    hidden = model.model.embed_tokens(ids).detach()
    attn = model.model.layers[0].self_attn
    config = DMCConfig(decision_bias=float(attn.k_proj(hidden)[..., 15::16].median().detach()), window=5)
    convert(model, config)
    attn = model.model.layers[0].self_attn
    cos, sin = model.model.rotary_emb(hidden, torch.arange(24)[None].expand(2, -1))
    with torch.no_grad():
        ours, _ = attn(hidden, (cos, sin))
        expected = naive_dmc_attention(attn, hidden, cos, sin, config)
    assert 0.3 < attn.last_alpha.mean() < 0.7
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
def test_teacher_forced_equals_prefill_then_decode(model_type):
    model = tiny_model(model_type)
    ids = torch.randint(0, 97, (2, 48))
    convert(model, DMCConfig(decision_bias=half_merging_bias(model, ids), window=6, page_size=4))
    with torch.no_grad():
        teacher_forced = model(ids, use_cache=False).logits
    merged = torch.stack([a.last_alpha.mean() for a in model.dmc_attentions()]).mean()
    assert 0.3 < merged < 0.7
    decoded, cache = decode_step_by_step(model, ids, prefix=19)
    assert (teacher_forced - decoded).abs().max() <= 1e-4
    assert cache.stats().compression_ratio > 1.5


def test_append_only_reproduces_the_zeroed_base_model():
    base = tiny_model()
    zero_decision_channels(base)
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        expected = base(ids, use_cache=False).logits
    model = convert(copy.deepcopy(base), DMCConfig(force_cr=1))
    decoded, cache = decode_step_by_step(model, ids, prefix=10)
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=1e-5)
    assert cache.stats().compression_ratio == 1.0


def test_training_mode_gives_gradients_to_the_decision_channels():
    model = convert(tiny_model().train(), DMCConfig(decision_bias=0.0, query_chunk=16))
    ids = torch.randint(0, 97, (2, 40))
    out = model(ids, labels=ids)
    alpha = torch.stack([a.last_alpha.mean() for a in model.dmc_attentions()]).mean()
    (out.loss + alpha).backward()
    grad = model.model.layers[0].self_attn.k_proj.weight.grad
    head_dim = model.config.head_dim
    assert torch.isfinite(out.loss) and grad[head_dim - 1::head_dim].abs().sum() > 0
    assert 0.05 < alpha.item() < 0.95  # soft, noisy decisions


def test_bfloat16_model_decodes_like_its_teacher_forced_pass():
    model = tiny_model().to(torch.bfloat16)
    ids = torch.randint(0, 97, (2, 30))
    convert(model, DMCConfig(force_cr=3))
    with torch.no_grad():
        teacher_forced = model(ids, use_cache=False).logits.float()
    decoded, cache = decode_step_by_step(model, ids, prefix=11)
    assert decoded.dtype == torch.bfloat16 and cache.layers[0]._k_pool.dtype == torch.bfloat16
    assert (decoded.float() - teacher_forced).abs().max() < 0.05 * teacher_forced.abs().max()


@pytest.mark.parametrize("sinks", [0, 9])
@pytest.mark.parametrize("policy", ["dmc", "dms"])
def test_chunked_prefill_continuing_a_cache_equals_teacher_forcing(policy, sinks):
    """Chunks of 7 through a cache, merge or eviction window 4, query blocks of 5 (none aligned);
    with sinks, the first 9 tokens (more than a chunk) are never merged into or evicted."""
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 45))
    if policy == "dmc":
        config = DMCConfig(decision_bias=half_merging_bias(model, ids), window=4, query_chunk=5, page_size=4,
                           sinks=sinks)
    else:
        config = DMCConfig(policy="dms", decision_bias=half_evicting_bias(model, ids), eviction_window=4,
                           query_chunk=5, page_size=4, sinks=sinks)
    convert(model, config)
    with torch.no_grad():
        teacher_forced = model(ids, use_cache=False).logits
        alphas = torch.stack([a.last_alpha for a in model.dmc_attentions()])          # (layers, B, H, L)
        decided = alphas.mean()
        # DMC's alpha_t merges token t into t-1's slot; DMS's alpha_j evicts token j
        assert not alphas[..., :sinks + (policy == "dmc")].any()
        cache = model.new_cache()
        chunked = torch.cat([model(ids[:, s:s + 7], cache=cache).logits for s in range(0, 45, 7)], 1)
    assert 0.3 < decided < 0.7
    assert (teacher_forced - chunked).abs().max() <= 1e-4
