import pytest

from dynacomp.dmc.bench import BenchConfig, measure


@pytest.mark.parametrize("method", ["hf_generate", "vanilla", "dmc"])
def test_measure_reports_throughput_and_memory(method, smollm2):
    config = BenchConfig(batch=2, context=64, new_tokens=3, cr=(4.0,), page_size=4)
    row = measure(method, 4.0, config)
    assert row["steps"] == 3 and row["tokens_per_s"] > 0 and 0 < row["attention_share"] < 1
    dense = 2 * 30 * 3 * (64 + 3) * 64 * 4 * 2     # batch x layers x KV heads x tokens x dim x fp32 x (K, V)
    if method == "dmc":
        assert row["cr"] == pytest.approx(4.0, abs=0.3)
        assert row["kv_bytes"] < dense / 3
    else:
        assert row["kv_bytes"] == dense
