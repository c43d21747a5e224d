"""Helpers of the ingest integration tests: read back exactly what a topic holds."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from cryptostream.codec import PROGRESS_PREFIX, decode_records
from cryptostream.settings import Settings


async def topic_records(settings: Settings, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record in ``topic`` right now (at most ``timeout`` seconds of reading, never a hang).

    Reads to the end offsets, then until polls come back empty: the embedded Tansu broker reports a
    partition's end offset as its last record *batch's* base offset + 1, so end offsets alone undercount.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in partitions])

        out: list[Any] = []
        quiet = 0
        deadline = time.monotonic() + timeout
        # three polls in a row at the end offsets with nothing but progress (a live source writes that
        # every PROGRESS_INTERVAL_MS, so a trades topic is never entirely quiet)
        while quiet < 3 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            news = False
            for records in batch.values():
                out.extend(records)
                news = news or any(not (r.value or b"").startswith(PROGRESS_PREFIX) for r in records)
            quiet = 0 if news or await behind() else quiet + 1
        return out
    finally:
        await consumer.stop()


async def topic_arrays(settings: Settings, topic: str, expect: int, timeout: float = 120.0) -> dict[str, Any]:
    """The numeric columns of every trade in ``topic``, decoded in bulk (for topics too big for lists);
    the sources' progress records are not trades."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    names = ("trade_id", "timestamp", "price", "quantity", "is_buyer_maker")
    parts: dict[str, list[Any]] = {name: [] for name in names}
    seen = 0
    deadline = time.monotonic() + timeout
    await consumer.start()
    try:
        while seen < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=200_000)
            for records in batch.values():
                decoded = decode_records([r.value for r in records], [r.offset for r in records])
                assert not decoded.rejected, decoded.rejected[:3]
                for name in names:
                    parts[name].append(getattr(decoded.trades, name))
                seen += len(decoded.trades)
    finally:
        await consumer.stop()
    return {name: np.concatenate(chunks) if chunks else np.empty(0) for name, chunks in parts.items()}
