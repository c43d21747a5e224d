"""Publisher: trades into Kafka, keyed by symbol, without losing one and without unbounded memory.

Sources ``await publisher.put(trades)``; the call waits while ``PUBLISH_QUEUE_SIZE`` trades are queued
(back-pressure reaches the WebSocket reader or the replay loop instead of memory). A single sender task
takes up to ``BATCH_SIZE`` trades per round, builds one record batch per partition (Kafka's murmur2 key
partitioner, so every tool agrees on which partition holds a symbol), and sends them. A batch the broker
does not acknowledge is retried with backoff until it is; ``stop()`` sends everything accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from cryptostream.metrics import INGEST_BACKLOG, TRADES_OUT
from cryptostream.models import Trade

__all__ = ["Publisher"]

log = logging.getLogger(__name__)

Record = tuple[bytes, bytes, int]  # key, value, timestamp ms


class Publisher:
    """Owns the path from accepted trade to acknowledged Kafka record."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, *, batch_size: int, queue_size: int) -> None:
        self.producer = producer
        self.topic = topic
        self.batch_size = batch_size
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=queue_size)
        self._partitioner = DefaultPartitioner()
        self._partitions: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Future[object]] = set()
        self.accepted = 0
        self.acknowledged = 0
        self.retries = 0

    @property
    def backlog(self) -> int:
        """Trades accepted but not yet acknowledged by the broker."""
        return self.accepted - self.acknowledged

    async def start(self) -> None:
        partitions = await self.producer.partitions_for(self.topic)
        self._partitions = sorted(partitions)
        self._task = asyncio.create_task(self._run(), name="publisher")

    async def put(self, trades: Sequence[Trade]) -> None:
        """Accept trades; waits while the queue is full."""
        dumps = orjson.dumps
        for t in trades:
            await self._put((t.symbol.encode(), dumps(t.to_dict()), t.timestamp))

    async def put_records(self, records: Sequence[Record]) -> None:
        """Accept already-encoded records (the replay fast path)."""
        for record in records:
            await self._put(record)

    async def _put(self, record: Record) -> None:
        if self._task is not None and self._task.done():
            self._task.result()  # surface the sender's failure to the source
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            await self._queue.put(record)
        self.accepted += 1

    async def stop(self) -> None:
        """Send everything accepted, then stop the sender."""
        if self._task is None:
            return
        await self.wait_acknowledged(timeout=None)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        log.info("publisher stopped: %d trades acknowledged, %d retries", self.acknowledged, self.retries)

    async def _run(self) -> None:
        queue = self._queue
        while True:
            first = await queue.get()
            records = [first]
            while len(records) < self.batch_size and not queue.empty():
                records.append(queue.get_nowait())
            await self._send(records)
            for _ in records:
                queue.task_done()

    async def _send(self, records: list[Record]) -> None:
        by_partition: dict[int, list[Record]] = defaultdict(list)
        parts = self._partitions
        for record in records:
            by_partition[self._partitioner(record[0], parts, parts)].append(record)
        for partition, group in by_partition.items():
            await self._send_partition(partition, group)

    async def _send_partition(self, partition: int, group: list[Record]) -> None:
        backoff = 0.2
        while True:
            try:
                start = 0
                while start < len(group):
                    batch = self.producer.create_batch()
                    end = start
                    while end < len(group):
                        key, value, ts = group[end]
                        if batch.append(key=key, value=value, timestamp=ts) is None:
                            break
                        end += 1
                    if end == start:
                        raise ValueError(
                            f"record of {len(group[start][1])} bytes exceeds the producer batch size"
                        )
                    fut = await self.producer.send_batch(batch, self.topic, partition=partition)
                    self._track(fut, partition, group[start:end])
                    start = end
                return
            except KafkaError as exc:
                self.retries += 1
                log.warning(
                    "Kafka send failed (%s); %d trades waiting, retrying in %.1fs", exc, self.backlog, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _track(self, fut: asyncio.Future[object], partition: int, records: list[Record]) -> None:
        self._inflight.add(fut)

        def done(f: asyncio.Future[object]) -> None:
            self._inflight.discard(f)
            if f.cancelled() or f.exception() is not None:
                # The producer gave up on this batch (broker gone too long): send it again, never drop it.
                self.retries += 1
                log.warning(
                    "batch of %d trades not acknowledged (%s); resending",
                    len(records),
                    None if f.cancelled() else f.exception(),
                )
                task = asyncio.ensure_future(self._send_partition(partition, records))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                return
            self.acknowledged += len(records)
            TRADES_OUT.labels("ingest").inc(len(records))
            INGEST_BACKLOG.set(self.backlog)

        fut.add_done_callback(done)

    async def wait_acknowledged(self, timeout: float | None = 30.0) -> None:  # noqa: ASYNC109
        """Wait until every accepted trade is acknowledged (or ``timeout`` passes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        await self._queue.join()
        while self._inflight and (deadline is None or time.monotonic() < deadline):
            await asyncio.wait(list(self._inflight), timeout=1.0)
