"""Live feeds against local exchange servers, into the real broker: every trade lands exactly once.

The feeds are built the way ``cryptostream ingest`` builds them: the market lists come from the servers'
own REST endpoints (``exchangeInfo``, ``/products``), SYMBOLS are resolved against them, and the feeds
subscribe with the ids the exchange listed.

Each scenario is what a day on a real exchange looks like, compressed: the subscribe handshake, normal
trades, garbage frames, resent trades, trades the WebSocket skipped, server-side disconnects mid-stream,
silent stalls, refused handshakes, exchange error messages, Binance's planned ``serverShutdown``. The
server keeps every trade it made (sent on the socket or only in its REST history); after the run the
trades topic must hold each of them exactly once with the right price, size, time and side, and the
dead-letter topic every bad frame with its reason and raw payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from cryptostream.codec import decode_records
from cryptostream.embedded import EmbeddedKafka
from cryptostream.settings import Settings
from ingest.exchanges import ResumeFile, build, live_trades, load_markets
from ingest.exchanges.base import Exchange
from ingest.service import IngestResult, run_ingest
from tests.integration.exchange_servers import FakeExchange
from tests.integration.ingest_helpers import topic_records

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------------------------ helpers
async def run_live(
    settings: Settings,
    done: Callable[[], Awaitable[bool]],
    timeout: float = 60.0,
    feeds_out: list[Exchange] | None = None,
) -> tuple[list[Exchange], IngestResult]:
    """Ingest from the live feeds until ``done()``, then a little longer (any duplicate would land), stop.
    ``feeds_out`` gets the feeds as soon as they are built (for ``done``)."""
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=5.0) as http:
        feeds = build(settings, http, await load_markets(settings, http))
        if feeds_out is not None:
            feeds_out.extend(feeds)
        for feed in feeds:
            feed.backfill_delay = 0.3
        source = live_trades(settings, feeds, stop=stop)
        task = asyncio.create_task(run_ingest(settings, source, stop, name="live"))
        deadline = time.monotonic() + timeout
        try:
            while not await done():
                if task.done():
                    task.result()
                    raise AssertionError("ingest stopped by itself")
                if time.monotonic() > deadline:
                    raise AssertionError(f"not done within {timeout}s; feed stats {[f.stats for f in feeds]}")
                await asyncio.sleep(0.25)
            await asyncio.sleep(1.5)
        finally:
            stop.set()
            result = await asyncio.wait_for(task, 30)
    return feeds, result


def live_settings(make_settings: Callable[..., Settings], **overrides: Any) -> Settings:
    values: dict[str, Any] = {"ws_stall_seconds": 1.0, "reconnect_max_seconds": 0.3, "batch_size": 100}
    values.update(overrides)
    return make_settings(**values)


def assert_progress_honest(records: list[Any]) -> None:
    """No trade follows, in its partition, a progress record of its venue and symbol whose watermark is
    past its window: everything backfilled or resent landed where its candle can still take it."""
    reached: dict[tuple[int, str, str], int] = {}
    marks = 0
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        value = orjson.loads(record.value)
        if value.get("type") == "progress":
            marks += 1
            for symbol in value["symbols"]:
                key = (record.partition, value["exchange"], symbol)
                reached[key] = max(reached.get(key, 0), value["watermark"])
            continue
        floor = reached.get((record.partition, value["exchange"], value["symbol"]), 0)
        second = value["timestamp"] - value["timestamp"] % 1000
        assert second >= floor - floor % 1000, f"{value} after progress {floor}: it would be late"
    assert marks > 0, "the feed wrote no progress"


def trades_of(records: list[Any]) -> list[Any]:
    return [r for r in records if not r.value.startswith(b'{"type":"progress"')]


def assert_exactly_once(records: list[Any], server: FakeExchange) -> None:
    """Kafka holds each trade the server made exactly once, field for field, keyed by symbol, and the
    feed's progress never ran ahead of a trade it published later."""
    assert_progress_honest(records)
    records = trades_of(records)
    values = [orjson.loads(r.value) for r in records]
    counts = Counter((v["symbol"], v["trade_id"]) for v in values)
    duplicated = {k: n for k, n in counts.items() if n > 1}
    assert not duplicated, f"published more than once: {duplicated}"
    missing = sorted(set(server.truth) - set(counts))
    assert not missing, f"{len(missing)} trades never reached Kafka: {missing[:10]}"
    extra = set(counts) - set(server.truth)
    assert not extra, f"trades the server never made: {sorted(extra)[:10]}"
    for record, value in zip(records, values, strict=True):
        truth = server.truth[(value["symbol"], value["trade_id"])]
        assert record.key == value["symbol"].encode()
        assert value["exchange"] == truth.exchange
        assert value["price"] == truth.price and value["quantity"] == truth.quantity
        assert value["timestamp"] == truth.timestamp  # the exchange's time, exact to the ms
        assert value["is_buyer_maker"] is truth.is_buyer_maker
        # when we got it, on the exchange's clock as the feed estimates it (delivery delays vary by a few ms)
        assert value["received_at"] >= truth.timestamp - 1_000


