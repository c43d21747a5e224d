"""TimescaleDB roll-ups in production terms: history that outlives raw retention, late rows that show at once.

The suite's TimescaleDB is a WASM build whose background jobs never run on their own. Here they are driven
explicitly (``CALL run_job``), and every test holds both ways: with the refresh policies run after the
writes (as a real server does whenever it likes) and without.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pytest

from cryptostream.migrate import upgrade
from cryptostream.models import INTERVALS, Trade
from cryptostream.settings import load_settings
from cryptostream.store import DatabaseStore
from ingest.synthetic import SyntheticMarket
from processor.sinks import FlushBatch, Lineage, PostgresSink
from processor.sinks.postgres import bucket_span, upsert
from processor.sinks.rollups import REFRESH_LOCK, RollupRefresh
from tests.integration.conftest import timescaledb_server
from tests.integration.test_storage import candles_of
from tests.reference import Key, assert_candles_equal, batch_candles, rows_by_key

pytestmark = [pytest.mark.integration, pytest.mark.timescale]

DAY = 86_400_000
ROLLUPS = ["1m", "5m", "15m", "1h", "1d"]
REFRESH_JOB = "policy_refresh_continuous_aggregate"


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[str]:
    """A TimescaleDB of this test's own (retention drops chunks of every market), not migrated yet."""
    with timescaledb_server(tmp_path) as dsn:
        yield dsn


def market(n: int, start_ms: int, rate: float, seed: int) -> list[Trade]:
    tag = uuid.uuid4().hex[:6].upper()
    return SyntheticMarket([f"BTC{tag}"], rate=rate, seed=seed, exchange="binance").generate(n, start_ms)


