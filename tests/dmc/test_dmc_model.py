import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from dynacomp.dmc import DMCConfig, convert, load, native, save, zero_decision_channels
from dynacomp.dmc.attention import apply_rope
from dynacomp.dmc.cache import DMCLayer, page_attention_bmm, page_attention_fused

from .tiny import half_merging_bias, tiny_model


def decode_step_by_step(model, ids, prefix: int):
    cache = model.new_cache()
    with torch.no_grad():
        logits = [model(ids[:, :prefix], cache=cache).logits]
        for t in range(prefix, ids.shape[1]):
            logits.append(model(ids[:, t:t + 1], cache=cache).logits)
    return torch.cat(logits, 1), cache


def naive_dmc_attention(attn, hidden, cos, sin, config: DMCConfig):
    """DMC by its definition: one token at a time, an explicit list of slots per (sequence, KV head)."""
    b, length, _ = hidden.shape
    d, hq, hk = attn.head_dim, attn.num_heads, attn.num_kv_heads
    g = hq // hk
    q = attn.q_proj(hidden).view(b, length, hq, d)
    k = attn.k_proj(hidden).view(b, length, hk, d)
    v = attn.v_proj(hidden).view(b, length, hk, d)
    out = torch.zeros(b, length, hq, d)
    def rope(x, bi, t):
        return apply_rope(x[None, None, None], cos[bi, t][None, None], sin[bi, t][None, None])[0, 0, 0]
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_page_attention_matches_the_batched_matmul_one(dtype):
    """The CPU kernel and the portable path agree, with partial and empty pages."""
    torch.manual_seed(0)
    queries, keys, values = torch.randn(6, 3, 16), torch.randn(6, 8, 16, dtype=dtype), torch.randn(6, 8, 16, dtype=dtype)
    valid = torch.ones(6, 8, dtype=torch.bool)
    valid[1, 5:] = False
    valid[4] = False
    fused_out, fused_lse = page_attention_fused(queries.to(dtype), keys, values, valid, 0.25)
    out, lse = page_attention_bmm(queries.to(dtype), keys, values, valid, 0.25)
    assert torch.equal(fused_lse[4], lse[4]) and fused_lse[4].isneginf().all()
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fused_lse[valid.any(1)], lse[valid.any(1)], **tolerance)
    torch.testing.assert_close(fused_out[valid.any(1)], out[valid.any(1)], **tolerance)


@pytest.mark.parametrize("head_dim", native.HEAD_SIZES)
def test_native_decode_kernel_matches_the_page_path(head_dim):
    """Ragged rows (empty, a partial page, several pages out of pool order) read alike by the
    native kernel and by the split-K PyTorch path."""
    torch.manual_seed(0)
    layer = DMCLayer(page_size=8, window=2)
    layer.lazy_initialization(torch.zeros(2, 3, 1, head_dim))
    counts = torch.tensor([0, 5, 8, 19, 40, 1])
    for row in torch.randperm(6).tolist():
        slots = torch.arange(int(counts[row]))
        layer.write(torch.full_like(slots, row), slots, torch.randn(len(slots), head_dim), torch.randn(len(slots), head_dim))
    queries = torch.randn(6, 3, head_dim)
    assert native.supports(layer.k_pool)
    kernel = native.paged_decode_attention(queries, layer.k_pool, layer.v_pool, layer.block_table, counts, 0.125)
    reference, _ = layer.attend_split_k(queries, counts, 0.125, with_lse=False)
    assert torch.equal(kernel[0], torch.zeros(3, head_dim))
    torch.testing.assert_close(kernel, reference, atol=1e-5, rtol=1e-5)


def test_decoding_through_the_native_kernel_equals_the_teacher_forced_pass():
    model = tiny_model(head_dim=64)
    ids = torch.randint(0, 97, (2, 40))
    convert(model, DMCConfig(decision_bias=half_merging_bias(model, ids), window=4, page_size=4))
    with torch.no_grad():
        teacher_forced = model(ids, use_cache=False).logits
    decoded, cache = decode_step_by_step(model, ids, prefix=9)
    assert native.supports(cache.layers[0].k_pool)
    assert (teacher_forced - decoded).abs().max() <= 1e-4
    assert cache.stats()["compression_ratio"] > 1.5


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
    assert cache.stats()["compression_ratio"] > 1.5


def test_append_only_reproduces_the_zeroed_base_model():
    base = tiny_model()
    zero_decision_channels(base)
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        expected = base(ids, use_cache=False).logits
    model = convert(copy.deepcopy(base), DMCConfig(force_cr=1))
    decoded, cache = decode_step_by_step(model, ids, prefix=10)
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=1e-5)
    assert cache.stats()["compression_ratio"] == 1.0


