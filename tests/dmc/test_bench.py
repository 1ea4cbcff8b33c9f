import pytest
import torch

from dynacomp.dmc.evaluation.bench import BenchConfig, measure, measure_paired
from dynacomp.errors import Failure


@pytest.mark.parametrize("dtype, element", [("float32", 4), ("bfloat16", 2)])
@pytest.mark.parametrize("method", ["hf_generate", "hf_static", "vanilla", "dmc"])
def test_measure_reports_throughput_and_memory(method, dtype, element, smollm2):
    config = BenchConfig(batch=2, context=64, new_tokens=3, cr=(4.0,), page_size=4, dtype=dtype)
    row = measure(method, 4.0, config)
    assert row["steps"] == 3 and row["tokens_per_s"] > 0 and 0 < row["attention_share"] < 1
    assert row["peak_memory_bytes"] > 0 and (row["device"], row["dtype"]) == ("cpu", dtype)
    # every method's cache in the dtype: batch x layers x KV heads x tokens (prompt, one untimed
    # and three timed steps) x dim x element x (K, V)
    dense = 2 * 30 * 3 * (64 + 1 + 3) * 64 * element * 2
    weights = 134_515_008 * element                              # SmolLM2-135M, the output layer tied
    if method == "dmc":
        assert row["cr"] == pytest.approx(4.0, abs=0.3)
        # per (sequence, layer, KV head): 17 slots in five pages of 4, and an open run of 11
        # entries of K and V with an fp32 weight each
        assert row["kv_bytes"] == 2 * 30 * 3 * (5 * 4 + 11) * 128 * element + 2 * 30 * 3 * 11 * 4
        # a step reads the stored slots (not the pages' slack) and the open runs
        assert row["bytes_read_per_step"] == weights + 2 * 30 * 3 * 17 * 128 * element + 2 * 30 * 3 * 11 * (128 * element + 4)
    else:
        assert row["kv_bytes"] == dense and row["bytes_read_per_step"] == weights + dense


def test_paired_measurement_takes_dense_and_dmc_steps_in_turn(smollm2):
    config = BenchConfig(batch=2, context=64, new_tokens=3, page_size=4)
    paired = measure_paired([1.0, 4.0], config)
    assert paired["vanilla"]["steps"] == 3 and [r["steps"] for r in paired["dmc"]] == [3, 3]
    assert [r["cr"] for r in paired["dmc"]] == [1.0, pytest.approx(4.0, abs=0.3)]
    assert paired["dmc"][1]["kv_bytes"] < paired["vanilla"]["kv_bytes"] / 2   # open runs weigh at 68 tokens
    assert all(r["speedup_vs_vanilla"] > 0 for r in paired["dmc"])


@pytest.mark.parametrize("per_sequence, step_at, step, tried, best", [
    # from 10 sequences on the pools take two more sequences' room: 11 overshoots (1,300 bytes of
    # a 1,100 budget) and shrinks to 9, which fits; 10 (1,200) does not
    (100, 10, 2, [11, 9, 10], 9),
    # from 11 on five more: 11 (1,600) shrinks in proportion to 7, too far; 7 climbs in proportion
    # to 11, kept below the overshoot: 10 fits
    (100, 11, 5, [11, 7, 10], 10),
    # a first guess far below (the first run measured 220 bytes per sequence): 5 climbs to 11,
    # which overshoots (1,200), and 10 fits next to it
    (220, 11, 1, [5, 11, 10], 10),
])
def test_max_batch_runs_the_configured_ratio_and_finds_the_largest_batch_that_fits(
        monkeypatch, per_sequence, step_at, step, tried, best):
    from dynacomp.dmc.evaluation import bench

    def kv_bytes(batch):
        return 100 * (batch + step * (batch >= step_at))
    calls = []

    def fake_worker(method, cr, config):
        calls.append((method, cr, config.batch))
        return {"kv_bytes": kv_bytes(config.batch), "tokens_per_s": float(config.batch)}

    monkeypatch.setattr(bench, "measure_in_worker", fake_worker)
    rows = [{"cr": 3.97, "kv_bytes_per_sequence": per_sequence}, {"cr": 1.0, "kv_bytes_per_sequence": 100.0}]
    out = bench.max_batch(BenchConfig(kv_budget_gb=1100 / 2**30), [("dmc", 4.0), ("hf_generate", 1.0)], rows)
    assert calls == [("dmc", 4.0, batch) for batch in tried]
    assert out == [{"method": "dmc", "cr": 3.97, "max_batch": best, "tokens_per_s": float(best),
                    "kv_bytes": kv_bytes(best)}]


def test_max_batch_stops_after_its_tries_when_the_cache_never_grows(monkeypatch):
    from dynacomp.dmc.evaluation import bench

    monkeypatch.setattr(bench, "measure_in_worker", lambda method, cr, config: {"kv_bytes": 1, "tokens_per_s": 1.0})
    [row] = bench.max_batch(BenchConfig(kv_budget_gb=1100 / 2**30), [("vanilla", 1.0)],
                            [{"cr": 1.0, "kv_bytes_per_sequence": 100.0}])
    assert row["max_batch"] > 11 and row["kv_bytes"] == 1


def test_bench_config_refuses_unknown_methods_ratios_and_a_missing_device():
    with pytest.raises(ValueError, match="unknown methods"):
        BenchConfig(methods=("vanila",))
    with pytest.raises(ValueError, match="ratios >= 1"):
        BenchConfig(cr=(0.5,))
    if not torch.cuda.is_available():
        with pytest.raises(Failure, match="CUDA is not available"):
            BenchConfig(device="cuda")