async def write_like_the_processor(dsn: str, candles: pa.Table, checkpoints: int) -> None:
    """The candles in time order, ``checkpoints`` writes through the real sink, as a replay writes them."""
    candles = candles.sort_by("bucket")
    sink = PostgresSink(dsn)
    await sink.start()
    try:
        step = -(-candles.num_rows // checkpoints)
        for seq, a in enumerate(range(0, candles.num_rows, step), start=1):
            batch = FlushBatch()
            batch.tables[0] = {"ohlc": candles.slice(a, step)}
            batch.lineage[0] = Lineage("0a1b2c3d", seq)
            await sink.write(batch)
    finally:
        await sink.close()


async def run_jobs(dsn: str, proc: str, relation: str | None = None) -> int:
    """Run every job of ``proc`` (on ``relation``) now, as the server's scheduler would; how many ran."""
    conn = await asyncpg.connect(dsn)
    try:
        jobs = await conn.fetch(
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = $1 "
            "AND ($2::text IS NULL OR hypertable_name = $2) ORDER BY job_id",
            proc,
            relation,
        )
        for job in jobs:
            await conn.execute(f"CALL run_job({job[0]})")
        return len(jobs)
    finally:
        await conn.close()


async def read(dsn: str, trade: Trade, intervals: list[str]) -> dict[str, dict[Key, dict[str, Any]]]:
    store = await DatabaseStore.connect(dsn, max_size=1)
    try:
        return {
            i: rows_by_key(
                (await store.candles(trade.exchange, trade.symbol, limit=1_000_000, interval=i)).to_pylist()
            )
            for i in intervals
        }
    finally:
        await store.close()


async def scalar(dsn: str, sql: str, *args: object) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


@pytest.mark.parametrize("policies_run", [True, False], ids=["refresh-jobs-run", "refresh-jobs-idle"])
async def test_after_retention_then_refresh_the_rollup_history_of_the_dropped_range_is_intact(
    own_server: str, policies_run: bool
):
    """Ten days of candles written as a replay writes them; then retention is set (1 s rows kept 5 days,
    1 m buckets 7 days) and its jobs drop the older chunks; the refresh policies run (or not). Every roll-up
    still covers all ten days exactly, except 1 m, which keeps at least its last 7 days (its own retention
    drops whole chunks, 10 days wide). On a server whose jobs run, the retention jobs may also run on their
    own as soon as ``migrate`` creates them: the roll-ups were materialized before that (the README's rule:
    write history before setting a retention it is older than; rows written older than an active
    retention may be dropped before their roll-ups are computed)."""
    retained = own_server
    await asyncio.to_thread(upgrade, retained, settings=load_settings())
    now = int(time.time() * 1000)
    trades = market(4000, now - 10 * DAY, rate=4000 / (10 * 86_400), seed=7)
    trades = [t for t in trades if t.timestamp < now - 60_000]
    await write_like_the_processor(retained, candles_of(trades), checkpoints=25)
    raw_before = await scalar(retained, "SELECT count(*) FROM ohlc_1s")
    settings = load_settings(retention_days=5, rollup_retention_days="1m=7")
    await asyncio.to_thread(upgrade, retained, settings=settings)

    assert await run_jobs(retained, "policy_retention", "ohlc_1s") == 1
    assert await run_jobs(retained, "policy_retention", "ohlc_1m") == 1
    if policies_run:
        assert await run_jobs(retained, REFRESH_JOB) == 4
    oldest_raw = await scalar(retained, "SELECT min(bucket) FROM ohlc_1s")
    assert await scalar(retained, "SELECT count(*) FROM ohlc_1s") < raw_before
    assert oldest_raw.timestamp() * 1000 > now - 6 * DAY  # the older chunks are gone

    got = await read(retained, trades[0], ROLLUPS)
    for interval in ROLLUPS:
        expected = batch_candles(trades, INTERVALS[interval])
        if interval == "1m":
            kept = {k for k in expected if k[2] >= now - 7 * DAY}
            missing = sorted(kept - set(got[interval]))
            assert not missing, f"{len(missing)} 1 m buckets of the last 7 days missing, from {missing[0]}"
            expected = {k: v for k, v in expected.items() if k in got[interval]}
        assert_candles_equal(got[interval], expected)


@pytest.mark.parametrize("policies_run", [True, False], ids=["refresh-jobs-run", "refresh-jobs-idle"])
async def test_a_late_row_in_a_materialized_minute_shows_in_the_next_query_at_every_interval(
    tsdb_url: str, policies_run: bool
):
    """Two hours of candles, materialized; then a checkpoint carries a trade of a minute an hour ago (a
    processor catching up): the next query at every interval includes it."""
    now = int(time.time() * 1000)
    start = now - 2 * 3_600_000 - now % 60_000
    trades = [t for t in market(3000, start, rate=0.4, seed=11) if t.timestamp < now - 120_000]
    await write_like_the_processor(tsdb_url, candles_of(trades), checkpoints=6)
    if policies_run:
        await run_jobs(tsdb_url, REFRESH_JOB)
    minute = start + 60 * 60_000
    table = await scalar(
        tsdb_url,
        "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) "
        "FROM timescaledb_information.continuous_aggregates WHERE view_name = 'ohlc_1m'",
    )
    stored = f"SELECT count(*) FROM {table} WHERE symbol = $1 AND bucket = to_timestamp($2 / 1000.0)"
    assert await scalar(tsdb_url, stored, trades[0].symbol, minute) == 1  # materialized, not real time
    first = trades[0]
    late = Trade(first.exchange, first.symbol, 10 * first.price, 5.0, minute + 30_500, 10**9, False)
    await write_like_the_processor(tsdb_url, candles_of([late]), checkpoints=1)

    got = await read(tsdb_url, first, ["1s", *ROLLUPS])
    for interval, rows in got.items():
        expected = batch_candles([*trades, late], INTERVALS[interval])
        assert_candles_equal(rows, expected)
        bucket = minute + 30_000 - (minute + 30_000) % INTERVALS[interval]
        assert rows[(first.exchange, first.symbol, bucket)]["high"] == late.price, interval


def test_policies_follow_the_settings_on_every_migrate(own_server: str):
    """Changing RETENTION_DAYS or ROLLUP_RETENTION_DAYS and migrating again changes the policies in place
    (and only those); unsetting them removes them."""
    dsn = own_server

    def policies() -> dict[tuple[str, str], str]:
        """(job, relation) -> job id and config: a policy replaced gets a new id."""

        async def fetch() -> dict[tuple[str, str], str]:
            conn = await asyncpg.connect(dsn)
            try:
                rows = await conn.fetch(
                    "SELECT proc_name, hypertable_name, job_id, config::text "
                    "FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"
                )
            finally:
                await conn.close()
            return {(r[0], r[1]): f"{r[2]} {r[3]}" for r in rows}

        return asyncio.run(fetch())

    upgrade(dsn, settings=load_settings())
    first = policies()
    assert not [k for k in first if k[0] == "policy_retention"]
    assert all('"start_offset": "3 days"' in first[(REFRESH_JOB, v)] for v in ("ohlc_1m", "ohlc_1d"))

    upgrade(dsn, settings=load_settings(retention_days=30, rollup_retention_days="1m=14,5m=60"))
    second = policies()
    for table in ("ohlc_1s", "volatility_1s", "predictions"):
        assert '"drop_after": "30 days"' in second[("policy_retention", table)]
    assert '"drop_after": "14 days"' in second[("policy_retention", "ohlc_1m")]
    assert '"drop_after": "60 days"' in second[("policy_retention", "ohlc_5m")]
    assert ("policy_retention", "ohlc_1h") not in second
    assert {k: v for k, v in second.items() if k[0] != "policy_retention"} == {
        k: v for k, v in first.items() if k[0] != "policy_retention"
    }

    upgrade(dsn, settings=load_settings(retention_days=30, rollup_retention_days="1m=14,5m=60"))
    assert policies() == second  # nothing to change: nothing changed

    async def pause_1m_retention() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                "WHERE proc_name = 'policy_retention' AND hypertable_name = 'ohlc_1m'"
            )
        finally:
            await conn.close()

    asyncio.run(pause_1m_retention())
    upgrade(dsn, settings=load_settings(retention_days=30, rollup_retention_days="1m=21,5m=60"))
    third = policies()
    assert '"drop_after": "21 days"' in third[("policy_retention", "ohlc_1m")]
    scheduled = asyncio.run(
        scalar(
            dsn,
            "SELECT scheduled FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_retention' AND hypertable_name = 'ohlc_1m'",
        )
    )
    assert scheduled is False  # a job the operator paused stays paused when a setting change replaces it

    upgrade(dsn, settings=load_settings())
    assert policies() == first


