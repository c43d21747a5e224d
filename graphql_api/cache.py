"""Answers of the REST and figure routes, kept for ``API_CACHE_SECONDS`` and computed once for all who ask.

Stored data changes only when a processor checkpoint writes (every ``PARQUET_CHUNK_SECONDS``), yet a page or
a dashboard polls the same few questions many times a second. So a successful ``GET /api/...`` answer is
kept for ``API_CACHE_SECONDS`` (default 1 s) under its path and query string, and requests for the same
thing while it is being computed wait for that one computation instead of starting their own. An answer is
therefore at most ``API_CACHE_SECONDS`` older than the store (the freshness rule the README states);
``API_CACHE_SECONDS=0`` turns this off. Only 200 answers are kept; errors are computed each time. GraphQL,
``/health`` and ``/metrics`` are never cached. What is kept is bounded: stale answers go at the next store,
and the oldest go first past ``MAX_ENTRIES`` answers or ``MAX_BYTES`` of bodies (2,048 entries of 2.3 MB
each, a full 10,000-row answer, would have been 4.7 GB: a client asking for distinct URLs grew the API
by 106 MB in 300 requests).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MAX_BYTES", "MAX_ENTRIES", "ResponseCache"]

MAX_ENTRIES = 2048
MAX_BYTES = 64 * 1024 * 1024
PREFIX = "/api/"


@dataclass(frozen=True, slots=True)
class _Answer:
    start: Message  # http.response.start
    body: bytes
    at: float  # monotonic time it was computed


class ResponseCache:
    """ASGI middleware (see the module docstring)."""

    def __init__(self, app: ASGIApp, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.seconds = seconds
        self.clock = clock
        self.kept: OrderedDict[bytes, _Answer] = OrderedDict()  # oldest computed first
        self.bytes = 0  # of the bodies kept
        self.computing: dict[bytes, asyncio.Future[_Answer | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.seconds <= 0
            or scope["type"] != "http"
            or scope["method"] != "GET"
            or not scope["path"].startswith(PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        key = scope["path"].encode() + b"?" + scope.get("query_string", b"")
        answer = self.kept.get(key)
        if answer is not None and self.clock() - answer.at < self.seconds:
            await self._send(answer, send)
            return
        running = self.computing.get(key)
        if running is not None:
            shared = await asyncio.shield(running)
            if shared is not None:
                await self._send(shared, send)
                return
            await self.app(scope, receive, send)  # it failed or was not a 200: ask on our own
            return
        future: asyncio.Future[_Answer | None] = asyncio.get_running_loop().create_future()
        self.computing[key] = future
        result: _Answer | None = None
        try:
            result = await self._compute(scope, receive, send)
        finally:
            del self.computing[key]
            future.set_result(result)
        if result is not None and len(result.body) <= MAX_BYTES // 8:
            self._keep(key, result)

    def _keep(self, key: bytes, answer: _Answer) -> None:
        old = self.kept.pop(key, None)
        if old is not None:
            self.bytes -= len(old.body)
        self.kept[key] = answer
        self.bytes += len(answer.body)
        now = self.clock()
        while self.kept:
            oldest = next(iter(self.kept.values()))
            if now - oldest.at < self.seconds and len(self.kept) <= MAX_ENTRIES and self.bytes <= MAX_BYTES:
                break
            self.bytes -= len(self.kept.popitem(last=False)[1].body)

    async def _compute(self, scope: Scope, receive: Receive, send: Send) -> _Answer | None:
        """Run the route, passing its answer on as it goes; returns it when it is a complete 200."""
        started = self.clock()
        start: Message | None = None
        parts: list[bytes] = []
        complete = False

        async def keep(message: Message) -> None:
            nonlocal start, complete
            if message["type"] == "http.response.start":
                # a copy: middleware outside this one (CORS) edits the headers of what passes in place,
                # and a kept answer grew a Vary per hit and carried the first asker's allowed origin
                start = {**message, "headers": list(message.get("headers", ()))}
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                complete = not message.get("more_body", False)
            await send(message)

        await self.app(scope, receive, keep)
        if start is None or start["status"] != 200 or not complete:
            return None
        return _Answer(start, b"".join(parts), started)

    @staticmethod
    async def _send(answer: _Answer, send: Send) -> None:
        await send({**answer.start, "headers": list(answer.start.get("headers", ()))})  # edited downstream
        await send({"type": "http.response.body", "body": answer.body})