def done_when_all_landed(settings: Settings, *servers: FakeExchange) -> Callable[[], Awaitable[bool]]:
    async def done() -> bool:
        if not all(s.done.is_set() for s in servers):
            return False
        landed = trades_of(await topic_records(settings, settings.kafka_topic))
        return len(landed) >= sum(len(s.truth) for s in servers)

    return done


async def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await topic_records(settings, settings.kafka_dlq_topic)]


# ------------------------------------------------------------------------------------------------ Binance
async def test_binance_reconnects_backfills_and_publishes_every_trade_once(make_settings):
    handover = asyncio.Event()

    async def first(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 20)
        await ex.send_trades(ws, "ETHUSDT", 10)
        await ws.send("\x00\x01 definitely not json")
        await ws.send('{"error":{"code":-1100,"msg":"Illegal characters found in a parameter."},"id":null}')
        await ex.send_trades(ws, "BTCUSDT", 10, drop=range(4, 8))  # the socket skips 4 trades
        # then the server hangs up mid-stream

    async def second(ex: FakeExchange, ws) -> None:
        ex.offline("BTCUSDT", 12)  # made while we were disconnected
        await ex.resend(ws, ex.history["BTCUSDT"][-30:-25])  # already delivered: duplicates
        await ex.send_trades(ws, "BTCUSDT", 10)
        await ex.send_trades(ws, "ETHUSDT", 5)
        await ws.send('{"e":"serverShutdown","E":1770123456789}')
        await asyncio.sleep(0.3)  # the client opens its next connection now; this one keeps streaming
        await ex.send_trades(ws, "BTCUSDT", 5)
        handover.set()
        await ws.wait_closed()

    async def third(ex: FakeExchange, ws) -> None:
        await asyncio.wait_for(handover.wait(), 5)
        await ex.resend(ws, ex.history["BTCUSDT"][-5:])  # the overlap of the two connections
        await ex.send_trades(ws, "BTCUSDT", 10)
        while not ws.close_code:  # a frozen stream: connected, answering pings, sending nothing, while the
            ex.offline("BTCUSDT", 1)  # market trades on (REST has them): a stall
            await asyncio.sleep(0.3)

    async def last(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 5)
        await ex.send_trades(ws, "ETHUSDT", 5)

    server = await FakeExchange(
        "binance", ["BTC-USDT", "ETH-USDT"], [first, second, third, "reject", last]
    ).start()
    settings = live_settings(
        make_settings,
        exchanges="binance",
        symbols="BTCUSDT,ETHUSDT",
        binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url,
    )
    try:
        (feed,), result = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()

    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)
    assert {c["path"] for c in server.connections} == {"/stream?streams=btcusdt@trade/ethusdt@trade"}
    assert len(server.connections) >= 5  # every reconnect resubscribed through the URL
    stats = feed.stats
    assert stats.gaps >= 2 and stats.backfilled >= 4 + 12 and stats.lost == 0
    assert stats.duplicates >= 10 and stats.stalls >= 1 and stats.errors == 1 and stats.reconnects >= 4
    assert any(
        call.startswith("/api/v3/historicalTrades?symbol=BTCUSDT&fromId=") for call in server.rest_calls
    )
    assert server.rest_calls[0] == "/api/v3/exchangeInfo"  # the market list, read before subscribing
    assert (settings.state_dir / "markets" / "binance.json.gz").is_file()  # and cached for offline starts
    assert result.accepted == result.acknowledged == len(server.truth)
    dlq = await dead_letters(settings)
    assert [d["reason"] for d in dlq] == ["malformed_json"]
    assert dlq[0]["raw"] == "\x00\x01 definitely not json"
    assert dlq[0]["stage"] == "ingest" and dlq[0]["source"]["topic"] == "binance"


