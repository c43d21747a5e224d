"""End-to-end processor throughput: Kafka in, Parquet + PostgreSQL written, offsets committed.

Runs against the real embedded broker and PostgreSQL. The same trades are processed by:
  * cryptostream's processor (batches from getmany, vectorized windows, COPY + upsert), and
  * a naive per-message processor (getone, json.loads, dict updates per trade, one INSERT per candle),
each in a fresh consumer group, and the figures are printed side by side. The candle counts differ by the
last few seconds: the naive consumer writes its open windows at the end, cryptostream keeps them open (their
trades are after the committed offset, so a restart rebuilds them).

    .venv/bin/python bench/bench_processor.py [--trades 300000] [--poll 500,5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer

from cryptostream.codec import Progress
from cryptostream.embedded import EmbeddedKafka, EmbeddedPostgres
from cryptostream.kafka import ensure_topics, security_options, start_producer, wait_for_broker
from cryptostream.migrate import upgrade
from cryptostream.settings import Settings, load_settings
from ingest.publisher import Publisher
from ingest.synthetic import SyntheticMarket
from processor.service import Processor
from processor.sinks import ParquetSink, PostgresSink

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT"]
T0 = 1_700_000_000_000


async def produce(settings: Settings, n: int) -> None:
    """The trades, as a replay writes them: its progress after every 10,000 (minus the buffer), and at the
    end progress that closes every window."""
    market = SyntheticMarket(SYMBOLS, rate=200, seed=1)  # ~33 trades per 1 s candle per symbol
    trades = market.generate(n, start_ms=T0)
    await ensure_topics(settings)
    producer = await start_producer(settings)
    publisher = Publisher(producer, settings.kafka_topic, batch_size=5000, queue_size=100_000)
    await publisher.start()
    buffer_ms = int(settings.max_buffer_seconds * 1000)
    for i in range(0, n, 10_000):
        chunk = trades[i : i + 10_000]
        await publisher.put(chunk)
        high = max(t.timestamp for t in chunk)
        last = i + 10_000 >= n
        watermark = high - high % 1000 + 1000 if last else high - buffer_ms
        await publisher.put_progress(Progress(chunk[0].exchange, tuple(SYMBOLS), watermark))
    await publisher.stop()
    await producer.stop()


async def run_ours(settings: Settings, n: int) -> tuple[float, int]:
    proc = Processor(settings, [ParquetSink(settings.output_dir), PostgresSink(settings.database_dsn or "")])
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    await proc.ready.wait()
    started = time.perf_counter()
    while proc.stats.trades < n:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    stop.set()
    await task  # the final checkpoint (both sinks + commit) is inside the measurement
    return time.perf_counter() - started, proc.stats.candles


async def run_naive(settings: Settings, n: int) -> tuple[float, int]:
    """What a straightforward consumer looks like: one message at a time, one row at a time."""
    consumer = AIOKafkaConsumer(
        settings.kafka_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,  # what the processor uses: the comparison is of the code, not of this setting
        **security_options(settings),
    )
    conn = await asyncpg.connect(settings.database_dsn)
    await consumer.start()
    out = settings.output_dir / "naive"
    out.mkdir(parents=True, exist_ok=True)
    windows: dict[tuple[str, int], dict] = {}
    max_event: dict[str, int] = {}
    closed: list[dict] = []
    count = candles = flushes = 0
    buffer_ms = int(settings.max_buffer_seconds * 1000)
    last_flush = time.perf_counter()
    started = None
    while count < n:
        msg = await consumer.getone()
        started = started or time.perf_counter()
        t = json.loads(msg.value)
        if t.get("type") == "progress" or not (t["price"] > 0 and t["quantity"] >= 0):
            continue
        sym, ts = t["symbol"], t["timestamp"]
        bucket = ts - ts % 1000
        w = windows.get((sym, bucket))
        if w is None:
            windows[(sym, bucket)] = {
                "symbol": sym,
                "bucket": bucket,
                "open": t["price"],
                "high": t["price"],
                "low": t["price"],
                "close": t["price"],
                "volume": t["quantity"],
                "n": 1,
                "first": ts,
                "last": ts,
            }
        else:
            w["high"] = max(w["high"], t["price"])
            w["low"] = min(w["low"], t["price"])
            if ts < w["first"]:
                w["open"], w["first"] = t["price"], ts
            if ts >= w["last"]:
                w["close"], w["last"] = t["price"], ts
            w["volume"] += t["quantity"]
            w["n"] += 1
        count += 1
        max_event[sym] = max(max_event.get(sym, ts), ts)
        for key in [k for k in windows if k[0] == sym and k[1] + 1000 <= max_event[sym] - buffer_ms]:
            closed.append(windows.pop(key))
        if time.perf_counter() - last_flush >= settings.parquet_chunk_seconds or count == n:
            closed.extend(windows.values()) if count == n else None
            for c in closed:
                await conn.execute(
                    "INSERT INTO ohlc_1s (exchange,symbol,bucket,open,high,low,close,volume,trade_count,"
                    "vwap,buy_volume,sell_volume) VALUES ('synthetic',$1,to_timestamp($2/1000.0),$3,$4,$5,$6,"
                    "$7,$8,$6,0,0) ON CONFLICT (exchange,symbol,bucket) DO UPDATE SET close = EXCLUDED.close",
                    c["symbol"],
                    c["bucket"],
                    c["open"],
                    c["high"],
                    c["low"],
                    c["close"],
                    c["volume"],
                    c["n"],
                )
            if closed:
                pq.write_table(pa.Table.from_pylist(closed), out / f"flush-{flushes}.parquet")
            candles += len(closed)
            flushes += 1
            closed = []
            await consumer.commit()
            last_flush = time.perf_counter()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    await consumer.stop()
    await conn.close()
    return elapsed, candles


async def main(n: int, polls: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with EmbeddedKafka(root) as kafka, EmbeddedPostgres(root / "pg") as pg:
            await wait_for_broker(kafka.bootstrap, settings=load_settings(kafka_bootstrap=kafka.bootstrap))
            await asyncio.to_thread(upgrade, pg.url)
            topic = f"bench-{uuid.uuid4().hex[:6]}"

            def settings(poll: int, tag: str) -> Settings:
                return load_settings(
                    kafka_bootstrap=kafka.bootstrap,
                    database_url=pg.url,
                    kafka_topic=topic,
                    kafka_candles_topic=f"{topic}-c",
                    kafka_dlq_topic=f"{topic}-d",
                    consumer_group=f"g-{tag}",
                    output_dir=root / f"out-{tag}",
                    max_poll_records=poll,
                    max_buffer_seconds=2,
                    parquet_chunk_seconds=1,
                )

            print(f"producing {n:,} trades for {len(SYMBOLS)} symbols into {topic} (4 partitions)...")
            await produce(settings(500, "produce"), n)
            results = []
            for poll in polls:
                conn = await asyncpg.connect(pg.url)
                await conn.execute("TRUNCATE ohlc_1s, volatility_1s, predictions")
                await conn.close()
                secs, candles = await run_ours(settings(poll, f"ours{poll}"), n)
                results.append((f"cryptostream (MAX_POLL_RECORDS={poll})", n / secs, secs, candles))
            conn = await asyncpg.connect(pg.url)
            await conn.execute("TRUNCATE ohlc_1s, volatility_1s, predictions")
            await conn.close()
            secs, candles = await run_naive(settings(1, "naive"), n)
            results.append(("naive per-message baseline", n / secs, secs, candles))
    base = results[-1][1]
    print(f"\n{'implementation':<42} {'trades/s':>12} {'seconds':>9} {'candles':>9} {'vs naive':>9}")
    for name, rate, secs, candles in results:
        print(f"{name:<42} {rate:>12,.0f} {secs:>9.2f} {candles:>9,} {rate / base:>8.1f}x")
    print(
        "\ntarget: >= 150,000 trades/s and >= 5x the naive implementation "
        "(Kafka in, Parquet + PostgreSQL written, offsets committed)"
    )
    for name, rate, _, _ in results[:-1]:
        met = rate >= 150_000 and rate / base >= 5
        print(f"  {name}: {'met' if met else 'NOT met'} ({rate:,.0f}/s, {rate / base:.1f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trades", type=int, default=300_000)
    parser.add_argument("--poll", default="500,5000", help="MAX_POLL_RECORDS values to measure")
    args = parser.parse_args()
    asyncio.run(main(args.trades, [int(p) for p in args.poll.split(",")]))