async def materialized(dsn: str, view: str) -> set[tuple[str, int]]:
    """(symbol, bucket ms) of the rows ``view`` has materialized (not its real-time part)."""
    table = await scalar(
        dsn,
        "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) "
        "FROM timescaledb_information.continuous_aggregates WHERE view_name = $1",
        view,
    )
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT symbol, (extract(epoch FROM bucket) * 1000)::int8 FROM {table}")
    finally:
        await conn.close()
    return {(r[0], r[1]) for r in rows}


def _day_floor(ms: int) -> int:
    return ms - ms % DAY


@pytest.mark.parametrize("policies_run", [True, False], ids=["refresh-jobs-run", "refresh-jobs-idle"])
async def test_late_rows_below_what_retention_dropped_never_recompute_the_roll_ups(
    own_server: str, policies_run: bool
):
    """Ten days written, then RETENTION_DAYS=5; the retention job drops the older 1 s chunks. A late 1 s
    row 8 days old arrives, then RETENTION_DAYS is raised to 6 and ``migrate`` runs (it refreshed from the
    oldest row on: the review found 397 of 1,699 1 m buckets gone and day -8's 1 d candle made of the late
    row alone); then a late row in the sixth day, which the old policy dropped and the new one covers.
    The roll-ups stay those of the original trades at every level.

    The history is written before the retention policy exists, as a deployment's history comes to be: on
    a server whose scheduler runs (``TIMESCALEDB_URL``), a policy created first ran on its own while the
    rows older than 5 days were being written and dropped some before their refresh, so their roll-ups
    never existed (in 10 of 18 runs): the backfill the README's operator notes warn against."""
    dsn = own_server
    await asyncio.to_thread(upgrade, dsn)
    now = int(time.time() * 1000)
    trades = [
        t
        for t in market(3000, now - 10 * DAY, rate=3000 / (10 * 86_400), seed=5)
        if t.timestamp < now - 120_000
    ]
    await write_like_the_processor(dsn, candles_of(trades), checkpoints=20)
    await asyncio.to_thread(upgrade, dsn, settings=load_settings(retention_days=5))
    assert await run_jobs(dsn, "policy_retention", "ohlc_1s") == 1
    first = trades[0]

    def late(ms: int, n: int) -> Trade:
        return Trade(
            first.exchange, first.symbol, 10 * first.price, 0.5, ms - ms % 60_000 + 30_500, 10**9 + n, False
        )

    await write_like_the_processor(dsn, candles_of([late(now - 8 * DAY, 1)]), checkpoints=1)
    await asyncio.to_thread(upgrade, dsn, settings=load_settings(retention_days=6))
    if policies_run:
        assert await run_jobs(dsn, REFRESH_JOB) == 4
    sixth_day = _day_floor(now - 5 * DAY) - DAY // 2  # in the chunk the 5-day policy dropped
    await write_like_the_processor(dsn, candles_of([late(sixth_day, 2)]), checkpoints=1)
    if policies_run:
        assert await run_jobs(dsn, REFRESH_JOB) == 4

    got = await read(dsn, first, ["1m", "5m", "1h", "1d"])
    for interval, rows in got.items():
        assert_candles_equal(rows, batch_candles(trades, INTERVALS[interval]))