# ------------------------------------------------------------------------------------------------ Coinbase
async def test_coinbase_exchange_feed_survives_everything_and_publishes_every_trade_once(make_settings):
    async def first(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        (row,) = ex.offline("BTCUSD", 1)
        last_match = orjson.loads(ex.frame([row]))
        await ws.send(orjson.dumps({**last_match, "type": "last_match"}).decode())
        await ex.send_trades(ws, "BTCUSD", 20)
        await ex.send_trades(ws, "DOTUSD", 10)
        await ws.send("{garbage")
        await ws.send("[1,2,3]")
        corrupted = orjson.loads(ex.frame([ex.history["BTCUSD"][-1]]))  # a resend, mangled in transit
        await ws.send(orjson.dumps({**corrupted, "price": "-5"}).decode())
        stray = {**corrupted, "product_id": "SOL-USD", "trade_id": 1}  # a product we never asked for
        await ws.send(orjson.dumps(stray).decode())
        await ex.heartbeat(ws)
        await ex.send_trades(ws, "BTCUSD", 10, drop=range(3, 6))

    async def second(ex: FakeExchange, ws) -> None:
        ex.offline("BTCUSD", 15)
        ex.offline("DOTUSD", 5)
        await ex.ack(ws)
        await ex.resend(ws, ex.history["BTCUSD"][-30:-25])
        await ex.send_trades(ws, "BTCUSD", 10)
        await ex.send_trades(ws, "BTCUSD", 5, drop=range(2, 5))  # the tail is lost on the socket...
        await ex.heartbeat(ws)  # ...and the heartbeat's last_trade_id gives it away
        await ws.wait_closed()  # then silence

    async def refuses(ex: FakeExchange, ws) -> None:
        await ex.ack(ws, confirm=False)
        await ws.send('{"type":"error","message":"Failed to subscribe","reason":"try again later"}')
        await ws.wait_closed()

    async def last(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        await ex.send_trades(ws, "BTCUSD", 10)
        await ex.send_trades(ws, "DOTUSD", 10)

    server = await FakeExchange("coinbase", ["BTC-USD", "DOT-USD"], [first, second, refuses, last]).start()
    settings = live_settings(
        make_settings,
        exchanges="coinbase",
        symbols="BTC-USD,DOT-USD",
        coinbase_ws_url=server.ws_url,
        coinbase_rest_url=server.rest_url,
    )
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()

    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)
    subscribe = {
        "type": "subscribe",
        "product_ids": ["BTC-USD", "DOT-USD"],  # not DO-TUSD (issue #14)
        "channels": ["matches", "heartbeat"],
    }
    assert all(c["subscribed"][:1] == [subscribe] for c in server.connections)
    stats = feed.stats
    assert stats.backfilled >= 3 + 15 + 5 + 3 and stats.lost == 0
    assert stats.stalls >= 1 and stats.errors >= 1 and stats.duplicates >= 5
    assert any(c.startswith("/products/BTC-USD/trades?after=") for c in server.rest_calls)
    assert any(c.startswith("/products/DOT-USD/trades?after=") for c in server.rest_calls)
    dlq = await dead_letters(settings)
    assert sorted(d["reason"] for d in dlq) == sorted(
        ["malformed_json", "not_an_object", "non_positive_price", "unknown_symbol"]
    )
    assert {d["raw"] for d in dlq if d["reason"] == "malformed_json"} == {"{garbage"}
    assert all(d["stage"] == "ingest" and d["source"]["topic"] == "coinbase" for d in dlq)


async def test_a_coinbase_market_known_only_by_its_heartbeats_gets_its_outage_backfilled(make_settings):
    """DOT-USD has no trade while the first connection lasts, only heartbeats naming its last trade id.
    After a reconnect the heartbeat names a higher id: the trades in between happened while we were away
    and are fetched. The tracker used to take a heartbeat as a baseline only after a trade, so a quiet
    market lost its outage without a word."""

    async def quiet(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        for _ in range(3):
            await ex.send_trades(ws, "BTCUSD", 1)
            await ex.heartbeat(ws)
            await asyncio.sleep(0.1)

    async def back(ex: FakeExchange, ws) -> None:
        ex.offline("DOTUSD", 4)  # while we were away
        await ex.ack(ws)
        await ex.send_trades(ws, "BTCUSD", 1)
        await ex.heartbeat(ws)
        await ws.wait_closed()

    server = await FakeExchange("coinbase", ["BTC-USD", "DOT-USD"], [quiet, back]).start()
    for row in server.offline("DOTUSD", 2):  # before we first connected: not ours to fetch
        del server.truth[("DOTUSD", row["id"])]
    settings = live_settings(
        make_settings,
        exchanges="coinbase",
        symbols="BTC-USD,DOT-USD",
        coinbase_ws_url=server.ws_url,
        coinbase_rest_url=server.rest_url,
    )
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server), timeout=30)
    finally:
        await server.stop()
    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)
    assert feed.stats.backfilled == 4 and feed.stats.lost == 0


async def test_coinbase_advanced_trade_feed_dedupes_snapshots_and_fills_gaps(make_settings):
    def snapshot(ex: FakeExchange, n: int) -> str:
        return ex.frame(list(reversed(ex.history["BTCUSD"][-n:])), snapshot=True).decode()

    async def first(ex: FakeExchange, ws) -> None:
        ex.offline("BTCUSD", 5)
        await ex.ack(ws)
        await ws.send(snapshot(ex, 5))  # recent trades, newest first
        await ex.send_trades(ws, "BTCUSD", 12)
        await ws.send("\xff garbage")
        await ex.heartbeat(ws)
        await ex.send_trades(ws, "BTCUSD", 8, drop=range(2, 4))

    async def second(ex: FakeExchange, ws) -> None:
        ex.offline("BTCUSD", 10)
        await ex.ack(ws)
        await ws.send(snapshot(ex, 5))  # covers only the last 5 of the 10 we missed
        await ex.send_trades(ws, "BTCUSD", 8)
        await ws.wait_closed()

    async def last(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        await ws.send(snapshot(ex, 5))  # all already delivered
        await ex.send_trades(ws, "BTCUSD", 6)

    server = await FakeExchange("advanced", ["BTC-USD"], [first, second, "reject", last]).start()
    settings = live_settings(
        make_settings,
        exchanges="coinbase",
        coinbase_feed="advanced",
        symbols="BTCUSD",
        coinbase_advanced_ws_url=server.ws_url,
        coinbase_rest_url=server.rest_url,
    )
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()

    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)
    subscriptions = [
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "market_trades"},
        {"type": "subscribe", "channel": "heartbeats"},
    ]
    assert all(c.get("subscribed") == subscriptions for c in server.connections if not c.get("rejected"))
    assert feed.stats.backfilled >= 2 + 5 and feed.stats.duplicates >= 5 and feed.stats.lost == 0
    assert [d["reason"] for d in await dead_letters(settings)] == ["malformed_json"]


