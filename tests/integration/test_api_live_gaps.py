"""Live roll-ups that equal the stored candles across what interrupts the API's view of the candles topic.

Each scenario runs the real broker, processor, PostgreSQL and API, lets a minute or an hour close live and
compares the closed candle subscribers got with the one the store holds once the processor has stopped
(its final checkpoint): the API started between the processor's checkpoints, its feed cut off for a few
seconds, a subscriber arriving just after an hour began, the processor killed and restarted.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError

import graphql_api.fanout as fanout_module
from cryptostream.models import Trade
from cryptostream.settings import Settings
from graphql_api.server import BackgroundServer
from ingest.synthetic import SyntheticMarket
from tests.integration.api_helpers import iso, subscribers
from tests.integration.crash import _assignments, spawn_processor
from tests.integration.test_api_live import (
    CANDLE,
    END,
    MINUTE,
    Subscription,
    api,
    processor,
    send_progress,
    send_trades,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXACT = ("open", "high", "low", "close", "tradeCount")  # picked or counted: equal to the bit
SUMS = ("volume", "vwap", "buyVolume", "sellVolume")  # sums: the live fold adds in another order


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def stored(server: BackgroundServer, interval: str, start_ms: int, end_ms: int) -> dict[int, dict[str, Any]]:
    """BTCUSDT's candles on Binance in ``[start_ms, end_ms)`` as the API serves them from the store."""
    query = (
        'query($i: String!, $f: DateTime, $t: DateTime) { candles(symbol: "BTCUSDT", exchange: "binance", '
        f"interval: $i, from: $f, to: $t, limit: 10000) {{ bucket {' '.join(EXACT + SUMS)} }} }}"
    )
    variables = {"i": interval, "f": iso(start_ms), "t": iso(end_ms)}
    body = httpx.post(f"{server.url}/graphql", json={"query": query, "variables": variables}).json()
    assert "errors" not in body, body
    return {_ms(row["bucket"]): row for row in body["data"]["candles"]}


def closed(sub: Subscription, bucket: int) -> list[dict[str, Any]]:
    return [
        r["candles"]
        for r in sub.results()
        if r["candles"]["closed"] and _ms(r["candles"]["bucket"]) == bucket
    ]


def assert_same(live: dict[str, Any], store: dict[str, Any]) -> None:
    assert {k: live[k] for k in EXACT} == {k: store[k] for k in EXACT}
    assert {k: live[k] for k in SUMS} == pytest.approx({k: store[k] for k in SUMS}, rel=1e-12)


