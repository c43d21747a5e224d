"""Storage on plain PostgreSQL and on TimescaleDB: the same roll-ups from both, and from the Parquet archive.

Every test here runs twice through ``storage_backend``: on a fresh database of the embedded PostgreSQL 18
and on TimescaleDB (PGlite + TimescaleDB 2.23, see ``tests/tsdb``). Candles are computed from trades by the
processor's own window code and written through the real ``PostgresSink`` and ``ParquetSink``; roll-ups
read back through the read layer are checked against a naive batch computation over the trades.

Each test uses symbols of its own, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pytest

from cryptostream import archive
from cryptostream.errors import QueryError
from cryptostream.models import (
    CANDLE_SCHEMA,
    INTERVALS,
    PREDICTION_SCHEMA,
    VOLATILITY_SCHEMA,
    Trade,
    TradeColumns,
)
from cryptostream.store import ArchiveStore, DatabaseStore
from ingest.synthetic import SyntheticMarket
from processor.sinks import FlushBatch, Lineage, ParquetSink, PostgresSink
from processor.windows import aggregate, dedupe
from tests.integration.conftest import Backend
from tests.integration.helpers import as_deadlock_victim
from tests.reference import Key, assert_candles_equal, batch_candles, rows_by_key

pytestmark = [pytest.mark.integration, pytest.mark.timescale]

# 2023-11-14 22:40 UTC: three hours of trades cross midnight, so 1 d has two buckets.
START_MS = 1_700_001_600_000
ROLLUPS = [name for name in INTERVALS if name != "1s"]
CAGGS = ["ohlc_1d", "ohlc_1h", "ohlc_1m", "ohlc_5m"]
V = "synthetic"  # the venue of SyntheticMarket's trades


def _symbols(n: int = 2) -> list[str]:
    tag = uuid.uuid4().hex[:6].upper()
    return [f"{base}{tag}" for base in ("BTC", "ETH", "SOL")[:n]]


def _trades(symbols: list[str], n: int = 6000, start_ms: int = START_MS, seed: int = 5) -> list[Trade]:
    """About 0.6 trades/s over ~2.8 h: sparse enough for empty seconds and minutes, with duplicates."""
    return SyntheticMarket(symbols, rate=0.6, seed=seed, duplicate_rate=0.02).generate(n, start_ms)


def candles_of(trades: list[Trade]) -> pa.Table:
    """1 s candles of ``trades`` computed by the processor's own window code."""
    return aggregate(dedupe(TradeColumns.from_trades(trades))).to_table()


def _select(
    expected: dict[Key, dict[str, Any]],
    symbol: str,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
) -> dict[Key, dict[str, Any]]:
    lo = start.timestamp() * 1000 if start else float("-inf")
    hi = end.timestamp() * 1000 if end else float("inf")
    keys = sorted(k for k in expected if k[1] == symbol and lo <= k[2] < hi)
    if limit is not None:
        keys = keys[-limit:]
    return {k: expected[k] for k in keys}


def _at(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


async def write_candles(backend: Backend, candles: pa.Table, parquet_root: Path | None = None) -> None:
    """Write 1 s candles as the processor does: three checkpoints through the real sinks, the second
    written twice (a replay after a crash must not add rows)."""
    cuts = [0, candles.num_rows // 3, 2 * candles.num_rows // 3, candles.num_rows]
    batches = []
    for seq, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False), start=1):
        batch = FlushBatch()
        batch.tables[0] = {"ohlc": candles.slice(a, b - a)}
        batch.lineage[0] = Lineage("0a1b2c3d", seq)
        batches.append(batch)
    sink = PostgresSink(backend.dsn)
    await sink.start()
    try:
        for batch in [batches[0], batches[1], batches[1], batches[2]]:
            await sink.write(batch)
    finally:
        await sink.close()
    if parquet_root is not None:
        parquet = ParquetSink(parquet_root)
        for batch in batches:
            await parquet.write(batch)


async def write_batch(backend: Backend, batch: FlushBatch) -> None:
    """One checkpoint through the real sink (closed afterwards: the TimescaleDB harness takes one
    connection at a time)."""
    sink = PostgresSink(backend.dsn)
    await sink.start()
    try:
        await sink.write(batch)
    finally:
        await sink.close()


async def write_rows(backend: Backend, kind: str, table: pa.Table) -> None:
    batch = FlushBatch()
    batch.tables[0] = {kind: table}
    batch.lineage[0] = Lineage("0a1b2c3d", 1)
    await write_batch(backend, batch)


async def refresh_aggregates(backend: Backend, start: datetime, end: datetime) -> None:
    """What the refresh policies do in production, on demand (TimescaleDB only)."""
    if backend.kind != "timescaledb":
        return
    conn = await backend.connect()
    try:
        for view in CAGGS:
            await conn.execute(
                f"CALL refresh_continuous_aggregate('{view}', '{start.isoformat()}', '{end.isoformat()}')"
            )
    finally:
        await conn.close()


