"""How far a live feed's progress may go: only as far as it can prove it has every trade.

Found by a review of the change that stopped answered pings from moving a silent Binance stream's progress
(each test failed on that change and passes since): a wild sending time, the first moments of a feed, a stop
before the first REST check, and a trade arriving while REST is asked."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from cryptostream.codec import decode_records
from tests.integration.exchange_servers import FakeExchange, iso
from tests.integration.ingest_helpers import topic_records
from tests.integration.test_ingest_live import (
    _binance_frame,
    assert_exactly_once,
    assert_silence_claims_nothing,
    done_when_all_landed,
    live_settings,
    run_live,
)

pytestmark = pytest.mark.integration


async def test_one_wild_sending_time_does_not_lift_the_cap_of_a_stream_that_then_freezes(make_settings):
    """A frame proves what was sent before its sending time, but one whose E was a minute ahead set the
    proof a minute ahead (it never goes back): the stream then froze, and progress ran on at now - buffer,
    past the trades it missed. A frame's proof is never past the exchange clock's estimate (the median of
    the frames' sending times, which one wild time does not move)."""
    wild_ms = 60_000

    async def wild_then_frozen(ex: FakeExchange, ws) -> None:
        for _ in range(10):
            await ws.send(_binance_frame(ex._new_trade("BTCUSDT")))
            await asyncio.sleep(0.1)
        row = ex._new_trade("BTCUSDT")
        await ws.send(_binance_frame(row, sent_ms=row["ms"] + wild_ms))
        for _ in range(5):
            await asyncio.sleep(0.1)
            await ws.send(_binance_frame(ex._new_trade("BTCUSDT")))
        while not ws.close_code:  # frozen: pings answered, the market trades on (REST history has it)
            ex.offline("BTCUSDT", 1)
            await asyncio.sleep(0.2)

    async def back(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 3)

    # /api/v3/trades unavailable (historicalTrades, the backfill, still works): silence is a stall
    server = await FakeExchange("binance", ["BTC-USDT"], [wild_then_frozen, back], rest_latest=False).start()
    settings = live_settings(
        make_settings, exchanges="binance", symbols="BTCUSDT", binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url, max_buffer_seconds=0.5, ws_stall_seconds=3.0,
    )  # fmt: skip
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    assert feed.stats.backfilled_late == 0, feed.stats
    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)


