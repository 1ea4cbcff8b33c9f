"""DMC on the real embedded SmolLM2-135M (9 query / 3 KV heads)."""

import copy

import torch

from dynacomp.dmc import DMCConfig, convert, zero_decision_channels

PROMPTS = ["It is a truth universally acknowledged, that a single man in possession of a good fortune,",
           "The capital of France is"]


def test_append_only_dmc_generates_the_plain_models_text(smollm2):
    base, tokenizer = smollm2
    base = copy.deepcopy(base)
    zero_decision_channels(base)
    tokenizer.padding_side = "left"
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = base.generate(**inputs, max_new_tokens=20, do_sample=False)
        dmc = convert(base, DMCConfig(force_cr=1)).generate(**inputs, max_new_tokens=20, do_sample=False)
    assert torch.equal(plain, dmc)
    assert "Paris" in tokenizer.decode(dmc[1, inputs.input_ids.shape[1]:])


def test_force_cr_4_compresses_by_4(smollm2):
    base, tokenizer = smollm2
    model = convert(copy.deepcopy(base), DMCConfig(force_cr=4))
    ids = torch.randint(100, 40000, (1, 1000), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache()
    with torch.no_grad():
        model(ids[:, :990], cache=cache)
        for t in range(990, 1000):
            model(ids[:, t:t + 1], cache=cache)
    stats = cache.stats()
    assert stats.tokens == 1000
    assert abs(stats.compression_ratio - 4) <= 0.1
    assert all(abs(r - 4) <= 0.1 for layer in stats.per_layer_head for r in layer)


def test_the_shipped_probe_model_is_the_base_model_until_it_evicts(smollm2):
    """smollm2-135m-dms4-probe loads by name from its 211 KB delta: with compression off its logits
    are the base model's (only the added probe was trained), with it on it holds fewer slots."""
    from dynacomp.dmc import load

    base, tokenizer = smollm2
    model, _ = load("smollm2-135m-dms4-probe")
    assert model.dmc_config.eviction_probe and model.dmc_config.eviction_window == 256
    text = " ".join(["The grep command searches the named input files for lines containing a match."] * 40)
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :600]
    off, _ = load("smollm2-135m-dms4-probe", decision_threshold=float("inf"))
    cache = model.new_cache()
    with torch.no_grad():
        # rtol: the converted model's prepacked linears sum in another order than the base model's
        torch.testing.assert_close(off(ids, cache=off.new_cache()).logits, base(ids).logits, atol=3e-4, rtol=0)
        model(ids, cache=cache)
    assert cache.stats().compression_ratio > 1.2
