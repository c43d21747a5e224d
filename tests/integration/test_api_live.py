"""Live subscriptions end to end: real broker, real processor, real API over real WebSockets (gql).

trade -> Kafka -> processor (live + closed 1 s candles, volatility, status) -> candles topic -> the API's
one consumer -> fan-out -> graphql-transport-ws / graphql-ws -> client. Markets stay apart by venue all the
way: a subscriber of Binance's BTCUSDT never receives Coinbase's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
import websockets
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from cryptostream.codec import encode_progress
from cryptostream.kafka import ensure_topics, start_producer
from cryptostream.models import Trade
from cryptostream.settings import Settings
from graphql_api.app import create_app
from graphql_api.server import BackgroundServer
from ingest.synthetic import SyntheticMarket
from processor.service import Processor
from tests.conftest import T0
from tests.integration.api_helpers import at, iso, of_market, roll_up, subscribers
from tests.integration.helpers import sinks_for
from tests.reference import assert_candles_equal, batch_candles, batch_volatility, one_trade_candle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CANDLE = (
    "exchange symbol interval closed bucket open high low close volume tradeCount vwap buyVolume sellVolume"
)


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


@contextlib.contextmanager
def api(settings: Settings) -> Iterator[BackgroundServer]:
    """The API for ``settings`` on a free port, its live feed positioned at the end of the candles topic."""
    with BackgroundServer(create_app(settings)) as server:
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/health").json()["live_feed"] is not True:
            assert time.monotonic() < deadline, "the API's live feed did not connect"
            time.sleep(0.05)
        yield server


@contextlib.asynccontextmanager
async def processor(settings: Settings) -> AsyncIterator[Processor]:
    proc = Processor(settings, sinks_for(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        await asyncio.wait_for(proc.ready.wait(), 30)
        yield proc
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


class Subscription:
    """A gql subscription running in the background, recording each result with its arrival time."""

    def __init__(self, url: str, query: str, variables: dict[str, Any], protocol: str) -> None:
        self.transport = WebsocketsTransport(url=f"{url}/graphql", subprotocols=[protocol])
        self.request = gql(query)
        self.request.variable_values = variables
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        try:
            async with Client(transport=self.transport, execute_timeout=None) as session:
                async for result in session.subscribe(self.request):
                    self.received.append((time.time(), result))
        except Exception as exc:  # recorded for the test to assert on
            self.error = exc

    def results(self) -> list[dict[str, Any]]:
        return [r for _, r in self.received]

    async def count(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < n:
            if self.error is not None:
                raise AssertionError(f"subscription failed: {self.error!r}")
            assert time.monotonic() < deadline, f"timed out; got {len(self.received)} of {n} results"
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> Subscription:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def until(self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.results()):
            if self.error is not None:
                raise AssertionError(f"subscription failed: {self.error!r}")
            assert time.monotonic() < deadline, f"timed out; got {len(self.received)}: {self.results()[-3:]}"
            await asyncio.sleep(0.02)


async def send_progress(settings: Settings, exchange: str, symbol: str, watermark: int) -> None:
    """A progress record as sources write them: no trade of the market before ``watermark`` follows, so the
    processor closes the windows that end by then (it reads no clock to close them)."""
    producer = await start_producer(settings)
    try:
        await producer.send_and_wait(
            settings.kafka_topic, encode_progress(exchange, [symbol], watermark), key=symbol.encode()
        )
    finally:
        await producer.stop()


async def send_trades(settings: Settings, trades: list[Trade]) -> float:
    """Send trades as the publisher does (JSON value, key = symbol); the wall time just before sending."""
    await ensure_topics(settings)
    producer = await start_producer(settings)
    try:
        sent = time.time()
        for trade in trades:
            await producer.send(
                settings.kafka_topic, orjson.dumps(trade.to_dict()), key=trade.symbol.encode()
            )
        await producer.flush()
        return sent
    finally:
        await producer.stop()


async def test_a_trade_reaches_a_subscriber_as_a_live_candle_within_a_second(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.5, kafka_partitions=2)
    with api(settings) as server:
        async with processor(settings) as proc:
            query = f'subscription($s: [String!]!) {{ candles(symbols: $s, interval: "1s") {{ {CANDLE} }} }}'
            async with Subscription(server.ws_url, query, {"s": ["BTCUSDT"]}, "graphql-transport-ws") as sub:
                await subscribers(server, 1)
                now = int(time.time() * 1000)
                trade = Trade("binance", "BTCUSDT", 43_210.5, 0.25, now, 1, False)
                sent = await send_trades(settings, [trade])

                def has_trade(results: list[dict[str, Any]]) -> bool:
                    return any(r["candles"]["close"] == 43_210.5 for r in results)

                await sub.until(has_trade, timeout=10)
                arrived, first = next((t, r["candles"]) for t, r in sub.received if has_trade([r]))
                assert arrived - sent < 1.0, f"live candle took {arrived - sent:.3f}s"
                assert first["bucket"] == iso(now - now % 1000) and first["tradeCount"] == 1
                assert first["buyVolume"] == 0.25 and first["sellVolume"] == 0.0 and first["interval"] == "1s"
                assert first["exchange"] == "binance"
                # Once the source's progress passes the window's end, the final version follows.
                await send_progress(settings, "binance", "BTCUSDT", now - now % 1000 + 1000)
                await sub.until(lambda rs: any(r["candles"]["closed"] for r in rs), timeout=10)
                final = next(r["candles"] for _, r in sub.received if r["candles"]["closed"])
                assert {k: final[k] for k in ("open", "high", "low", "close", "tradeCount")} == {
                    "open": 43_210.5,
                    "high": 43_210.5,
                    "low": 43_210.5,
                    "close": 43_210.5,
                    "tradeCount": 1,
                }
            # The processor's status messages reach pipelineStatus.
            async with httpx.AsyncClient(base_url=server.url) as http:
                deadline = time.monotonic() + 10
                while True:
                    body = (
                        await http.post(
                            "/graphql",
                            json={
                                "query": "{ pipelineStatus { live lag trades late rejected marketsTotal "
                                "processors { processor alive } symbols { exchange symbol lastTradeTime } } }"
                            },
                        )
                    ).json()["data"]["pipelineStatus"]
                    if body["trades"] >= 1 and body["symbols"]:
                        break
                    assert time.monotonic() < deadline, body
                    await asyncio.sleep(0.1)
                assert (
                    body["live"] is True and body["lag"] == 0 and body["late"] == 0 and body["rejected"] == 0
                )
                assert body["processors"] == [{"processor": proc.member, "alive": True}]
                assert body["marketsTotal"] == 1
                assert body["symbols"] == [
                    {"exchange": "binance", "symbol": "BTCUSDT", "lastTradeTime": iso(now)}
                ]


MINUTE = T0 - T0 % 60_000 + 60_000  # 2023-11-14T22:14:00Z, a minute boundary
END = MINUTE + 601_000  # progress past the sentinel's second


def with_sentinel(trades: list[Trade]) -> list[Trade]:
    """``trades`` plus one trade ten minutes later: its arrival moves the close frontier past every earlier
    minute, and once it is closed too (by :data:`END` progress), each of them is published as final: the
    API learns that a minute is final from the closed seconds after it, by event time."""
    last = trades[-1]
    return [*trades, Trade(last.exchange, last.symbol, last.price, 1.0, MINUTE + 600_000, 10**9, False)]


@pytest.mark.parametrize("protocol", ["graphql-ws", "graphql-transport-ws"])
async def test_minute_candles_rolled_up_live_equal_the_batch_result(
    make_settings: Callable[..., Settings], protocol: str, db: Any
) -> None:
    # The demo venue, configured after binance and named explicitly (ETHUSDT alone means binance).
    settings = make_settings(
        max_buffer_seconds=1.0,
        parquet_chunk_seconds=0.5,
        volatility_window_seconds=10,
        exchanges=["binance", "synthetic"],
    )
    trades = SyntheticMarket(["ETHUSDT"], rate=25, seed=3).generate(3_000, start_ms=MINUTE)  # two minutes
    expected_seconds = batch_candles(trades)
    minutes = roll_up(expected_seconds, 60_000)
    volatility = batch_volatility(expected_seconds, 10)
    with api(settings) as server:
        async with processor(settings):
            candles_q = (
                'subscription { candles(symbols: ["ETHUSDT"], interval: "1m", exchange: "synthetic") '
                f"{{ {CANDLE} }} }}"
            )
            vol_q = (
                'subscription { volatility(symbols: ["ETHUSDT"], exchange: "synthetic") '
                "{ exchange symbol bucket volatility windowSeconds } }"
            )
            async with (
                Subscription(server.ws_url, candles_q, {}, protocol) as minute_sub,
                Subscription(server.ws_url, vol_q, {}, protocol) as vol_sub,
            ):
                await subscribers(server, 2)
                await send_trades(settings, with_sentinel(trades))
                await send_progress(settings, "synthetic", "ETHUSDT", END)

                def all_closed(results: list[dict[str, Any]]) -> bool:
                    return sum(bool(r["candles"]["closed"]) for r in results) >= len(minutes)

                await minute_sub.until(all_closed, timeout=30)
                await vol_sub.count(len(volatility), timeout=30)
    updates = [r["candles"] for _, r in minute_sub.received]
    assert {u["exchange"] for u in updates} == {"synthetic"}
    closed = {("synthetic", "ETHUSDT", _ms(u["bucket"])): _as_row(u) for u in updates if u["closed"]}
    assert closed.keys() == minutes.keys(), [(u["bucket"], u["closed"], u["tradeCount"]) for u in updates]
    assert_candles_equal(closed, minutes)
    for bucket in {u["bucket"] for u in updates if _ms(u["bucket"]) < MINUTE + 600_000}:
        counts = [u["tradeCount"] for u in updates if u["bucket"] == bucket]
        assert counts == sorted(counts), "an open minute's trade count never goes back"
        assert [u["closed"] for u in updates if u["bucket"] == bucket][-1] is True
    got = {
        (r["volatility"]["exchange"], "ETHUSDT", _ms(r["volatility"]["bucket"])): r["volatility"][
            "volatility"
        ]
        for _, r in vol_sub.received
        if _ms(r["volatility"]["bucket"]) < MINUTE + 600_000
    }
    assert got.keys() == volatility.keys()
    assert all(abs(got[k] - v) <= 1e-12 + 1e-7 * abs(v) for k, v in volatility.items())


async def test_subscriptions_to_one_symbol_on_two_venues_are_kept_apart(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    settings = make_settings(max_buffer_seconds=1.0, parquet_chunk_seconds=0.5)
    venues = ("binance", "coinbase")
    trades = []
    for i, exchange in enumerate(venues):  # the same symbol, two markets with their own prices
        market = SyntheticMarket(["BTCUSDT"], rate=15, seed=30 + i, exchange=exchange)
        trades += with_sentinel(market.generate(1_800, start_ms=MINUTE))  # two minutes
    trades.sort(key=lambda t: t.timestamp)
    minutes = roll_up(batch_candles(trades), 60_000)
    expected = {
        e: {k: v for k, v in of_market(minutes, e, "BTCUSDT").items() if k[2] < MINUTE + 600_000}
        for e in venues
    }
    query = 'subscription($e: String) { candles(symbols: ["BTCUSDT"], interval: "1m", exchange: $e) { %s } }'
    with api(settings) as server:
        async with processor(settings):
            async with (
                Subscription(server.ws_url, query % CANDLE, {"e": "binance"}, "graphql-transport-ws") as b,
                Subscription(server.ws_url, query % CANDLE, {"e": "coinbase"}, "graphql-transport-ws") as c,
                Subscription(server.ws_url, query % CANDLE, {}, "graphql-transport-ws") as alone,
            ):
                await subscribers(server, 3)
                await send_trades(settings, trades)
                for exchange in venues:
                    await send_progress(settings, exchange, "BTCUSDT", END)
                for sub, exchange in ((b, "binance"), (c, "coinbase"), (alone, "binance")):
                    await sub.until(closed_at_least(len(expected[exchange])), timeout=30)
    for sub, exchange in ((b, "binance"), (c, "coinbase"), (alone, "binance")):
        updates = [r["candles"] for r in sub.results()]
        assert {u["exchange"] for u in updates} == {exchange}, "another venue's candles reached it"
        closed = {
            (exchange, "BTCUSDT", _ms(u["bucket"])): _as_row(u)
            for u in updates
            if u["closed"] and _ms(u["bucket"]) < MINUTE + 600_000
        }
        assert closed.keys() == expected[exchange].keys()
        assert_candles_equal(closed, expected[exchange])
    assert expected["binance"] != expected["coinbase"]


def closed_at_least(n: int) -> Callable[[list[dict[str, Any]]], bool]:
    """A condition for :meth:`Subscription.until`: ``n`` final candles received."""

    def done(results: list[dict[str, Any]]) -> bool:
        return sum(bool(r["candles"]["closed"]) for r in results) >= n

    return done


def _as_row(update: dict[str, Any]) -> dict[str, Any]:
    return {
        **update,
        "trade_count": update["tradeCount"],
        "buy_volume": update["buyVolume"],
        "sell_volume": update["sellVolume"],
    }


async def test_a_late_subscriber_gets_the_open_minute_seeded_from_the_store(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    settings = make_settings(max_buffer_seconds=1.0, parquet_chunk_seconds=0.5)
    trades = SyntheticMarket(["SOLUSDT"], rate=20, seed=9, exchange="binance").generate(
        2_400, start_ms=MINUTE
    )
    cut = MINUTE + 90_000  # subscribe half way through the second minute
    first = [t for t in trades if t.timestamp < cut]
    seconds = batch_candles(trades)
    minutes = roll_up(seconds, 60_000)
    with api(settings) as server:
        async with processor(settings):
            await send_trades(settings, first)
            await send_progress(settings, "binance", "SOLUSDT", cut)  # the first part is complete
            stored = sum(1 for _, _, b in seconds if b < cut)
            deadline = time.monotonic() + 20  # every second of the first part is closed and checkpointed
            while await db.fetchval("SELECT count(*) FROM ohlc_1s WHERE bucket < $1", at(cut)) < stored:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            query = f'subscription {{ candles(symbols: ["SOLUSDT"], interval: "1m") {{ {CANDLE} }} }}'
            async with Subscription(server.ws_url, query, {}, "graphql-transport-ws") as sub:
                await sub.until(lambda rs: len(rs) >= 1)  # the open minute is shown right away
                seeded = sub.received[0][1]["candles"]
                assert seeded["bucket"] == iso(MINUTE + 60_000) and not seeded["closed"]
                assert seeded["tradeCount"] == sum(1 for t in first if t.timestamp >= MINUTE + 60_000)
                await send_trades(settings, with_sentinel(trades)[len(first) :])
                await send_progress(settings, "binance", "SOLUSDT", END)
                later = {k for k in minutes if k[2] >= MINUTE + 60_000}
                await sub.until(lambda rs: sum(r["candles"]["closed"] for r in rs) >= len(later), timeout=30)
    closed = {
        ("binance", "SOLUSDT", _ms(r["candles"]["bucket"])): _as_row(r["candles"])
        for _, r in sub.received
        if r["candles"]["closed"]
    }
    assert closed.keys() == later
    assert_candles_equal(closed, {k: minutes[k] for k in later})


async def test_a_subscriber_to_hours_on_a_fresh_api_gets_the_hour_from_stored_minutes_and_seconds(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    """An API started after the processor checkpointed the hour so far holds none of its seconds: the open
    hour is seeded from the store's 1 m candles before the last minute and its 1 s rows after it, and is
    the batch roll-up of every second, open and then closed."""
    settings = make_settings(max_buffer_seconds=1.0, parquet_chunk_seconds=0.5)
    trades = SyntheticMarket(["SOLUSDT"], rate=20, seed=11, exchange="binance").generate(
        3_600, start_ms=MINUTE
    )
    cut = MINUTE + 150_000  # three minutes in, half way through one
    first = [t for t in trades if t.timestamp < cut]
    hour = MINUTE - MINUTE % 3_600_000
    async with processor(settings):
        await send_trades(settings, first)
        await send_progress(settings, "binance", "SOLUSDT", cut)
        stored = sum(1 for _, _, b in batch_candles(first) if b < cut)
        deadline = time.monotonic() + 20
        while await db.fetchval("SELECT count(*) FROM ohlc_1s WHERE bucket < $1", at(cut)) < stored:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        with api(settings) as server:  # started now: its feed begins at the log end
            query = f'subscription {{ candles(symbols: ["SOLUSDT"], interval: "1h") {{ {CANDLE} }} }}'
            async with Subscription(server.ws_url, query, {}, "graphql-transport-ws") as sub:
                await sub.until(lambda rs: len(rs) >= 1)
                seeded = sub.received[0][1]["candles"]
                await send_trades(settings, trades[len(first) :])
                await send_progress(settings, "binance", "SOLUSDT", hour + 3_600_000)
                await sub.until(lambda rs: rs[-1]["candles"]["closed"], timeout=30)
                final = sub.results()[-1]["candles"]
    key = ("binance", "SOLUSDT", hour)
    assert seeded["bucket"] == iso(hour) and not seeded["closed"]
    assert_candles_equal({key: _as_row(seeded)}, {key: roll_up(batch_candles(first), 3_600_000)[key]})
    assert_candles_equal({key: _as_row(final)}, roll_up(batch_candles(trades), 3_600_000))


async def test_a_stalled_client_is_dropped_and_never_holds_back_the_others(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(api_subscriber_queue=100)
    n = 20_000  # ~6 MB of messages: more than the kernel buffers a stalled socket before it pushes back
    with api(settings) as server:
        query = f'subscription {{ candles(symbols: ["BTCUSDT"]) {{ {CANDLE} }} }}'
        dropped_before = _dropped(server)
        async with Subscription(server.ws_url, query, {}, "graphql-transport-ws") as fast:
            stalled = await _stalled_client(server, query)
            await subscribers(server, 2)
            producer = await start_producer(settings)
            try:
                for i in range(n):
                    await producer.send(
                        settings.kafka_candles_topic,
                        one_trade_candle(T0 + i * 1000, float(i + 1)),
                        key=b"BTCUSDT",
                    )
                await producer.flush()
            finally:
                await producer.stop()
            await fast.count(n, timeout=120)
            assert [r["candles"]["close"] for _, r in fast.received] == [float(i + 1) for i in range(n)]
            await subscribers(server, 1)  # the stalled one was dropped
            assert _dropped(server) == dropped_before + 1
            stalled.transport.abort()


def _dropped(server: BackgroundServer) -> float:
    """The API's count of dropped candle subscribers (process-wide, so tests compare before and after)."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('cryptostream_api_subscribers_dropped_total{kind="candles"}'):
            return float(line.split()[-1])
    return 0.0


async def _stalled_client(server: BackgroundServer, query: str) -> Any:
    """A client that subscribes and then never reads (a tiny receive buffer, one message of queue)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    sock.setblocking(False)
    connection = await websockets.connect(
        f"{server.ws_url}/graphql", sock=sock, subprotocols=["graphql-transport-ws"], max_queue=1
    )
    await connection.send(orjson.dumps({"type": "connection_init"}).decode())
    assert orjson.loads(await connection.recv())["type"] == "connection_ack"
    await connection.send(
        orjson.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}).decode()
    )
    return connection
