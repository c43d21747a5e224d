"""The fan-out's delivery policy, its markets kept apart by venue, and the status board, fed the candles
topic's messages directly (the Kafka side is covered by tests/integration/test_api_live.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from cryptostream import archive
from cryptostream.models import CANDLE_SCHEMA
from cryptostream.settings import load_settings
from cryptostream.store import ArchiveStore
from graphql_api.catalog import MarketCatalog
from graphql_api.fanout import KEEP_IDLE_SECONDS, Fanout, SubscriberDropped
from graphql_api.inputs import InputError
from graphql_api.status import StatusBoard
from tests.reference import one_trade_candle as candle

T = 1_700_000_040_000
BTC = [("binance", "BTCUSDT")]
ETH = [("binance", "ETHUSDT")]


def fanout(tmp_path: Path, **overrides: Any) -> Fanout:
    settings = load_settings(
        kafka_bootstrap="127.0.0.1:1", database_url=None, output_dir=tmp_path, **overrides
    )
    store = ArchiveStore(tmp_path)
    return Fanout(settings, store, StatusBoard(), MarketCatalog(store, set(), settings.exchanges))


async def test_a_full_queue_drops_that_subscriber_only(tmp_path: Path) -> None:
    feed = fanout(tmp_path, api_subscriber_queue=5)
    async with feed.subscribe("candles", BTC) as slow, feed.subscribe("candles", BTC) as fast:
        got = []
        for i in range(20):
            feed.feed([candle(T + i * 1000, float(i))])
            got.append((await fast.get()).close)
        assert got == [float(i) for i in range(20)]
        assert feed.subscribers == 1 and slow.dropped is not None
        with pytest.raises(SubscriberDropped, match="fell 5 updates behind"):
            await slow.get()
        feed.feed([candle(T + 99_000, 99.0)])
        assert (await fast.get()).close == 99.0
    assert feed.subscribers == 0 and not feed.channels and set(feed.idle) == {(BTC[0], "1s")}
    feed.sweep(now=time.monotonic() + KEEP_IDLE_SECONDS)
    assert not feed.rollups and not feed.idle


async def test_a_dropped_subscriber_waiting_for_updates_is_woken(tmp_path: Path) -> None:
    feed = fanout(tmp_path, api_subscriber_queue=1)
    async with feed.subscribe("volatility", ETH) as sub:
        waiting = asyncio.create_task(sub.get())
        await asyncio.sleep(0)
        message = {
            "type": "volatility",
            "exchange": "binance",
            "symbol": "ETHUSDT",
            "volatility": 0.1,
            "window_seconds": 60,
        }
        feed.feed([orjson.dumps({**message, "bucket": "2023-11-14T22:14:00+00:00"})])
        assert (await waiting).volatility == 0.1
        feed.feed([orjson.dumps({**message, "bucket": f"2023-11-14T22:14:0{i}+00:00"}) for i in range(1, 4)])
        with pytest.raises(SubscriberDropped):
            await sub.get()


async def test_malformed_messages_are_counted_and_skipped(tmp_path: Path) -> None:
    feed = fanout(tmp_path)
    async with feed.subscribe("candles", BTC) as sub:
        feed.feed([b"{nope", b"", None, b"[1]", b'{"type": "candle"}', b'{"type": "weird"}', candle(T, 7.0)])
        assert feed.malformed == 6
        assert (await sub.get()).close == 7.0


async def test_subscriptions_are_capped_per_process(tmp_path: Path) -> None:
    feed = fanout(tmp_path, api_max_subscribers=1)
    async with feed.subscribe("predictions", BTC):
        with pytest.raises(InputError, match="API_MAX_SUBSCRIBERS"):
            async with feed.subscribe("predictions", BTC):
                pass


async def test_one_roll_up_per_symbol_and_interval_shared_by_its_subscribers(tmp_path: Path) -> None:
    feed = fanout(tmp_path)
    feed.feed([candle(T + 1000, 1.0), candle(T + 2000, 2.0, closed=False)])
    async with (
        feed.subscribe("candles", BTC, "1m") as a,
        feed.subscribe("candles", BTC, "1m") as b,
    ):
        assert len(feed.rollups[BTC[0]]) == 1
        first_a, first_b = await a.get(), await b.get()  # the open minute, seeded from what the feed saw
        assert first_a == first_b and (first_a.open, first_a.close, first_a.trade_count) == (1.0, 2.0, 2)
        feed.feed([candle(T + 2000, 2.5)])
        update = await a.get()
        assert update is await b.get() and update.close == 2.5 and not update.closed
    assert set(feed.idle) == {(BTC[0], "1m")}  # kept a while for whoever comes back
    feed.sweep(now=time.monotonic() + KEEP_IDLE_SECONDS)
    assert not feed.rollups


async def test_a_roll_up_left_by_its_last_viewer_is_kept_current_and_reused_without_a_store_read(
    tmp_path: Path,
) -> None:
    """Subscribe/unsubscribe loops on a day of candles must not read a day of 1 s rows each time."""
    feed = fanout(tmp_path)
    reads = 0
    candles = feed.store.candles

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await candles(*args, **kwargs)

    feed.store.candles = counted  # type: ignore[method-assign]
    minute = T - T % 60_000
    feed.feed([candle(minute + 1_000, 1.0)])
    seeding = 0
    for round_ in range(5):
        async with feed.subscribe("candles", BTC, "1d") as sub:
            opening = await sub.get()
            assert opening.trade_count == 1 + round_  # every second fed meanwhile is in it
        seeding = seeding or reads  # the first subscriber's reads
        feed.feed([candle(minute + 2_000 + round_ * 1_000, 2.0)])  # nobody watches: still rolled up
    assert 0 < seeding == reads
    assert set(feed.idle) == {(BTC[0], "1d")}


def test_status_board_rates_partitions_and_staleness() -> None:
    board = StatusBoard(stale_after=10)

    def status(name: str, t: int, trades: int, parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "type": "status",
            "processor": name,
            "time_ms": t,
            "partitions": parts,
            "trades": trades,
            **extra,
        }

    board.update(status("a:1", 1000, 100, {"0": {"position": 10, "end": 15, "lag": 5}}), now=0.0)
    board.update(
        status(
            "a:1",
            3000,
            700,
            {"0": {"position": 20, "end": 22, "lag": 2}},
            late=3,
            rejected=1,
            rejected_by_reason={"bad_symbol": 1},
            streams=[
                {
                    "exchange": "binance",
                    "symbol": "BTCUSDT",
                    "last_event_ms": 2500,
                    "closed_through_ms": 2000,
                },
                {
                    "exchange": "coinbase",
                    "symbol": "BTCUSDT",
                    "last_event_ms": 2400,
                    "closed_through_ms": None,
                },
                {"exchange": "coinbase", "symbol": 7, "last_event_ms": 1},  # malformed: ignored
            ],
        ),
        now=2.0,
    )
    board.update(status("b:2", 3000, 50, {"1": {"position": 5, "end": 5, "lag": 0}, "x": "junk"}), now=2.0)
    snap = board.snapshot(now=3.0)
    assert snap.trades_per_s == 300.0 and snap.lag == 2 and [p.partition for p in snap.partitions] == [0, 1]
    assert snap.totals["late"] == 3 and snap.rejected_by_reason == {"bad_symbol": 1}
    assert [(s.exchange, s.symbol, s.last_event_ms, s.closed_through_ms) for s in snap.symbols] == [
        ("binance", "BTCUSDT", 2500, 2000),
        ("coinbase", "BTCUSDT", 2400, None),
    ]
    later = board.snapshot(now=20.0)  # both silent for 18 s: not alive, no rate, no partitions
    assert not any(p.alive for p in later.processors) and later.trades_per_s == 0 and later.partitions == []
    assert later.totals["trades"] == 750  # counts stay in the totals
    board.update({"type": "status", "processor": "a:1", "time_ms": 4000, "trades": 10}, now=21.0)
    assert board.snapshot(now=21.0).processors[0].trades_per_s == 10.0  # a restart reset the count


async def test_predictions_reach_their_subscribers_as_the_processor_sends_them(tmp_path: Path) -> None:
    feed = fanout(tmp_path)
    message = {
        "type": "predictions",
        "exchange": "binance",
        "symbol": "ETHUSDT",
        "bucket": "2023-11-14T22:14:00+00:00",
        "horizon_seconds": 60,
        "probability_up": 0.61,
        "label": "up",
        "model_version": "v7",
    }
    async with feed.subscribe("predictions", ETH) as sub:
        feed.feed(
            [
                orjson.dumps({**message, "symbol": "BTCUSDT"}),
                orjson.dumps({**message, "exchange": "coinbase", "probability_up": 0.1}),
                orjson.dumps(message),
            ]
        )
        got = await sub.get()
        assert (got.exchange, got.symbol, got.probability_up, got.label, got.model_version) == (
            "binance",
            "ETHUSDT",
            0.61,
            "up",
            "v7",
        )
        assert not sub.items


async def test_one_symbol_on_two_venues_is_two_markets_live(tmp_path: Path) -> None:
    feed = fanout(tmp_path)
    binance, coinbase = ("binance", "BTCUSDT"), ("coinbase", "BTCUSDT")
    async with (
        feed.subscribe("candles", [binance]) as b_sec,
        feed.subscribe("candles", [coinbase]) as c_sec,
        feed.subscribe("candles", [binance], "1m") as b_min,
        feed.subscribe("candles", [coinbase], "1m") as c_min,
        feed.subscribe("candles", [binance, coinbase]) as both,
    ):
        for i in range(3):  # interleaved, as the candles topic carries them
            feed.feed(
                [
                    candle(T + i * 1000, 100.0 + i, exchange="binance"),
                    candle(T + i * 1000, 200.0 + i, exchange="coinbase"),
                ]
            )
        assert [(u.exchange, u.close) for u in b_sec.items] == [("binance", 100.0 + i) for i in range(3)]
        assert [(u.exchange, u.close) for u in c_sec.items] == [("coinbase", 200.0 + i) for i in range(3)]
        assert len(both.items) == 6
        # Each minute rolls up its own venue's seconds only.
        *_, b_last = b_min.items
        *_, c_last = c_min.items
        assert (b_last.exchange, b_last.open, b_last.close, b_last.high, b_last.trade_count) == (
            "binance",
            100.0,
            102.0,
            102.0,
            3,
        )
        assert (c_last.exchange, c_last.open, c_last.close, c_last.low, c_last.trade_count) == (
            "coinbase",
            200.0,
            202.0,
            200.0,
            3,
        )
        assert set(feed.rollups) == {binance, coinbase} and feed.frontier == {
            binance: T + 3000,
            coinbase: T + 3000,
        }
    assert feed.catalog is not None and feed.catalog.live == {binance, coinbase}


async def test_a_message_without_an_exchange_belongs_to_the_unknown_venue(tmp_path: Path) -> None:
    feed = fanout(tmp_path)
    legacy = orjson.loads(candle(T, 5.0))
    del legacy["exchange"]
    async with (
        feed.subscribe("candles", [("unknown", "BTCUSDT")]) as unknown,
        feed.subscribe("candles", BTC) as binance,
    ):
        feed.feed([orjson.dumps(legacy), orjson.dumps({**legacy, "exchange": "Not A Venue!"})])
        assert [(u.exchange, u.close) for u in unknown.items] == [("unknown", 5.0)]
        assert not binance.items and feed.malformed == 1


async def test_a_quiet_market_closes_its_minute_on_the_processors_frontier(tmp_path: Path) -> None:
    """No later second comes to say the minute is over; the frontier message the processor sends when
    progress moves it does, in order with the market's candles."""
    feed = fanout(tmp_path)
    minute = T - T % 60_000
    async with feed.subscribe("candles", BTC, "1m") as sub:
        feed.feed([candle(minute + 5_000, 10.0, closed=True), candle(minute + 6_000, 12.0, closed=True)])
        updates = [await sub.get() for _ in range(2)]
        assert [u.closed for u in updates] == [False, False]
        frontier = {"type": "frontier", "exchange": "binance", "symbol": "BTCUSDT"}
        feed.feed([orjson.dumps({**frontier, "closed_through_ms": minute + 30_000})])  # not past the minute
        feed.feed([orjson.dumps({**frontier, "symbol": "ETHUSDT", "closed_through_ms": minute + 60_000})])
        await asyncio.sleep(0)
        assert not sub.items
        feed.feed([orjson.dumps({**frontier, "closed_through_ms": minute + 61_000})])
        final = await sub.get()
        assert final.closed and (final.open, final.close, final.trade_count) == (10.0, 12.0, 2)
        assert final.bucket.timestamp() * 1000 == minute


