import pytest

from dynacomp.dmc.bench import BenchConfig, measure, measure_paired


@pytest.mark.parametrize("method", ["hf_generate", "vanilla", "dmc"])
def test_measure_reports_throughput_and_memory(method, smollm2):
    config = BenchConfig(batch=2, context=64, new_tokens=3, cr=(4.0,), page_size=4)
    row = measure(method, 4.0, config)
    assert row["steps"] == 3 and row["tokens_per_s"] > 0 and 0 < row["attention_share"] < 1
    # batch x layers x KV heads x tokens (prompt, one untimed and three timed steps) x dim x fp32 x (K, V)
    dense = 2 * 30 * 3 * (64 + 1 + 3) * 64 * 4 * 2
    if method == "dmc":
        assert row["cr"] == pytest.approx(4.0, abs=0.3)
        assert row["kv_bytes"] < dense / 3
    else:
        assert row["kv_bytes"] == dense


def test_paired_measurement_takes_dense_and_dmc_steps_in_turn(smollm2):
    config = BenchConfig(batch=2, context=64, new_tokens=3, page_size=4)
    paired = measure_paired([1.0, 4.0], config)
    assert paired["vanilla"]["steps"] == 3 and [r["steps"] for r in paired["dmc"]] == [3, 3]
    assert [r["cr"] for r in paired["dmc"]] == [1.0, pytest.approx(4.0, abs=0.3)]
    assert paired["dmc"][1]["kv_bytes"] < paired["vanilla"]["kv_bytes"] / 3
    assert all(r["speedup_vs_vanilla"] > 0 for r in paired["dmc"])
