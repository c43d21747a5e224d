"""Replay-to-Kafka throughput: a Binance spot dump into the embedded broker, ours against naive loops.

Every variant reads the same CSV and publishes to its own fresh topic on the same broker:
  * cryptostream replay: Arrow CSV reader -> column-wise validation -> one orjson call per chunk ->
    the publisher's record batches (``cryptostream replay FILE`` with REPLAY_SPEED=0);
  * naive, per-trade ``producer.send()``: csv module, a dict and ``json.dumps`` per trade, aiokafka's own
    batching (what most examples do);
  * naive, per-trade ``await producer.send_and_wait()``: one round trip per trade (run on a slice only,
    it is that slow).
Each variant's figure is trades acknowledged by the broker per second, printed with its ratio to ours.
Target: at least 80,000 trades/s for ours.

    .venv/bin/python bench/bench_replay.py [--trades 500000] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from aiokafka import AIOKafkaProducer

from cryptostream.embedded import EmbeddedKafka
from cryptostream.kafka import ensure_topics, security_options, wait_for_broker
from cryptostream.settings import Settings, load_settings
from ingest.replay import replay_trades
from ingest.service import run_ingest

START_US = 1_735_689_600_000_000


def write_dump(path: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    price = np.round(93_000 + np.cumsum(rng.normal(0, 0.5, n)), 2)
    qty = np.round(rng.lognormal(-6, 1.5, n), 8) + 1e-8
    table = pa.table(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "price": price,
            "qty": qty,
            "quote_qty": np.round(price * qty, 8),
            "time": START_US + np.cumsum(rng.integers(0, 2_000, n)),
            "is_buyer_maker": rng.random(n) < 0.5,
            "is_best_match": np.ones(n, dtype=bool),
        }
    )
    pacsv.write_csv(table, path, pacsv.WriteOptions(include_header=False))


def settings_for(bootstrap: str, batch_size: int) -> Settings:
    tag = uuid.uuid4().hex[:6]
    return load_settings(
        kafka_bootstrap=bootstrap,
        kafka_topic=f"bench-replay-{tag}",
        kafka_dlq_topic=f"bench-replay-dlq-{tag}",
        replay_speed=0,
        batch_size=batch_size,
    )


async def ours(bootstrap: str, path: Path, batch_size: int) -> tuple[int, float]:
    settings = settings_for(bootstrap, batch_size)
    await ensure_topics(settings)
    started = time.perf_counter()
    result = await run_ingest(settings, replay_trades(settings, path, progress=False), asyncio.Event())
    return result.acknowledged, time.perf_counter() - started


def naive_rows(path: Path, limit: int) -> list[dict[str, object]]:
    out = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if i >= limit:
                break
            out.append(
                {
                    "symbol": "BTCUSDT",
                    "price": float(row[1]),
                    "quantity": float(row[2]),
                    "timestamp": int(row[4]) // 1000,
                    "trade_id": int(row[0]),
                    "is_buyer_maker": row[5] == "true",
                    "exchange": "binance",
                }
            )
    return out


async def naive(bootstrap: str, path: Path, limit: int, *, wait_each: bool) -> tuple[int, float]:
    settings = settings_for(bootstrap, 1)
    await ensure_topics(settings)
    producer = AIOKafkaProducer(  # aiokafka defaults otherwise
        bootstrap_servers=bootstrap, acks="all", **security_options(settings)
    )
    await producer.start()
    started = time.perf_counter()
    try:
        rows = naive_rows(path, limit)  # reading is part of the job, as in ours
        for row in rows:
            value = json.dumps(row).encode()
            if wait_each:
                await producer.send_and_wait(settings.kafka_topic, value, key=b"BTCUSDT")
            else:
                await producer.send(settings.kafka_topic, value, key=b"BTCUSDT")
        await producer.flush()
    finally:
        await producer.stop()
    return len(rows), time.perf_counter() - started


async def main(args: argparse.Namespace, bootstrap: str) -> None:
    await wait_for_broker(bootstrap, settings=settings_for(bootstrap, 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "BTCUSDT-trades-2025-01-01.csv"
        write_dump(path, args.trades)
        size_mb = path.stat().st_size / 1e6
        print(f"replay -> Kafka at {bootstrap}: {args.trades:,} trades, Binance dump ({size_mb:.0f} MB CSV)")
        n, secs = await ours(bootstrap, path, args.batch_size)
        base = n / secs
        print(
            f"  {'cryptostream replay (REPLAY_SPEED=0)':<44} {base:>10,.0f} trades/s  ({n:,} in {secs:.2f}s)"
        )
        if base < 80_000:
            print("  !! below the 80,000 trades/s target")
        for label, limit, wait_each in (
            ("naive: per-trade producer.send()", args.trades, False),
            ("naive: per-trade await send_and_wait()", args.slow_slice, True),
        ):
            n, secs = await naive(bootstrap, path, limit, wait_each=wait_each)
            rate = n / secs
            print(
                f"  {label:<44} {rate:>10,.0f} trades/s  ({n:,} in {secs:.2f}s)  ours is {base / rate:,.1f}x"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trades", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, default=20_000, help="BATCH_SIZE for ours")
    parser.add_argument("--slow-slice", type=int, default=3_000, help="trades for the send_and_wait loop")
    parser.add_argument(
        "--bootstrap", default=None, help="an existing broker (default: start an embedded one)"
    )
    args = parser.parse_args()
    if args.bootstrap:
        asyncio.run(main(args, args.bootstrap))
    else:
        with tempfile.TemporaryDirectory() as state, EmbeddedKafka(Path(state)) as broker:
            asyncio.run(main(args, broker.bootstrap))
