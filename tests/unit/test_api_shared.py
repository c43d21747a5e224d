"""A shared subscription's payload and frames (graphql_api.shared): what strawberry's own path would send,
errors masked; the fan-out's groups (graphql_api.fanout): one per shape, queues and drops per member."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from starlette.websockets import WebSocket

from cryptostream.settings import load_settings
from graphql_api.fanout import Subscriber, SubscriberDropped
from graphql_api.rollup import Bar
from graphql_api.schema import INTERNAL, build_schema
from graphql_api.shared import Message, Outlet, Shape, shape_of
from graphql_api.types import CandleUpdate
from tests.reference import one_trade_candle as candle
from tests.unit.test_api_fanout import BTC, ETH, T, fanout

QUERY = "subscription($s: [String!]!) { candles(symbols: $s) { symbol bucket close closed } }"


def outlet(op: str = "1", query: str = QUERY, legacy: bool = False, **variables: Any) -> Outlet:
    schema = build_schema(load_settings(database_url=None))
    return Outlet(None, schema, None, op, query, variables or {"s": ["BTCUSDT"]}, None, legacy=legacy)  # type: ignore[arg-type]


def update(close: float) -> CandleUpdate:
    bar = Bar.from_message(orjson.loads(candle(T, close)), T)
    return CandleUpdate.from_bar("binance", "BTCUSDT", "1s", bar, False)


def test_frames_are_the_messages_strawberry_writes_on_each_protocol() -> None:
    shape = shape_of(outlet(), "candles", BTC, "1s")
    payload = shape.payload(update(5.0))
    data = {
        "candles": {"symbol": "BTCUSDT", "bucket": "2023-11-14T22:14:00+00:00", "close": 5.0, "closed": False}
    }
    assert orjson.loads(payload) == {"data": data}
    message = {"id": "op-7", "type": "next", "payload": {"data": data}}
    assert outlet("op-7").frame(payload).text == orjson.dumps(message).decode()
    legacy = {"type": "data", "id": "op-7", "payload": {"data": data}}
    assert outlet("op-7", legacy=True).frame(payload).text == orjson.dumps(legacy).decode()


def test_an_update_that_fails_is_an_error_masked_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    shape = shape_of(outlet(), "candles", BTC, "1s")
    broken = SimpleNamespace(symbol="BTCUSDT")  # no bucket, close, closed: a bug, not the user's doing
    body = orjson.loads(shape.payload(broken))
    assert body["data"] is None
    assert {e["message"] for e in body["errors"]} == {INTERNAL}
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_shapes_differ_by_document_variables_and_markets() -> None:
    key = shape_of(outlet(), "candles", BTC, "1s").key
    assert shape_of(outlet("other-id", legacy=True), "candles", BTC, "1s").key == key
    assert shape_of(outlet(s=["ETHUSDT"]), "candles", ETH, "1s").key != key
    assert shape_of(outlet(), "candles", [("coinbase", "BTCUSDT")], "1s").key != key
    assert shape_of(outlet(query=QUERY.replace("close ", "")), "candles", BTC, "1s").key != key


class Recorded(Outlet):
    """An outlet whose socket is a list: what was sent, in order. A ``stalled`` one takes nothing: each send
    waits (a client that stopped reading)."""

    __slots__ = ("messages", "sent", "stalled")

    def __init__(self, op: str, stalled: bool = False) -> None:
        base = outlet(op)
        super().__init__(None, base.schema, None, op, QUERY, base.variables, None, legacy=False)  # type: ignore[arg-type]
        self.sent: list[str] = []
        self.messages: list[Message] = []
        self.stalled = stalled

    def start(self, message: Message) -> Awaitable[None] | None:
        if self.stalled:
            return asyncio.get_running_loop().create_future()  # never done
        self.sent.append(message.text)
        self.messages.append(message)
        return None


class Counted:
    """A shape that counts its encodings."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.key = shape.key
        self.encoded: list[Any] = []

    def payload(self, item: Any) -> str:
        self.encoded.append(item)
        return self.shape.payload(item)