async def materialized_rows(backend: Backend, symbol: str) -> dict[str, int]:
    """Rows of ``symbol`` in each continuous aggregate's materialization table (not its real-time part)."""
    conn = await backend.connect()
    try:
        out = {}
        for view in CAGGS:
            table = await conn.fetchval(
                "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) "
                "FROM timescaledb_information.continuous_aggregates WHERE view_name = $1",
                view,
            )
            out[view] = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE symbol = $1", symbol)
        return out
    finally:
        await conn.close()


async def open_store(backend: Backend, archive_root: Path | None = None) -> DatabaseStore:
    return await DatabaseStore.connect(backend.dsn, archive_root, max_size=backend.pool_size)


def _by_key(table: pa.Table) -> dict[Key, dict[str, Any]]:
    return rows_by_key(table.to_pylist())


def _assert_sorted_aware(table: pa.Table) -> None:
    buckets = table["bucket"].to_pylist()
    assert buckets == sorted(buckets)
    assert table.schema.field("bucket").type.tz == "UTC"
    assert all(b.tzinfo is not None for b in buckets)


# ---------------------------------------------------------------------------------------------- tests
async def test_schema_is_timescaledb_where_available_and_plain_tables_elsewhere(storage_backend: Backend):
    conn = await storage_backend.connect()
    try:
        has_extension = await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
        if storage_backend.kind == "timescaledb":
            hypertables = await conn.fetch(
                "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables "
                "ORDER BY hypertable_name"
            )
            assert [(r[0], r[1]) for r in hypertables] == [
                ("ohlc_1s", True),
                ("predictions", True),
                ("volatility_1s", True),
            ]
            caggs = await conn.fetch(
                "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates "
                "ORDER BY view_name"
            )
            assert [(r[0], r[1]) for r in caggs] == [(name, False) for name in CAGGS]
            jobs = await conn.fetch(
                "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs "
                "WHERE proc_name IN ('policy_refresh_continuous_aggregate', 'policy_compression')"
            )
            refresh = sorted(r[1] for r in jobs if r[0] == "policy_refresh_continuous_aggregate")
            compression = sorted(r[1] for r in jobs if r[0] == "policy_compression")
            assert refresh == CAGGS
            assert compression == ["ohlc_1s", "predictions", "volatility_1s"]
        else:
            assert has_extension == 0
            assert await conn.fetchval("SELECT to_regclass('ohlc_1m')") is None
            kinds = await conn.fetch(
                "SELECT relname, relkind::text FROM pg_class "
                "WHERE relname IN ('ohlc_1s', 'volatility_1s', 'predictions')"
            )
            assert sorted((r[0], r[1]) for r in kinds) == [
                ("ohlc_1s", "r"),
                ("predictions", "r"),
                ("volatility_1s", "r"),
            ]
    finally:
        await conn.close()
    store = await open_store(storage_backend)
    try:
        await store.candles(V, "NOSUCHSYMBOL")
        assert store.backend == storage_backend.kind
    finally:
        await store.close()


async def test_rollups_at_every_interval_equal_a_batch_computation_over_the_trades(storage_backend: Backend):
    symbols = _symbols()
    trades = _trades(symbols)
    await write_candles(storage_backend, candles_of(trades))
    first, last = min(t.timestamp for t in trades), max(t.timestamp for t in trades)
    await refresh_aggregates(storage_backend, _at(first - 86_400_000), _at(last + 86_400_000))

    store = await open_store(storage_backend)
    try:
        plans = {i: await store.read_plan(i) for i in INTERVALS}
        if storage_backend.kind == "timescaledb":
            assert plans == {
                "1s": ("direct", "ohlc_1s"),
                "1m": ("direct", "ohlc_1m"),
                "5m": ("direct", "ohlc_5m"),
                "15m": ("first_last", "ohlc_5m"),
                "1h": ("direct", "ohlc_1h"),
                "1d": ("direct", "ohlc_1d"),
            }
        else:
            assert plans == {"1s": ("direct", "ohlc_1s"), **dict.fromkeys(ROLLUPS, ("date_bin", "ohlc_1s"))}
        for interval, ms in INTERVALS.items():
            expected = batch_candles(trades, ms)
            for symbol in symbols:
                everything = await store.candles(V, symbol, limit=1_000_000, interval=interval)
                _assert_sorted_aware(everything)
                assert_candles_equal(_by_key(everything), _select(expected, symbol))
                # A range that starts and ends inside buckets, and a limit that keeps the newest rows.
                start = _at(first + 1_234_567 + 500)
                end = _at(last - 2_345_678)
                for limit in (1, 7, 100_000):
                    got = await store.candles(V, symbol, start, end, limit=limit, interval=interval)
                    assert_candles_equal(_by_key(got), _select(expected, symbol, start, end, limit))
                newest = await store.candles(V, symbol, limit=5, interval=interval)
                assert_candles_equal(_by_key(newest), _select(expected, symbol, limit=5))
                latest = await store.latest_candle(V, symbol, interval)
                assert_candles_equal(_by_key(latest), _select(expected, symbol, limit=1))
    finally:
        await store.close()