async def test_a_day_is_seeded_from_stored_minutes_and_the_seconds_of_the_last_ones(tmp_path: Path) -> None:
    """A 1 d roll-up folds the store's 1 m candles up to the minute of the oldest second the feed holds, and
    1 s rows only after it: the same candle as from every second, without reading a day of 1 s rows."""
    day, minute = T - T % 86_400_000, T - T % 60_000
    stored = {day + 1_000 + i * 97_000: float(100 + (i * 37) % 61) for i in range(800)}  # about 21.5 h
    stored = {ms: price for ms, price in stored.items() if ms < minute - 120_000}
    stored[minute - 30_000] = 170.0  # checkpointed just before the feed's seconds: the day's high
    stored[minute + 2_000] = 50.0  # checkpointed and seen by the feed (with another price) below
    _store_seconds(tmp_path, stored)
    feed = fanout(tmp_path)
    live = {minute + 2_000: 120.0, minute + 3_000: 99.0, minute + 4_000: 101.0}  # not all checkpointed yet
    feed.feed([candle(ms, price) for ms, price in live.items()])
    read: list[tuple[str, int]] = []
    candles = feed.store.candles

    async def spied(*args: Any, **kwargs: Any) -> Any:
        table = await candles(*args, **kwargs)
        read.append((kwargs["interval"], table.num_rows))
        return table

    feed.store.candles = spied  # type: ignore[method-assign]
    async with feed.subscribe("candles", BTC, "1d") as sub:
        opening = await sub.get()
    seconds = {**stored, **live}  # what the feed saw is newer than what was checkpointed
    prices = [seconds[ms] for ms in sorted(seconds)]
    assert (opening.open, opening.high, opening.low, opening.close) == (
        prices[0],
        max(prices),
        min(prices),
        prices[-1],
    )
    assert opening.trade_count == len(seconds) and opening.volume == float(len(seconds))
    assert dict(read) == {"1m": len({ms - ms % 60_000 for ms in stored if ms < minute}), "1s": 1}


