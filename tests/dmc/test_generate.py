"""generate() with a DMC cache: padding, sampling, stop tokens, pages freed, bad input."""

import pytest
import torch

from dynacomp.dmc import DMCConfig, convert

from .tiny import half_merging_bias, tiny_model


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
    assert int(cache.slots()[:, 0].sum()) == 0     # its rows hold nothing
    assert torch.equal(out[0, :9], free_run[0, :9])


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
