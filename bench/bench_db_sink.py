"""Database sink and read layer: rows/s written through PostgresSink, and latency of reading 1,000 candles.

Writes the same 1 s candles three ways into ``ohlc_1s`` on a real PostgreSQL (the embedded one, durable
settings, unless DATABASE_URL names another server, e.g. TimescaleDB):
  * PostgresSink: COPY (CSV from Arrow) into a staging table, then one INSERT ... ON CONFLICT per batch;
  * the same sink again over rows already stored (a replayed checkpoint: every row conflicts);
  * baseline: asyncpg ``executemany`` of the same upsert, row tuples prepared before the clock starts.
Then reads 1,000 candles of one symbol over a random range through the read layer (``DatabaseStore``) at
1s and 1m, beside a bare asyncpg fetch of the same 1 s rows.

    .venv/bin/python bench/bench_db_sink.py [--rows 300000] [--batch 20000] [--reads 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np
import pyarrow as pa

from cryptostream.embedded import EmbeddedPostgres
from cryptostream.migrate import upgrade
from cryptostream.models import CANDLE_SCHEMA
from cryptostream.settings import load_settings
from cryptostream.store import DatabaseStore
from processor.sinks import FlushBatch, Lineage, PostgresSink

T0 = 1_700_000_000_000
SYMBOLS = [f"SYM{i:02d}USDT" for i in range(10)]
_VALUES = ["open", "high", "low", "close", "volume", "trade_count", "vwap", "buy_volume", "sell_volume"]
VENUE = "binance"
UPSERT = (
    f"INSERT INTO ohlc_1s (exchange, symbol, bucket, {', '.join(_VALUES)}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (exchange, symbol, bucket) "
    "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in _VALUES)
)


def make_candles(rows: int, seed: int = 1) -> pa.Table:
    """``rows`` 1 s candles spread over SYMBOLS, consecutive seconds per symbol, plausible values."""
    rng = np.random.default_rng(seed)
    per = rows // len(SYMBOLS)
    n = per * len(SYMBOLS)
    symbol = np.repeat(np.arange(len(SYMBOLS)), per)
    bucket = T0 + np.tile(np.arange(per, dtype=np.int64) * 1000, len(SYMBOLS))
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    spread = np.abs(rng.normal(0, 0.02, n))
    volume = rng.lognormal(-1, 1, n)
    buy = volume * rng.random(n)
    return pa.table(
        {
            "exchange": pa.array([VENUE] * n, pa.string()),
            "symbol": pa.array(np.asarray(SYMBOLS, dtype=object)[symbol], pa.string()),
            "bucket": pa.array(bucket, pa.timestamp("ms", tz="UTC")),
            "open": close * (1 + rng.normal(0, 1e-4, n)),
            "high": close + spread,
            "low": close - spread,
            "close": close,
            "volume": volume,
            "trade_count": rng.integers(1, 50, n),
            "vwap": close * (1 + rng.normal(0, 5e-5, n)),
            "buy_volume": buy,
            "sell_volume": volume - buy,
        },
        schema=CANDLE_SCHEMA,
    )


def batches(table: pa.Table, size: int) -> list[FlushBatch]:
    out = []
    for seq, start in enumerate(range(0, table.num_rows, size), start=1):
        batch = FlushBatch()
        batch.tables[0] = {"ohlc": table.slice(start, size)}
        batch.lineage[0] = Lineage("bench", seq)
        out.append(batch)
    return out


async def truncate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE ohlc_1s")
    finally:
        await conn.close()


async def sink_rate(dsn: str, work: list[FlushBatch], rows: int) -> float:
    sink = PostgresSink(dsn)
    await sink.start()
    try:
        started = time.perf_counter()
        for batch in work:
            await sink.write(batch)
        return rows / (time.perf_counter() - started)
    finally:
        await sink.close()


async def executemany_rate(dsn: str, table: pa.Table, size: int) -> float:
    records = list(zip(*(table[name].to_pylist() for name in CANDLE_SCHEMA.names), strict=True))
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for start in range(0, len(records), size):
            async with conn.transaction():
                await conn.executemany(UPSERT, records[start : start + size])
        return len(records) / (time.perf_counter() - started)
    finally:
        await conn.close()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


async def read_latency(dsn: str, per_symbol_seconds: int, reads: int) -> dict[str, tuple[float, float]]:
    rng = random.Random(7)
    base = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=T0)
    store = await DatabaseStore.connect(dsn)
    conn = await asyncpg.connect(dsn)
    out: dict[str, tuple[float, float]] = {}
    try:
        for name, interval, span_s in (("read layer 1s", "1s", 1000), ("read layer 1m", "1m", 60_000)):
            span_s = min(span_s, per_symbol_seconds)
            times = []
            await store.candles(VENUE, SYMBOLS[0], base, base + timedelta(seconds=span_s), 1000, interval)
            for _ in range(reads):
                symbol = rng.choice(SYMBOLS)
                start = base + timedelta(seconds=rng.randrange(0, max(1, per_symbol_seconds - span_s)))
                started = time.perf_counter()
                end = start + timedelta(seconds=span_s)
                table = await store.candles(VENUE, symbol, start, end, 1000, interval)
                times.append(time.perf_counter() - started)
                assert table.num_rows == min(1000, span_s // (60 if interval == "1m" else 1))
            out[name] = percentiles(times)
        times = []
        for _ in range(reads):
            symbol = rng.choice(SYMBOLS)
            start = base + timedelta(seconds=rng.randrange(0, per_symbol_seconds - 1000))
            started = time.perf_counter()
            rows = await conn.fetch(
                "SELECT * FROM ohlc_1s WHERE exchange = $1 AND symbol = $2 AND bucket >= $3 AND bucket < $4 "
                "ORDER BY bucket",
                VENUE,
                symbol,
                start,
                start + timedelta(seconds=1000),
            )
            times.append(time.perf_counter() - started)
            assert len(rows) == 1000
        out["bare asyncpg fetch 1s (baseline)"] = percentiles(times)
    finally:
        await conn.close()
        await store.close()
    return out


async def bench(dsn: str, rows: int, size: int, reads: int) -> None:
    table = make_candles(rows)
    work = batches(table, size)
    await truncate(dsn)
    ours = await sink_rate(dsn, work, table.num_rows)
    replay = await sink_rate(dsn, work, table.num_rows)
    await truncate(dsn)
    baseline = await executemany_rate(dsn, table, size)
    await truncate(dsn)
    await sink_rate(dsn, work, table.num_rows)  # leave the data in place for the reads
    print(f"\nwrites: {table.num_rows:,} 1 s candles in batches of {size:,} rows (measured under load)")
    print(f"  PostgresSink (COPY + upsert), new rows   {ours:>10,.0f} rows/s   target >= 70,000")
    print(f"  PostgresSink, replayed rows (conflicts)  {replay:>10,.0f} rows/s")
    print(f"  executemany upsert (baseline)            {baseline:>10,.0f} rows/s")
    print(f"  ratio sink / executemany                 {ours / baseline:>10.1f}x")
    lat = await read_latency(dsn, table.num_rows // len(SYMBOLS), reads)
    print(f"\nreads: 1,000 candles of one symbol over a random range, {reads} queries each")
    for name, (p50, p99) in lat.items():
        print(f"  {name:<34} p50 {p50 * 1000:7.2f} ms   p99 {p99 * 1000:7.2f} ms")
    base = lat["bare asyncpg fetch 1s (baseline)"][0]
    print(f"  read layer 1s p50 / bare fetch p50        {lat['read layer 1s'][0] / base:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=20_000, help="rows per sink write (one checkpoint)")
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    dsn = load_settings().database_dsn
    if dsn:
        upgrade(dsn)
        print(f"database: {load_settings().describe_database()}")
        asyncio.run(bench(dsn, args.rows, args.batch, args.reads))
        return
    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(Path(tmp) / "pg") as pg:
        upgrade(pg.url)
        print("database: embedded PostgreSQL 18 (fsync on)")
        asyncio.run(bench(pg.url, args.rows, args.batch, args.reads))


if __name__ == "__main__":
    main()
