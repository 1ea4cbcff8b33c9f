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
