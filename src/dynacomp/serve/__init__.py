"""Serving: continuous batching over the DMC package's paged cache (``engine``), the engine on its
own thread for asyncio callers (``async_engine``), an OpenAI-compatible HTTP server (``server``),
and a load benchmark (``bench``). It uses the model and the cache only through their public APIs."""

from dynacomp.serve.engine import Engine, EngineConfig, Request, SamplingParams

__all__ = ["Engine", "EngineConfig", "Request", "SamplingParams"]