# ------------------------------------------------------------------------------------------------ isolation
async def test_one_dead_exchange_never_stops_the_other(make_settings, unused_tcp_port):
    async def only(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        await ex.send_trades(ws, "BTCUSDT", 30)

    server = await FakeExchange("coinbase", ["BTC-USDT"], [only]).start()
    settings = live_settings(
        make_settings,
        exchanges="binance,coinbase",
        symbols="BTCUSDT",  # listed on both; Binance's list is the shipped snapshot (its REST is down too)
        binance_ws_url=f"ws://127.0.0.1:{unused_tcp_port}",  # nothing listens there: refused, forever
        binance_rest_url=f"http://127.0.0.1:{unused_tcp_port}",
        coinbase_ws_url=server.ws_url,
        coinbase_rest_url=server.rest_url,
    )
    try:
        (binance, coinbase), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)
    assert binance.stats.reconnects >= 3 and binance.stats.sessions == 0
    assert coinbase.stats.trades == 30


async def test_server_pings_are_answered_so_a_quiet_connection_stays_up(make_settings):
    """Binance pings and drops clients that do not pong; here the server pings every 0.1 s."""

    async def slow(ex: FakeExchange, ws) -> None:
        for _ in range(8):
            await ex.send_trades(ws, "BTCUSDT", 1)
            await asyncio.sleep(0.25)  # 2 s of trickle, 20 pings

    server = await FakeExchange("binance", ["BTC-USDT"], [slow], ping_interval=0.1).start()
    settings = live_settings(
        make_settings, exchanges="binance", symbols="BTCUSDT", binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url, ws_stall_seconds=5.0,
    )  # fmt: skip
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)
    assert feed.stats.sessions == 1 and feed.stats.reconnects == 0


async def test_a_feed_down_when_ingest_stops_claims_no_progress_over_its_outage(make_settings):
    """Stopped while disconnected (FLUSH_WINDOWS_ON_STOP, as `cryptostream up` runs), its last progress
    used to close up to the stop's second and the resume file to save that: the outage claimed complete,
    its trades dead-lettered as late when the next run backfilled them. A feed that is down knows nothing
    of what it misses: neither its progress nor its resume file passes where it was when it went down."""

    async def then_gone(ex: FakeExchange, ws) -> None:
        for _ in range(5):
            await ex.send_trades(ws, "BTCUSDT", 4)
            await asyncio.sleep(0.1)

    server = await FakeExchange("binance", ["BTC-USDT"], [then_gone, *["reject"] * 200]).start()
    settings = live_settings(
        make_settings,
        exchanges="binance",
        symbols="BTCUSDT",
        binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url,
        flush_windows_on_stop=True,
    )
    feeds: list[Exchange] = []
    down: list[int] = []

    async def gone() -> bool:
        """Down after a session: when it went down (the first time this saw it)."""
        if not down and feeds and feeds[0].stats.sessions and not feeds[0].watermark.up:
            down.append(int(time.time() * 1000))
        return bool(down)

    try:
        await run_live(settings, gone, feeds_out=feeds)
    finally:
        await server.stop()
    progress = [
        orjson.loads(r.value)
        for r in await topic_records(settings, settings.kafka_topic)
        if r.value.startswith(b'{"type":"progress"')
    ]
    assert progress, "the feed wrote no progress while it was up"
    assert max(p["watermark"] for p in progress) <= down[0], (progress[-1], down[0])
    saved = orjson.loads((settings.state_dir / "ingest" / "binance.json").read_bytes())
    assert saved["symbols"]["BTCUSDT"]["watermark"] <= down[0]


async def test_the_resume_file_moves_only_as_kafka_acknowledges_what_it_covers(make_settings, tmp_path):
    """The resume file (the last trade id per symbol the written progress covers) was written every second
    from the feed's state, whatever the publisher still held: a broker that stopped acknowledging, then a
    crash, and the next run resumed after trades Kafka never got, lost without a word. It is now written
    only once Kafka acknowledged every record before it. Played with a broker of this test's own, frozen
    (SIGSTOP) for 3 s while the exchange keeps trading."""

    async def steady(ex: FakeExchange, ws) -> None:
        for _ in range(120):
            await ex.send_trades(ws, "BTCUSDT", 3)
            await asyncio.sleep(0.1)

    server = await FakeExchange("binance", ["BTC-USDT"], [steady]).start()
    kafka = EmbeddedKafka(tmp_path).start()  # this test freezes it: not the session's broker
    assert kafka._proc is not None
    settings = live_settings(
        make_settings,
        kafka_bootstrap=kafka.bootstrap,
        exchanges="binance",
        symbols="BTCUSDT",
        binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url,
        max_buffer_seconds=0.3,
        kafka_linger_ms=1,
    )
    state = settings.state_dir / "ingest" / "binance.json"

    def saved() -> int | None:
        if not state.exists():
            return None
        entry = orjson.loads(state.read_bytes())["symbols"].get("BTCUSDT")
        return None if entry is None else int(entry["id"])

    stop = asyncio.Event()
    frozen = False
    async with httpx.AsyncClient(timeout=5.0) as http:
        (feed,) = build(settings, http, await load_markets(settings, http))
        task = asyncio.create_task(run_ingest(settings, live_trades(settings, [feed], stop=stop), stop))
        try:
            for _ in range(200):  # acknowledged records move the file
                if (saved() or 0) > 30:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the resume file never moved: {saved()}, {feed.stats}")
            os.kill(kafka._proc.pid, signal.SIGSTOP)
            frozen = True
            await asyncio.sleep(0.5)  # what was in flight settles either way
            before, covered = saved(), feed.watermark.resume()["BTCUSDT"]["id"]
            await asyncio.sleep(3.0)
            assert feed.watermark.resume()["BTCUSDT"]["id"] > covered + 30, "the feed's progress stood still"
            assert saved() == before, "the resume file moved while Kafka acknowledged nothing"
            os.kill(kafka._proc.pid, signal.SIGCONT)
            frozen = False
            for _ in range(200):
                if (saved() or 0) > covered + 30:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the resume file did not move after the broker came back: {saved()}")
            stop.set()
            await asyncio.wait_for(task, 60)
            records = trades_of(await topic_records(settings, settings.kafka_topic))
            landed = {orjson.loads(r.value)["trade_id"] for r in records}
            final = saved()
            assert final is not None and final in landed  # the file covers only what Kafka holds
        finally:
            if frozen:
                os.kill(kafka._proc.pid, signal.SIGCONT)
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 60)
            kafka.stop()
            await server.stop()


