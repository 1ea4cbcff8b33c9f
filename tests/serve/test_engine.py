"""The engine: batching leaves each sequence's result alone, memory stays within the budget,
preemption recomputes without changing outputs, and no page is leaked."""

import pytest
import torch

from dynacomp.serve import Engine, EngineConfig, SamplingParams

from .conftest import offline_greedy, served_model

GREEDY = SamplingParams(max_tokens=12, temperature=0)


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (int(n),), generator=g).tolist() for n in torch.randint(3, 40, (count,), generator=g)]


def run_checked(engine: Engine) -> None:
    """Step to the end, asserting after every step that the pool is within its budget."""
    while engine.has_unfinished():
        engine.step()
        assert engine.kv_bytes() <= engine.config.kv_budget


@pytest.mark.parametrize("kind", ["dense", "dmc", "dms", "dms-keep-share"])
def test_batched_greedy_equals_offline_generation(kind, tokenizer):
    model = served_model(kind)
    batch = prompts(6)
    engine = Engine(model, tokenizer, EngineConfig(kv_budget=10**7, max_batched_tokens=24))
    requests = [engine.add_request(p, GREEDY) for p in batch]
    run_checked(engine)
    for prompt, request in zip(batch, requests):
        assert request.output == offline_greedy(model, prompt, 12) and request.finish_reason == "length"
    assert engine.stats.peak_running == 6 and engine.cache.bytes_in_use() == 0
    if kind != "dense":
        assert min(r.kv_ratio for r in requests) > 1.2


@pytest.mark.parametrize("kind", ["dense", "dmc"])
def test_a_squeezed_budget_preempts_and_recomputes_the_same_outputs(kind, tokenizer):
    model = served_model(kind)
    batch = prompts(8, seed=1)
    roomy = Engine(model, tokenizer, EngineConfig(kv_budget=10**7))
    expected = [r.output for r in roomy.generate_batch(batch, GREEDY)]
    # Reserving a tenth of what running requests will still write, the engine admits too many.
    tight = Engine(model, tokenizer, EngineConfig(kv_budget=80_000, max_batched_tokens=64, reserve_start=0.1,
                                                  reserve_by_output=False))
    requests = [tight.add_request(p, GREEDY) for p in batch]
    run_checked(tight)
    assert tight.stats.preemptions > 0 and all(r.finish_reason == "length" for r in requests)
    assert [r.output for r in requests] == expected
    assert tight.cache.bytes_in_use() == 0


def test_requests_admitted_with_their_growth_never_need_preempting(tokenizer):
    """A budget for three whole requests (prompt + max_tokens) runs eight of them without a preemption:
    each is admitted with the pages it will still take, not only its prompt's."""
    model = served_model("dense")
    batch = [[7] * 24] * 8
    probe = Engine(model, tokenizer)
    engine = Engine(model, tokenizer, EngineConfig(kv_budget=3 * probe._worst_case_bytes(24 + 12) + 1))
    requests = [engine.add_request(p, GREEDY) for p in batch]
    run_checked(engine)
    assert all(r.finish_reason == "length" for r in requests)
    assert engine.stats.preemptions == 0 and engine.stats.peak_running == 3


def test_the_reserve_never_falls_below_the_output_finished_requests_generated(tokenizer):
    """Requests that ran to max_tokens keep the reserve whole; with the blind decay it falls to the floor."""
    fast = {"kv_budget": 10**7, "reserve_decay": 0.5}
    full = Engine(served_model("dense"), tokenizer, EngineConfig(**fast))
    full.generate_batch(prompts(3), GREEDY)
    assert full.stats.output_share == 1.0 and full.reserve_factor == 1.0
    blind = Engine(served_model("dense"), tokenizer, EngineConfig(**fast, reserve_by_output=False))
    blind.generate_batch(prompts(3), GREEDY)
    assert blind.reserve_factor == blind.config.reserve_floor
    short = Engine(served_model("dense"), tokenizer, EngineConfig(**fast))
    (greedy,) = short.generate_batch([[5, 6, 7]], GREEDY)
    stop = short.text(greedy)[4:6]
    (stopped,) = short.generate_batch([[5, 6, 7]], SamplingParams(max_tokens=12, temperature=0, stop=(stop,)))
    share = (12 + len(stopped.output)) / 24
    assert stopped.finish_reason == "stop" and share < 1 and short.stats.output_share == pytest.approx(share)
    assert short.reserve_factor == pytest.approx(max(share, short.config.reserve_floor))


def test_abort_frees_pages_at_once_and_others_finish(tokenizer):
    engine = Engine(served_model("dmc"), tokenizer, EngineConfig(kv_budget=10**7))
    keep, drop = (engine.add_request(p, SamplingParams(max_tokens=30, temperature=0)) for p in prompts(2))
    engine.step()
    engine.step()
    held = engine.cache.bytes_in_use()
    engine.abort(drop.id)
    assert drop.finish_reason == "abort" and engine.cache.bytes_in_use() < held and drop not in engine.running
    run_checked(engine)
    assert keep.finish_reason == "length" and len(keep.output) == 30 and engine.cache.bytes_in_use() == 0


def test_sampling_seeds_stop_strings_and_refusals(tokenizer):
    engine = Engine(served_model("dmc"), tokenizer, EngineConfig(kv_budget=10**7))
    sample = SamplingParams(max_tokens=10, temperature=0.8, top_p=0.9, seed=3)
    a, b = engine.generate_batch([[1, 2, 3], [1, 2, 3]], sample)
    assert a.output == b.output
    (greedy,) = engine.generate_batch([[5, 6, 7]], GREEDY)
    stop = engine.text(greedy)[4:6]
    (stopped,) = engine.generate_batch([[5, 6, 7]], SamplingParams(max_tokens=12, temperature=0, stop=(stop,)))
    assert stopped.finish_reason == "stop" and engine.text(stopped) == engine.text(greedy)[:engine.text(greedy).find(stop)]
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([], GREEDY)
    with pytest.raises(ValueError, match="positions"):
        engine.add_request([1] * 250, GREEDY)
    with pytest.raises(ValueError, match="budget"):
        Engine(served_model("dense"), tokenizer, EngineConfig(kv_budget=1000)).add_request([1] * 50, GREEDY)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_compression_admits_more_sequences_in_the_same_budget(tokenizer):
    """The point of serving a compressed cache: at one budget, DMC x2 runs more sequences at once
    (a merge window of 2: in this tiny model a longer open run would outweigh the pages it saves)."""
    stats = {}
    for kind in ("dense", "dmc"):
        engine = Engine(served_model(kind, page_size=2, window=2), tokenizer, EngineConfig(kv_budget=150_000))
        engine.generate_batch(prompts(24, seed=2), SamplingParams(max_tokens=40, temperature=0))
        stats[kind] = engine.stats
    assert stats["dmc"].mean_running >= 1.3 * stats["dense"].mean_running
    assert stats["dmc"].steps < stats["dense"].steps