async def test_one_wild_coinbase_heartbeat_time_does_not_lift_the_cap_of_a_connection_gone_silent(
    make_settings,
):
    """The same on Coinbase: a heartbeat stamped a minute ahead, then a half-open connection."""
    wild_ms = 60_000

    async def then_silent(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        await ex.trickle(ws, "BTCUSD", 5)
        last = ex.history["BTCUSD"][-1]["id"]
        await ws.send(orjson.dumps({
            "type": "heartbeat", "sequence": last * 3 + 1, "last_trade_id": last, "product_id": "BTC-USD",
            "time": iso(ex.clock_ms() + wild_ms),
        }).decode())  # fmt: skip
        await ex.trickle(ws, "BTCUSD", 3)
        for _ in range(6):
            ex.offline("BTCUSD", 1)
            await asyncio.sleep(0.1)
        await asyncio.sleep(10)

    async def back(ex: FakeExchange, ws) -> None:
        await ex.ack(ws)
        await ex.trickle(ws, "BTCUSD", 1, n=3, pause=0)

    await assert_silence_claims_nothing(make_settings, "coinbase", "BTC-USD", [then_silent, back])


async def test_a_binance_feed_writes_no_progress_before_it_has_proven_anything(make_settings):
    """A pong marks the feed up and the REST clock is known before the first trade: progress was then
    written from a proof of 0 (watermark -buffer, dead-lettered by the processor as bad_progress)."""

    async def late_first_trade(ex: FakeExchange, ws) -> None:
        await asyncio.sleep(1.5)  # a quiet market: the first trade comes a little after connecting
        await ex.send_trades(ws, "BTCUSDT", 3)

    server = await FakeExchange("binance", ["BTC-USDT"], [late_first_trade]).start()
    settings = live_settings(
        make_settings, exchanges="binance", symbols="BTCUSDT", binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url, max_buffer_seconds=0.5, ws_stall_seconds=10.0,
    )  # fmt: skip
    try:
        await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    records = await topic_records(settings, settings.kafka_topic)
    marks = [orjson.loads(r.value)["watermark"] for r in records if r.value.startswith(b'{"type":"progress"')]
    rejected = []
    for partition in {r.partition for r in records}:  # what the processor would make of them
        mine = sorted((r for r in records if r.partition == partition), key=lambda r: r.offset)
        decoded = decode_records(
            [r.value for r in mine], [r.offset for r in mine], partition, [r.timestamp for r in mine], 10_000
        )
        rejected += decoded.rejected
    assert rejected == [] and min(marks) > 946_684_800_000, (marks[:3], rejected[:1])


async def test_a_quiet_market_stopped_before_its_first_check_is_not_fetched_again_late(make_settings):
    """The stop's REST check is the first word of a market that has not traded this run. Its newest trade
    was noted as made at the time of the answer, after the final progress, so the resume file said "after
    the one before it", and the next run backfilled that old trade behind its progress: late. REST says
    when the trade was made; it is noted then."""

    async def quiet(ex: FakeExchange, ws) -> None:
        await asyncio.sleep(60)

    server = await FakeExchange("binance", ["BTC-USDT"], [quiet, quiet]).start()
    old = server.offline("BTCUSDT", 5)  # made long before ingest starts
    await asyncio.sleep(1.2)
    settings = live_settings(
        make_settings, exchanges="binance", symbols="BTCUSDT", binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url, max_buffer_seconds=2.0, ws_stall_seconds=30.0,
        flush_windows_on_stop=True,
    )  # fmt: skip
    feeds: list = []

    async def up() -> bool:
        return bool(feeds) and feeds[0].watermark.up and feeds[0].exchange_now() is not None

    try:
        await run_live(settings, up, feeds_out=feeds)  # stops ~1.5 s later: before the check at 3 s
        saved = orjson.loads((settings.state_dir / "ingest" / "binance.json").read_bytes())
        assert saved["symbols"]["BTCUSDT"]["id"] == old[-1]["id"], saved
        feeds2: list = []

        async def checked() -> bool:
            return (
                bool(feeds2)
                and feeds2[0].stats.quiet + feeds2[0].stats.gaps > 0
                or (bool(feeds2) and sum("/api/v3/trades" in c for c in server.rest_calls) >= 3)
            )

        (feed,), _ = await run_live(settings, checked, feeds_out=feeds2)
        await asyncio.sleep(1)
    finally:
        await server.stop()
    records = await topic_records(settings, settings.kafka_topic)
    republished = [orjson.loads(r.value) for r in records if b'"trade_id"' in r.value]
    assert feed.stats.backfilled_late == 0 and not republished, feed.stats


async def test_a_trade_arriving_while_rest_is_asked_is_not_a_gap(make_settings):
    """Nothing reads the connection while REST answers: a trade that arrived meanwhile, named by REST, was
    counted and logged as a gap, backfilled, its symbol held. A newer trade made as we asked (within
    IN_FLIGHT_MS) is neither a gap nor a proof: its frame, or the next check, says which."""

    async def trade_during_check(ex: FakeExchange, ws) -> None:
        await ex.send_trades(ws, "BTCUSDT", 3)
        await asyncio.sleep(1.8)  # the check runs 1.5 s into the silence; REST takes 0.6 s here
        await ex.send_trades(ws, "BTCUSDT", 1)
        await asyncio.sleep(3)

    server = FakeExchange("binance", ["BTC-USDT"], [trade_during_check])
    plain = server._process_request

    async def slow_rest(connection, request):
        if request.path.startswith("/api/v3/trades"):
            await asyncio.sleep(0.6)
        return await plain(connection, request)

    server._process_request = slow_rest  # type: ignore[method-assign]
    await server.start()
    settings = live_settings(
        make_settings, exchanges="binance", symbols="BTCUSDT", binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url, max_buffer_seconds=0.5, ws_stall_seconds=30.0,
    )  # fmt: skip
    try:
        (feed,), _ = await run_live(settings, done_when_all_landed(settings, server))
    finally:
        await server.stop()
    assert_exactly_once(await topic_records(settings, settings.kafka_topic), server)
    assert feed.stats.gaps == 0 and feed.stats.missing == 0, feed.stats  # the stream dropped nothing
