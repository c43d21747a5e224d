"""A whole market on one machine: many symbols through the real broker and processor, and the archive after.

1. Live: ``--symbols`` synthetic markets (default 2,000) at ``--rate`` trades/s in total (default 5,000) for
   ``--minutes`` (default 10), published as a live source does (paced by the clock, a progress record for
   every symbol each second), its event time starting two minutes before the next UTC hour so an hour
   closes during the run (each trade stamped as received at its event time, as a source whose clock is
   that far ahead would). The processor runs as its own process (``cryptostream process``, Parquet
   only, no database) and is sampled every 5 s: CPU (share of one core), RSS, and lag (records it has yet
   to read: its own ``cryptostream_consumer_lag`` gauge). It serves live predictions for every market (a
   model trained on synthetic candles first, as ``up`` does; ``--no-model`` runs without). After the run:
   the archive's files per market and kind for the closed hours, and the fresh files left for the open hour.
2. Reading one symbol-day of 1 s candles (86,400 rows): from the merged day file, with
   ``archive.load`` and with DuckDB; baseline: the same day as the per-checkpoint files earlier versions
   wrote (one per market per 10 s checkpoint: 8,640 files), read with ``archive.load``.

    .venv/bin/python -m bench.bench_market [--symbols 2000] [--rate 5000] [--minutes 10] [--skip-live]
                                           [--no-model]

Closed candles are timed from the end of their second (the source's progress record for it is published
then) to their arrival on the candles topic, as a consumer of the live feed sees them; the clock starts once
the processor has joined its group, and each second's trades are published as it passes (made ahead).

Targets (#18): processor <= 1 core and <= 500 MB RSS with bounded lag; closed candles on time (p99 <= 1 s);
<= 2 files per market and kind for the closed hours; a symbol-day read in <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import numpy as np
import orjson
import psutil
import pyarrow as pa
from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptostream import archive  # noqa: E402
from cryptostream.codec import Progress  # noqa: E402
from cryptostream.compaction import merge_fresh  # noqa: E402
from cryptostream.embedded import EmbeddedKafka  # noqa: E402
from cryptostream.kafka import ensure_topics, security_options, start_producer, wait_for_broker  # noqa: E402
from cryptostream.models import CANDLE_SCHEMA, Trade  # noqa: E402
from cryptostream.procs import free_port  # noqa: E402
from cryptostream.settings import Settings, load_settings  # noqa: E402
from ingest.publisher import Publisher  # noqa: E402
from ingest.synthetic import SyntheticMarket  # noqa: E402
from processor.model import registry  # noqa: E402
from processor.model.dataset import build_dataset  # noqa: E402
from processor.model.synthetic import synthetic_candles  # noqa: E402
from processor.model.train import fit_and_report  # noqa: E402

GROUP = "bench-market"
SLICES = 5  # a second's trades are published in this many parts as it passes, then its progress


def next_second(market: SyntheticMarket, rate: float, start_ms: int) -> list[Trade]:
    """One second of trades, stamped as received at their event time (the schedule is the source's clock)."""
    trades = market.generate(int(rate), start_ms=start_ms)
    return [replace(t, received_at=t.timestamp) for t in trades if t.timestamp < start_ms + 1000]


def symbols(n: int) -> list[str]:
    return [f"S{i:04d}USDT" for i in range(n)]


async def lag(metrics: str) -> int | None:
    """Records the processor has yet to read (its own gauge: log end minus read position, all partitions);
    None before it reports."""
    async with httpx.AsyncClient() as client:
        try:
            text = (await client.get(metrics, timeout=5)).text
        except httpx.HTTPError:
            return None
    values = [
        line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith("cryptostream_consumer_lag{")
    ]
    return int(sum(float(v) for v in values)) if values else None


async def closed_candles(settings: Settings, offset_ms: int, delays: list[float]) -> None:
    """Collect, per closed 1 s candle the processor publishes, how long after its second ended (on the
    source's clock: the wall clock plus ``offset_ms``) it was on the candles topic."""
    consumer = AIOKafkaConsumer(
        settings.kafka_candles_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="latest",
        **security_options(settings),
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            now = time.time() * 1000 + offset_ms
            for records in batches.values():
                for record in records:
                    message = orjson.loads(record.value or b"{}")
                    if message.get("type") == "candle" and message.get("closed"):
                        bucket = datetime.fromisoformat(message["bucket"]).timestamp() * 1000
                        delays.append((now - bucket - 1000) / 1000)
    finally:
        await consumer.stop()


def train_model(model_dir: Path) -> None:
    """A model for live predictions of every market, as ``up`` serves (trained on synthetic candles)."""
    candles = {f"S{i}": synthetic_candles(3600, seed=i, signal=0.2) for i in range(2)}
    result = fit_and_report(build_dataset(candles, 60), folds=3, candidates=("logit",))
    registry.save(model_dir, result.model_file, result.report)


def live(args: argparse.Namespace, work: Path) -> None:
    """The live part: the broker and the processor as processes, the source paced by the clock."""
    port = free_port()
    with EmbeddedKafka(work / "kafka") as kafka:
        out = work / "outputs"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": kafka.bootstrap,
            "OUTPUT_DIR": str(out),
            "STATE_DIR": str(work / "state"),
            "CONSUMER_GROUP": GROUP,
            "DATABASE_URL": "",
            "SYMBOLS": "BTCUSDT",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
            "METRICS_PORT": str(port),
            "MODEL_DIR": str(work / "models"),
        }
        if not args.no_model:
            train_model(work / "models")
        settings = load_settings(kafka_bootstrap=kafka.bootstrap, output_dir=out, symbols=["BTCUSDT"])
        asyncio.run(wait_for_broker(kafka.bootstrap, 30, settings=settings))
        asyncio.run(ensure_topics(settings))
        with open(work / "processor.log", "wb") as log:
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "cryptostream", "process"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                asyncio.run(
                    drive(args, settings, psutil.Process(proc.pid), out, f"http://127.0.0.1:{port}/metrics")
                )
            finally:
                proc.terminate()
                proc.wait(120)
    if os.environ.get("BENCH_VERBOSE"):
        print((work / "processor.log").read_text()[-4000:])


async def drive(
    args: argparse.Namespace, settings: Settings, ps: psutil.Process, out: Path, metrics: str
) -> None:
    names = symbols(args.symbols)
    producer = await start_producer(settings)
    publisher = Publisher(producer, settings.kafka_topic, batch_size=5000, queue_size=200_000)
    await publisher.start()
    for _ in range(120):  # the clock starts once the processor owns its partitions (it reports their lag)
        if await lag(metrics) is not None:
            break
        await asyncio.sleep(0.5)
    else:
        raise SystemExit("the processor did not join its group in 60 s; run with BENCH_VERBOSE=1")
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    t0 = int((hour - timedelta(minutes=2)).timestamp() * 1000)  # event time: 2 min before an hour
    market = SyntheticMarket(names, rate=args.rate, seed=7)
    seconds = int(args.minutes * 60)
    samples: list[tuple[float, float, int]] = []
    delays: list[float] = []
    # The source clock: second k is published from the start + k s on, and ends at the start + (k + 1) s.
    offset = t0 - int(time.time() * 1000)
    watcher = asyncio.create_task(closed_candles(settings, offset, delays))
    started = time.monotonic()
    cpu0 = ps.cpu_times()
    last_sample = started
    sent = 0
    trades = next_second(market, args.rate, t0)
    for second in range(seconds):
        # as a live source: the second's trades as they happen (in SLICES), then its progress at its end
        for i in range(SLICES):
            due = started + second + (i + 1) / SLICES
            if (pause := due - time.monotonic()) > 0:
                await asyncio.sleep(pause)
            cut = t0 + second * 1000 + (i + 1) * 1000 // SLICES
            await publisher.put([t for t in trades if cut - 1000 // SLICES <= t.timestamp < cut])
        sent += len(trades)
        mark = t0 + (second + 1) * 1000
        await publisher.put_records(
            publisher.progress_records(Progress(trades[0].exchange, tuple(names), mark), mark)
        )
        trades = next_second(market, args.rate, t0 + (second + 1) * 1000)  # made ahead, not on the clock
        if time.monotonic() - last_sample >= 5:
            if ps.status() == psutil.STATUS_ZOMBIE:
                raise SystemExit("the processor exited; run with BENCH_VERBOSE=1 to see its log")
            cpu = ps.cpu_times()
            share = (cpu.user + cpu.system - cpu0.user - cpu0.system) / (time.monotonic() - last_sample)
            cpu0, last_sample = cpu, time.monotonic()
            behind = await lag(metrics) or 0
            samples.append((share, ps.memory_info().rss / 2**20, behind))
            print(
                f"  t={second + 1:4d}s  processor {share * 100:5.1f}% of a core  "
                f"RSS {samples[-1][1]:6.0f} MB  lag {behind:7d} records",
                flush=True,
            )
    late = time.monotonic() - started - seconds
    await publisher.stop()
    await producer.stop()
    for _ in range(120):  # let it catch up
        left = await lag(metrics)
        if os.environ.get("BENCH_VERBOSE"):
            print("  catching up:", left, flush=True)
        if left == 0:
            break
        await asyncio.sleep(1)
    await asyncio.sleep(2 * settings.parquet_chunk_seconds)  # its next checkpoint, and the merge after it
    watcher.cancel()

    cpus = [s[0] for s in samples[1:]] or [s[0] for s in samples]
    rss = [s[1] for s in samples]
    lags = [s[2] for s in samples]
    print(
        f"{args.symbols} symbols, {args.rate:.0f} trades/s, {seconds} s: {sent:,} trades ({late:.1f} s late)"
    )
    mean_cpu, max_cpu = statistics.mean(cpus) * 100, max(cpus) * 100
    print(f"  processor CPU: mean {mean_cpu:.0f}% / max {max_cpu:.0f}% of one core (target <= 100%)")
    print(f"  processor RSS: max {max(rss):.0f} MB (target <= 500 MB)")
    print(f"  lag: max {max(lags):,} records, p50 {int(statistics.median(lags)):,}")
    if delays:
        q = np.percentile(delays, [50, 99])
        print(
            f"  closed candles on the candles topic after their second ended: p50 {q[0]:.2f} s, "
            f"p99 {q[1]:.2f} s, max {max(delays):.2f} s ({len(delays):,} candles; target p99 <= 1 s)"
        )
    per_market: dict[tuple[str, str, str], int] = {}
    for kind in archive.KINDS:
        for path in (out / kind).glob("exchange=*/symbol=*/date=*/*.parquet"):
            key = (kind, path.parent.parent.parent.name, path.parent.parent.name)
            per_market[key] = per_market.get(key, 0) + 1
    fresh = list((out / archive.FRESH).glob("*/date=*/*.parquet"))
    closed_fresh = [p for p in fresh if not p.name.endswith(f"-h{hour.hour:02d}.parquet")]
    counts = list(per_market.values())
    print(
        f"  archive: {len(counts)} market folders with merged files, at most {max(counts, default=0)} "
        f"file(s) per market and kind (target <= 2); fresh files of closed hours left: {len(closed_fresh)}; "
        f"fresh files of the open hour: {len(fresh) - len(closed_fresh)}"
    )


def one_day(symbol: str, day: datetime) -> pa.Table:
    n = 86_400
    buckets = pa.array(
        np.arange(n, dtype=np.int64) * 1000 + int(day.timestamp() * 1000), pa.timestamp("ms", tz="UTC")
    )
    price = 100 + np.cumsum(np.random.default_rng(1).normal(0, 0.01, n))
    return pa.table(
        {
            "exchange": pa.array(["binance"] * n),
            "symbol": pa.array([symbol] * n),
            "bucket": buckets,
            "open": price,
            "high": price + 0.01,
            "low": price - 0.01,
            "close": price,
            "volume": np.ones(n),
            "trade_count": np.ones(n, np.int64),
            "vwap": price,
            "buy_volume": np.ones(n) / 2,
            "sell_volume": np.ones(n) / 2,
        },
        schema=CANDLE_SCHEMA,
    )


def timed(fn: object, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def reads(work: Path) -> None:
    day = datetime(2025, 11, 10, tzinfo=UTC)
    table = one_day("BTCUSDT", day)
    merged, legacy = work / "merged", work / "legacy"
    for hour in range(24):  # fresh files as the processor writes them, then merged as it does
        part = table.slice(hour * 3600, 3600)
        path = archive.fresh_dir(merged, "ohlc", day.date()) / archive.file_name(0, "e1", hour + 1, hour)
        archive.write_file(path, part)
    archive.partition_dir(merged, "ohlc", "binance", "BTCUSDT", day.date()).mkdir(parents=True)
    merge_fresh(merged, int((day + timedelta(days=1, hours=1)).timestamp() * 1000))
    folder = archive.partition_dir(legacy, "ohlc", "binance", "BTCUSDT", day.date())
    folder.mkdir(parents=True)
    file_rows = table.drop_columns(["exchange", "symbol"])
    for seq in range(8640):  # one file per 10 s checkpoint, as earlier versions wrote
        pa.parquet.write_table(file_rows.slice(seq * 10, 10), folder / archive.file_name(0, "e1", seq + 1))
    files = len(
        list(archive.partition_dir(merged, "ohlc", "binance", "BTCUSDT", day.date()).glob("*.parquet"))
    )

    def load(root: Path) -> None:
        got = archive.load(root, "ohlc", "binance", "BTCUSDT", day.date(), day.date(), unique=True)
        assert got.num_rows == 86_400

    con = duckdb.connect()
    glob = f"{merged}/ohlc/exchange=binance/symbol=BTCUSDT/date=2025-11-10/*.parquet"

    def duck() -> None:
        query = f"SELECT bucket, open, high, low, close, volume FROM read_parquet('{glob}')"  # noqa: S608
        assert con.sql(query).to_arrow_table().num_rows == 86_400

    p50, worst = timed(lambda: load(merged), 20)
    d50, dworst = timed(duck, 20)
    b50, bworst = timed(lambda: load(legacy), 3)
    print(f"one symbol-day of 1 s candles (86,400 rows; {files} file after the merge, 8,640 before):")
    print(f"  archive.load: p50 {p50:.1f} ms (max {worst:.1f}); target <= 50 ms")
    print(f"  DuckDB (to Arrow): p50 {d50:.1f} ms (max {dworst:.1f}); target <= 50 ms")
    print(f"  baseline, the 8,640 per-checkpoint files: archive.load p50 {b50:.0f} ms, so {b50 / p50:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--skip-live", action="store_true")
    parser.add_argument("--no-model", action="store_true", help="no live predictions (no model to serve)")
    args = parser.parse_args()
    import pyarrow.parquet  # noqa: F401 - pa.parquet below

    with tempfile.TemporaryDirectory(prefix="bench-market-") as tmp:
        work = Path(tmp)
        reads(work)
        if not args.skip_live:
            live(args, work)


if __name__ == "__main__":
    main()
