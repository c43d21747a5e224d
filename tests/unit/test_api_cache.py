"""The REST answer cache (graphql_api/cache.py) around a route that counts its calls: kept for its time,
computed once for everyone asking at once, never for errors, GraphQL or /health."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from graphql_api.cache import ResponseCache


class Route:
    """An ASGI app answering ``<path>?<query> #<n>`` (n: its calls so far); 400 when the query says fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.hold: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        n = self.calls
        if self.hold is not None:
            await self.hold.wait()
        query = scope["query_string"]
        status = 400 if b"fail" in query else 200
        body = scope["path"].encode() + b"?" + query + b" #%d" % n
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


async def test_an_answer_is_kept_for_its_seconds_per_path_and_query() -> None:
    route, clock = Route(), Clock()
    async with client(ResponseCache(route, seconds=1.0, clock=clock)) as api:
        first = await api.get("/api/ohlc/?symbol=BTCUSDT")
        assert first.text == "/api/ohlc/?symbol=BTCUSDT #1"
        assert first.headers["content-type"] == "text/plain"
        clock.now += 0.99
        again = await api.get("/api/ohlc/?symbol=BTCUSDT")
        assert again.text == first.text and again.headers == first.headers
        assert (await api.get("/api/ohlc/?symbol=ETHUSDT")).text.endswith("#2")  # another question
        clock.now += 0.01  # 1 s after the first was computed: asked again
        assert (await api.get("/api/ohlc/?symbol=BTCUSDT")).text.endswith("#3")
    assert route.calls == 3


async def test_everyone_asking_while_it_is_computed_gets_that_one_answer() -> None:
    route = Route()
    route.hold = asyncio.Event()
    async with client(ResponseCache(route, seconds=1.0)) as api:
        waiting = [asyncio.create_task(api.get("/api/viz/candlestick?symbol=BTCUSDT")) for _ in range(20)]
        while route.calls == 0:
            await asyncio.sleep(0.001)
        for _ in range(20):  # let every request reach the cache before the one computation ends
            await asyncio.sleep(0)
        route.hold.set()
        answers = await asyncio.gather(*waiting)
    assert route.calls == 1
    assert {a.text for a in answers} == {"/api/viz/candlestick?symbol=BTCUSDT #1"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/ohlc/?fail=1"),
        ("GET", "/health"),
        ("GET", "/graphql?query={symbols}"),
        ("POST", "/api/x"),
    ],
)
async def test_errors_graphql_health_and_posts_are_never_kept(method: str, path: str) -> None:
    route = Route()
    async with client(ResponseCache(route, seconds=60.0)) as api:
        first = await api.request(method, path)
        second = await api.request(method, path)
    assert first.text != second.text and route.calls == 2


async def test_zero_seconds_keeps_nothing() -> None:
    route = Route()
    async with client(ResponseCache(route, seconds=0)) as api:
        await api.get("/api/symbols")
        await api.get("/api/symbols")
    assert route.calls == 2


async def test_what_is_kept_is_bounded_by_age_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client asking for distinct URLs filled 2,048 entries of any size and kept them after they went
    stale (106 MB in 300 requests of a reviewer): stale answers go at the next store, and the oldest go
    first past MAX_BYTES."""
    route, clock = Route(), Clock()
    cache = ResponseCache(route, seconds=1.0, clock=clock)
    async with client(cache) as api:
        for i in range(10):
            await api.get(f"/api/ohlc/?symbol=BTCUSDT&pad={i}")
        assert len(cache.kept) == 10
        clock.now += 1.0  # all ten are stale: the next answer stored drops them
        await api.get("/api/ohlc/?symbol=ETHUSDT")
        assert list(cache.kept) == [b"/api/ohlc/?symbol=ETHUSDT"]
        assert cache.bytes == len(b"/api/ohlc/?symbol=ETHUSDT #11")

        monkeypatch.setattr("graphql_api.cache.MAX_BYTES", 400)  # an answer up to 50 is kept
        for i in range(20):  # ~35 bytes each, none stale: the oldest go past 400 bytes
            await api.get(f"/api/ohlc/?symbol=SOLUSDT&pad={i}")
        assert cache.bytes <= 400 and cache.bytes == sum(len(a.body) for a in cache.kept.values())
        assert b"/api/ohlc/?symbol=SOLUSDT&pad=19" in cache.kept
        assert b"/api/ohlc/?symbol=SOLUSDT&pad=0" not in cache.kept
