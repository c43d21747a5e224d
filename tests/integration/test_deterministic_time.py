"""Timing that real deployments see, on the real broker and database: stored candles stay a function of
the log. Each scenario ends with the database and the Parquet archive equal to a batch computation over the
trades, and each rejected source offset in the dead-letter topic exactly once.

(a) a producer pausing longer than MAX_BUFFER_SECONDS in the middle of a second;
(b) a trade stamped 2099 and one an hour ahead among normal ones;
(c) the database stopped (SIGSTOP) for three times MAX_BUFFER_SECONDS while trades flow;
(d) a live feed that loses frames and its connection, and backfills;
(e) two runs of a pipeline whose broker forgot its log in between, the second crashing after writing a
    checkpoint and before committing it;
(f) failures inside the rebalance callbacks;
and a committed offset whose checkpoint is gone, and a processor that lost its partitions being fenced off.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil
import pytest
from aiokafka import AIOKafkaConsumer

from cryptostream import archive
from cryptostream.codec import Progress
from cryptostream.embedded import EmbeddedKafka, EmbeddedPostgres
from cryptostream.errors import MissingCheckpoint
from cryptostream.kafka import wait_for_broker
from cryptostream.migrate import upgrade
from cryptostream.models import Trade
from cryptostream.settings import Settings, load_settings
from ingest.exchanges import build, live_trades, load_markets
from ingest.service import run_ingest
from ingest.synthetic import SyntheticMarket
from processor.checkpoint import Checkpoint, CheckpointStore
from processor.service import Processor
from tests.conftest import T0, closing_progress
from tests.integration.exchange_servers import FakeExchange
from tests.integration.helpers import (
    db_candles,
    db_count,
    parquet_rows,
    read_topic,
    run_processor_until,
    sinks_for,
)
from tests.reference import assert_candles_equal, batch_candles, rows_by_key

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


async def stored_equal(settings: Settings, expected: dict[Any, Any]) -> None:
    """The database and the archive hold exactly ``expected``."""
    import asyncpg

    conn = await asyncpg.connect(settings.database_dsn)
    try:
        assert_candles_equal(rows_by_key(await db_candles(conn)), expected)
    finally:
        await conn.close()
    assert_candles_equal(rows_by_key(parquet_rows(settings.output_dir)), expected)


async def dead_letters(settings: Settings, expect: int = 0) -> Counter[tuple[int, int, str]]:
    """(source partition, source offset, reason) of every processor dead letter, with how often."""
    records = await read_topic(
        settings, settings.kafka_dlq_topic, expect=expect, timeout=5 if expect == 0 else 20
    )
    out: Counter[tuple[int, int, str]] = Counter()
    for record in records:
        env = orjson.loads(record.value)
        if env["stage"] == "processor":
            out[(env["source"]["partition"], env["source"]["offset"], env["reason"])] += 1
    return out


def market(seed: int, n: int, start_ms: int = T0, rate: float = 200) -> list[Trade]:
    return SyntheticMarket(SYMBOLS, rate=rate, seed=seed, disorder_ms=300, duplicate_rate=0.02).generate(
        n, start_ms
    )


def until_stored(settings: Settings, n: int):
    async def done() -> bool:
        return await db_count(settings.database_dsn) >= n

    return done


# ---------------------------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("progress", [True, False], ids=["with-progress", "without-progress"])
async def test_a_pause_longer_than_the_buffer_inside_a_second_changes_nothing(
    make_settings, produce, db, progress: bool
):
    """Half of a second's trades, then silence for 3x MAX_BUFFER_SECONDS, then the rest of that second:
    the window waits for the log, not for the clock, so the candle holds both halves and nothing is late.
    Sources that write progress and tools that do not (the trade watermark) alike."""
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.3)
    trades = sorted(market(1, 3000), key=lambda t: t.timestamp)
    cut = next(i for i, t in enumerate(trades) if i > 1500 and t.timestamp % 1000 > 400)  # mid-second
    mid = trades[cut].timestamp
    expected = batch_candles(trades)
    before = [Progress("synthetic", tuple(SYMBOLS), mid - mid % 1000)] if progress else []  # not past it
    await produce(settings, trades[:cut], close=False, progress=before)
    proc = Processor(settings, sinks_for(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        await asyncio.sleep(3 * settings.max_buffer_seconds + 1.0)  # the source pauses; checkpoints go on
        assert not task.done()
        await produce(settings, trades[cut:])
        deadline = time.monotonic() + 60
        while await db_count(settings.database_dsn) < len(expected):
            assert time.monotonic() < deadline, proc.stats
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert proc.stats.late == 0
    await stored_equal(settings, expected)
    assert await dead_letters(settings) == Counter()


# ---------------------------------------------------------------------------------------------- (b)
async def test_far_future_trades_are_rejected_once_and_move_no_frontier(make_settings, produce, db):
    """Stamped 2099 or an hour ahead of their receipt: dead-lettered as future (once each), and the
    trades after them still land in their candles."""
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.3)
    now = int(time.time() * 1000)
    trades = sorted(market(2, 2000, start_ms=now - 30_000, rate=100), key=lambda t: t.timestamp)
    year_2099 = Trade("synthetic", "BTCUSDT", 1.0, 1.0, 4_099_000_000_000, 77, False)
    hour_ahead = Trade("synthetic", "ETHUSDT", 2.0, 1.0, now + 3_600_000, 78, True)
    log = [*trades[:700], year_2099, *trades[700:1400], hour_ahead, *trades[1400:]]
    expected = batch_candles(trades)
    await produce(settings, log, close=False, progress=closing_progress(trades))  # the source's, not 2099
    proc = await run_processor_until(settings, until_stored(settings, len(expected)))
    assert proc.stats.late == 0 and proc.stats.reasons == {"future": 2}
    await stored_equal(settings, expected)
    letters = await dead_letters(settings, expect=2)
    assert sorted(reason for _, _, reason in letters) == ["future", "future"]
    assert set(letters.values()) == {1}


# ---------------------------------------------------------------------------------------------- (c)
@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    """A PostgreSQL server of this test's own (it gets stopped), migrated; yields its URL and process."""
    with EmbeddedPostgres(tmp_path / "pg", fast_unsafe=True) as pg:
        upgrade(pg.url)
        assert pg._proc is not None
        yield pg.url, psutil.Process(pg._proc.pid)


