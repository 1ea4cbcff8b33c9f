"""The DMC cache's API: stats, pages freed and reused, sequences added, and nobody else writing it."""

import ast
import inspect

import pytest
import torch

from dynacomp.dmc import CacheStats, DMCConfig, convert
from dynacomp.dmc.modeling import attention
from dynacomp.dmc.policies import POLICIES, PolicyOptions

from .tiny import decode_step_by_step, half_merging_bias, tiny_model


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
    assert stats.slots == int(appends.sum()) and torch.equal(cache.slots(), appends)
    assert stats.tokens == 3 * 70
    slot_bytes = 2 * model.config.head_dim * 4
    exact = stats.slots * slot_bytes
    assert exact <= stats.allocated_bytes == cache.bytes_in_use() < exact + appends.numel() * config.page_size * slot_bytes
    open_runs = appends.numel() * (config.window - 1) * (2 * model.config.head_dim * 4 + 4)
    assert stats.bytes == exact + open_runs and stats.dense_bytes == 3 * 70 * appends.shape[0] * appends.shape[2] * slot_bytes
    per_head = torch.tensor(stats.per_layer_head, dtype=torch.float64)
    torch.testing.assert_close(per_head, (3 * 70 / appends.sum(1)).double())


def test_freed_pages_are_reused():
    model = convert(tiny_model(), DMCConfig(force_cr=2, page_size=4))
    cache = model.new_cache()
    layer = cache.layers[0]
    with torch.no_grad():
        model(torch.randint(0, 97, (2, 40)), cache=cache)
        pool, used = layer._k_pool.shape[0], layer.pages_in_use()
        cache.free([0])
        assert layer.pages_in_use() == used // 2 and len(layer._free) == pool - used // 2
        model(torch.randint(0, 97, (2, 30)), cache=cache)   # sequence 1 grows into the freed pages
    assert layer._k_pool.shape[0] == pool
    assert cache.tokens.tolist() == [40, 70]
    assert int(cache.slots()[:, 0].sum()) == 0


def test_sequences_of_different_lengths_batched_by_id_decode_as_alone():
    """A server's use: sequences added one by one, prefilled apart, then decoded together with
    their own positions, one freed and its id reused; each gets the logits it gets alone."""
    model = tiny_model()
    ids = torch.randint(0, 97, (3, 30))
    convert(model, DMCConfig(decision_bias=half_merging_bias(model, ids), window=4, page_size=4))
    prompts = (9, 14, 5)
    alone = [decode_step_by_step(model, ids[i:i + 1], prefix=prompts[i])[0] for i in range(3)]
    cache = model.new_cache()
    with torch.no_grad():
        first = cache.add_sequences(2)
        for seq, length in zip(first.tolist(), prompts[:2]):
            logits = model(ids[seq:seq + 1, :length], cache=cache, seqs=torch.tensor([seq])).logits
            torch.testing.assert_close(logits, alone[seq][:, :length], atol=1e-5, rtol=1e-5)
        cache.free([0])
        third = cache.add_sequences(1)
        assert third.tolist() == [0] and int(cache.slots()[:, 0].sum()) == 0      # the freed id, empty
        model(ids[2:3, :prompts[2]], cache=cache, seqs=third)
        seqs, rows = torch.tensor([1, 0]), [1, 2]          # cache sequence -> row of ``ids``
        for step in range(8):
            tokens = torch.stack([ids[r, prompts[r] + step] for r in rows])[:, None]
            logits = model(tokens, cache=cache, seqs=seqs).logits       # positions: each sequence's own
            for i, r in enumerate(rows):
                torch.testing.assert_close(logits[i, 0], alone[r][0, prompts[r] + step], atol=1e-5, rtol=1e-5)
    assert cache.tokens.tolist() == [prompts[2] + 8, prompts[1] + 8]


def test_attention_reaches_the_cache_only_through_its_api():
    """DMC attention calls the cache's public methods and reads no tensor of it."""
    tree = ast.parse(inspect.getsource(attention))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id in ("cache", "layer", "chunk", "run")}
    assert used <= {"layer", "chunk", "open_run", "append_token", "attend", "has_slots", "write_chunk",
                    "real", "token_index", "seqs", "kv", "omega"}, used


@pytest.mark.parametrize("name", ["vanilla", "dmc_forced", "h2o", "int8"])
def test_every_cache_kind_reports_the_same_stats(name):
    """One CacheStats shape across the dense, DMC, eviction and quantised caches, counting the same
    tokens the same way."""
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad(), POLICIES[name].setup(model, 2.0, PolicyOptions(quant_group=8, quant_residual=16)) as setup:
        cache = setup.new_cache()
        for start in range(0, 40, 8):
            setup.model(ids[:, start:start + 8], cache=cache, use_cache=True)
        stats = cache.stats()
    assert isinstance(stats, CacheStats) and stats.tokens == 2 * 40
    layers, heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    assert stats.dense_bytes == 2 * 40 * layers * heads * 2 * model.config.head_dim * (2 if name == "int8" else 4)
    expected = {"vanilla": 1.0, "dmc_forced": 2.0, "h2o": 2.0}.get(name)
    if expected is not None:
        assert stats.compression_ratio == pytest.approx(expected, rel=0.05)
    assert stats.memory_ratio >= (1.0 if name == "vanilla" else 1.2)