def is_closed(bucket: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda results: any(
        r["candles"]["closed"] and _ms(r["candles"]["bucket"]) == bucket for r in results
    )


def minute_of_trades() -> tuple[list[Trade], Trade]:
    trades = SyntheticMarket(["BTCUSDT"], rate=10, seed=7, exchange="binance").generate(900, start_ms=MINUTE)
    trades = [t for t in trades if t.timestamp < MINUTE + 60_000]
    sentinel = Trade("binance", "BTCUSDT", trades[-1].price, 1.0, MINUTE + 600_000, 10**9, False)
    return trades, sentinel


def query(interval: str) -> str:
    return f'subscription {{ candles(symbols: ["BTCUSDT"], interval: "{interval}") {{ {CANDLE} }} }}'


async def test_an_api_started_between_checkpoints_folds_in_what_the_store_does_not_hold_yet(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    """The processor closed and published half a minute, not checkpointed yet (PARQUET_CHUNK_SECONDS=20),
    when the API starts: in neither the store nor a feed that started at the log end, those seconds were
    missing from the minute it closed live (210 of 415 trades). It folds in the log's last checkpoint
    intervals first."""
    settings = make_settings(max_buffer_seconds=1.0, parquet_chunk_seconds=20, exchanges=["binance"])
    trades, sentinel = minute_of_trades()
    first = [t for t in trades if t.timestamp < MINUTE + 30_000]
    async with processor(settings):
        await send_trades(settings, first)
        await send_progress(settings, "binance", "BTCUSDT", MINUTE + 30_000)
        await asyncio.sleep(2)  # seconds 0-29 closed and published, not checkpointed
        with api(settings) as server:
            async with Subscription(server.ws_url, query("1m"), {}, "graphql-transport-ws") as minute:
                await subscribers(server, 1)
                await send_trades(settings, [*trades[len(first) :], sentinel])
                await send_progress(settings, "binance", "BTCUSDT", END)
                await minute.until(is_closed(MINUTE), 30)
    with api(settings) as server:  # the processor has stopped: its final checkpoint holds everything
        store = stored(server, "1m", MINUTE, MINUTE + 60_000)
    assert store[MINUTE]["tradeCount"] == len(trades)
    assert len(closed(minute, MINUTE)) == 1
    assert_same(closed(minute, MINUTE)[0], store[MINUTE])


class Outage:
    """The API's live-feed consumer (a real one) loses its broker connection once, then cannot connect for
    a few seconds: what a network blip does to it."""

    until = 0.0
    trip = False

    class Consumer(AIOKafkaConsumer):  # type: ignore[misc]
        async def start(self) -> None:
            if time.monotonic() < Outage.until:
                raise KafkaConnectionError("broker unreachable (the test's outage)")
            await super().start()

        async def getmany(self, *args: Any, **kwargs: Any) -> Any:
            if Outage.trip:
                Outage.trip = False
                raise KafkaConnectionError("connection lost (the test's outage)")
            return await super().getmany(*args, **kwargs)


async def live_feed(server: BackgroundServer, up: bool) -> None:
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient() as http:
        while (await http.get(f"{server.url}/health")).json()["live_feed"] is not up:
            assert time.monotonic() < deadline, f"live feed never {'up' if up else 'down'}"
            await asyncio.sleep(0.05)


async def test_after_its_feed_was_cut_off_the_api_reads_on_from_where_it_was(
    make_settings: Callable[..., Settings], db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten seconds of the minute are published while the API's feed is down. It used to start again at the
    log end and seed from a store the processor had not checkpointed them to: the closed minute lacked them
    and 1 s subscribers never got them. It reads on from where it was."""
    monkeypatch.setattr(fanout_module, "AIOKafkaConsumer", Outage.Consumer)
    settings = make_settings(max_buffer_seconds=1.0, parquet_chunk_seconds=25, exchanges=["binance"])
    trades, sentinel = minute_of_trades()
    before = [t for t in trades if t.timestamp < MINUTE + 20_000]
    during = [t for t in trades if MINUTE + 20_000 <= t.timestamp < MINUTE + 30_000]
    after = [t for t in trades if t.timestamp >= MINUTE + 30_000]
    last = trades[-1].timestamp - trades[-1].timestamp % 1000
    with api(settings) as server:
        async with (
            processor(settings),
            Subscription(server.ws_url, query("1m"), {}, "graphql-transport-ws") as minute,
            Subscription(server.ws_url, query("1s"), {}, "graphql-transport-ws") as seconds,
        ):
            await subscribers(server, 2)
            await send_trades(settings, before)
            await send_progress(settings, "binance", "BTCUSDT", MINUTE + 20_000)
            await minute.until(lambda rs: any(r["candles"]["tradeCount"] == len(before) for r in rs))
            Outage.until, Outage.trip = time.monotonic() + 4.0, True
            await live_feed(server, up=False)
            await send_trades(settings, during)
            await send_progress(settings, "binance", "BTCUSDT", MINUTE + 30_000)
            await live_feed(server, up=True)
            await send_trades(settings, [*after, sentinel])
            await send_progress(settings, "binance", "BTCUSDT", END)
            await minute.until(is_closed(MINUTE), 30)
            await seconds.until(is_closed(last), 30)
        store = stored(server, "1m", MINUTE, MINUTE + 60_000)
        store_seconds = stored(server, "1s", MINUTE, MINUTE + 60_000)
    assert store[MINUTE]["tradeCount"] == len(trades)
    assert_same(closed(minute, MINUTE)[-1], store[MINUTE])
    sent = {_ms(r["candles"]["bucket"]) for r in seconds.results() if r["candles"]["closed"]}
    assert sorted(set(store_seconds) - sent) == []  # every second, those of the outage too
    counts = [r["candles"]["tradeCount"] for r in minute.results() if _ms(r["candles"]["bucket"]) == MINUTE]
    assert counts == sorted(counts)  # the open minute never went back


async def test_a_subscriber_just_after_the_hour_began_gets_the_hour_before_whole(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    """The frontier trails the newest second by the buffer, so just after 12:00 the hour 11:00 is not final
    yet. A subscriber then had the roll-up seeded from 12:00 on, and 11:00 was published closed from the 900
    recent seconds the API keeps (904 of 3,600 trades). It is seeded from the oldest hour not final."""
    settings = make_settings(max_buffer_seconds=5.0, parquet_chunk_seconds=0.5, exchanges=["binance"])
    hour = MINUTE - MINUTE % 3_600_000 + 3_600_000
    prices = [100.0 + (i * 37) % 61 for i in range(3600)]
    prices[5] = 500.0  # the hour's high, in its first seconds
    trades = [
        Trade("binance", "BTCUSDT", p, 0.1, hour + i * 1000 + 100, i + 1, i % 2 == 0)
        for i, p in enumerate(prices)
    ]
    next_hour = Trade("binance", "BTCUSDT", 150.0, 0.1, hour + 3_601_000 + 100, 10**6, False)
    with api(settings) as server:
        async with processor(settings):
            await send_trades(settings, [*trades, next_hour])  # the frontier: about 5 s before the hour's end
            await asyncio.sleep(3)
            async with Subscription(server.ws_url, query("1h"), {}, "graphql-transport-ws") as hours:
                await subscribers(server, 1)
                await send_progress(settings, "binance", "BTCUSDT", hour + 3_610_000)  # the hour is final
                await hours.until(is_closed(hour), 30)
        store = stored(server, "1h", hour, hour + 3_600_000)
    assert store[hour]["tradeCount"] == 3600 and store[hour]["high"] == 500.0
    assert_same(closed(hours, hour)[-1], store[hour])


async def test_seconds_a_restarted_processor_publishes_again_are_not_sent_again(
    make_settings: Callable[..., Settings], db: Any, tmp_path: Path
) -> None:
    """A processor killed before its checkpoint publishes the seconds since then again when it restarts. A
    subscriber that came while it was down got those already final seconds again, first as open candles
    (a roll-up created then had never closed a bucket, so it took every second for new)."""
    settings = make_settings(
        max_buffer_seconds=1.0,
        parquet_chunk_seconds=30,
        kafka_session_timeout_ms=3000,
        kafka_partitions=1,
        exchanges=["binance"],
    )
    trades, sentinel = minute_of_trades()
    trades = [t for t in trades if t.timestamp < MINUTE + 40_000]
    first = [t for t in trades if t.timestamp < MINUTE + 20_000]
    last = trades[-1].timestamp - trades[-1].timestamp % 1000
    log = tmp_path / "processor.log"
    with api(settings) as server:
        await send_trades(settings, [])  # the topics
        proc = spawn_processor(settings, log)
        try:
            await assigned(log, 1)
            await send_trades(settings, first)
            await send_progress(settings, "binance", "BTCUSDT", MINUTE + 20_000)
            await asyncio.sleep(4)  # closed and published, not checkpointed (PARQUET_CHUNK_SECONDS=30)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            async with Subscription(server.ws_url, query("1s"), {}, "graphql-transport-ws") as seconds:
                await subscribers(server, 1)
                proc = spawn_processor(settings, log)  # resumes from its committed offsets
                await assigned(log, 2)
                await send_trades(settings, [*trades[len(first) :], sentinel])
                await send_progress(settings, "binance", "BTCUSDT", END)
                await seconds.until(is_closed(last), 40)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    updates = [r["candles"] for r in seconds.results()]
    again = [u["bucket"] for u in updates if _ms(u["bucket"]) < MINUTE + 20_000]
    assert again == [], f"{len(again)} updates of seconds final before the subscriber came"
    closed_seconds = [_ms(u["bucket"]) for u in updates if u["closed"]]
    assert closed_seconds == sorted(set(closed_seconds))  # each once, in order
    assert {t.timestamp - t.timestamp % 1000 for t in trades[len(first) :]} <= set(closed_seconds)


async def assigned(log: Path, n: int, timeout: float = 40) -> None:
    """Wait until the processor's log says it took its partitions ``n`` times."""
    deadline = time.monotonic() + timeout
    while _assignments(log) < n:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        await asyncio.sleep(0.1)
