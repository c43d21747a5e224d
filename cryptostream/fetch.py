"""Read a consumer's fetched records as plain value/offset lists, without a Python object per record.

``AIOKafkaConsumer.getmany()`` wraps every record in a ``ConsumerRecord`` (11 fields, built in Python):
about 1.3 µs per record here, more than the processor spends turning a trade into a candle. The
processor only needs each record's value, offset and timestamp (the receipt time), so :func:`fetch_values`
takes them straight from the record batches aiokafka has already fetched (its C record reader: about 0.15 µs
per record), and keeps every other part of ``getmany()`` as it is: the background fetcher, CRC checks,
skipped control batches, position tracking, pause/seek/rebalance handling and the ``max_records`` limit.

That means reading aiokafka's fetch buffer, which is not public API. The layout it relies on is checked
once per consumer (:func:`batch_reading_supported`); on any other aiokafka version, or a consumer with
deserializers or ``read_committed``, :func:`fetch_values` falls back to ``getmany()`` with the same result.
``tests/integration/test_fetch.py`` compares both paths on a real broker. A consumer read through
:func:`fetch_values` must not also be read through ``getmany()``/``getone()``.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import aiokafka
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, CorruptRecordException

__all__ = ["Fetched", "batch_reading_supported", "fetch_values"]

VERIFIED = ("0.14.",)  # aiokafka releases whose fetch buffer has the layout read below
_PENDING = "_cryptostream_batch"  # a record batch read part-way (``max_records`` fell inside it)


@dataclass(slots=True)
class Fetched:
    """Records of one partition, in offset order, with their Kafka timestamps (ms)."""

    values: list[bytes | None]
    offsets: list[int]
    timestamps: list[int]

    def __len__(self) -> int:
        return len(self.offsets)


def batch_reading_supported(consumer: AIOKafkaConsumer) -> bool:
    """Whether :func:`fetch_values` can read this consumer's fetch buffer directly."""
    fetcher = getattr(consumer, "_fetcher", None)
    return (
        aiokafka.__version__.startswith(VERIFIED)
        and fetcher is not None
        and getattr(fetcher, "_key_deserializer", 1) is None
        and getattr(fetcher, "_value_deserializer", 1) is None
        and getattr(fetcher, "_isolation_level", 1) == 0  # read_uncommitted: no aborted batches to drop
        and all(hasattr(fetcher, name) for name in ("_records", "_notify", "_create_fetch_waiter"))
    )


async def fetch_values(
    consumer: AIOKafkaConsumer, *, timeout_ms: int, max_records: int
) -> dict[TopicPartition, Fetched]:
    """Like ``consumer.getmany(timeout_ms=..., max_records=...)``, returning values, offsets, timestamps."""
    if not batch_reading_supported(consumer):
        batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return {
            tp: Fetched([m.value for m in msgs], [m.offset for m in msgs], [m.timestamp for m in msgs])
            for tp, msgs in batch.items()
        }
    if consumer._closed:
        raise ConsumerStoppedError()
    consumer._coordinator.check_errors()
    with consumer._subscription.fetch_context():
        return await _fetched(consumer._fetcher, timeout_ms / 1000, max_records)


async def _fetched(fetcher: Any, wait_s: float, max_records: int) -> dict[TopicPartition, Fetched]:
    """aiokafka's ``Fetcher.fetched_records`` step for step, with :func:`_take` for ``FetchResult.getall``."""
    while True:
        if fetcher._subscriptions.reassignment_in_progress:
            await fetcher._subscriptions.wait_for_assignment()
        started = time.monotonic()
        drained: dict[TopicPartition, Fetched] = {}
        for tp in list(fetcher._records):
            result = fetcher._records[tp]
            if hasattr(result, "_partition_records"):  # a FetchResult (the other kind is a FetchError)
                got = _take(result, tp, max_records)
                if result._partition_records is None:  # all read: let the fetcher fetch more
                    del fetcher._records[tp]
                    fetcher._notify(fetcher._wait_consume_future)
                if not got:
                    continue
                drained[tp] = got
                max_records -= len(got)
                if max_records == 0:
                    break
            elif drained:
                return drained  # the error is raised by the next call
            else:
                del fetcher._records[tp]
                fetcher._notify(fetcher._wait_consume_future)
                result.check_raise()
        if drained or not wait_s:
            return drained
        waiter = fetcher._create_fetch_waiter()
        done, pending = await asyncio.wait([waiter], timeout=wait_s)
        if not done or fetcher._closed:
            for future in pending:
                future.cancel()
            return {}
        if waiter.done():
            waiter.result()  # raises authorization errors
        wait_s = max(0.0, wait_s - (time.monotonic() - started))


def _take(result: Any, tp: TopicPartition, max_records: int) -> Fetched | None:
    """Up to ``max_records`` records of one ``FetchResult``, advancing the partition position past them."""
    if result._partition_records is None or not result.check_assignment(tp):
        return None
    part = result._partition_records
    records = part._records  # MemoryRecords: the fetched bytes, read batch by batch
    values: list[bytes | None] = []
    offsets: list[int] = []
    stamps: list[int] = []
    add_value, add_offset, add_stamp = values.append, offsets.append, stamps.append
    pending: tuple[Iterator[Any], int] | None = getattr(part, _PENDING, None)  # (records, next offset)
    while len(offsets) < max_records:
        if pending is None:
            if not records.has_next():
                break
            batch = records.next_batch()
            if part._check_crcs and not batch.validate_crc():
                raise CorruptRecordException(f"Invalid CRC - {tp}")
            if batch.is_control_batch:
                part.next_fetch_offset = batch.next_offset
                continue
            # iter() decompresses, and may be called once per batch (the C reader asserts it): wrap the
            # iterator's __next__ so islice can resume it where max_records stopped.
            pending = (iter(iter(batch).__next__, None), batch.next_offset)
        start = len(offsets)
        room = max_records - start
        for record in islice(pending[0], room):  # the C reader decodes one record per step
            add_value(record.value)
            add_offset(record.offset)
            add_stamp(record.timestamp)
        exhausted = len(offsets) - start < room
        if start < len(offsets) and offsets[start] < part.next_fetch_offset:
            # The broker returns whole batches: a fetch that starts inside one repeats its first records.
            cut = bisect_left(offsets, part.next_fetch_offset, start)
            del values[start:cut], offsets[start:cut], stamps[start:cut]
        if len(offsets) > start:
            part.next_fetch_offset = offsets[-1] + 1
        if exhausted:
            part.next_fetch_offset = max(part.next_fetch_offset, pending[1])
            pending = None
    setattr(part, _PENDING, pending)
    result._assignment.state_value(tp).consumed_to(part.next_fetch_offset)
    if pending is None and not records.has_next():
        result._partition_records = None
    return Fetched(values, offsets, stamps)