def _store_seconds(root: Path, seconds: dict[int, float]) -> None:
    """1 s candles of binance BTCUSDT in the archive, as the processor's checkpoint writes them."""
    rows = [orjson.loads(candle(ms, price)) for ms, price in sorted(seconds.items())]
    table = pa.table(
        {
            "bucket": pa.array(sorted(seconds), pa.timestamp("ms", tz="UTC")),
            **{
                f: pa.array([r[f] for r in rows], CANDLE_SCHEMA.field(f).type)
                for f in CANDLE_SCHEMA.names[3:]
            },
        }
    )
    first = min(seconds)
    folder = archive.partition_dir(root, "ohlc", "binance", "BTCUSDT", archive.utc_day(first))
    archive.write_file(folder / archive.file_name(0, "feedbeef", 0), table)


async def test_after_an_interruption_roll_ups_are_seeded_again_so_a_closed_minute_holds_the_gap(
    tmp_path: Path,
) -> None:
    """The feed resumes at the log end: the seconds it missed reach subscribers only through the store."""
    feed = fanout(tmp_path)
    minute = T - T % 60_000
    async with feed.subscribe("candles", BTC, "1m") as sub:
        feed.feed([candle(minute + 1_000, 10.0)])
        assert (await sub.get()).trade_count == 1
        # the feed is cut; meanwhile the processor closes and stores seconds 2-4 (one of them the high)
        _store_seconds(tmp_path, {minute + 1_000: 10.0, minute + 2_000: 15.0, minute + 3_000: 9.0})
        await feed.resync()
        feed.feed([candle(minute + 5_000, 11.0)])
        live = await sub.get()
        assert (live.high, live.low, live.trade_count) == (15.0, 9.0, 4)
        frontier = {"type": "frontier", "exchange": "binance", "symbol": "BTCUSDT"}
        feed.feed([orjson.dumps({**frontier, "closed_through_ms": minute + 60_000})])
        final = await sub.get()
        assert final.closed and (final.open, final.high, final.low, final.close) == (10.0, 15.0, 9.0, 11.0)
        assert final.trade_count == 4 and final.volume == 4.0
