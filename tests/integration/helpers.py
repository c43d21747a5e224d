"""Helpers of the integration tests: run a processor until a condition holds, read what it stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pyarrow as pa
from aiokafka import AIOKafkaConsumer

from cryptostream import archive
from cryptostream.settings import Settings
from processor.service import Processor
from processor.sinks import ParquetSink, PostgresSink


async def create_database(server_url: str) -> str:
    """A new, empty database on the server of ``server_url``; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + "/" + name


async def as_deadlock_victim(dsn: str, work: Callable[[], Awaitable[Any]], timeout: float = 120) -> None:
    """Run ``work`` (which locks ``ohlc_1s``, then ``predictions``) while another session takes those locks
    in the other order, as TimescaleDB's workers can: PostgreSQL aborts ``work``'s transaction to break the
    deadlock (the other session waits 60 s before checking, ``work``'s server 1 s), then the other session
    gives its locks up. Returns when ``work`` is done; what it did about the abort is the test's to check."""
    other = await asyncpg.connect(dsn)
    try:
        await other.execute("SET deadlock_timeout = '60s'")
        tx = other.transaction()
        await tx.start()
        await other.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
        task = asyncio.ensure_future(work())
        waiting = "SELECT count(*) FROM pg_locks WHERE relation = 'predictions'::regclass AND NOT granted"
        deadline = time.monotonic() + timeout
        while not await other.fetchval(waiting):
            assert time.monotonic() < deadline and not task.done(), "the work never waited for predictions"
            await asyncio.sleep(0.02)
        await other.execute("LOCK TABLE ohlc_1s IN ACCESS EXCLUSIVE MODE")  # granted once the work is aborted
        await tx.rollback()
        await asyncio.wait_for(task, timeout)
    finally:
        await other.close()


def sinks_for(settings: Settings) -> list:
    sinks: list = [ParquetSink(settings.output_dir)]
    if settings.database_dsn:
        sinks.append(PostgresSink(settings.database_dsn))
    return sinks


async def run_processor_until(
    settings: Settings,
    done: Callable[[], Awaitable[bool]],
    timeout: float = 60,
    processor: Processor | None = None,
) -> Processor:
    """Run a processor until ``done()`` is true, then stop it cleanly (final checkpoint)."""
    proc = processor or Processor(settings, sinks_for(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while not await done():
            if task.done():
                task.result()
                raise AssertionError("processor stopped by itself")
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; stats {proc.stats}")
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return proc


async def db_candles(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch("SELECT * FROM ohlc_1s ORDER BY exchange, symbol, bucket")]


async def db_count(dsn: str, table: str = "ohlc_1s") -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


def parquet_rows(root: Path, kind: str = "ohlc") -> list[dict[str, Any]]:
    """Every row the archive holds (duplicates included: a check for rows written twice sees them)."""
    tables = [archive.load(root, kind, e, s) for e, s in archive.list_markets(root, kind)]
    return pa.concat_tables(tables).to_pylist() if tables else []


async def read_topic(settings: Settings, topic: str, expect: int, timeout: float = 20) -> list[Any]:
    """Every record of ``topic`` from the beginning (at least ``expect`` of them)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                out.extend(messages)
    finally:
        await consumer.stop()
    return out


def dlq_reasons(records: list[Any]) -> list[str]:
    return [orjson.loads(r.value)["reason"] for r in records]