async def test_timescaledb_real_time_and_materialized_aggregates_answer_alike(tsdb_url: str):
    """The writer materializes every bucket before the newest it wrote (the newest may still fill: real
    time from ohlc_1s); after a refresh of the rest, materialized rows alone answer alike."""
    storage_backend = Backend("timescaledb", tsdb_url, 1)
    symbols = _symbols(1)
    # Later than anything other tests refresh, so these buckets are above every aggregate's watermark.
    start_ms = 1_900_000_000_000  # 2030-03-17
    trades = _trades(symbols, n=2000, start_ms=start_ms, seed=9)
    await write_candles(storage_backend, candles_of(trades))
    store = await open_store(storage_backend)
    try:
        before = {i: await store.candles(V, symbols[0], limit=100_000, interval=i) for i in ROLLUPS}
    finally:
        await store.close()
    newest = max(t.timestamp for t in trades)
    complete = {
        f"ohlc_{i}": sum(
            1 for k in batch_candles(trades, INTERVALS[i]) if k[2] < newest - newest % INTERVALS[i]
        )
        for i in ("1m", "5m", "1h", "1d")
    }
    assert await materialized_rows(storage_backend, symbols[0]) == complete
    await refresh_aggregates(storage_backend, _at(start_ms - 86_400_000), _at(start_ms + 3 * 86_400_000))
    after_refresh = await materialized_rows(storage_backend, symbols[0])
    assert all(after_refresh[view] > 0 for view in CAGGS), after_refresh
    # With the 1 s rows gone (and no refresh since), only materialized rows can answer.
    conn = await storage_backend.connect()
    try:
        await conn.execute("DELETE FROM ohlc_1s WHERE symbol = $1", symbols[0])
    finally:
        await conn.close()
    store = await open_store(storage_backend)
    try:
        for interval in ROLLUPS:
            after = await store.candles(V, symbols[0], limit=100_000, interval=interval)
            expected = batch_candles(trades, INTERVALS[interval])
            assert_candles_equal(_by_key(before[interval]), expected)
            assert_candles_equal(_by_key(after), expected)
    finally:
        await store.close()


async def test_postgresql_and_timescaledb_return_identical_rollups(postgres_storage_url: str, tsdb_url: str):
    symbols = _symbols()
    trades = _trades(symbols, n=3000, seed=21)
    candles = candles_of(trades)
    plain = Backend("postgresql", postgres_storage_url, 4)
    timescale = Backend("timescaledb", tsdb_url, 1)
    results: dict[str, dict[str, pa.Table]] = {}
    for backend in (plain, timescale):
        await write_candles(backend, candles)
        await refresh_aggregates(backend, _at(START_MS - 86_400_000), _at(START_MS + 2 * 86_400_000))
        store = await open_store(backend)
        try:
            results[backend.kind] = {
                f"{s}/{i}": await store.candles(V, s, limit=100_000, interval=i)
                for s in symbols
                for i in INTERVALS
            }
        finally:
            await store.close()
    for key, table in results["postgresql"].items():
        other = results["timescaledb"][key]
        assert table.num_rows > 0
        assert table.schema == other.schema
        for name in ("symbol", "bucket", "open", "high", "low", "close", "trade_count"):
            assert table[name].equals(other[name]), f"{key} {name} differs"
        assert_candles_equal(_by_key(table), _by_key(other))