async def test_a_binance_connection_gone_half_open_claims_nothing_it_may_be_missing(make_settings):
    """Binance sends nothing for a market without trades, so silence proves nothing there: a half-open
    connection (the path died, no FIN) went on claiming progress to its clock minus the buffer until
    WS_STALL_SECONDS noticed, and the trades made meanwhile, backfilled after the reconnect, came late.
    Progress now never passes the last frame's sending time, or the last time REST named no trade we lack."""

    async def then_half_open(ex: FakeExchange, ws) -> None:
        for _ in range(5):
            await ex.send_trades(ws, "BTCUSDT", 2)
            await asyncio.sleep(0.1)
        ws.transport.pause_reading()  # our pings go unanswered, as on a dead path
        for _ in range(6):  # the exchange trades on; nothing reaches the socket
            ex.offline("BTCUSDT", 1)
            await asyncio.sleep(0.1)
        await asyncio.sleep(10)  # held open past the stall timeout

    async def back(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 3)

    await assert_silence_claims_nothing(make_settings, "binance", "BTC-USDT", [then_half_open, back])


async def test_a_quiet_binance_connection_stays_and_a_frozen_one_is_replaced(make_settings):
    """Binance sends nothing for a market without trades, so a feed of quiet markets was dropped and
    reconnected every WS_STALL_SECONDS (a stall logged and counted each time). Silence on a connection that
    answers pings is now checked against Binance's REST API: no newer trade, the markets are quiet and the
    connection stays; a newer one means the stream froze while the market traded on: a stall, and what
    the stream missed is backfilled."""

    async def quiet_then_frozen(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 3)
        await asyncio.sleep(5)  # quiet: five stall timeouts
        await ex.send_trades(ws, "BTCUSDT", 3)
        ex.offline("BTCUSDT", 4)  # frozen: the market trades, the stream sends nothing
        await ws.wait_closed()

    async def back(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 3)

    server = await FakeExchange("binance", ["BTC-USDT"], [quiet_then_frozen, back]).start()
    settings = live_settings(
        make_settings, exchanges="binance", symbols="BTCUSDT", binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url, max_buffer_seconds=0.5,
    )  # fmt: skip
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)
    stats = feed.stats
    assert len(server.connections) == 2 and stats.stalls == 1, (server.connections, stats)
    assert stats.quiet >= 3 and stats.backfilled == 4 and stats.lost == 0, stats
    assert sum(call.startswith("/api/v3/trades?symbol=BTCUSDT&limit=1") for call in server.rest_calls) >= 4


async def test_a_frozen_binance_stream_that_answers_pings_claims_nothing_past_its_last_frame(make_settings):
    """A stream that froze while its connection still answered pings moved progress on with each pong, past
    the trades it never delivered: the quiet check at WS_STALL_SECONDS found them, and their backfill came
    after their second had closed (dead-lettered late: the test above failed so under full-suite load). Only
    Binance's REST API can prove a silence complete: progress past the last frame moves with its answers.
    Here the stall timeout (4 s) leaves time for pongs to carry progress far past the frozen trades."""

    async def frozen(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 3)
        ex.offline("BTCUSDT", 4)  # the market trades on; the stream sends nothing, pings are answered
        await ws.wait_closed()

    async def back(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 3)

    server = await FakeExchange("binance", ["BTC-USDT"], [frozen, back]).start()
    settings = live_settings(
        make_settings, exchanges="binance", symbols="BTCUSDT", binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url, max_buffer_seconds=0.5, ws_stall_seconds=4.0,
    )  # fmt: skip
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)
    stats = feed.stats
    assert stats.backfilled == 4 and stats.backfilled_late == 0 and stats.lost == 0, stats
    # the first check (1.5 s into the silence) found the gap; the one at 4 s ended the connection for it
    assert len(server.connections) == 2 and stats.stalls == 1 and stats.quiet == 0, stats


