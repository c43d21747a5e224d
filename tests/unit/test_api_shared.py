"""A shared subscription's payload and frames (graphql_api.shared): what strawberry's own path would send,
errors masked; the fan-out's groups (graphql_api.fanout): one per shape, queues and drops per member."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from cryptostream.settings import load_settings
from graphql_api.fanout import SubscriberDropped
from graphql_api.rollup import Bar
from graphql_api.schema import INTERNAL, build_schema
from graphql_api.shared import Outlet, Shape, shape_of
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
    assert outlet("op-7").frame(payload) == orjson.dumps(message).decode()
    legacy = {"type": "data", "id": "op-7", "payload": {"data": data}}
    assert outlet("op-7", legacy=True).frame(payload) == orjson.dumps(legacy).decode()


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
    """An outlet whose socket is a list: what was sent, in order."""

    __slots__ = ("sent",)

    def __init__(self, op: str) -> None:
        base = outlet(op)
        super().__init__(None, base.schema, None, op, QUERY, base.variables, None, legacy=False)  # type: ignore[arg-type]
        self.sent: list[str] = []

    async def send(self, frame: str) -> None:
        self.sent.append(frame)


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
    a, b, slow = Recorded("a"), Recorded("b"), Recorded("slow")
    shape = Counted(shape_of(a, "candles", BTC, "1s"))
    async with (
        feed.subscribe("candles", BTC, shape=shape, outlet=a) as sa,
        feed.subscribe("candles", BTC, shape=shape_of(b, "candles", BTC, "1s"), outlet=b) as sb,
        feed.subscribe("candles", BTC, shape=shape_of(slow, "candles", BTC, "1s"), outlet=slow) as ss,
    ):
        assert len(feed.groups) == 1 and feed.channels[("candles", *BTC[0], "1s")] == set(
            feed.groups.values()
        )
        for i in range(4):  # the slow one never writes: dropped at the 4th, the others unaffected
            feed.feed([candle(T + i * 1000, float(i))])
            for sub in (sa, sb):
                while sub.items:
                    assert sub.outlet is not None
                    await sub.outlet.send(sub.items.popleft())
        assert len(shape.encoded) == 4  # once per update, not per subscriber
        assert [orjson.loads(f)["payload"]["data"]["candles"]["close"] for f in a.sent] == [
            0.0,
            1.0,
            2.0,
            3.0,
        ]
        assert [f.replace('"id":"b"', '"id":"a"') for f in b.sent] == a.sent
        assert feed.subscribers == 2
        with pytest.raises(SubscriberDropped, match="fell 3 updates behind"):
            await ss.deliver()
        assert slow.sent == [] and len(feed.groups[shape.key].members) == 2
    assert not feed.groups and not feed.channels and feed.subscribers == 0
