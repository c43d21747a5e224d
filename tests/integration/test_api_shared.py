"""Shared live updates (:mod:`graphql_api.shared`) as clients see them, raw frames on real sockets, both
protocols: every subscriber gets, byte for byte, the messages strawberry's own per-subscriber path sends;
subscribers of one shape get the same payload and share one group, another shape gets its own; resolver
errors, ``complete`` and ``stop`` still end just their operation. Updates go to the sockets as frames written
straight to the transport (:mod:`graphql_api.wsprotocol`), parsed here by websockets' client. (The slow-
subscriber drop over shared delivery: ``test_a_stalled_client_is_dropped_and_never_holds_back_the_others`` in
test_api_live.py.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from cryptostream.kafka import start_producer
from cryptostream.settings import Settings
from graphql_api.app import create_app
from graphql_api.fanout import Fanout
from graphql_api.server import BackgroundServer
from tests.conftest import T0
from tests.integration.api_helpers import subscribers
from tests.integration.test_api_websocket import LEGACY_WS, TRANSPORT_WS, connect, receive, start
from tests.reference import one_trade_candle

pytestmark = pytest.mark.integration

SAME = "subscription Live($s: [String!]!) { candles(symbols: $s) { symbol bucket close closed } }"
OTHER = 'subscription { candles(symbols: ["BTCUSDT"]) { close volume } }'
# (protocol, operation id, query, variables): three subscribers of one shape, one of another
CLIENTS = [
    (TRANSPORT_WS, "1", SAME, {"s": ["BTCUSDT"]}),
    (TRANSPORT_WS, "x-2", SAME, {"s": ["BTCUSDT"]}),
    (LEGACY_WS, "1", SAME, {"s": ["BTCUSDT"]}),
    (TRANSPORT_WS, "1", OTHER, {}),
]


def _live(server: BackgroundServer) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/health").json()["live_feed"] is not True:
        assert time.monotonic() < deadline, "the API's live feed did not connect"
        time.sleep(0.05)


def _fanout(app: FastAPI) -> Fanout:
    fanout = app.state.services.fanout
    assert isinstance(fanout, Fanout)
    return fanout


@pytest.fixture
def apis(make_settings: Callable[..., Settings]) -> Iterator[dict[bool, tuple[FastAPI, BackgroundServer]]]:
    """Two APIs on one candles topic: shared updates (True) and strawberry's per-subscriber path (False)."""
    settings = make_settings()
    apps = {shared: create_app(settings, shared_updates=shared) for shared in (True, False)}
    with BackgroundServer(apps[True]) as shared, BackgroundServer(apps[False]) as own:
        _live(shared)
        _live(own)
        yield {True: (apps[True], shared), False: (apps[False], own)}


async def _publish(settings: Settings, closes: list[float]) -> None:
    producer = await start_producer(settings)
    try:
        for i, close in enumerate(closes):
            candle = one_trade_candle(T0 + i * 1000, close, closed=False)
            await producer.send(settings.kafka_candles_topic, candle, key=b"BTCUSDT")
        await producer.flush()
    finally:
        await producer.stop()


async def _frames(ws: Any, op: str, n: int) -> list[str]:
    """The next ``n`` raw text frames of operation ``op`` (keep-alives skipped)."""
    frames: list[str] = []
    deadline = time.monotonic() + 20
    while len(frames) < n:
        text = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        if orjson.loads(text).get("id") == op:
            frames.append(text)
    return frames


