"""An OpenAI-compatible HTTP server over the engine (FastAPI; the optional ``serve`` extra).

``POST /v1/completions`` and ``/v1/chat/completions`` (the model's chat template), streamed as
server-sent events or not, with ``stream_options.include_usage``; ``GET /v1/models``, ``/health``
and ``/metrics`` (Prometheus text, vLLM's metric names where they exist). ``usage`` adds the
request's peak KV bytes and its compression ratio. Bad input gets a 4xx with an OpenAI-style error
body and changes nothing else; a full queue gets 429 with Retry-After; a client that disconnects
aborts its request.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from dynacomp.serve.async_engine import AsyncEngine, Event, QueueFull
from dynacomp.serve.engine import SamplingParams


class _Body(BaseModel):
    """Fields both endpoints take; unknown fields are ignored, wrong types refused."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    ignore_eos: bool = False
    n: int = Field(1, ge=1, le=1)


class CompletionBody(_Body):
    prompt: str | list[int]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers


def _error(status: int, message: str, kind: str, param: str | None = None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status, headers=headers)


class Metrics:
    """Prometheus metrics under vLLM's names (plus dynacomp's KV bytes and live ratio)."""

    def __init__(self, name: str):
        self.registry = CollectorRegistry()
        labels = {"model_name": name}
        def gauge(n, doc):
            return Gauge(n, doc, list(labels), registry=self.registry).labels(**labels)

        def histogram(n, doc, buckets):
            return Histogram(n, doc, list(labels), registry=self.registry, buckets=buckets).labels(**labels)

        self.running = gauge("vllm:num_requests_running", "Requests running on the engine")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be admitted")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV budget in use, 0..1")
        self.kv_bytes = gauge("dynacomp:kv_bytes", "KV bytes in use (pages and per-sequence state)")
        self.ratio = gauge("dynacomp:kv_compression_ratio", "Tokens per KV slot over the running sequences")
        self.preemptions = Counter("vllm:num_preemptions", "Requests preempted (recomputed)", list(labels),
                                   registry=self.registry).labels(**labels)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens prefilled", list(labels),
                                     registry=self.registry).labels(**labels)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated", list(labels),
                                         registry=self.registry).labels(**labels)
        seconds = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to the first token", seconds)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Time between two tokens of a request", seconds)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Arrival to finish", seconds)
        self.queue = histogram("vllm:request_queue_time_seconds", "Arrival to first scheduled", seconds)
        self._seen = {"preemptions": 0, "prompt_tokens": 0, "generation_tokens": 0}

    def observe_finished(self, request) -> None:
        if request.first_token_time is not None:
            self.ttft.observe(request.first_token_time - request.arrival)
            self.e2e.observe(request.token_times[-1] - request.arrival)
        for a, b in zip(request.token_times, request.token_times[1:]):
            self.itl.observe(b - a)
        if request.scheduled_time is not None:
            self.queue.observe(request.scheduled_time - request.arrival)

    def render(self, snapshot: dict) -> bytes:
        self.running.set(snapshot["running"])
        self.waiting.set(snapshot["waiting"])
        self.kv_bytes.set(snapshot["kv_bytes"])
        self.kv_usage.set(snapshot["kv_bytes"] / snapshot["kv_budget"])
        self.ratio.set(snapshot["ratio"])
        stats = snapshot["stats"]
        for name, counter in (("preemptions", self.preemptions), ("prompt_tokens", self.prompt_tokens),
                              ("generation_tokens", self.generation_tokens)):
            value = getattr(stats, name)
            counter.inc(value - self._seen[name])
            self._seen[name] = value
        return generate_latest(self.registry)