async def test_a_late_row_below_a_roll_up_level_s_own_retention_does_not_bring_its_bucket_back(
    own_server: str,
):
    """1 m buckets kept 7 days (1 s rows kept): 25 days written, the 1 m retention job drops its older
    chunks. A late trade 20 days old is stored as a 1 s row, but its 1 m bucket stays dropped: brought back,
    it made the aggregate look whole from there, and reads skipped the archive for the ten days after it."""
    dsn = own_server
    await asyncio.to_thread(upgrade, dsn, settings=load_settings(rollup_retention_days="1m=7"))
    now = int(time.time() * 1000)
    trades = [
        t
        for t in market(2500, now - 25 * DAY, rate=2500 / (25 * 86_400), seed=9)
        if t.timestamp < now - 120_000
    ]
    await write_like_the_processor(dsn, candles_of(trades), checkpoints=20)
    assert await run_jobs(dsn, "policy_retention", "ohlc_1m") == 1
    before = await materialized(dsn, "ohlc_1m")
    assert min(b for _, b in before) > now - 20 * DAY  # the job dropped the older chunks
    first = trades[0]
    ms = now - 20 * DAY
    old = Trade(first.exchange, first.symbol, first.price, 0.5, ms - ms % 60_000 + 30_500, 10**9, False)
    await write_like_the_processor(dsn, candles_of([old]), checkpoints=1)
    assert await scalar(dsn, "SELECT count(*) FROM ohlc_1s WHERE bucket < now() - INTERVAL '19 days'") > 0
    assert await materialized(dsn, "ohlc_1m") == before


async def test_a_writer_s_refresh_holds_the_refresh_lock_only_while_it_runs(tsdb_url: str):
    """Writers refresh one at a time (several processors: one's refresh must not materialize a bucket
    between another's commit and its reading of the watermark); the lock is given back, also when a refresh
    fails, or every later checkpoint of every writer would wait on it. (The suite's TimescaleDB serves one
    connection at a time, so two writers cannot be run against each other here.)"""
    now = int(time.time() * 1000)
    start = now - 3_600_000 - now % 60_000
    trades = [t for t in market(400, start, rate=0.2, seed=5) if t.timestamp < now - 120_000]
    candles = candles_of(trades)
    conn = await asyncpg.connect(tsdb_url)
    held = f"SELECT pg_advisory_unlock({REFRESH_LOCK})"  # true: this session held it
    try:
        rollups = await RollupRefresh.detect(conn)
        assert rollups is not None
        await upsert(conn, "ohlc_1s", ("exchange", "symbol", "bucket"), candles)
        assert await rollups.after_write(conn, *bucket_span(candles))  # refreshed something
        assert await conn.fetchval(held) is False
        broken = RollupRefresh({"ohlc_1m": 60_000}, "no_such_schema", rollups.horizons_sql)
        with pytest.raises(asyncpg.PostgresError):
            await broken.after_write(conn, *bucket_span(candles))
        assert await conn.fetchval(held) is False
    finally:
        await conn.close()
