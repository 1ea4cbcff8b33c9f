"""The HTTP server on a tiny model: OpenAI compatibility (the openai client itself), streaming,
/metrics, every bad input of the serving issue, disconnects and failed steps."""

import json
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from dynacomp.serve.async_engine import AsyncEngine
from dynacomp.serve.cli import ServeConfig, load_engine
from dynacomp.serve.server import create_app
from tests.dmc.tiny import tiny_model


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer (and its chat template)."""
    from transformers import AutoTokenizer

    from dynacomp.models import resolve

    folder = tmp_path_factory.mktemp("served") / "model"
    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    tiny_model(vocab_size=len(tokenizer), tie_word_embeddings=True).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class Server:
    """uvicorn on a free port of 127.0.0.1, in a thread."""

    def __init__(self, folder, **options):
        self.engine = AsyncEngine(load_engine(ServeConfig(model=str(folder), force_cr=2, page_size=4)),
                                  max_waiting=options.pop("max_waiting", 64))
        app = create_app(self.engine, "tiny", **options)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.shutdown()


@pytest.fixture(scope="module")
def server(model_folder):
    running = Server(model_folder, max_tokens_cap=64)
    yield running
    running.close()


def test_the_openai_client_streamed_and_not_matches_offline_greedy(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    engine = server.engine.engine
    prompt = "Once upon a time"
    ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        offline = engine.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                        pad_token_id=0)[0, len(ids):]
    expected = engine.tokenizer.decode(offline, skip_special_tokens=True)
    whole = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
    assert whole.choices[0].text == expected and whole.usage.completion_tokens == 8
    assert whole.usage.model_extra["kv_compression_ratio"] > 1.2 and whole.usage.model_extra["kv_peak_bytes"] > 0
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == 8
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
    streamed = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == chat.choices[0].message.content
    assert chat.choices[0].finish_reason == "length"
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_metrics_parse_and_count(server):
    from prometheus_client.parser import text_string_to_metric_families

    httpx.post(server.url + "/v1/completions", json={"prompt": "abc", "max_tokens": 3}, timeout=60)
    text = httpx.get(server.url + "/metrics").text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:num_preemptions_total", "vllm:time_to_first_token_seconds_count",
                 "vllm:inter_token_latency_seconds_count", "vllm:e2e_request_latency_seconds_count",
                 "vllm:request_queue_time_seconds_count", "dynacomp:kv_bytes", "dynacomp:kv_compression_ratio"):
        assert name in samples, name
    assert samples["vllm:generation_tokens_total"] >= 3 and samples["vllm:e2e_request_latency_seconds_count"] >= 1
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


@pytest.mark.parametrize(("body", "status", "param"), [
    ("{not json", 400, None),
    ({"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ({"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": 5}, 400, "prompt"),
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": "hi", "model": "gpt-9"}, 404, "model"),
    ({"prompt": "hi", "max_tokens": 65}, 400, "max_tokens"),
    ({"prompt": "word " * 300, "max_tokens": 4}, 400, "prompt"),
    ({"prompt": "", "max_tokens": 4}, 400, "prompt"),
])
def test_bad_input_gets_an_openai_error_and_changes_nothing(server, body, status, param):
    before = httpx.get(server.url + "/metrics").text.count("\n")
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(server.url + "/v1/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["type"] and (param is None or error["param"] == param)
    assert server.engine.engine.running == [] and server.engine.engine.cache.bytes_in_use() == 0
    assert httpx.get(server.url + "/metrics").text.count("\n") == before


def test_api_key_full_queue_disconnect_and_failed_step(model_folder):
    keyed = Server(model_folder, api_key="secret")
    try:
        assert httpx.post(keyed.url + "/v1/completions", json={"prompt": "hi"}).status_code == 401
        ok = httpx.post(keyed.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                        headers={"Authorization": "Bearer secret"}, timeout=60)
        assert ok.status_code == 200
        # A client that leaves mid-stream aborts its request; its pages go back at once.
        with httpx.stream("POST", keyed.url + "/v1/completions", headers={"Authorization": "Bearer secret"},
                          json={"prompt": "hi", "max_tokens": 60, "stream": True, "ignore_eos": True}) as stream:
            next(stream.iter_lines())
        engine = keyed.engine.engine
        for _ in range(200):
            if not engine.running and engine.cache.bytes_in_use() == 0:
                break
            time.sleep(0.05)
        assert engine.stats.finished["abort"] == 1 and engine.cache.bytes_in_use() == 0
        # A step that raises fails its requests with 500; the server keeps serving.
        forward = engine._forward
        engine._forward = lambda rows, outputs: (_ for _ in ()).throw(RuntimeError("injected"))
        failed = httpx.post(keyed.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                            headers={"Authorization": "Bearer secret"}, timeout=60)
        engine._forward = forward
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        again = httpx.post(keyed.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                           headers={"Authorization": "Bearer secret"}, timeout=60)
        assert again.status_code == 200 and engine.cache.bytes_in_use() == 0
    finally:
        keyed.close()
    full = Server(model_folder, max_waiting=0)
    try:
        response = httpx.post(full.url + "/v1/completions", json={"prompt": "hi"})
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
    finally:
        full.close()


def test_the_load_benchmark_reports_vllm_fields(server, model_folder):
    import asyncio

    from dynacomp.serve.bench import LoadConfig, run_load

    config = LoadConfig(url=server.url, num_prompts=4, warmup=1, request_rate=20.0, input_len=16, output_len=4, range_ratio=0.0,
                        tokenizer=str(model_folder), time_limit_s=120)
    result = asyncio.run(run_load(config))
    assert result["completed"] == 4 and result["total_output_tokens"] == 16
    assert result["output_throughput"] > 0 and result["median_ttft_ms"] > 0 and "peak_running" in result
    with pytest.raises(ValueError, match="127.0.0.1"):
        LoadConfig(url="http://example.com:8000")


def test_keep_share_reaches_a_dms_checkpoint_and_contradictions_are_refused(model_folder, tmp_path):
    from transformers import AutoTokenizer

    from dynacomp.dmc import DMCConfig, convert, save

    dms = convert(tiny_model(vocab_size=len(AutoTokenizer.from_pretrained(model_folder)), tie_word_embeddings=True),
                  DMCConfig(policy="dms", eviction_window=3))
    folder = save(dms, tmp_path / "dms", AutoTokenizer.from_pretrained(model_folder))
    engine = load_engine(ServeConfig(model=str(folder), keep_share=0.25, page_size=4))
    assert engine.model.dmc_config.keep_share == 0.25
    for contradiction in ({"dense": True}, {"force_cr": 2.0}):
        with pytest.raises(ValueError, match="--keep-share"):
            ServeConfig(model=str(folder), keep_share=0.25, **contradiction)
    with pytest.raises(ValueError, match="--keep-share"):
        ServeConfig(model=str(folder), keep_share=1.5)
    with pytest.raises(ValueError, match="DMS checkpoint"):
        load_engine(ServeConfig(model=str(model_folder), keep_share=0.25))