def _signal_tree(root: psutil.Process, sig: int) -> None:
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)


async def test_a_database_stopped_for_three_buffers_while_trades_flow_loses_nothing(
    make_settings, produce, own_postgres
):
    """The database freezes (SIGSTOP, every PostgreSQL process) while a source keeps writing trades and
    progress: the processor waits on its checkpoint and reads nothing meanwhile, so no window closes on
    the outage and every trade lands once the database is back."""
    dsn, postgres = own_postgres
    settings = make_settings(database_url=dsn, max_buffer_seconds=0.5, parquet_chunk_seconds=0.3)
    trades = sorted(market(3, 4000, rate=300), key=lambda t: t.timestamp)
    expected = batch_candles(trades)
    chunks = [trades[i : i + 250] for i in range(0, len(trades), 250)]
    proc = Processor(settings, sinks_for(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        for i, chunk in enumerate(chunks):
            last = chunk[-1].timestamp
            # a live source: progress a buffer behind what it sent
            marks = [Progress("synthetic", tuple(SYMBOLS), last - 500)]
            await produce(settings, chunk, close=i == len(chunks) - 1, progress=marks)
            if i == 4:
                _signal_tree(postgres, signal.SIGSTOP)
                stopped_at = time.monotonic()
            if i > 4 and postgres.status() == psutil.STATUS_STOPPED:
                if time.monotonic() - stopped_at >= 3 * settings.max_buffer_seconds:
                    _signal_tree(postgres, signal.SIGCONT)
            await asyncio.sleep(0.15)
        _signal_tree(postgres, signal.SIGCONT)
        deadline = time.monotonic() + 90
        while await db_count(dsn) < len(expected):
            assert time.monotonic() < deadline and not task.done(), proc.stats
            await asyncio.sleep(0.3)
    finally:
        _signal_tree(postgres, signal.SIGCONT)
        stop.set()
        await asyncio.wait_for(task, 60)
    assert proc.stats.late == 0
    await stored_equal(settings, expected)
    assert await dead_letters(settings) == Counter()


# ---------------------------------------------------------------------------------------------- (d)
async def test_a_live_feed_backfilling_a_gap_and_an_outage_lands_every_trade_in_its_candle(make_settings, db):
    """The socket skips trades, then the connection drops for 3x MAX_BUFFER_SECONDS while the exchange
    keeps trading: the feed holds its progress until the backfill is in, so none of it is late."""

    async def first(ex: FakeExchange, ws) -> None:
        for _ in range(6):
            await ex.send_trades(ws, "BTCUSDT", 8)
            await ex.send_trades(ws, "ETHUSDT", 3)
            await asyncio.sleep(0.1)
        await ex.send_trades(ws, "BTCUSDT", 12, drop=range(3, 9))  # the socket loses six
        await asyncio.sleep(0.3)
        # the connection dies; trades go on while we are away

    async def second(ex: FakeExchange, ws) -> None:
        for _ in range(15):
            ex.offline("BTCUSDT", 2)
            ex.offline("ETHUSDT", 1)
            await asyncio.sleep(0.1)
        for _ in range(5):
            await ex.send_trades(ws, "BTCUSDT", 5)
            await ex.send_trades(ws, "ETHUSDT", 2)
            await asyncio.sleep(0.1)

    server = await FakeExchange(
        "binance", ["BTC-USDT", "ETH-USDT"], [first, "reject", "reject", second]
    ).start()
    settings = make_settings(
        exchanges="binance",
        symbols="BTCUSDT,ETHUSDT",
        binance_ws_url=server.ws_url,
        binance_rest_url=server.rest_url,
        max_buffer_seconds=0.5,
        reconnect_max_seconds=1.0,
        parquet_chunk_seconds=0.3,
        batch_size=50,
    )
    stop = asyncio.Event()
    http = httpx.AsyncClient(timeout=5.0)  # the feeds' REST history (backfill) uses it throughout
    try:
        feeds = build(settings, http, await load_markets(settings, http))
        for feed in feeds:
            feed.backfill_delay = 0.2
        ingest = asyncio.create_task(run_ingest(settings, live_trades(settings, feeds, stop=stop), stop))
        processor = Processor(settings, sinks_for(settings))
        stop_processor = asyncio.Event()
        processing = asyncio.create_task(processor.run(stop_processor))
        await asyncio.wait_for(server.done.wait(), 60)
        last = max(t.timestamp for t in server.truth.values())
        while time.time() * 1000 < last + 1000 + 600:  # the feed's progress passes the last second
            await asyncio.sleep(0.1)
        expected = batch_candles(
            [
                Trade(t.exchange, t.symbol, t.price, t.quantity, t.timestamp, t.trade_id, t.is_buyer_maker)
                for t in server.truth.values()
            ]
        )
        deadline = time.monotonic() + 60
        while await db_count(settings.database_dsn) < len(expected):
            assert time.monotonic() < deadline, (processor.stats, [f.stats for f in feeds])
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(ingest, 30)
        stop_processor.set()
        await asyncio.wait_for(processing, 30)
    finally:
        stop.set()
        await http.aclose()
        await server.stop()
    (feed,) = feeds
    assert feed.stats.backfilled >= 6 + 45 and feed.stats.lost == 0 and feed.stats.backfilled_late == 0
    assert processor.stats.late == 0
    await stored_equal(settings, expected)
    assert await dead_letters(settings) == Counter()


# ---------------------------------------------------------------------------------------------- (e)
class Crash(BaseException):
    """The process dies here (not an Exception: nothing catches it on the way out)."""


class CrashAfterSave(CheckpointStore):
    """The real checkpoint store, except that the process dies right after its ``n``-th save: the
    checkpoint is on disk, its offset never committed."""

    def __init__(self, root: Path, group: str, topic: str, n: int) -> None:
        super().__init__(root, group, topic)
        self.n = n
        self.saves = 0

    def save(self, checkpoint: Checkpoint) -> Path:
        path = super().save(checkpoint)
        self.saves += 1
        if self.saves == self.n:
            raise Crash(f"crashed after writing {path.name}")
        return path


def broker_settings(make_settings, bootstrap: str, **overrides: Any) -> Settings:
    return make_settings(kafka_bootstrap=bootstrap, **overrides)


async def test_two_runs_over_a_forgotten_log_then_a_crash_between_checkpoint_and_commit(
    make_settings, produce, db, tmp_path: Path, caplog
):
    """`up` twice: its embedded broker keeps topics in memory, so the second run's topic starts again at
    offset 0 under the same names, and the second run's processor dies after writing a checkpoint and
    before committing it. The next processor resumes from the commit it finds, with its checkpoint, in the
    new lineage; both runs' candles are stored exactly once."""
    run1 = sorted(market(5, 2500), key=lambda t: t.timestamp)
    run2 = sorted(market(6, 2500, start_ms=run1[-1].timestamp + 5000), key=lambda t: t.timestamp)
    run2 = [
        Trade(t.exchange, t.symbol, t.price, t.quantity, t.timestamp, t.trade_id + 10**9, t.is_buyer_maker)
        for t in run2
    ]
    expected1 = batch_candles(run1)
    for run, trades in ((1, run1), (2, run2)):
        with EmbeddedKafka(tmp_path / f"broker{run}") as broker:
            await wait_for_broker(broker.bootstrap, settings=load_settings(kafka_bootstrap=broker.bootstrap))
            settings = make_settings(
                kafka_bootstrap=broker.bootstrap, max_buffer_seconds=0.5, parquet_chunk_seconds=0.3
            )
            if run == 1:
                await produce(settings, trades)
                await run_processor_until(settings, until_stored(settings, len(expected1)))
                continue
            half = len(trades) // 2
            await produce(settings, trades[:half], close=False)
            store = CrashAfterSave(settings.output_dir, settings.consumer_group, settings.kafka_topic, n=3)
            crashing = Processor(settings, sinks_for(settings), store=store)
            with pytest.raises(Crash):  # no final checkpoint, no commit (its connections do close)
                await asyncio.wait_for(crashing.run(asyncio.Event()), 60)
            await produce(settings, trades[half:])
            expected = {**expected1, **batch_candles(trades)}
            with caplog.at_level("WARNING"):
                await run_processor_until(settings, until_stored(settings, len(expected)))
            assert "without window state" not in caplog.text
            await stored_equal(settings, expected)
            assert await dead_letters(settings) == Counter()
    lineages = list((settings.output_dir / "_checkpoints").rglob("LINEAGE"))
    assert lineages and all(len([d for d in p.parent.iterdir() if d.is_dir()]) == 1 for p in lineages)


async def reset_to_earliest(settings: Settings) -> None:
    """What ``kafka-consumer-groups --reset-offsets --to-earliest --execute`` does: commit each partition's
    log start for the group (from a member of it: the test broker takes commits from members only)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=settings.consumer_group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.subscribe([settings.kafka_topic])
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            assert time.monotonic() < deadline, "no partitions assigned"
            await consumer.getmany(timeout_ms=200)
        starts = await consumer.beginning_offsets(list(consumer.assignment()))
        await consumer.commit(starts)
    finally:
        await consumer.stop()


@pytest.mark.parametrize("cleaned", [True, False], ids=["checkpoints-gone", "checkpoints-kept"])
async def test_a_committed_offset_without_its_checkpoint_stops_the_processor_and_the_recovery_it_says_works(
    make_settings, produce, db, cleaned: bool
):
    """Checkpoints gone under committed offsets: the processor stops, saying to reset the group's offsets
    to the earliest. Done (or done to reprocess a topic whose checkpoints are all there), it reprocesses
    from the log's start. It stopped again with the same advice: the committed start offset had no
    checkpoint (its seq-0 checkpoint had been pruned, or was gone)."""
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.3, kafka_session_timeout_ms=3000)
    trades = market(7, 500)
    expected = batch_candles(trades)
    await produce(settings, trades)
    await run_processor_until(settings, until_stored(settings, len(expected)))
    if cleaned:
        for path in (settings.output_dir / "_checkpoints").rglob("*.ckpt"):
            path.unlink()
        with pytest.raises(MissingCheckpoint, match="has no checkpoint under .*offsets to the earliest"):
            await asyncio.wait_for(Processor(settings, sinks_for(settings)).run(asyncio.Event()), 30)
    await reset_to_earliest(settings)
    await db.execute("TRUNCATE ohlc_1s")  # so that what is stored next is the reprocessing's
    await run_processor_until(settings, until_stored(settings, len(expected)))
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        assert_candles_equal(rows_by_key(await db_candles(conn)), expected)
    finally:
        await conn.close()
    # the archive as it is read: both lineages wrote every candle, one is kept
    markets = sorted({(t.exchange, t.symbol) for t in trades})
    archived = [archive.load_candles(settings.output_dir, e, s).to_pylist() for e, s in markets]
    assert_candles_equal(rows_by_key(row for rows in archived for row in rows), expected)


# ---------------------------------------------------------------------------------------------- (f)
class FailingOnce(CheckpointStore):
    """The real store, failing like a disk or a network would: once when a partition is taken over
    (``load``), once when a revoked partition is checkpointed (``save`` while ``revoking``)."""

    def __init__(self, root: Path, group: str, topic: str) -> None:
        super().__init__(root, group, topic)
        self.failed_load = False
        self.revoking = False
        self.failed_save = False

    def load(self, partition: int, epoch: str, offset: int) -> Checkpoint | None:
        if not self.failed_load:
            self.failed_load = True
            raise OSError("injected: the checkpoint folder is unreachable")
        return super().load(partition, epoch, offset)

    def save(self, checkpoint: Checkpoint) -> Path:
        if self.revoking and not self.failed_save:
            self.failed_save = True
            raise OSError("injected: no space left on device")
        return super().save(checkpoint)


class TellsItsStore(Processor):
    """The real processor, letting its store know when a revocation is under way (to fail just there)."""

    async def _on_revoked(self, revoked):  # type: ignore[no-untyped-def]
        self.store.revoking = True
        try:
            await super()._on_revoked(revoked)
        finally:
            self.store.revoking = False


async def test_failures_in_the_rebalance_callbacks_leave_no_half_state(make_settings, produce, db):
    """A processor whose checkpoint fails while its partitions are revoked, and one whose takeover fails:
    the partitions are re-read from their last commit and every candle and dead letter is stored once."""
    # the first regular checkpoint comes after the rebalance: the revocation has rows to write
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=8, kafka_session_timeout_ms=6000)
    trades = sorted(market(8, 6000, rate=300), key=lambda t: t.timestamp)
    late = Trade("synthetic", "BTCUSDT", 1.0, 1.0, trades[3000].timestamp - 5000, 10**12, False)
    expected = batch_candles(trades)
    await produce(settings, trades[:3000], close=False)
    first_store = FailingOnce(settings.output_dir, settings.consumer_group, settings.kafka_topic)
    first_store.failed_load = True  # the first processor only fails on revocation
    first = TellsItsStore(settings, sinks_for(settings), store=first_store)
    stop_first = asyncio.Event()
    task_first = asyncio.create_task(first.run(stop_first))
    await asyncio.wait_for(first.ready.wait(), 30)
    await asyncio.sleep(1.0)
    second_store = FailingOnce(settings.output_dir, settings.consumer_group, settings.kafka_topic)
    second = Processor(settings, sinks_for(settings), store=second_store)
    stop_second = asyncio.Event()
    task_second = asyncio.create_task(second.run(stop_second))
    try:
        await produce(settings, [*trades[3000:4000], late], close=False)
        await asyncio.sleep(2.0)
        await produce(settings, trades[4000:])
        deadline = time.monotonic() + 90
        while await db_count(settings.database_dsn) < len(expected):
            assert time.monotonic() < deadline, (first.stats, second.stats)
            assert not task_first.done() and not task_second.done()
            await asyncio.sleep(0.3)
    finally:
        stop_first.set()
        stop_second.set()
        await asyncio.wait_for(asyncio.gather(task_first, task_second), 60)
    assert first_store.failed_save and second_store.failed_load
    await stored_equal(settings, expected)
    letters = await dead_letters(settings, expect=1)
    assert list(letters.values()) == [1] and [reason for *_, reason in letters] == ["late"]


# ---------------------------------------------------------------------------------------------- fencing
async def test_a_processor_that_lost_its_partitions_writes_no_file_and_no_checkpoint(
    make_settings, produce, db
):
    """Another owner claimed the partitions (the fence moved) while this processor was frozen: its next
    checkpoint finds out and drops them instead of publishing files or checkpoints the new owner would
    take."""
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.3)
    trades = sorted(market(9, 2000), key=lambda t: t.timestamp)
    await produce(settings, trades[:1000], close=False)
    proc = Processor(settings, sinks_for(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    await asyncio.wait_for(proc.ready.wait(), 30)
    await asyncio.sleep(1.0)
    owned = sorted(proc.parts)
    assert owned
    usurper = CheckpointStore(settings.output_dir, settings.consumer_group, settings.kafka_topic)
    for p in owned:
        usurper.claim(p, "elsewhere:1")
    files_before = {p: p.stat().st_mtime_ns for p in settings.output_dir.rglob("*") if p.is_file()}
    await produce(settings, trades[1000:])
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert proc.stats.fenced >= len(owned) and not proc.parts
    changed = [
        p
        for p in settings.output_dir.rglob("*")
        if p.is_file() and files_before.get(p) != p.stat().st_mtime_ns
    ]
    assert changed == [], f"a fenced processor wrote {changed}"
