"""The crash scenario shared by the integration test (CI size) and bench/bench_crash.py (full size).

Trades flow into Kafka while ``cryptostream process`` runs as a real subprocess and is killed with SIGKILL
at random moments, then restarted. Each wave also carries trades that must be dead-lettered (one too late
for its window, one with a negative price). At the end the Parquet archive and the database must each hold
exactly the batch result of the trades, no candle missing, no volume counted twice, and the dead-letter
topic each rejected record exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptostream.models import Trade
from cryptostream.settings import Settings
from ingest.synthetic import SyntheticMarket
from tests.conftest import closing_progress
from tests.integration.helpers import db_count

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT"]


@dataclass
class CrashReport:
    trades: int
    kills: int
    seconds: float
    kill_times: list[float] = field(default_factory=list)
    rejects: int = 0  # records that must be dead-lettered, once each


def processor_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP=settings.kafka_bootstrap or "",
        DATABASE_URL=settings.database_dsn or "",
        KAFKA_TOPIC=settings.kafka_topic,
        KAFKA_CANDLES_TOPIC=settings.kafka_candles_topic,
        KAFKA_DLQ_TOPIC=settings.kafka_dlq_topic,
        CONSUMER_GROUP=settings.consumer_group,
        OUTPUT_DIR=str(settings.output_dir),
        MAX_BUFFER_SECONDS=str(settings.max_buffer_seconds),
        PARQUET_CHUNK_SECONDS=str(settings.parquet_chunk_seconds),
        MAX_POLL_RECORDS=str(settings.max_poll_records),
        KAFKA_SESSION_TIMEOUT_MS=str(settings.kafka_session_timeout_ms),
        VOLATILITY_WINDOW_SECONDS=str(settings.volatility_window_seconds),
        LOG_LEVEL="INFO",
    )
    return env


def spawn_processor(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        argv = [sys.executable, "-m", "cryptostream", "process"]
        return subprocess.Popen(argv, env=processor_env(settings), stdout=out, stderr=subprocess.STDOUT)


def _assignments(log: Path) -> int:
    if not log.exists():
        return 0
    text = log.read_text(errors="replace")
    return text.count("resuming at offset") + text.count("new lineage")


def make_trades(n: int, seed: int, start_ms: int):
    market = SyntheticMarket(SYMBOLS, rate=1_000, seed=seed, disorder_ms=400, duplicate_rate=0.02)
    return market.generate(n, start_ms=start_ms)


def rejects_for(wave: list[Trade], k: int) -> list[Trade]:
    """Two records of ``wave``'s market that must be dead-lettered: one as late (its second ended long
    before the wave's last trade), one for its negative price."""
    first, last = wave[0], wave[-1]
    late = Trade(first.exchange, first.symbol, 1.0, 1.0, first.timestamp - 3_000, 10**12 + 2 * k, False)
    invalid = Trade(last.exchange, last.symbol, -1.0, 1.0, last.timestamp, 10**12 + 2 * k + 1, False)
    return [late, invalid]


async def run_crash_scenario(
    settings: Settings,
    trades,
    produce,
    *,
    kills: int,
    seed: int,
    log: Path,
    expected_candles: int,
    waves: int = 10,
    timeout: float = 300,
) -> CrashReport:
    """Produce ``trades`` in waves while killing processors ``kills`` times; end with one clean run."""
    rng = random.Random(seed)
    started = time.monotonic()
    chunk = max(1, len(trades) // waves)

    report = CrashReport(trades=len(trades), kills=0, seconds=0.0)

    async def producer() -> None:
        for k, i in enumerate(range(0, len(trades), chunk)):
            wave = trades[i : i + chunk]
            last = i + chunk >= len(trades)
            extra = [] if last else rejects_for(wave, k)
            report.rejects += len(extra)
            # The source writes no progress until it ends (the trade watermark closes windows until then),
            # then progress that closes every window of every symbol it ever sent.
            closing = closing_progress(trades) if last else []
            await produce(settings, [*wave, *extra], close=False, progress=closing)
            await asyncio.sleep(rng.uniform(0.2, 1.0))

    feeding = asyncio.create_task(producer())
    for _ in range(kills):
        seen = _assignments(log)
        proc = spawn_processor(settings, log)
        deadline = time.monotonic() + 60
        while _assignments(log) == seen and time.monotonic() < deadline:  # wait until it owns partitions
            await asyncio.sleep(0.1)
        await asyncio.sleep(rng.uniform(0.2, 2.5))  # then kill it anywhere in its work
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        report.kills += 1
        report.kill_times.append(round(time.monotonic() - started, 2))
    await feeding
    proc = spawn_processor(settings, log)
    try:
        deadline = time.monotonic() + timeout
        while await db_count(settings.database_dsn) < expected_candles:
            if proc.poll() is not None:
                raise AssertionError(f"processor exited {proc.returncode}: {log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                stored = await db_count(settings.database_dsn)
                raise AssertionError(
                    f"{stored} of {expected_candles} candles stored in {timeout}s: {log.read_text()[-3000:]}"
                )
            await asyncio.sleep(0.5)
        await asyncio.sleep(settings.parquet_chunk_seconds + 0.5)  # the archive checkpoint of the same rows
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    report.seconds = round(time.monotonic() - started, 1)
    return report