def test_stats_count_appends_and_pages():
    model = tiny_model()
    ids = torch.randint(0, 97, (3, 70))
    config = DMCConfig(decision_bias=half_merging_bias(model, ids, 0.6), window=12, page_size=8)
    convert(model, config)
    cache = model.new_cache()
    with torch.no_grad():
        model(ids, cache=cache)
    stats = cache.stats()
    appends = torch.stack([(a.last_alpha < 0.5).sum(-1) for a in model.dmc_attentions()])  # (layers, B, H)
    assert stats["slots"] == int(appends.sum())
    assert stats["tokens"] == 3 * 70
    rows = appends.numel()
    exact = stats["slots"] * stats["bytes_per_slot"]
    assert exact <= stats["bytes_allocated"] < exact + rows * config.page_size * stats["bytes_per_slot"]
    per_head = torch.tensor(stats["per_layer_head"], dtype=torch.float64)
    torch.testing.assert_close(per_head, (3 * 70 / appends.sum(1)).double())


def test_mixed_prompt_lengths_with_left_padding():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 30))
    convert(model, DMCConfig(decision_bias=half_merging_bias(model, ids), window=6))
    short = ids[1, 12:]
    batch = ids.clone()
    batch[1, :12] = 0
    mask = torch.ones_like(batch)
    mask[1, :12] = 0
    with torch.no_grad():
        together = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
        alone_long = model.generate(ids[:1], max_new_tokens=8, do_sample=False)
        alone_short = model.generate(short[None], max_new_tokens=8, do_sample=False)
    assert torch.equal(together[0, 30:], alone_long[0, 30:])
    assert torch.equal(together[1, 30:], alone_short[0, 18:])


def test_generate_sampling_and_stop_tokens():
    model = convert(tiny_model(), DMCConfig(force_cr=2))
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        sampled = model.generate(ids, max_new_tokens=12, do_sample=True, top_k=10, pad_token_id=0)
        greedy = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        stop = int(greedy[0, 12])
        stopped = model.generate(ids[:1], max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=0)
    assert sampled.shape == (2, 22)
    assert stopped.shape[1] == 13 and stopped[0, -1] == stop


def test_released_pages_are_reused():
    model = convert(tiny_model(), DMCConfig(force_cr=2, page_size=4))
    cache = model.new_cache()
    layer = cache.layers[0]
    with torch.no_grad():
        model(torch.randint(0, 97, (2, 40)), cache=cache)
        pool, used = layer.k_pool.shape[0], layer.pages_in_use()
        cache.release([0])
        assert layer.pages_in_use() == used // 2 and len(layer.free) == pool - used // 2
        model(torch.randint(0, 97, (2, 30)), cache=cache)   # sequence 1 grows into the freed pages
    assert layer.k_pool.shape[0] == pool
    assert cache.tokens.tolist() == [40, 70]
    assert int(layer.slots[:2].sum()) == 0


def test_generate_frees_the_pages_of_ended_sequences():
    model = convert(tiny_model(), DMCConfig(force_cr=2, page_size=2))
    ids = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        free_run = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
        stop = int(free_run[0, 8])          # the token sequence 0 emits third
        cache = model.new_cache()
        out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=stop, pad_token_id=0,
                             cache=cache)
    ended = [bool((row[6:] == stop).any()) for row in out]
    assert ended[0] and cache.finished.tolist() == ended
    assert int(cache.layers[0].slots[:2].sum()) == 0     # its rows hold nothing
    assert torch.equal(out[0, :9], free_run[0, :9])


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


def test_save_and_load_round_trip(tmp_path):
    model = convert(tiny_model(), DMCConfig(force_cr=3, window=7))
    ids = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
    save(model, tmp_path / "dmc")
    loaded, tokenizer = load(tmp_path / "dmc")
    assert tokenizer is None and loaded.dmc_config == model.dmc_config
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, expected)
    assert load(tmp_path / "dmc", force_cr=None)[0].dmc_config.force_cr is None
    with pytest.raises(ValueError, match="dynacomp_dmc"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "dmc")
    assert json.loads((tmp_path / "dmc" / "dmc_config.json").read_text())["base_model_type"] == "llama"


def test_bad_input_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel
    with pytest.raises(ValueError, match="llama"):
        convert(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2)))
    with pytest.raises(ValueError, match="sliding-window"):
        convert(tiny_model("mistral", sliding_window=16))
    model = convert(tiny_model(), DMCConfig(force_cr=2))
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(1, 300, dtype=torch.long))
    with pytest.raises(TypeError, match="DMCCache"):
        from transformers import DynamicCache
        model(torch.zeros(1, 3, dtype=torch.long), cache=DynamicCache(config=model.config))
    with pytest.raises(ValueError, match="window"):
        DMCConfig(window=0)


def test_bfloat16_model_decodes_like_its_teacher_forced_pass():
    model = tiny_model().to(torch.bfloat16)
    ids = torch.randint(0, 97, (2, 30))
    convert(model, DMCConfig(force_cr=3))
    with torch.no_grad():
        teacher_forced = model(ids, use_cache=False).logits.float()
    decoded, cache = decode_step_by_step(model, ids, prefix=11)
    assert decoded.dtype == torch.bfloat16 and cache.layers[0].k_pool.dtype == torch.bfloat16
    assert (decoded.float() - teacher_forced).abs().max() < 0.05 * teacher_forced.abs().max()
