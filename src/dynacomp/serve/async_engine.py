"""The engine on one thread of its own, for asyncio callers (the HTTP server).

The engine thread is the only one that runs the model or touches the cache; callers add and abort
requests under a lock and receive their outputs on an ``asyncio.Queue`` of their own event loop.
A step that raises fails the requests it was running (reason ``error``, pages freed) and the
thread goes on serving the others.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass

from dynacomp.serve.engine import Engine, Request, SamplingParams


class QueueFull(RuntimeError):
    """More requests wait than the server queues; the client should retry later."""


@dataclass
class Event:
    """A piece of a request's output: new text and tokens, and the finish reason on the last one."""
    request: Request
    text: str
    tokens: list[int]
    finish_reason: str | None


class AsyncEngine:
    def __init__(self, engine: Engine, max_waiting: int = 256):
        self.engine, self.max_waiting = engine, max_waiting
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="dynacomp-engine", daemon=True)
        self._thread.start()

    # -- the engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(timeout=0.5)
            with self._lock:
                if not self.engine.has_unfinished():
                    self._wake.clear()
                    continue
                try:
                    outputs = self.engine.step()
                except Exception:          # a failed step fails its requests, never the server
                    traceback.print_exc()
                    outputs = []
                    for request in self.engine.fail_running():
                        self._publish(Event(request, "", [], "error"))
            for output in outputs:
                self._publish(Event(output.request, self.engine.new_text(output.request), output.new_tokens,
                                    output.finish_reason))

    def _publish(self, event: Event) -> None:
        stream = self._streams.get(event.request.id)
        if stream is not None:
            loop, queue = stream
            loop.call_soon_threadsafe(queue.put_nowait, event)

    # -- callers --------------------------------------------------------------------------------

    def add(self, prompt: str | list[int], params: SamplingParams) -> tuple[Request, asyncio.Queue]:
        """Queue a request (ValueError for one that cannot fit, QueueFull when too many wait)."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if len(self.engine.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.engine.waiting)} requests are waiting")
            request = self.engine.add_request(prompt, params)
            self._streams[request.id] = (asyncio.get_running_loop(), queue)
        self._wake.set()
        return request, queue

    async def generate(self, prompt: str | list[int], params: SamplingParams) -> AsyncIterator[Event]:
        """Stream a request's output; leaving early (a client that disconnects) aborts it."""
        request, queue = self.add(prompt, params)
        try:
            while True:
                event = await queue.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            self._streams.pop(request.id, None)
            if not request.finished:
                self.abort(request.id)

    def abort(self, request_id: str) -> None:
        with self._lock:
            self.engine.abort(request_id)

    def snapshot(self) -> dict:
        """Counters for /metrics, read under the lock."""
        with self._lock:
            engine = self.engine
            return {"running": len(engine.running), "waiting": len(engine.waiting), "kv_bytes": engine.kv_bytes(),
                    "kv_budget": engine.config.kv_budget, "stats": engine.stats,
                    "ratio": engine.live_ratio()}

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)
