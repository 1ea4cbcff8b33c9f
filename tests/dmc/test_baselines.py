import math

import pytest
import torch

from dynacomp.dmc.policies.eviction import H2O, TOVA, BudgetCache, BudgetLayer, StreamingLLM, use_budget_attention
from dynacomp.dmc.policies.quantized import QuantizedKVCache, QuantizedLayer, dequantize, quantize

from .tiny import tiny_model


def step(layer: BudgetLayer, weights: list[list[float]]) -> None:
    """Feed one token to a (B=1, H=len(weights)) layer; ``weights[h]`` is the attention of that head's
    query over the slots (cached ones and the new token). Keys carry their token position in channel 0."""
    heads = len(weights)
    key = torch.full((1, heads, 1, 2), float(layer.seen))
    layer.update(key, key.clone())
    layer.observe(torch.tensor(weights)[None, :, None, None, :])        # (B, H, G=1, L=1, n)


def kept(layer: BudgetLayer) -> list[list[int]]:
    positions = layer.positions[0].tolist()
    assert layer.keys[0, :, :, 0].long().tolist() == positions          # keys moved with their slots
    return positions


def test_streaming_llm_keeps_sinks_and_the_newest():
    layer = BudgetLayer(StreamingLLM(sinks=1), cr=2)
    expected = {1: [0], 2: [0], 3: [0, 2], 4: [0, 3], 5: [0, 3, 4], 6: [0, 4, 5]}
    for t in range(1, 7):
        step(layer, [[1.0 / t] * (layer.keys.shape[2] + 1 if layer.is_initialized else 1)])
        assert kept(layer) == [expected[t]]


def test_h2o_keeps_heavy_hitters_and_a_recent_window():
    layer = BudgetLayer(H2O(recent=0.5), cr=2)
    step(layer, [[1.0]])                        # t=1, budget 1: mass {0: 1.0}
    step(layer, [[0.2, 0.8]])                   # t=2, budget 1, nothing protected: 0 (1.2) beats 1 (0.8)
    assert kept(layer) == [[0]]
    step(layer, [[0.5, 0.5]])                   # t=3, budget 2: {0: 1.7, 2: 0.5}
    step(layer, [[0.1, 0.6, 0.3]])              # t=4, budget 2, newest protected: 0 (1.8) and 3; 2 (1.1) goes
    assert kept(layer) == [[0, 3]]
    step(layer, [[0.2, 0.7, 0.1]])              # t=5, budget 3: {0: 2.0, 3: 1.0, 4: 0.1}
    step(layer, [[0.1, 0.1, 0.5, 0.3]])         # t=6, budget 3: 4 (0.6) goes although this query likes it most
    assert kept(layer) == [[0, 3, 5]]
    torch.testing.assert_close(layer.mass[0, 0], torch.tensor([2.1, 1.1, 0.3]))


def test_tova_follows_the_current_query_per_kv_head_averaging_its_query_heads():
    layer = BudgetLayer(TOVA(), cr=2)
    step(layer, [[1.0], [1.0]])
    step(layer, [[0.3, 0.7], [0.9, 0.1]])       # t=2, budget 1: head 0 keeps 1, head 1 keeps 0
    assert kept(layer) == [[1], [0]]
    step(layer, [[0.5, 0.5], [0.5, 0.5]])       # t=3, budget 2: nothing to evict
    key = torch.full((1, 2, 1, 2), 3.0)
    layer.update(key, key.clone())              # t=4, budget 2; two query heads per KV head
    weights = torch.tensor([[[0.5, 0.45, 0.05], [0.0, 0.15, 0.85]],     # mean 0.25, 0.30, 0.45: drop the first
                            [[0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]])       # drop one of the tied first two
    layer.observe(weights[None, :, :, None, :])
    assert kept(layer)[0] == [2, 3]
    assert len(kept(layer)[1]) == 2 and kept(layer)[1][-1] == 3


def test_missing_attention_weights_are_an_error():
    layer = BudgetLayer(TOVA(), cr=2)
    layer.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    with pytest.raises(RuntimeError, match="dynacomp_budget"):
        layer.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))


