import json
import math

import pytest
import torch
import torch.nn.functional as F

from dynacomp.dmc import DMCConfig, convert, zero_decision_channels
from dynacomp.dmc.evaluation.harness import (
    EvalOptions,
    method_runner,
    passkey,
    passkey_prompt,
    perplexity_online,
    plot_passkey,
    plot_perplexity,
)
from dynacomp.dmc.policies import POLICIES, PolicyOptions

from .tiny import tiny_model


class CharTokenizer:
    """One token per ASCII character."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


def teacher_forced_perplexity(model, windows):
    with torch.no_grad():
        logits = model(windows, use_cache=False).logits
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), windows[:, 1:].flatten())
    return math.exp(float(nll))


def dmc_memory_ratio(slots: int) -> float:
    """The memory ratio of a DMC row after 24 tokens in ``slots`` slots of 2 x 16 fp32 numbers
    (128 bytes): it also holds its open run, window - 1 = 11 such entries with an fp32 weight each."""
    return 24 * 128 / (slots * 128 + 11 * (128 + 4))


@pytest.fixture(scope="module")
def model_and_ids():
    model = tiny_model()
    zero_decision_channels(model)   # so that DMC without merges is the plain model
    return model, torch.randint(0, 97, (3 * 24 + 5,))


def test_vanilla_online_equals_teacher_forced(model_and_ids):
    model, ids = model_and_ids
    expected = teacher_forced_perplexity(model, ids[:72].view(3, 24))
    for options in (EvalOptions(batch_size=2, parallel_chunk=1), EvalOptions(batch_size=2, parallel_chunk=7)):
        result = perplexity_online(model, ids, "vanilla", 1, 24, options)
        assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
        assert (result["tokens"], result["windows"], result["ratio"]) == (3 * 23, 3, 1.0)


@pytest.mark.parametrize("method", [m for m in POLICIES if m not in ("vanilla", "dmc", "dms")])
def test_every_method_at_ratio_one_is_vanilla(model_and_ids, method):
    model, ids = model_and_ids
    vanilla = perplexity_online(model, ids, "vanilla", 1, 24)
    result = perplexity_online(model, ids, method, 1, 24, EvalOptions(batch_size=3, prefix=3),
                               policy_options=PolicyOptions(quant_group=4, quant_residual=32))   # nothing gets quantised
    assert result["perplexity"] == pytest.approx(vanilla["perplexity"], rel=1e-4)
    eviction = 128 / 136           # every slot kept, each with 8 bytes of statistics
    expected = dmc_memory_ratio(24) if method == "dmc_forced" else eviction if POLICIES[method].kind == "eviction" else 1
    assert result["ratio"] == pytest.approx(expected)
    assert model.config._attn_implementation == "sdpa" and not hasattr(model, "dmc_config")


@pytest.mark.parametrize("method", ["dmc_forced", "streaming_llm", "h2o", "tova", "int4"])
def test_compression_costs_perplexity_at_the_reported_ratio(model_and_ids, method):
    model, ids = model_and_ids
    vanilla = perplexity_online(model, ids, "vanilla", 1, 24)["perplexity"]
    result = perplexity_online(model, ids, method, 4, 24, EvalOptions(chunk=2),
                               policy_options=PolicyOptions(quant_group=4, quant_residual=4))
    assert result["perplexity"] != pytest.approx(vanilla, rel=1e-4)
    # Eviction keeps 6 slots of 128 bytes, each with 8 bytes of statistics (position, score).
    expected = {"int4": 16 / (4 + 2 * 16 / 4), "dmc_forced": dmc_memory_ratio(6)}.get(method, 24 * 128 / (6 * 136))
    assert result["ratio"] == pytest.approx(expected, rel=0.05)


def test_a_quantised_cache_is_measured_at_its_fullest(model_and_ids):
    """int4 in groups of 4 (12 bits a number with scale and zero point), residual 8: just before
    its third packing, at 23 tokens, it holds 16 packed tokens (12 tokens' worth) and 7 full ones;
    at 24, just packed, it would claim 16 / 12."""
    model, ids = model_and_ids
    result = perplexity_online(model, ids, "int4", 4, 24, policy_options=PolicyOptions(quant_group=4, quant_residual=8))
    assert result["ratio"] == pytest.approx(24 / (16 * 12 / 16 + 7))


def test_dmc_methods_check_the_model(model_and_ids):
    model, _ = model_and_ids
    with pytest.raises(ValueError, match="learned dmc decisions"):
        with method_runner(model, "dmc", 2):
            pass
    dms = convert(tiny_model(), DMCConfig(policy="dms"))
    with pytest.raises(ValueError, match="learned dmc decisions"):
        with method_runner(dms, "dmc", 2):
            pass
    with method_runner(dms, "dms", 1) as runner:
        assert runner.model is dms
    dmc = convert(tiny_model(), DMCConfig())
    with pytest.raises(ValueError, match="plain model"):
        with method_runner(dmc, "tova", 2):
            pass
    with method_runner(dmc, "dmc_forced", 3) as runner:
        assert runner.model is dmc and dmc.dmc_config.force_cr == 3
    assert dmc.dmc_config.force_cr is None


def test_passkey_prompt_places_the_needle():
    tokenizer = CharTokenizer()
    ids = passkey_prompt(tokenizer, 2000, depth=0.25, key=31415)
    text = tokenizer.decode(ids.tolist())
    assert 1800 < ids.numel() <= 2000
    assert text.endswith("The pass key is") and text.count("31415") == 2
    assert 0.15 < text.index("31415") / len(text) < 0.35


def test_passkey_runs_through_compressed_caches(tmp_path):
    model = tiny_model(vocab_size=128)
    results = [passkey(model, CharTokenizer(), method, 4, (64, 128), trials=2, options=EvalOptions(chunk=8))
               for method in ("vanilla", "h2o")]
    assert [r["results"][1]["context"] for r in results] == [128, 128]
    assert results[0]["ratio"] == 1.0 and results[1]["ratio"] > 3
    assert all(0 <= row["accuracy"] <= 1 for r in results for row in r["results"])
    json.dumps(results)
    plot_passkey(results, tmp_path / "passkey.png")
    plot_perplexity([{"method": "vanilla", "ratio": 1.0, "perplexity": 10.0},
                     {"method": "tova", "ratio": 2.0, "perplexity": 11.0},
                     {"method": "tova", "ratio": 4.0, "perplexity": 13.0}], tmp_path / "ppl.png")
    assert (tmp_path / "passkey.png").stat().st_size > 0 and (tmp_path / "ppl.png").stat().st_size > 0


def test_cli_eval_on_a_user_file(tmp_path, capsys, monkeypatch):
    import argparse

    from dynacomp.dmc.evaluation import cli as eval_cli

    loaded = []
    monkeypatch.setattr(eval_cli, "load_for_eval",
                        lambda config: loaded.append(config) or (tiny_model(vocab_size=128), CharTokenizer()))
    parser = argparse.ArgumentParser()
    eval_cli.register_eval(parser.add_subparsers())
    data = tmp_path / "text.txt"
    data.write_text("The quick brown fox jumps over the lazy dog. " * 8, encoding="utf-8")
    args = parser.parse_args(["eval", "--model", "some-model", "--method", "tova", "--cr", "2", "--context", "16",
                              "--data", str(data), "--max-tokens", "40", "--chunk", "4", "--json"])
    args.func(args)
    result = json.loads(capsys.readouterr().out)
    assert loaded[0].model == "some-model"
    assert (result["method"], result["windows"], result["chunk"], result["data"]) == ("tova", 2, 4, str(data))
    assert result["ratio"] == pytest.approx(2 * 128 / 136) and result["perplexity"] > 1   # slots carry 8 bytes of statistics

    args = parser.parse_args(["passkey", "--method", "streaming_llm", "--lengths", "64", "80", "--trials", "1"])
    args.func(args)
    assert "context  accuracy" in capsys.readouterr().out


def test_a_dmc_checkpoint_runs_the_peers_on_its_own_weights(tmp_path):
    from transformers import AutoTokenizer

    from dynacomp.dmc import save
    from dynacomp.dmc.evaluation.cli import MethodConfig, load_for_eval
    from dynacomp.dmc.modeling.convert import DMCModelMixin
    from dynacomp.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    model = convert(tiny_model(vocab_size=len(tokenizer)), DMCConfig(force_cr=None))
    save(model, tmp_path / "ckpt", tokenizer)
    dmc, _ = load_for_eval(MethodConfig(model=str(tmp_path / "ckpt"), method="dmc"))
    plain, _ = load_for_eval(MethodConfig(model=str(tmp_path / "ckpt"), method="h2o"))
    assert isinstance(dmc, DMCModelMixin) and not isinstance(plain, DMCModelMixin)
    d = plain.config.head_dim
    for layer, source in zip(plain.model.layers, model.model.layers):
        assert not layer.self_attn.k_proj.weight[d - 1::d].any() and not layer.self_attn.q_proj.weight[d - 1::d].any()
        assert torch.equal(layer.mlp.up_proj.weight, source.mlp.up_proj.weight)