async def test_one_group_per_shape_one_encoding_per_update_and_drops_per_member(tmp_path: Path) -> None:
    feed = fanout(tmp_path, api_subscriber_queue=3)
    a, b, slow = Recorded("a"), Recorded("b"), Recorded("slow", stalled=True)
    twin = Recorded("a")  # another socket whose operation has a's id: the very same frame
    shape = Counted(shape_of(a, "candles", BTC, "1s"))
    async with (
        feed.subscribe("candles", BTC, shape=shape, outlet=a),
        feed.subscribe("candles", BTC, shape=shape_of(b, "candles", BTC, "1s"), outlet=b),
        feed.subscribe("candles", BTC, shape=shape_of(twin, "candles", BTC, "1s"), outlet=twin),
        feed.subscribe("candles", BTC, shape=shape_of(slow, "candles", BTC, "1s"), outlet=slow) as stalled,
    ):
        (group,) = feed.groups.values()
        assert feed.channels[("candles", *BTC[0], "1s")] == {group}
        # the stalled one: its first send waits, 3 more queue, the 5th drops it; the others go on
        for i in range(5):
            feed.feed([candle(T + i * 1000, float(i))])
            assert len(a.sent) == len(b.sent) == i + 1  # written at once: no task woke for them
        assert len(shape.encoded) == 5  # once per update, not per subscriber
        closes = [orjson.loads(frame)["payload"]["data"]["candles"]["close"] for frame in a.sent]
        assert closes == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert [frame.replace('"id":"b"', '"id":"a"') for frame in b.sent] == a.sent
        assert all(x is y for x, y in zip(twin.messages, a.messages, strict=True))  # framed once per id
        assert not any(x is y for x, y in zip(b.messages, a.messages, strict=True))
        assert feed.subscribers == 3 and len(group.members) == 3
        with pytest.raises(SubscriberDropped, match="fell 3 updates behind"):
            await stalled.deliver()
        assert slow.sent == [] and stalled.writer is None  # its waiting send was cancelled
    assert not feed.groups and not feed.channels and feed.subscribers == 0


async def test_frames_go_the_short_way_when_the_socket_takes_them_else_the_usual_way(tmp_path: Path) -> None:
    """The fan-out's inner loop writes a frame's bytes with ``outlet.write`` when there is one and the socket
    takes them; when it answers False (paused, closing) the frame goes through ``start`` as before; when it
    raises, that subscription ends with the error and the others go on."""
    feed = fanout(tmp_path, api_subscriber_queue=3)
    direct, refused, broken = Recorded("a"), Recorded("a"), Recorded("a")
    wires: list[bytes] = []

    def take(wire: bytes) -> bool:
        wires.append(wire)
        return True

    def fail(wire: bytes) -> bool:
        raise RuntimeError("the socket broke")

    direct.write, refused.write, broken.write = take, lambda wire: False, fail
    shape = shape_of(direct, "candles", BTC, "1s")
    async with (
        feed.subscribe("candles", BTC, shape=shape, outlet=direct),
        feed.subscribe("candles", BTC, shape=shape, outlet=refused),
        feed.subscribe("candles", BTC, shape=shape, outlet=broken) as failing,
    ):
        (group,) = feed.groups.values()
        for i in range(2):
            feed.feed([candle(T + i * 1000, float(i))])
        assert direct.sent == [] and len(wires) == 2  # written the short way, never through start
        assert [Message(text).wire for text in refused.sent] == wires  # the same bytes, the ordinary way
        assert broken.sent == []
        with pytest.raises(RuntimeError, match="the socket broke"):
            await asyncio.wait_for(failing.deliver(), 5)
        assert group.written == 2  # the frames that went the short way, and only those


async def _socket(fail: BaseException | None = None) -> tuple[WebSocket, list[dict[str, Any]]]:
    """A Starlette WebSocket over the ASGI interface, accepted; its sends are recorded, or raise ``fail``."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        if fail is not None and message["type"] == "websocket.send":
            raise fail
        sent.append(message)

    ws = WebSocket({"type": "websocket", "path": "/graphql", "headers": []}, receive, send)
    await ws.accept()
    return ws, sent


def _shared_outlet(ws: WebSocket) -> Outlet:
    schema = build_schema(load_settings(database_url=None))
    return Outlet(ws, schema, None, "1", QUERY, {"s": ["BTCUSDT"]}, None, legacy=False)  # type: ignore[arg-type]


async def test_an_update_that_meets_its_socket_closed_ends_the_subscription_quietly() -> None:
    """The server closed the socket (graphql-transport-ws does, for a duplicate id or a malformed message)
    before the operation ended: its next update meets the socket closed. The subscription ends there, as
    when a client leaves; it was an error result, logged as "GraphQL resolver failed" with a traceback."""
    ws, sent = await _socket()
    await ws.close(4409, "Subscriber for 1 already exists")
    out = _shared_outlet(ws)
    sub = Subscriber("candles", 8, outlet=out)
    sub.offer(out.frame(shape_of(out, "candles", BTC, "1s").payload(update(5.0))))
    await asyncio.wait_for(sub.deliver(), 5)  # returns: no exception
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]  # nothing after the close


async def test_a_send_that_fails_otherwise_is_still_an_error() -> None:
    ws, _ = await _socket(fail=RuntimeError("a bug in the send path"))
    out = _shared_outlet(ws)
    sub = Subscriber("candles", 8, outlet=out)
    sub.offer(out.frame(shape_of(out, "candles", BTC, "1s").payload(update(5.0))))
    with pytest.raises(RuntimeError, match="a bug in the send path"):
        await asyncio.wait_for(sub.deliver(), 5)