def create_app(engine: AsyncEngine, model_name: str, api_key: str | None = None,
               max_tokens_cap: int = 4096) -> FastAPI:
    app = FastAPI(title="dynacomp serve")
    tokenizer = engine.engine.tokenizer
    metrics = Metrics(model_name)

    @app.exception_handler(APIError)
    async def api_error(_, error: APIError):
        return _error(error.status, error.message, error.kind, error.param, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        fields = [str(p) for p in first.get("loc", ())[1:]]
        param = fields[0] if fields and not fields[0].isdigit() else None       # the top-level field at fault
        where = ".".join(fields) if param else "the request body"
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}", "invalid_request_error", param)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return _error(401, "a valid API key is needed: Authorization: Bearer KEY", "authentication_error")
        return await call_next(request)

    def params_of(body: _Body) -> SamplingParams:
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"model {body.model!r} is not served here; GET /v1/models lists {model_name!r}",
                           "not_found_error", "model")
        max_tokens = body.max_completion_tokens or body.max_tokens or 16
        if max_tokens > max_tokens_cap:
            raise APIError(400, f"max_tokens {max_tokens} is above this server's cap of {max_tokens_cap}",
                           param="max_tokens")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                              stop=stop, ignore_eos=body.ignore_eos)

    def usage(request) -> dict:
        return {"prompt_tokens": len(request.prompt), "completion_tokens": len(request.output),
                "total_tokens": len(request.prompt) + len(request.output),
                "kv_peak_bytes": request.peak_kv_bytes, "kv_compression_ratio": request.kv_ratio}

    async def run(prompt, body: _Body, chat: bool):
        params = params_of(body)
        try:
            stream = engine.generate(prompt, params)
            first = await stream.__anext__()
        except ValueError as error:
            raise APIError(400, str(error), param="prompt") from None
        except QueueFull as error:
            raise APIError(429, f"{error}; retry later", "rate_limit_error", headers={"Retry-After": "1"}) from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def choice(event: Event, delta: bool) -> dict:
            reason = "stop" if event.finish_reason == "abort" else event.finish_reason
            if not chat:
                return {"index": 0, "text": event.text, "finish_reason": reason, "logprobs": None}
            if delta:
                content = {"content": event.text} if event.text or event.finish_reason is None else {}
                return {"index": 0, "delta": content, "finish_reason": reason, "logprobs": None}
            return {"index": 0, "message": {"role": "assistant", "content": event.text}, "finish_reason": reason,
                    "logprobs": None}

        async def events():
            yield first
            if first.finish_reason is None:
                async for event in stream:
                    yield event

        if not body.stream:
            text, last = [], first
            async for event in events():
                text.append(event.text)
                last = event
            if last.finish_reason == "error":
                raise APIError(500, "the engine failed while running this request", "server_error")
            metrics.observe_finished(last.request)
            whole = Event(last.request, "".join(text), [], last.finish_reason)
            return JSONResponse({"id": rid, "object": kind, "created": created, "model": model_name,
                                 "choices": [choice(whole, delta=False)], "usage": usage(last.request)})

        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def sse():
            chunk_kind = kind + ".chunk" if chat else kind
            head = {"id": rid, "object": chunk_kind, "created": created, "model": model_name}
            if chat:
                yield "data: " + json.dumps(head | {"choices": [{"index": 0, "delta": {"role": "assistant"},
                                                                 "finish_reason": None}]}) + "\n\n"
            last = None
            async for event in events():
                last = event
                yield "data: " + json.dumps(head | {"choices": [choice(event, delta=True)]}) + "\n\n"
            metrics.observe_finished(last.request)
            if include_usage:
                yield "data: " + json.dumps(head | {"choices": [], "usage": usage(last.request)}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        return await run(body.prompt, body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody):
        if getattr(tokenizer, "chat_template", None) is None:
            raise APIError(400, f"model {model_name!r} has no chat template; use /v1/completions")
        prompt = tokenizer.apply_chat_template([m.model_dump() for m in body.messages], tokenize=False,
                                               add_generation_prompt=True)
        return await run(prompt, body, chat=True)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "dynacomp"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(engine.snapshot()).decode(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