@pytest.mark.parametrize("policy", [StreamingLLM(sinks=2), H2O(), TOVA()], ids=["streaming_llm", "h2o", "tova"])
def test_budget_respected_at_every_step(policy):
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 40))
    cache = BudgetCache.for_model(model, policy, cr=3)
    with torch.no_grad(), use_budget_attention(model):
        model(ids[:, :5], cache=cache)
        for t in range(5, ids.shape[1]):
            assert [layer.keys.shape[2] for layer in cache.layers] == [math.ceil(t / 3)] * 2
            model(ids[:, t:t + 1], cache=cache)
    assert cache.get_seq_length() == 40
    assert cache.stats().compression_ratio == pytest.approx(40 / 14)
    if isinstance(policy, TOVA):                    # evicts per (sequence, KV head)
        positions = cache.layers[1].positions
        assert not all(torch.equal(positions[0, 0], p) for p in positions.flatten(0, 1))


def test_budget_attention_without_eviction_is_the_models_attention():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        expected = model(ids).logits
        with use_budget_attention(model):
            full = model(ids).logits
            cache = BudgetCache.for_model(model, TOVA(), cr=1)
            stepwise = torch.cat([model(ids[:, t:t + 1], cache=cache).logits for t in range(20)], 1)
    assert model.config._attn_implementation != "dynacomp_budget"
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stepwise, expected, atol=1e-5, rtol=1e-5)


# -- quantised cache ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_round_trip(bits):
    x = torch.randn(3, 5, 16)
    q = quantize(x, bits, dim=-1)
    assert q.codes.shape == (3, 5, 16 * bits // 8) and q.scale.shape == (3, 5, 1)
    assert (dequantize(q) - x).abs().le(q.scale / 2 + 1e-6).all()
    levels = torch.arange(2 ** bits, dtype=torch.float32)[torch.randperm(2 ** bits)] * 0.5 - 1
    torch.testing.assert_close(dequantize(quantize(levels, bits, dim=0)), levels)


def test_keys_per_channel_values_per_token():
    layer = QuantizedLayer(bits=8, group=4, residual=4)
    keys = torch.randn(1, 1, 4, 8)
    keys[..., 3] *= 100                                           # an outlier channel
    layer.update(keys, keys.clone())
    assert layer.quantized_keys.scale.shape == (1, 1, 1, 1, 8)     # per channel over 4 tokens
    assert layer.quantized_values.scale.shape == (1, 1, 4, 2, 1)   # per token, groups of 4 channels
    error = (layer._old_keys() - keys).abs()
    assert error[..., [0, 1, 2, 4, 5, 6, 7]].max() < 0.02          # the outlier channel costs the others nothing


def test_quantized_cache_memory_by_hand():
    layer = QuantizedLayer(bits=4, group=4, residual=4)
    keys = torch.randn(1, 1, 8, 8)
    out_k, _ = layer.update(keys, keys.clone())
    torch.testing.assert_close(out_k, keys)                       # this step still sees itself in full precision
    assert layer.quantized_tokens == 8 and layer.keys.shape[2] == 0
    # codes 2 x 64 x 4 bits; scales and zeros: keys 2 groups x 8 channels, values 8 tokens x 2 groups, x2, 16 bits
    assert layer.bits_stored() == (2 * 64 * 4 + (32 + 32) * 16, 128 * 16)
    layer.update(torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8))
    assert layer.bits_stored() == (1536 + 16 * 16, 144 * 16)
    assert layer.get_seq_length() == 9


def test_quantized_cache_with_nothing_quantised_is_the_dense_cache():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        expected = model(ids).logits
        cache = QuantizedKVCache.for_model(model, bits=4, group=4, residual=32)
        stepwise = torch.cat([model(ids[:, t:t + 1], cache=cache).logits for t in range(20)], 1)
        coarse = QuantizedKVCache.for_model(model, bits=4, group=4, residual=4)
        quantised = torch.cat([model(ids[:, t:t + 1], cache=coarse).logits for t in range(20)], 1)
    torch.testing.assert_close(stepwise, expected, atol=1e-5, rtol=1e-5)
    assert cache.stats().compression_ratio == 1.0
    assert not torch.allclose(quantised, expected, atol=1e-3)
    assert (quantised - expected).abs().max() < 0.5
    assert coarse.stats().compression_ratio == pytest.approx(16 / (4 + 2 * 16 / 4))   # 4-bit codes + scale, zero
