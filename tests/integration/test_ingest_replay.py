"""Replay into the real broker: a million trades all land, raw consumers read plain JSON, the CLI works."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from aiokafka import AIOKafkaConsumer

from ingest.replay import replay_trades
from ingest.service import run_ingest
from tests.integration.ingest_helpers import topic_arrays, topic_records

pytestmark = pytest.mark.integration

START_US = 1_735_689_600_000_000  # 2025-01-01: spot dumps are in microseconds from here on


def binance_dump(path: Path, n: int, seed: int = 3) -> dict[str, np.ndarray]:
    """A Binance spot ``trades`` dump (no header, µs times) of ``n`` trades; returns what it holds."""
    rng = np.random.default_rng(seed)
    ids = np.arange(4_000_000_000, 4_000_000_000 + n, dtype=np.int64)
    price = np.round(93_000 + np.cumsum(rng.normal(0, 0.5, n)), 2)
    qty = np.round(rng.lognormal(-6, 1.5, n), 8) + 1e-8
    time_us = START_US + np.cumsum(rng.integers(0, 2_000, n))
    ibm = rng.random(n) < 0.5
    table = pa.table(
        {
            "id": ids,
            "price": price,
            "qty": qty,
            "quote_qty": np.round(price * qty, 8),
            "time": time_us,
            "is_buyer_maker": ibm,
            "is_best_match": np.ones(n, dtype=bool),
        }
    )
    pacsv.write_csv(table, path, pacsv.WriteOptions(include_header=False))
    return {
        "trade_id": ids,
        "price": price,
        "quantity": qty,
        "timestamp": time_us // 1000,
        "is_buyer_maker": ibm,
    }


@pytest.mark.slow
async def test_a_million_trade_replay_lands_every_trade_in_kafka(make_settings, tmp_path):
    n = 1_000_000
    path = tmp_path / "BTCUSDT-trades-2025-01-01.csv"
    expected = binance_dump(path, n)
    settings = make_settings(replay_speed=0, batch_size=20_000)

    result = await run_ingest(
        settings, replay_trades(settings, path, progress=False), asyncio.Event(), name="replay"
    )
    assert result.accepted == result.acknowledged == n and not result.rejected

    landed = await topic_arrays(settings, settings.kafka_topic, expect=n)
    order = np.argsort(landed["trade_id"], kind="stable")
    assert landed["trade_id"].size == n, f"{landed['trade_id'].size} of {n} trades in Kafka"
    for name, values in expected.items():
        assert np.array_equal(landed[name][order], values), name

    # a raw consumer (no deserializer, as kcat or the console consumer would read) sees plain JSON
    raw = AIOKafkaConsumer(
        settings.kafka_topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await raw.start()
    try:
        first = (await raw.getmany(timeout_ms=5_000, max_records=10)).popitem()[1][0]
    finally:
        await raw.stop()
    value = json.loads(first.value.decode("utf-8"))
    assert first.key == b"BTCUSDT"
    assert set(value) == {
        "symbol", "price", "quantity", "timestamp", "trade_id", "is_buyer_maker", "exchange", "received_at"
    }  # fmt: skip
    assert value["symbol"] == "BTCUSDT" and value["exchange"] == "binance"
    assert isinstance(value["price"], float) and isinstance(value["timestamp"], int)


def test_replay_command_publishes_a_zipped_dump_and_dead_letters_bad_rows(make_settings, tmp_path):
    settings = make_settings()
    csv = tmp_path / "ETHUSDT-aggTrades-2024-06-01.csv"
    csv.write_text(
        "".join(f"{i},3500.{i % 100:02d},0.5,{i},{i},{1717200000000 + i},true,true\n" for i in range(1, 1001))
        + "1001,-3500,0.5,1001,1001,1717200001001,true,true\n"
    )
    dump = tmp_path / "ETHUSDT-aggTrades-2024-06-01.zip"
    with zipfile.ZipFile(dump, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(csv, csv.name)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KAFKA_TOPIC": settings.kafka_topic,
        "KAFKA_DLQ_TOPIC": settings.kafka_dlq_topic,
        "BATCH_SIZE": "500",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cryptostream", "replay", str(dump), "--speed", "0", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(r.value) for r in asyncio.run(topic_records(settings, settings.kafka_topic))]
    trades = [r for r in records if r.get("type") != "progress"]
    assert sorted(t["trade_id"] for t in trades) == list(range(1, 1001))
    assert {t["exchange"] for t in trades} == {"binance"}  # the venue of a Binance dump
    # the replay's last progress closes every window it fed: through the end of its last trade's second
    last = max(p["watermark"] for p in records if p.get("type") == "progress")
    assert last == 1717200001000 + 1000 - 1717200001000 % 1000
    (dead,) = [json.loads(r.value) for r in asyncio.run(topic_records(settings, settings.kafka_dlq_topic))]
    assert dead["reason"] == "non_positive_price" and dead["stage"] == "ingest"
    assert json.loads(dead["raw"])["trade_id"] == 1001

    missing = subprocess.run(
        [sys.executable, "-m", "cryptostream", "replay", str(tmp_path / "nope.csv")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("cryptostream: replay file")