async def test_a_quiet_binance_feed_stopping_closes_its_last_trades_second(make_settings):
    """At a stop that closes the windows it fed (FLUSH_WINDOWS_ON_STOP, as `up` runs), a silent Binance
    connection proves it has every trade by asking REST once more: its final progress covers the second
    of its last trades, which would otherwise stay open until a next trade (pongs prove no more than the
    connection is alive)."""

    async def then_quiet(ex: FakeExchange, ws) -> None:
        for _ in range(3):
            await ex.send_trades(ws, "BTCUSDT", 2)
            await asyncio.sleep(0.1)

    server = await FakeExchange("binance", ["BTC-USDT"], [then_quiet]).start()
    settings = live_settings(
        make_settings, exchanges="binance", symbols="BTCUSDT", binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url, ws_stall_seconds=30.0, flush_windows_on_stop=True,
    )  # fmt: skip
    try:
        await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    records = await topic_records(settings, settings.kafka_topic)
    assert_exactly_once(records, server)
    last_second = max(truth.timestamp for truth in server.truth.values()) // 1000 * 1000
    final = max(
        orjson.loads(r.value)["watermark"] for r in records if r.value.startswith(b'{"type":"progress"')
    )
    assert final >= last_second + 1000, (final, last_second)  # the buffer (5 s) is still ahead of it
    assert final % 1000 == 0 and final <= server.clock_ms()


async def test_a_silent_binance_connection_is_a_stall_when_rest_cannot_say_it_is_quiet(make_settings):
    """Without an answer from the REST API, silence is a stall, as before the quiet check."""

    async def silent(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 3)
        await ws.wait_closed()

    async def back(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 3)

    server = await FakeExchange("binance", ["BTC-USDT"], [silent, back], rest_latest=False).start()
    settings = live_settings(
        make_settings, exchanges="binance", symbols="BTCUSDT", binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url, max_buffer_seconds=0.5,
    )  # fmt: skip
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)
    assert len(server.connections) >= 2 and feed.stats.stalls >= 1 and feed.stats.quiet == 0, feed.stats
    assert any(call.startswith("/api/v3/trades?") for call in server.rest_calls)