async def test_shared_updates_are_byte_for_byte_what_each_client_got_before(
    apis: dict[bool, tuple[FastAPI, BackgroundServer]],
) -> None:
    settings: Settings = apis[True][0].state.services.settings
    closes = [100.0 + i for i in range(5)]
    sockets: dict[bool, list[Any]] = {}
    try:
        for shared, (_, server) in apis.items():
            sockets[shared] = []
            for protocol, op, query, variables in CLIENTS:
                ws = await connect(server, protocol)
                await start(ws, protocol, op, query, variables=variables)
                sockets[shared].append(ws)
            await subscribers(server, len(CLIENTS))
        groups = _fanout(apis[True][0]).groups
        assert sorted(len(g.members) for g in groups.values()) == [1, 3]  # two shapes, one group each
        assert not _fanout(apis[False][0]).groups

        await _publish(settings, closes)
        got: dict[bool, list[list[str]]] = {}
        for shared, wss in sockets.items():
            got[shared] = [await _frames(ws, c[1], len(closes)) for ws, c in zip(wss, CLIENTS, strict=True)]
        written = sum(group.written for group in groups.values())
    finally:
        for wss in sockets.values():
            for ws in wss:
                await ws.close()

    assert got[True] == got[False]  # the very bytes strawberry sends, on both protocols
    # ... and the shared API wrote every one of them straight to its socket, framed once per operation id
    assert written == len(CLIENTS) * len(closes)
    same, same_other_id, legacy, other = got[True]
    messages = [orjson.loads(text) for text in same]
    assert [m["type"] for m in messages] == ["next"] * len(closes)
    assert [m["payload"]["data"]["candles"]["close"] for m in messages] == closes
    payloads = [[orjson.loads(text)["payload"] for text in frames] for frames in got[True]]
    assert payloads[0] == payloads[1] == payloads[2]  # one shape: one payload, whatever the id or protocol
    assert [orjson.loads(t)["id"] for t in same_other_id] == ["x-2"] * len(closes)
    assert [orjson.loads(t)["type"] for t in legacy] == ["data"] * len(closes)
    assert [p["data"]["candles"] for p in payloads[3]] == [{"close": c, "volume": 1.0} for c in closes]


async def test_errors_complete_and_stop_end_one_operation_and_the_shape_lives_on(
    apis: dict[bool, tuple[FastAPI, BackgroundServer]],
) -> None:
    app, server = apis[True]
    settings: Settings = app.state.services.settings
    fanout = _fanout(app)
    transport = await connect(server, TRANSPORT_WS)
    legacy = await connect(server, LEGACY_WS)
    try:
        # a resolver's error is a result with errors, then complete, as before
        bad = 'subscription { candles(symbols: ["BTCUSDT"], interval: "7s") { close } }'
        await start(transport, TRANSPORT_WS, "bad", bad)
        reply = await receive(transport, "bad")
        assert reply["type"] == "next" and reply["payload"]["data"] is None, reply
        assert "7s" in reply["payload"]["errors"][0]["message"]
        assert (await receive(transport, "bad"))["type"] == "complete"

        for op in ("a", "b"):
            await start(transport, TRANSPORT_WS, op, SAME, variables={"s": ["BTCUSDT"]})
        await start(legacy, LEGACY_WS, "c", SAME, variables={"s": ["BTCUSDT"]})
        await subscribers(server, 3)
        assert [len(g.members) for g in fanout.groups.values()] == [3]

        await transport.send(orjson.dumps({"id": "a", "type": "complete"}).decode())
        await legacy.send(orjson.dumps({"id": "c", "type": "stop"}).decode())
        assert (await receive(legacy, "c"))["type"] == "complete"  # graphql-ws answers a stop
        await subscribers(server, 1)
        assert [len(g.members) for g in fanout.groups.values()] == [1]

        await _publish(settings, [7.0])
        update = await receive(transport, "b")
        assert update["payload"]["data"]["candles"]["close"] == 7.0
        with pytest.raises(TimeoutError):  # nothing more for the completed operation
            await receive(transport, "a", timeout=0.5)
    finally:
        await transport.close()
        await legacy.close()
    await subscribers(server, 0)
    assert not fanout.groups and not fanout.channels


async def test_a_connection_that_negotiated_compression_gets_its_frames_through_asgi(
    make_settings: Callable[..., Settings],
) -> None:
    """Frames written straight to the transport are uncompressed: a connection that negotiated
    permessage-deflate (an operator may turn it on; websockets' client asks for it) is offered no direct
    write, so its updates go through ASGI and websockets compresses them, and the client reads them."""
    settings = make_settings()
    app = create_app(settings, shared_updates=True)
    with BackgroundServer(app, ws_per_message_deflate=True) as server:
        _live(server)
        ws = await connect(server, TRANSPORT_WS)
        try:
            assert ws.protocol.extensions, "the client and server should have negotiated permessage-deflate"
            await start(ws, TRANSPORT_WS, "1", SAME, variables={"s": ["BTCUSDT"]})
            await subscribers(server, 1)
            (group,) = _fanout(app).groups.values()
            await _publish(settings, [3.0, 4.0])
            frames = await _frames(ws, "1", 2)
        finally:
            await ws.close()
    assert [orjson.loads(f)["payload"]["data"]["candles"]["close"] for f in frames] == [3.0, 4.0]
    assert group.written == 0  # none went the direct way
