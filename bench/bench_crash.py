"""The crash test at full size: 200,000+ trades, the processor SIGKILLed at random moments, restarted.

Checks that the Parquet archive and the database each hold exactly the batch result, and prints how long
recovery took. The integration suite runs the same scenario at CI size (tests/integration/test_crash.py).

    .venv/bin/python bench/bench_crash.py [--trades 200000] [--kills 6] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scenario lives beside the tests

import asyncpg

from cryptostream.embedded import EmbeddedKafka, EmbeddedPostgres
from cryptostream.kafka import ensure_topics, start_producer, wait_for_broker
from cryptostream.migrate import upgrade
from cryptostream.settings import Settings, load_settings
from ingest.publisher import Publisher
from tests.integration.crash import closing_progress, make_trades, run_crash_scenario
from tests.integration.helpers import parquet_rows
from tests.reference import assert_candles_equal, batch_candles, rows_by_key

T0 = 1_700_000_000_000


async def produce(settings: Settings, trades, *, close: bool = True, progress=None) -> None:
    """Publish a wave of trades, then ``progress`` (and, with ``close``, what closes their windows)."""
    await ensure_topics(settings)
    producer = await start_producer(settings)
    publisher = Publisher(producer, settings.kafka_topic, batch_size=2000, queue_size=100_000)
    await publisher.start()
    await publisher.put(trades)
    for mark in [*(progress or []), *(closing_progress(trades) if close else [])]:
        await publisher.put_progress(mark)
    await publisher.stop()
    await producer.stop()


async def main(n: int, kills: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with EmbeddedKafka(root) as kafka, EmbeddedPostgres(root / "pg", fast_unsafe=True) as pg:
            await wait_for_broker(kafka.bootstrap, settings=load_settings(kafka_bootstrap=kafka.bootstrap))
            await asyncio.to_thread(upgrade, pg.url)
            tag = uuid.uuid4().hex[:6]
            settings = load_settings(
                kafka_bootstrap=kafka.bootstrap,
                database_url=pg.url,
                kafka_topic=f"t-{tag}",
                kafka_candles_topic=f"c-{tag}",
                kafka_dlq_topic=f"d-{tag}",
                consumer_group=f"g-{tag}",
                output_dir=root / "out",
                max_buffer_seconds=1.0,
                parquet_chunk_seconds=1.0,
                kafka_session_timeout_ms=3000,
                max_poll_records=2000,
            )
            trades = make_trades(n, seed=seed, start_ms=T0)
            expected = batch_candles(trades)
            print(
                f"{len(trades):,} trades (with duplicates and disorder) -> {len(expected):,} candles; "
                f"{kills} SIGKILLs"
            )
            started = time.perf_counter()
            report = await run_crash_scenario(
                settings,
                trades,
                produce,
                kills=kills,
                seed=seed,
                log=root / "processor.log",
                expected_candles=len(expected),
                waves=20,
                timeout=600,
            )
            conn = await asyncpg.connect(pg.url)
            db_rows = [dict(r) for r in await conn.fetch("SELECT * FROM ohlc_1s")]
            await conn.close()
            assert_candles_equal(rows_by_key(db_rows), expected)
            assert_candles_equal(rows_by_key(parquet_rows(settings.output_dir)), expected)
            log = (root / "processor.log").read_text()
            print(f"killed at {report.kill_times} s; finished in {time.perf_counter() - started:.1f} s")
            print(
                f"resumed from checkpoints {log.count('resuming at offset')} times; "
                f"uncommitted Parquet removals: {log.count('written after its last commit')}"
            )
            print(
                f"database: {len(db_rows):,} candles == batch result; Parquet: identical. "
                "0 missing, 0 counted twice."
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trades", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.trades, args.kills, args.seed))