async def test_a_coinbase_connection_gone_silent_claims_nothing_it_may_be_missing(make_settings):
    """Coinbase sends a heartbeat every second. A connection that goes silent without closing (a half-open
    TCP path) counted as connected until WS_STALL_SECONDS noticed, and progress went on to its clock minus
    the buffer all that time: the trades made meanwhile, backfilled after the reconnect, came behind it,
    late. Progress now never passes the feed's last frame minus the buffer."""

    async def then_silent(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        await ex.trickle(ws, "BTCUSD", 5)
        for _ in range(6):  # the socket says nothing more while the exchange trades on
            ex.offline("BTCUSD", 1)
            await asyncio.sleep(0.1)
        await asyncio.sleep(10)  # held open, silent, past the stall timeout

    async def back(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        await ex.trickle(ws, "BTCUSD", 1, n=3, pause=0)

    await assert_silence_claims_nothing(make_settings, "coinbase", "BTC-USD", [then_silent, back])


async def assert_silence_claims_nothing(
    make_settings: Callable[..., Settings],
    exchange: str,
    pair: str,
    scripts: list[Any],
    clock_offset_ms: int = 0,
    rest_time: bool = True,
) -> None:
    """A first connection goes silent (stall timeout 2 s) while the exchange trades on, then a second one
    delivers: what was made meanwhile comes from the backfill, none of it behind the progress (late)."""
    server = await FakeExchange(
        exchange, [pair], scripts, clock_offset_ms=clock_offset_ms, rest_time=rest_time
    ).start()
    settings = live_settings(
        make_settings,
        exchanges=exchange,
        symbols=pair.replace("-", ""),
        max_buffer_seconds=0.5,
        ws_stall_seconds=2.0,
        **{f"{exchange}_ws_url": server.ws_url, f"{exchange}_rest_url": server.rest_url},
    )
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    assert feed.stats.stalls >= 1 and feed.stats.backfilled >= 6
    assert feed.stats.backfilled_late == 0, feed.stats
    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)


@pytest.mark.parametrize("offset_ms", [-4_000, 30_000])
@pytest.mark.parametrize(("exchange", "pair"), [("binance", "BTC-USDT"), ("coinbase", "BTC-USD")])
async def test_progress_is_in_the_exchange_s_time_whatever_our_clock_says(
    make_settings, exchange, pair, offset_ms
):
    """Trades carry the exchange's times, so "complete up to" must be in its time too. With our clock 4 s
    ahead of the exchange's, progress at our clock minus the buffer claimed each trade's second complete
    before the trade arrived: every trade was late. Progress follows the exchange's sending times now.
    With our clock 30 s behind, every trade and progress record was stamped received 30 s before its
    time, and the processor rejected them all as ``future``: receipt is on the exchange's clock now."""
    symbol = pair.replace("-", "")

    async def trading(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        await ex.trickle(ws, symbol, 25)

    server = await FakeExchange(exchange, [pair], [trading], clock_offset_ms=offset_ms).start()
    settings = live_settings(
        make_settings,
        exchanges=exchange,
        symbols=symbol,
        max_buffer_seconds=0.5,
        **{f"{exchange}_ws_url": server.ws_url, f"{exchange}_rest_url": server.rest_url},
    )
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    records = await topic_records(settings, settings.kafka_topic)
    assert_exactly_once(records, server)
    marks = [orjson.loads(r.value)["watermark"] for r in records if r.value.startswith(b'{"type":"progress"')]
    assert max(marks) <= server.clock_ms(), "progress claimed a time the exchange has not reached"
    assert max(marks) >= max(t.timestamp for t in server.truth.values()) - 3_000, "progress stood still"
    for partition in {r.partition for r in records}:  # the processor's own rule, on what it would fetch
        mine = sorted((r for r in records if r.partition == partition), key=lambda r: r.offset)
        stamps = [r.timestamp for r in mine]
        future_ms = int(settings.future_tolerance_seconds * 1000)
        decoded = decode_records(
            [r.value for r in mine], [r.offset for r in mine], partition, stamps, future_ms
        )
        assert decoded.rejected == [], decoded.rejected[:3]


def _binance_frame(row: dict[str, Any], *, sent_ms: int | None = None, micro: bool = False) -> str:
    """A Binance trade frame of ``row`` whose event time ``E`` is ``sent_ms`` (default: just after the
    trade), in µs when ``micro`` (the stream's ``timeUnit=MICROSECOND``)."""
    k = 1000 if micro else 1
    data = {
        "e": "trade",
        "E": (row["ms"] + 1 if sent_ms is None else sent_ms) * k,
        "s": row["symbol"],
        "t": row["id"],
        "p": f"{row['price']:.8f}",
        "q": f"{row['size']:.8f}",
        "T": row["ms"] * k,
        "m": row["flag"],
        "M": True,
    }
    return orjson.dumps({"stream": f"{row['symbol'].lower()}@trade", "data": data}).decode()


@pytest.mark.parametrize(("wild_ms", "micro"), [(8_000, False), (86_400_000, False), (0, True)])
async def test_a_wild_or_microsecond_sending_time_never_moves_progress_ahead(make_settings, wild_ms, micro):
    """The exchange's clock came from the first frame alone: a first ``E`` 8 s ahead made 30 of the next 31
    trades late, a day ahead stopped progress for good (resume file included); an ``E`` in µs was taken as
    ms (progress in the year 58,000, dead-lettered as bad_progress). Found by a reviewer."""

    async def trading(ex: FakeExchange, ws) -> None:
        row = ex._new_trade("BTCUSDT")
        await ws.send(_binance_frame(row, sent_ms=row["ms"] + wild_ms, micro=micro))
        await asyncio.sleep(0.6)  # a quiet market: the next trade comes a little later
        for _ in range(30):
            await ws.send(_binance_frame(ex._new_trade("BTCUSDT"), micro=micro))
            await asyncio.sleep(0.1)

    server = await FakeExchange("binance", ["BTC-USDT"], [trading]).start()
    settings = live_settings(
        make_settings,
        exchanges="binance",
        symbols="BTCUSDT",
        max_buffer_seconds=0.5,
        binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url,
    )
    try:
        await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    records = await topic_records(settings, settings.kafka_topic)
    assert_exactly_once(records, server)
    marks = [orjson.loads(r.value)["watermark"] for r in records if r.value.startswith(b'{"type":"progress"')]
    assert max(marks) <= server.clock_ms(), "progress claimed a time the exchange has not reached"
    saved = orjson.loads((settings.state_dir / "ingest" / "binance.json").read_bytes())
    assert saved["symbols"]["BTCUSDT"]["watermark"] <= server.clock_ms()


@pytest.mark.parametrize(("exchange", "pair"), [("binance", "BTC-USDT"), ("coinbase", "BTC-USD")])
async def test_a_connection_gone_half_open_at_once_claims_nothing_whatever_our_clock_says(
    make_settings, exchange, pair
):
    """Before the exchange's clock was known, liveness was noted by our wall clock: 20 s ahead of the
    exchange's, the cap it puts on progress was 20 s too late, and a connection gone half-open right after
    the start claimed the trades it missed (6 backfilled late). Liveness is the exchange's time alone."""
    symbol = pair.replace("-", "")

    async def then_half_open(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        await ex.trickle(ws, symbol, 5)
        ws.transport.pause_reading()
        for _ in range(6):
            ex.offline(symbol, 1)
            await asyncio.sleep(0.1)
        await asyncio.sleep(10)

    async def back(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        await ex.trickle(ws, symbol, 1, n=3, pause=0)

    await assert_silence_claims_nothing(  # the REST clock unanswered: the clock is unknown at first
        make_settings, exchange, pair, [then_half_open, back], clock_offset_ms=-20_000, rest_time=False
    )


async def test_a_hold_set_before_the_exchange_s_clock_is_known_lasts_what_it_says(make_settings):
    """After a restart Coinbase's ``last_match`` shows the gap across it before any heartbeat told the
    time: its hold's deadline was set by our wall clock, 8 s behind the exchange's, and had run out by the
    first progress (a 5 s hold): the backfilled outage came late. Deadlines move onto the exchange's clock
    the moment it is known."""

    async def trading(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        frame = orjson.loads(ex.frame([ex._new_trade("BTCUSD")]))
        frame["type"] = "last_match"
        await ws.send(orjson.dumps(frame).decode())
        for _ in range(30):
            await ex.heartbeat(ws)
            await ex.send_trades(ws, "BTCUSD", 1)
            await asyncio.sleep(0.1)

    # its REST clock unanswered, so the first frames come before the clock is known
    server = await FakeExchange(
        "coinbase", ["BTC-USD"], [trading], clock_offset_ms=8_000, rest_time=False
    ).start()
    settings = live_settings(
        make_settings,
        exchanges="coinbase",
        symbols="BTCUSD",
        max_buffer_seconds=0.5,
        backfill_hold_seconds=5.0,
        coinbase_ws_url=server.ws_url,
        coinbase_rest_url=server.rest_url,
    )
    before = server.offline("BTCUSD", 5)  # what the previous run covered
    ResumeFile(settings.state_dir / "ingest").save(
        "coinbase",
        f"CoinbaseExchange {server.ws_url}",
        {"BTCUSD": {"id": before[-1]["id"], "watermark": server.clock_ms() - 1000}},
    )
    server.offline("BTCUSD", 4)  # made while ingest was down
    await asyncio.sleep(2)
    feeds: list[Exchange] = []

    async def done() -> bool:
        return server.done.is_set() and bool(feeds) and feeds[0].stats.backfilled >= 4

    try:
        (feed,), _ = await run_live(settings, done, feeds_out=feeds)
    finally:
        await server.stop()
    assert feed.stats.backfilled == 4 and feed.stats.backfilled_late == 0, feed.stats
    assert_progress_honest(await topic_records(settings, settings.kafka_topic))


async def test_a_binance_feed_whose_markets_stay_quiet_still_closes_what_an_earlier_run_left_open(
    make_settings,
):
    """Binance sends nothing for a market without trades, and its frames were the only clock: after a
    restart a feed of quiet markets wrote no progress at all, so the windows the earlier run left open
    (its last progress stopped the buffer short of its last trades) waited for a trade (a reviewer). The
    feed asks Binance's REST clock (``/api/v3/time``) when it connects; its exchange is 4 s behind us here."""

    async def quiet(ex: FakeExchange, ws) -> None:
        await asyncio.sleep(4)

    server = await FakeExchange("binance", ["ETH-USDT"], [quiet], clock_offset_ms=-4_000).start()
    settings = live_settings(
        make_settings,
        exchanges="binance",
        symbols="ETHUSDT",
        max_buffer_seconds=0.5,
        backfill_hold_seconds=1.0,
        ws_stall_seconds=10.0,  # a silent stream is a stall (a server-side freeze looks the same): not here
        binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url,
    )
    covered = server.offline("ETHUSDT", 5)  # what the earlier run delivered, its progress a second behind
    earlier = server.clock_ms() - 1_000
    ResumeFile(settings.state_dir / "ingest").save(
        "binance",
        f"Binance trade {settings.binance_ws_url.rstrip('/')}",
        {"ETHUSDT": {"id": covered[-1]["id"], "watermark": earlier}},
    )

    async def done() -> bool:
        return server.done.is_set()

    try:
        await run_live(settings, done)
    finally:
        await server.stop()
    marks = [
        orjson.loads(r.value)["watermark"]
        for r in await topic_records(settings, settings.kafka_topic)
        if r.value.startswith(b'{"type":"progress"')
    ]
    assert marks and max(marks) > earlier + 1_000, marks  # the earlier run's windows close
    assert max(marks) <= server.clock_ms(), "progress claimed a time the exchange has not reached"


async def test_a_symbol_the_lists_at_hand_lack_is_looked_for_in_fresh_ones_before_it_is_refused(
    make_settings,
):
    """`up --source live` and `ingest` refuse a symbol no exchange trades before starting anything, by the
    market lists at hand (cache or snapshot, no network); one listed since those were saved is looked for in
    the exchange's fresh list first, and accepted if it is there."""
    from cryptostream.cli import _live_symbols
    from cryptostream.errors import SettingsError

    coinbase = await FakeExchange("coinbase", ["ZZZ-USD", "BTC-USD"], []).start()
    try:
        listed = make_settings(exchanges="coinbase", symbols="ZZZUSD", coinbase_rest_url=coinbase.rest_url)
        assert (await asyncio.to_thread(_live_symbols, listed)).symbols == ["ZZZUSD"]
        assert "/products" in coinbase.rest_calls  # not in the snapshot: looked for in the fresh list
        asked = len(coinbase.rest_calls)
        known = make_settings(exchanges="coinbase", symbols="BTCUSD", coinbase_rest_url=coinbase.rest_url)
        await asyncio.to_thread(_live_symbols, known)
        assert len(coinbase.rest_calls) == asked  # in the lists at hand: no network
        unknown = make_settings(
            exchanges="coinbase", symbols="BTCUSD,QQQUSD", coinbase_rest_url=coinbase.rest_url
        )
        with pytest.raises(SettingsError, match=r"^SYMBOLS: QQQUSD is not listed on coinbase; closest: "):
            await asyncio.to_thread(_live_symbols, unknown)
        assert len(coinbase.rest_calls) == asked + 1  # looked for once more, then refused
    finally:
        await coinbase.stop()
