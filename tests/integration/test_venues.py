"""Venues kept apart on the real broker and database: one symbol traded on two venues is two candle series,
a venue that stalls is judged by its own progress only, and demo data never mixes with a live venue's."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest

from cryptostream.codec import PROGRESS_PREFIX, Progress, trade_from_dict
from cryptostream.models import Trade
from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from ingest.exchanges import build, live_trades, load_markets
from ingest.service import run_ingest
from ingest.synthetic import SyntheticMarket
from processor.service import Processor
from tests.conftest import T0
from tests.integration.api_helpers import api_settings
from tests.integration.exchange_servers import FakeExchange
from tests.integration.helpers import db_count, read_topic, sinks_for
from tests.integration.test_deterministic_time import dead_letters, stored_equal
from tests.reference import batch_candles

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def venue(exchange: str, seed: int, n: int) -> list[Trade]:
    market = SyntheticMarket(
        SYMBOLS, rate=200, seed=seed, disorder_ms=300, duplicate_rate=0.02, exchange=exchange
    )
    return sorted(market.generate(n, T0), key=lambda t: t.timestamp)


async def wait_stored(settings: Any, n: int, processor: Processor, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while await db_count(settings.database_dsn) < n:
        assert time.monotonic() < deadline, processor.stats
        await asyncio.sleep(0.2)


async def test_one_symbol_on_two_venues_is_two_series_and_a_stalled_venue_is_not_late(
    make_settings, produce, db
):
    """Binance and Coinbase trade the same symbols in one partition. Both run for 10 s; then Binance stalls
    while Coinbase trades and closes on past Binance's end; then Binance's next 10 s arrive, behind
    Coinbase. With one watermark per symbol they would all be late; per venue none is, and each series
    equals its batch."""
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.3)
    binance, coinbase = venue("binance", 1, 4000), venue("coinbase", 2, 8000)  # ~20 s and ~40 s of trading
    cut = T0 + 10_000
    assert binance[-1].timestamp > cut + 5_000 and coinbase[-1].timestamp > binance[-1].timestamp + 5_000
    head = [t for t in binance + coinbase if t.timestamp < cut]
    both = [Progress("binance", tuple(SYMBOLS), cut), Progress("coinbase", tuple(SYMBOLS), cut)]
    await produce(settings, head, close=False, progress=both)
    processor = Processor(settings, sinks_for(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await wait_stored(settings, len(batch_candles(head)), processor)
        await produce(settings, [t for t in coinbase if t.timestamp >= cut])  # binance says nothing
        await wait_stored(settings, len(batch_candles(head + coinbase)), processor)
        await produce(settings, [t for t in binance if t.timestamp >= cut])
        expected = batch_candles(binance + coinbase)
        await wait_stored(settings, len(expected), processor)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert {k[0] for k in expected} == {"binance", "coinbase"}
    assert {(k[0], k[1]) for k in expected} == {(e, s) for e in ("binance", "coinbase") for s in SYMBOLS}
    assert processor.stats.late == 0
    await stored_equal(settings, expected)
    assert await dead_letters(settings) == Counter()


async def test_a_demo_run_then_a_live_run_keep_their_series_apart(make_settings, db, tmp_path):
    """`make demo` then `make run` on one database and archive: the synthetic market's BTCUSDT and Binance's
    are two markets, each stored exactly; the API marks the demo one and answers a bare symbol with the live
    venue."""

    async def trading(ex: FakeExchange, ws) -> None:
        for _ in range(15):
            await ex.send_trades(ws, "BTCUSDT", 6)
            await ex.send_trades(ws, "ETHUSDT", 2)
            await asyncio.sleep(0.1)

    server = await FakeExchange("binance", ["BTC-USDT", "ETH-USDT"], [trading]).start()
    settings = make_settings(
        exchanges="binance",
        symbols="BTCUSDT,ETHUSDT",
        binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url,
        max_buffer_seconds=0.5,
        parquet_chunk_seconds=0.3,
        batch_size=50,
    )
    processor = Processor(settings, sinks_for(settings))
    stop_processor = asyncio.Event()
    processing = asyncio.create_task(processor.run(stop_processor))
    http = httpx.AsyncClient(timeout=5.0)
    try:
        demo_stop = asyncio.Event()  # the demo: the synthetic market for about two seconds
        demo = SyntheticMarket(SYMBOLS, rate=100, seed=3).stream(stop=demo_stop, progress_ms=200)
        demo_run = asyncio.create_task(run_ingest(settings, demo, demo_stop, name="synthetic"))
        await asyncio.sleep(2.0)
        demo_stop.set()
        await asyncio.wait_for(demo_run, 30)

        live_stop = asyncio.Event()  # then the live feed, same database and archive
        feeds = build(settings, http, await load_markets(settings, http))
        source = live_trades(settings, feeds, stop=live_stop)
        live = asyncio.create_task(run_ingest(settings, source, live_stop))
        await asyncio.wait_for(server.done.wait(), 60)
        last = max(t.timestamp for t in server.truth.values())
        while time.time() * 1000 < last + 1000 + 600:  # the feed's progress passes the last second
            await asyncio.sleep(0.1)
        records = await read_topic(settings, settings.kafka_topic, expect=1)
        trades = [
            trade_from_dict(orjson.loads(r.value)) for r in records if not r.value.startswith(PROGRESS_PREFIX)
        ]
        expected = batch_candles(trades)
        await wait_stored(settings, len(expected), processor)
        live_stop.set()
        await asyncio.wait_for(live, 30)
    finally:
        stop_processor.set()
        await asyncio.wait_for(processing, 30)
        await http.aclose()
        await server.stop()
    live_truth = batch_candles(
        Trade(t.exchange, t.symbol, t.price, t.quantity, t.timestamp, t.trade_id, t.is_buyer_maker)
        for t in server.truth.values()
    )
    assert {k: v for k, v in expected.items() if k[0] == "binance"}.keys() == live_truth.keys()
    assert {k[0] for k in expected} == {"synthetic", "binance"}
    await stored_equal(settings, expected)

    api = api_settings(settings.database_dsn, tmp_path / "api", symbols=SYMBOLS, exchanges="binance")
    with BackgroundServer(create_app(api)) as served, httpx.Client(base_url=served.url, timeout=30) as client:
        markets = {(m["exchange"], m["symbol"]): m for m in client.get("/api/markets").json()["markets"]}
        assert {m: row["demo"] for m, row in markets.items()} == {
            (e, s): e == "synthetic" for e in ("binance", "synthetic") for s in SYMBOLS
        }
        body = client.get("/api/ohlc/", params={"symbol": "BTCUSDT", "limit": 10_000}).json()
        assert body["exchange"] == "binance"
        newest = sorted(k[2] for k in live_truth if k[1] == "BTCUSDT")
        assert body["count"] == len(newest)
        assert all(row["exchange"] == "binance" for row in body["data"])
        demo_rows = client.get("/api/ohlc/", params={"symbol": "BTCUSDT", "exchange": "synthetic"}).json()
        assert demo_rows["count"] == sum(1 for k in expected if k[:2] == ("synthetic", "BTCUSDT")) > 0