async def test_parquet_archive_returns_the_same_candles_as_the_database(
    storage_backend: Backend, tmp_path: Path
):
    symbols = _symbols()
    trades = _trades(symbols, n=4000, seed=33)
    candles = candles_of(trades)
    await write_candles(storage_backend, candles, tmp_path)
    # The same trades processed a second time (a new consumer group): the archive holds those candles
    # twice, the database once; readers of both see them once.
    again = FlushBatch()
    again.tables[3] = {"ohlc": candles.slice(0, candles.num_rows // 2)}
    again.lineage[3] = Lineage("ffff0000", 1)
    await ParquetSink(tmp_path).write(again)
    await refresh_aggregates(storage_backend, _at(START_MS - 86_400_000), _at(START_MS + 2 * 86_400_000))

    db = await open_store(storage_backend)
    files = ArchiveStore(tmp_path)
    start, end = _at(START_MS + 600_000), _at(START_MS + 7_200_000 + 1)
    try:
        assert set(symbols) <= set(await db.symbols())
        assert await files.symbols() == sorted(symbols)
        for symbol in symbols:
            for interval in INTERVALS:
                for args in ({"limit": 100_000}, {"start": start, "end": end, "limit": 50}, {"limit": 3}):
                    from_db = await db.candles(V, symbol, interval=interval, **args)
                    from_parquet = await files.candles(V, symbol, interval=interval, **args)
                    assert from_parquet.num_rows > 0
                    assert from_parquet.schema == from_db.schema
                    for name in ("bucket", "open", "high", "low", "close", "trade_count"):
                        assert from_parquet[name].equals(from_db[name]), f"{symbol} {interval} {args} {name}"
                    assert_candles_equal(_by_key(from_parquet), _by_key(from_db))
        # The original DataLoader behaviour: date-range filters (end date inclusive), limit, sorted, UTC.
        loader = archive.DataLoader(tmp_path)
        day = _at(START_MS).date()
        rows = loader.load_ohlc(symbols[0], start=day, end=day)
        _assert_sorted_aware(rows)
        assert rows.num_rows > 0 and all(b.date() == day for b in rows["bucket"].to_pylist())
        assert loader.load_ohlc(symbols[0], limit=10)["bucket"].to_pylist() == (
            (await db.candles(V, symbols[0], limit=10))["bucket"].to_pylist()
        )
        # dates at the ends of the calendar bound nothing (9999-12-31's end overflowed a date)
        ends = {"start": date(1, 1, 1), "end": date(9999, 12, 31)}
        assert loader.load_ohlc(symbols[0], **ends).equals(loader.load_ohlc(symbols[0]))
    finally:
        await db.close()


async def test_ranges_the_database_no_longer_holds_come_from_the_archive(
    storage_backend: Backend, tmp_path: Path
):
    """Retention dropped the oldest day from the database; the archive still serves it."""
    symbols = _symbols(1)
    symbol = symbols[0]
    start_ms = 1_710_028_800_000  # 2024-03-10 00:00 UTC, a period no other test writes
    trades = _trades(symbols, n=6000, start_ms=start_ms + 86_400_000 - 5_000_000, seed=44)
    expected_1s = batch_candles(trades, 1000)
    await write_candles(storage_backend, candles_of(trades), tmp_path)

    midnight = _at(start_ms + 86_400_000)
    conn = await storage_backend.connect()
    try:
        if storage_backend.kind == "timescaledb":
            # What the retention policy runs: drop whole chunks (days) older than the horizon.
            dropped = await conn.fetch(
                "SELECT drop_chunks('ohlc_1s', older_than => $1::timestamptz, newer_than => $2::timestamptz)",
                midnight,
                _at(start_ms),
            )
            assert dropped, "no chunk was dropped"
        else:
            await conn.execute("DELETE FROM ohlc_1s WHERE symbol = $1 AND bucket < $2", symbol, midnight)
        left = await conn.fetchval("SELECT count(*) FROM ohlc_1s WHERE symbol = $1", symbol)
        assert 0 < left < len(expected_1s)
    finally:
        await conn.close()

    store = await open_store(storage_backend, archive_root=tmp_path)
    statements: list[str] = []
    if storage_backend.pool_size == 1:
        async with store.pool.acquire() as conn:  # the pool's one connection
            conn.add_query_logger(lambda record: statements.append(record.query))
    try:
        for interval in INTERVALS:
            expected = batch_candles(trades, INTERVALS[interval])
            got = await store.candles(V, symbol, limit=1_000_000, interval=interval)
            assert_candles_equal(_by_key(got), _select(expected, symbol))
            window = (_at(start_ms + 86_400_000 - 3_600_000), _at(start_ms + 86_400_000 + 3_600_000))
            got = await store.candles(V, symbol, *window, limit=1_000_000, interval=interval)
            assert_candles_equal(_by_key(got), _select(expected, symbol, *window))
            # A range after the database's first row: the database alone answers, and where its rows
            # begin is found without asking for its first row (which plans every chunk).
            statements.clear()
            later = (_at(start_ms + 86_400_000 + 1_000_000), _at(start_ms + 86_400_000 + 4_000_000))
            got = await store.candles(V, symbol, *later, limit=1_000_000, interval=interval)
            assert_candles_equal(_by_key(got), _select(expected, symbol, *later))
            await asyncio.sleep(0)  # query loggers are called soon after each statement
            outright = [q for q in statements if q.endswith("ORDER BY bucket LIMIT 1")]
            assert not outright, (interval, outright)
    finally:
        await store.close()
    bare = await open_store(storage_backend)  # one at a time: the TimescaleDB harness takes one connection
    try:
        only_db = await bare.candles(V, symbol, limit=1_000_000)
        assert only_db.num_rows == left  # without the archive the dropped day is simply absent
    finally:
        await bare.close()


async def test_the_archive_fills_in_only_before_the_databases_first_row_whatever_the_bounds(
    storage_backend: Backend, tmp_path: Path
):
    """A range whose start is not on a bucket edge, and bounds at the ends of the calendar.

    The database begins mid-bucket (its first row at 00:30) and holds nothing from 00:31 to 04:00; the
    archive holds every row. From 00:29:59.5 at 1 h the range's first bucket is 01:00, after the database's
    first row: the database answers alone (04:00, 05:00), as it does for the wider range from midnight.
    Asking only for a database row before the range's start (not before its first bucket) missed the row
    at 00:30 and filled 01:00-03:00 from the archive. Bounds in the years 1 and 9999 were rounded past
    datetime's range (OverflowError, an internal error through the API)."""
    symbol = _symbols(1)[0]
    day = 1_710_201_600_000  # 2024-03-12 00:00 UTC, a day no other test writes
    trades = [Trade(V, symbol, 100.0 + i % 7, 1.0, day + 30_000 * i, i, i % 2 == 0) for i in range(720)]
    await write_candles(storage_backend, candles_of(trades), tmp_path)
    conn = await storage_backend.connect()
    try:
        await conn.execute(
            "DELETE FROM ohlc_1s WHERE symbol = $1 AND (bucket < $2 OR (bucket > $2 AND bucket < $3))",
            symbol,
            _at(day + 1_800_000),
            _at(day + 4 * 3_600_000),
        )
    finally:
        await conn.close()
    await refresh_aggregates(storage_backend, _at(day - 86_400_000), _at(day + 2 * 86_400_000))

    store = await open_store(storage_backend, archive_root=tmp_path)
    try:
        unaligned = (_at(day + 1_800_000 - 500), _at(day + 6 * 3_600_000))
        got = await store.candles(V, symbol, *unaligned, limit=1_000, interval="1h")
        hours = [b.hour for b in got["bucket"].to_pylist()]
        assert hours == [4, 5], hours
        wider = await store.candles(V, symbol, _at(day), unaligned[1], limit=1_000, interval="1h")
        assert [b.hour for b in wider["bucket"].to_pylist()] == [0, 4, 5]
        # The hour holding the database's first row: the database has 00:30 alone, the archive all of it
        # from 00:00 (a database added to a deployment that ran on the archive alone). It used to be the
        # database's single second.
        assert wider["trade_count"][0].as_py() == 120  # a trade every 30 s
        assert wider["open"][0].as_py() == trades[0].price and wider["close"][0].as_py() == trades[119].price
        ends = (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))
        for interval in INTERVALS:
            everything = await store.candles(V, symbol, limit=1_000_000, interval=interval)
            assert everything.num_rows > 0
            assert (await store.candles(V, symbol, *ends, limit=1_000_000, interval=interval)).equals(
                everything
            )
            newest = await store.candles(V, symbol, None, ends[1], limit=2, interval=interval)
            assert newest.equals(everything.slice(max(everything.num_rows - 2, 0))), interval
            oldest = await store.candles(V, symbol, ends[0], _at(day + 60_000), limit=5, interval=interval)
            assert oldest.num_rows >= 1 and oldest["bucket"][0] == everything["bucket"][0], interval
    finally:
        await store.close()


async def test_markets_list_every_stored_market_with_its_first_and_last_candle(storage_backend: Backend):
    """What the API's market listing shows: every (exchange, symbol) with 1 s candles, and the first and
    last of them (DISTINCT on TimescaleDB, a loose index scan on PostgreSQL: the same answer)."""
    symbols = _symbols(3)
    trades = _trades(symbols, n=3000, start_ms=START_MS + 7 * 86_400_000, seed=21)
    other_venue = [replace(t, exchange="coinbase") for t in trades[:500] if t.symbol == symbols[0]]
    await write_candles(storage_backend, candles_of(trades + other_venue))
    expected: dict[tuple[str, str], list[int]] = {}
    for t in trades + other_venue:
        expected.setdefault((t.exchange, t.symbol), []).append(t.timestamp // 1000 * 1000)
    store = await open_store(storage_backend)
    try:
        table = await store.markets()
    finally:
        await store.close()
    got = {
        (row["exchange"], row["symbol"]): (_ms(row["first"]), _ms(row["last"]))
        for row in table.to_pylist()
        if row["symbol"] in symbols
    }
    assert got == {market: (min(ms), max(ms)) for market, ms in expected.items()}
    assert len(got) == 4


async def test_volatility_predictions_and_symbols_read_back(storage_backend: Backend):
    symbols = _symbols()
    buckets = [_at(START_MS + i * 1000) for i in range(300)]
    vol = pa.table(
        {
            "exchange": [V] * 300,
            "symbol": [symbols[0]] * 300,
            "bucket": buckets,
            "volatility": [i * 1e-5 for i in range(300)],
            "window_seconds": [60] * 300,
        },
        schema=VOLATILITY_SCHEMA,
    )
    preds = pa.table(
        {
            "exchange": [V] * 20,
            "symbol": [symbols[1]] * 20,
            "bucket": [buckets[i // 2] for i in range(20)],
            "horizon_seconds": [60 if i % 2 else 300 for i in range(20)],
            "probability_up": [i / 20 for i in range(20)],
            "label": ["up" if i % 3 else "down" for i in range(20)],
            "model_version": ["sgd-1"] * 20,
        },
        schema=PREDICTION_SCHEMA,
    )
    await write_rows(storage_backend, "volatility", vol)
    await write_rows(storage_backend, "predictions", preds)
    await write_candles(storage_backend, candles_of(_trades(symbols, n=50)))
    store = await open_store(storage_backend)
    try:
        assert set(symbols) <= set(await store.symbols())
        got = await store.volatility(V, symbols[0], start=buckets[10], end=buckets[60], limit=20)
        assert got.equals(vol.slice(40, 20))
        assert (await store.volatility(V, symbols[0], limit=1_000)).equals(vol)
        got = await store.predictions(V, symbols[1], limit=5)
        assert got.schema == PREDICTION_SCHEMA
        ordered = sorted(preds.to_pylist(), key=lambda r: (r["bucket"], r["horizon_seconds"]))
        assert got.to_pylist() == ordered[-5:]
        assert (await store.volatility(V, "NOSUCHSYMBOL")).num_rows == 0
    finally:
        await store.close()


async def test_sink_stores_values_bit_for_bit_and_a_replay_rewrites_nothing(storage_backend: Backend):
    """Binary COPY keeps every float exactly; duplicates inside a batch keep the last row; replaying
    identical rows leaves them untouched (same xmin), changed rows are updated. The rows are an hour old:
    a server whose compression policy runs (TIMESCALEDB_URL) never compresses them meanwhile, and xmin
    cannot be read from compressed rows."""
    symbol = _symbols(1)[0] + "É"  # non-ASCII text survives the binary stream too
    start_ms = (time.time_ns() // 1_000_000_000 - 3_600) * 1000
    awkward = [0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 65083.67000000001, 1 / 3]
    # Sums of vwap * volume must stay finite and non-zero (PostgreSQL raises on float under/overflow).
    amounts = [0.1 + 0.2, 1e-8, 3e-9, 12345.678901234567, 0.0, 65083.67000000001, 1 / 3]
    n = len(awkward)
    candles = pa.table(
        {
            "exchange": [V] * n,
            "symbol": [symbol] * n,
            "bucket": [_at(start_ms + i * 1000) for i in range(n)],
            "open": awkward,
            "high": awkward[::-1],
            "low": [-x for x in awkward],
            "close": awkward,
            "volume": amounts,
            "trade_count": [2**53 + 1, 0, 1, 2, 3, 4, 2**62],
            "vwap": amounts,
            "buy_volume": amounts,
            "sell_volume": amounts,
        },
        schema=CANDLE_SCHEMA,
    )
    stale = candles.slice(0, 2).set_column(3, "open", pa.array([7.0, 8.0]))
    preds = pa.table(
        {
            "exchange": [V, V],
            "symbol": [symbol, symbol],
            "bucket": [_at(start_ms), _at(start_ms)],
            "horizon_seconds": pa.array([60, 300], pa.int32()),
            "probability_up": [0.25, 1.0],
            "label": ["", "hausse ↑"],
            "model_version": ["sgd-ünï", "x" * 300],
        },
        schema=PREDICTION_SCHEMA,
    )
    batch = FlushBatch()
    batch.tables[0] = {"ohlc": stale, "predictions": preds}
    batch.tables[1] = {"ohlc": candles}  # the later copy of the first two rows wins
    batch.lineage = {0: Lineage("0a1b2c3d", 1), 1: Lineage("0a1b2c3d", 1)}
    await write_batch(storage_backend, batch)
    # a constant time bound: only this test's chunk is planned, never another test's compressed one
    since = _at(start_ms).isoformat()
    select = f"SELECT xmin::text, * FROM ohlc_1s WHERE symbol = $1 AND bucket >= '{since}' ORDER BY bucket"
    conn = await storage_backend.connect()
    try:
        first = await conn.fetch(select, symbol)
    finally:
        await conn.close()
    changed = candles.set_column(5, "low", pa.array([-1.0] + [-x for x in awkward[1:]]))
    replay = FlushBatch()
    replay.tables[1] = {"ohlc": changed}
    replay.lineage = {1: Lineage("0a1b2c3d", 1)}
    await write_batch(storage_backend, replay)
    conn = await storage_backend.connect()
    try:
        second = await conn.fetch(select, symbol)
        stored_preds = await conn.fetch(
            "SELECT * FROM predictions WHERE symbol = $1 ORDER BY horizon_seconds", symbol
        )
    finally:
        await conn.close()
    assert [dict(r)["open"] for r in first] == awkward  # exact float equality, -0.0 included
    assert [str(dict(r)["open"]) for r in first] == [str(x) for x in awkward]
    assert [r["trade_count"] for r in first] == candles["trade_count"].to_pylist()
    assert [r["low"] for r in second] == changed["low"].to_pylist()
    assert [r["xmin"] for r in second][1:] == [r["xmin"] for r in first][1:]  # identical rows untouched
    assert second[0]["xmin"] != first[0]["xmin"]  # the changed row was rewritten
    assert [(r["label"], r["model_version"]) for r in stored_preds] == [
        ("", "sgd-ünï"),
        ("hausse ↑", "x" * 300),
    ]


async def test_newest_rows_from_recent_windows_are_exactly_the_newest_of_the_range(storage_backend: Backend):
    """On TimescaleDB the newest N are read from a recent window first, widened while it holds fewer (so a
    year of chunks is not planned for "latest 1000"); whatever the window, the answer is the newest N of
    the asked range: dense recent seconds, sparse older hours, with and without start and end."""
    symbol = _symbols(1)[0]
    now_s = time.time_ns() // 1_000_000_000
    seconds = [(now_s - 10 - i) * 1000 for i in range(2_500)]  # the last 2,500 s, ending 10 s ago
    hours = [(now_s - 3_000 - i * 3_600) * 1000 for i in range(480)]  # one an hour for 20 days before
    buckets = sorted(seconds + hours)
    n = len(buckets)
    closes = [float(i) for i in range(n)]
    table = pa.table(
        {
            "exchange": [V] * n,
            "symbol": [symbol] * n,
            "bucket": [_at(b) for b in buckets],
            "open": closes,
            "high": closes,
            "low": closes,
            "close": closes,
            "volume": [1.0] * n,
            "trade_count": [1] * n,
            "vwap": closes,
            "buy_volume": [0.5] * n,
            "sell_volume": [0.5] * n,
        },
        schema=CANDLE_SCHEMA,
    )
    await write_rows(storage_backend, "ohlc", table)
    store = await open_store(storage_backend)
    try:
        for start, end, limit in [
            (None, None, 1_000),  # the first window holds them
            (None, None, 2_600),  # widened into the sparse hours
            (None, None, n + 5),  # more than there are: everything
            (_at((now_s - 500) * 1000), None, 1_000),  # a start inside the first window
            (None, _at((now_s - 1_000) * 1000), 100),  # an end in the past
            (_at(hours[-3]), _at(hours[5] + 1), 1_000),  # both, in the sparse part
        ]:
            got = await store.candles(V, symbol, start=start, end=end, limit=limit)
            lo = _ms(start) if start else -1
            hi = _ms(end) if end else 2**62
            want = [b for b in buckets if lo <= b < hi][-limit:]
            assert [_ms(b) for b in got["bucket"].to_pylist()] == want, (start, end, limit)
            assert got["close"].to_pylist() == [closes[buckets.index(b)] for b in want]
    finally:
        await store.close()


async def test_latest_rows_of_a_market_that_stopped_take_one_time_bounded_statement(tsdb_url: str):
    """ "Latest N" of a market whose rows stopped days ago (a venue down, a database of history), at every
    interval: the first read tries recent windows until one holds N rows; after it, and after ``markets()``,
    every read is one statement with a constant start (only recent chunks planned), and every answer is the
    newest N of the whole range, also when rows the store saw are deleted."""
    backend = Backend("timescaledb", tsdb_url, 1)
    symbol = _symbols(1)[0]
    stop_s = time.time_ns() // 1_000_000_000 - 3 * 86_400  # the market stopped 3 days ago
    seconds = [(stop_s - i) * 1000 for i in range(3_600)]  # its last hour: every second
    minutes = [(stop_s - 3_600 - i * 60) * 1000 for i in range(1, 3 * 1_440)]  # 3 days before: every minute
    buckets = sorted(seconds + minutes)
    n = len(buckets)
    closes = [float(i) for i in range(n)]
    columns = {"open": closes, "high": closes, "low": closes, "close": closes, "vwap": closes}
    table = pa.table(
        {
            "exchange": [V] * n,
            "symbol": [symbol] * n,
            "bucket": [_at(b) for b in buckets],
            **columns,
            "volume": [1.0] * n,
            "trade_count": [1] * n,
            "buy_volume": [0.5] * n,
            "sell_volume": [0.5] * n,
        },
        schema=CANDLE_SCHEMA,
    )
    await write_rows(backend, "ohlc", table)
    # Limits the first window (twice the limit's intervals) holds, so one statement can answer.
    limits = {"1s": 100, "1m": 100, "5m": 100, "15m": 100, "1h": 50, "1d": 3}
    statements: list[str] = []

    async def latest(store: DatabaseStore, interval: str) -> tuple[pa.Table, list[str]]:
        statements.clear()
        got = await store.candles(V, symbol, limit=limits[interval], interval=interval)
        await asyncio.sleep(0)  # query loggers are called soon after each statement
        return got, [q for q in statements if "FROM ohlc_" in q or "FROM (SELECT" in q]

    store = await open_store(backend)  # one at a time: the WASM TimescaleDB serves one connection
    try:
        async with store.pool.acquire() as conn:  # the pool's one connection
            conn.add_query_logger(lambda record: statements.append(record.query))
        got, ran = await latest(store, "1s")
        assert len(ran) == 4, ran  # windows of 200 s, 3,200 s and 14 h end now: empty; 9.5 days holds them
        assert [_ms(b) for b in got["bucket"].to_pylist()] == buckets[-100:]
        for interval in INTERVALS:
            got, ran = await latest(store, interval)
            assert len(ran) == 1 and "bucket >= TIMESTAMPTZ '" in ran[0], (interval, ran)
            whole = await store.candles(V, symbol, limit=1_000_000, interval=interval)
            assert got.equals(whole.slice(whole.num_rows - limits[interval])), interval
        async with store.pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM ohlc_1s WHERE symbol = $1 AND bucket > $2", symbol, _at(buckets[-1801])
            )
        got, ran = await latest(store, "1s")  # the newest row it saw is gone: a wider window answers
        assert [_ms(b) for b in got["bucket"].to_pylist()] == buckets[-1900:-1800]
        assert len(ran) == 2, ran
    finally:
        await store.close()
    store = await open_store(backend)
    try:
        async with store.pool.acquire() as conn:
            conn.add_query_logger(lambda record: statements.append(record.query))
        await store.markets()  # what the API's catalog asks every few seconds: where each market's rows end
        for interval in ("1s", "15m"):
            got, ran = await latest(store, interval)
            assert len(ran) == 1 and "bucket >= TIMESTAMPTZ '" in ran[0], (interval, ran)
    finally:
        await store.close()


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


async def test_timescaledb_replay_into_compressed_chunks_still_upserts(tsdb_url: str):
    """The compression policy compresses old chunks; a replay of old trades must still land exactly."""
    backend = Backend("timescaledb", tsdb_url, 1)
    symbols = _symbols(1)
    start_ms = 1_720_000_000_000  # 2024-07-03, a period of its own
    trades = _trades(symbols, n=800, start_ms=start_ms, seed=61)
    candles = candles_of(trades)
    await write_candles(backend, candles)
    conn = await backend.connect()
    try:
        compressed = await conn.fetch(
            "SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('ohlc_1s', "
            "newer_than => $1::timestamptz, older_than => $2::timestamptz) c",
            _at(start_ms - 86_400_000),
            _at(start_ms + 2 * 86_400_000),
        )
        assert compressed
    finally:
        await conn.close()
    replayed = candles.set_column(6, "close", pa.array([x * 2 for x in candles["close"].to_pylist()]))
    await write_candles(backend, replayed)
    store = await open_store(backend)
    try:
        got = await store.candles(V, symbols[0], limit=100_000)
    finally:
        await store.close()
    assert got.num_rows == candles.num_rows
    assert got["close"].to_pylist() == replayed["close"].to_pylist()


async def test_a_write_chosen_as_a_deadlock_victim_is_retried_and_lands(
    postgres_storage_url: str, caplog: pytest.LogCaptureFixture
):
    """Another session locks the tables a checkpoint writes in the other order (as TimescaleDB's compression
    and retention jobs can); PostgreSQL aborts the sink's transaction to break the deadlock. The sink runs
    it again and the checkpoint lands, with a warning instead of a failed checkpoint."""
    symbol = _symbols(1)[0]
    trades = _trades([symbol], n=200)
    candles = candles_of(trades)
    preds = pa.table(
        {
            "exchange": [V],
            "symbol": [symbol],
            "bucket": [_at(START_MS)],
            "horizon_seconds": pa.array([60], pa.int32()),
            "probability_up": [0.5],
            "label": ["flat"],
            "model_version": ["m"],
        },
        schema=PREDICTION_SCHEMA,
    )
    batch = FlushBatch()
    batch.tables[0] = {"ohlc": candles, "predictions": preds}
    batch.lineage[0] = Lineage("0a1b2c3d", 1)
    sink = PostgresSink(postgres_storage_url)
    await sink.start()
    try:
        await as_deadlock_victim(postgres_storage_url, lambda: sink.write(batch))  # ohlc_1s, then predictions
    finally:
        await sink.close()
    assert any("retrying (attempt 2 of 5)" in r.getMessage() for r in caplog.records)
    conn = await asyncpg.connect(postgres_storage_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM ohlc_1s WHERE symbol = $1", symbol)
        assert stored == candles.num_rows
        assert await conn.fetchval("SELECT count(*) FROM predictions WHERE symbol = $1", symbol) == 1
    finally:
        await conn.close()


async def test_bad_queries_raise_query_error(storage_backend: Backend, tmp_path: Path):
    store = await open_store(storage_backend)
    files = ArchiveStore(tmp_path)
    t = datetime(2024, 1, 1, tzinfo=UTC)
    try:
        for s in (store, files):
            with pytest.raises(QueryError, match="unknown interval '2m'"):
                await s.candles(V, "BTCUSDT", interval="2m")
            with pytest.raises(QueryError, match="is after end"):
                await s.candles(V, "BTCUSDT", start=t, end=t - timedelta(seconds=1))
            with pytest.raises(QueryError, match="limit must be >= 1"):
                await s.volatility(V, "BTCUSDT", limit=0)
            assert (await s.candles(V, "BTCUSDT", start=t, end=t, interval="1h")).num_rows == 0
    finally:
        await store.close()
