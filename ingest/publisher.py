"""Publisher: trades into Kafka, keyed by symbol, without losing one and without unbounded memory.

Sources ``await publisher.put(trades)`` (or :meth:`Publisher.put_records` with records already encoded,
the replay fast path). At most ``PUBLISH_QUEUE_SIZE`` trades are held unacknowledged, whether queued,
in the producer or being resent; beyond that ``put`` waits, so back-pressure reaches the WebSocket
reader or the replay loop instead of memory, even through a long broker outage.

One sender task sends a round as soon as ``BATCH_SIZE`` trades wait, or when the oldest has waited
``KAFKA_LINGER_MS``. A round takes everything waiting (a backlog drains in large batches instead of
``BATCH_SIZE`` at a time), groups it by partition with Kafka's murmur2 key partitioner (so every Kafka
tool agrees where a symbol lives; computed once per key) and appends it to one record batch per
partition (split at the producer's byte limit). A partition has one batch at the producer at a time, the
next sent once it is acknowledged; while a round is sent, the next is gathered, so rounds still pipeline.

Records reach Kafka in the order they were accepted within a partition (one sender, one FIFO, one batch
at the producer per partition, even through resends), which is what progress records need:
:meth:`Publisher.progress_records` turns a source's progress into one record per partition that holds its
symbols (more when a partition holds more than ``PROGRESS_SYMBOLS`` of them, so a whole market's progress
stays far below the processor's record size limit), accepted like any other record, after the trades it
covers.

Nothing accepted is dropped: a send that fails (broker gone, leader moving) is retried with backoff, and a
batch the producer gives up on is sent again. ``acked_through`` says how far everything is acknowledged in
order, and :meth:`Publisher.when_acknowledged` calls back once all accepted so far is (a live source writes
its resume file from there, so the file never covers a trade Kafka does not hold). ``backlog`` (accepted
minus acknowledged, also the ``cryptostream_ingest_backlog`` gauge) shows what an outage holds;
``stop()`` returns only when every accepted trade is acknowledged. Redelivery after a lost acknowledgement
can duplicate a record; the processor counts duplicates once (same exchange, symbol, second, trade id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from cryptostream.codec import Progress, encode_progress
from cryptostream.metrics import INGEST_BACKLOG, PUBLISH_RETRIES, TRADES_OUT
from cryptostream.models import Trade
from ingest.source import Record, now_ms

__all__ = ["Publisher", "Record"]

log = logging.getLogger(__name__)

MAX_ROUND = 200_000  # records taken per round at most (bounds one round's transient memory)
PROGRESS_SYMBOLS = 1000  # symbols per progress record at most: 1000 x 24 characters is < 64 KiB


class Publisher:
    """Owns the path from accepted trade to acknowledged Kafka record."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        *,
        batch_size: int,
        queue_size: int,
        linger_ms: float = 5.0,
        trades: bool = True,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.batch_size = max(1, batch_size)
        self.queue_size = max(1, queue_size)
        self.linger = linger_ms / 1000.0
        self._buf: deque[Record] = deque()
        self._room = asyncio.Event()
        self._room.set()
        self._ready = asyncio.Event()  # set when batch_size records wait
        self._waiting = asyncio.Event()  # set when anything waits
        self._partitioner = DefaultPartitioner()
        self._partitions: list[int] = []
        self._partition_of: dict[bytes, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._chains: dict[int, asyncio.Task[None]] = {}  # partition: its last send, done when acknowledged
        self._settled = asyncio.Event()
        self._trades = trades  # False for the dead-letter publisher: not counted as trades out
        self._failure: BaseException | None = None
        self.accepted = 0  # records: trades and progress
        self.acknowledged = 0
        # Acknowledged in order: every record accepted before ``acked_through`` is acknowledged. Rounds
        # go out in the order accepted, [end, records of it not yet acknowledged] each; a batch the
        # producer gives up on is resent within its round, so a round is done only when all of it is.
        self.acked_through = 0
        self._rounds: deque[list[int]] = deque()
        self._sent = 0
        self._when: deque[tuple[int, Callable[[], None]]] = deque()  # (accepted count, call once past it)
        self.marks = 0  # progress records among them
        self.retries = 0

    @property
    def backlog(self) -> int:
        """Trades accepted but not yet acknowledged by the broker."""
        return self.accepted - self.acknowledged

    async def start(self) -> None:
        partitions = await self.producer.partitions_for(self.topic)
        self._partitions = sorted(partitions)
        self._task = asyncio.create_task(self._run(), name=f"publisher-{self.topic}")

    async def put(self, trades: Sequence[Trade]) -> None:
        """Accept trades; waits while ``queue_size`` trades are already waiting. A record's timestamp is
        when the trade was received (the processor rejects trades stamped far ahead of it as future)."""
        dumps = orjson.dumps
        now = now_ms()
        await self.put_records(
            [(t.symbol.encode(), dumps(t.to_dict()), t.received_at or now) for t in trades]
        )

    async def put_progress(self, progress: Progress, received_at: int | None = None) -> None:
        """Accept a source's progress: one record per partition holding its symbols (after the trades
        accepted before it, which is what makes it true), stamped ``received_at`` (default now)."""
        records = self.progress_records(progress, received_at)
        self.marks += len(records)
        await self.put_records(records)

    def progress_records(self, progress: Progress, received_at: int | None = None) -> list[Record]:
        """One progress record per partition holding some of ``progress.symbols`` (one per
        ``PROGRESS_SYMBOLS`` of them), keyed by one of them (so it lands where their trades land), stamped
        ``received_at`` (default now)."""
        if self._task is None:
            raise RuntimeError("Publisher.start() was not called")
        groups: dict[int, list[str]] = {}
        for symbol in progress.symbols:
            groups.setdefault(self._partition(symbol.encode()), []).append(symbol)
        stamp = now_ms() if received_at is None else received_at
        chunks = (
            group[i : i + PROGRESS_SYMBOLS]
            for _, group in sorted(groups.items())
            for i in range(0, len(group), PROGRESS_SYMBOLS)
        )
        return [
            (chunk[0].encode(), encode_progress(progress.exchange, chunk, progress.watermark), stamp)
            for chunk in chunks
        ]

    async def put_records(self, records: Sequence[Record]) -> None:
        """Accept already-encoded ``(key, value, timestamp_ms)`` records."""
        i, n = 0, len(records)
        buf = self._buf
        while i < n:
            self._check_sender()
            room = self.queue_size - self.backlog  # queued + in flight + being resent
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            j = min(n, i + room)
            buf.extend(records if (i == 0 and j == n) else records[i:j])
            self.accepted += j - i
            i = j
            self._waiting.set()
            if len(buf) >= self.batch_size:
                self._ready.set()
            if self._trades:
                INGEST_BACKLOG.set(self.backlog)

    def _check_sender(self) -> None:
        if self._task is None:
            raise RuntimeError("Publisher.start() was not called")
        if self._task.done():
            self._task.result()  # surface the sender's failure to the source
        if self._failure is not None:
            raise self._failure

    async def stop(self) -> None:
        """Send everything accepted, then stop the sender."""
        if self._task is None:
            return
        await self.wait_acknowledged(timeout=None)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        log.info(
            "publisher %s stopped: %d %s acknowledged, %d retries",
            self.topic,
            self.acknowledged,
            "records (trades and progress)" if self._trades else "dead letters",
            self.retries,
        )

    async def wait_acknowledged(self, timeout: float | None = 30.0) -> bool:  # noqa: ASYNC109
        """Wait until every accepted trade is acknowledged; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._settled.clear()
            if self.acknowledged >= self.accepted:
                return True
            self._check_sender()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), min(1.0, left) if left is not None else 1.0)

    # ------------------------------------------------------------------------------------ sender
    async def _run(self) -> None:
        buf = self._buf
        previous: list[asyncio.Task[None]] = []
        while True:
            if not buf:
                self._waiting.clear()
                await self._waiting.wait()
                continue
            if len(buf) < self.batch_size and self.linger > 0:
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), self.linger)
            n = min(len(buf), MAX_ROUND)
            popleft = buf.popleft
            records = [popleft() for _ in range(n)]
            self._sent += n
            round_ = [self._sent, n]
            self._rounds.append(round_)
            current = self._send(records, round_)
            # Two rounds out at most: this one waits in its partitions' chains while the one before is
            # sent; what arrives meanwhile gathers in the buffer and goes as the next (larger) round.
            if previous:
                await asyncio.wait(previous)
            previous = current

    def _partition(self, key: bytes) -> int:
        partition = self._partition_of.get(key)
        if partition is None:
            parts = self._partitions
            partition = self._partition_of[key] = self._partitioner(key, parts, parts)
        return partition

    def _send(self, records: list[Record], round_: list[int]) -> list[asyncio.Task[None]]:
        by_partition: dict[int, list[Record]] = {}
        partition_of = self._partition_of
        for record in records:
            key = record[0]
            partition = partition_of.get(key)
            if partition is None:
                partition = self._partition(key)
            group = by_partition.get(partition)
            if group is None:
                by_partition[partition] = [record]
            else:
                group.append(record)
        tasks = []
        for partition, group in by_partition.items():
            task = asyncio.create_task(
                self._send_partition(partition, group, round_, self._chains.get(partition))
            )
            task.add_done_callback(self._chain_done)
            self._chains[partition] = task
            tasks.append(task)
        return tasks

    async def _send_partition(
        self, partition: int, group: list[Record], round_: list[int], after: asyncio.Task[None] | None
    ) -> None:
        """Send ``group`` to ``partition`` once everything sent there before it is acknowledged, one record
        batch at a time, each until acknowledged.

        One batch per partition at the producer keeps a partition's records in the order accepted even
        when a batch fails: a non-idempotent aiokafka producer gives up on a batch after
        ``request_timeout_ms`` and would send the batch queued behind it first, so a progress record could
        reach Kafka before trades it covers (which the processor would then count late). aiokafka sends
        one batch per partition at a time anyway; what this costs is the batch behind not waiting ready.
        """
        start, (batch, end) = 0, self._batch(group, 0)  # built while what is ahead is at the broker
        if after is not None and not after.done():
            await asyncio.wait([after])
        backoff = 0.2
        while True:
            try:
                fut = await self.producer.send_batch(batch, self.topic, partition=partition)
            except KafkaError as exc:
                self._retried(f"Kafka send failed ({exc})", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                batch, end = self._batch(group, start)
                continue
            following = self._batch(group, end) if end < len(group) else None
            await asyncio.wait([fut])
            if fut.cancelled() or fut.exception() is not None:
                # The producer gave up on this batch (broker gone too long): send it again, never drop it.
                why = "cancelled" if fut.cancelled() else fut.exception()
                self._retried(f"batch of {end - start} not acknowledged ({why}); resending", 0)
                batch, end = self._batch(group, start)
                continue
            self._acknowledged(end - start, round_)
            if following is None:
                return
            start, (batch, end) = end, following
            backoff = 0.2

    def _batch(self, group: list[Record], start: int) -> tuple[Any, int]:
        """A closed record batch of ``group`` from ``start`` on (as much as the producer's byte limit
        takes), and where it ends."""
        batch = self.producer.create_batch()
        end, n = start, len(group)
        append = batch.append
        while end < n:
            key, value, ts = group[end]
            if append(key=key, value=value, timestamp=ts) is None:
                break
            end += 1
        if end == start:
            raise ValueError(f"record of {len(group[start][1])} bytes exceeds the producer batch size")
        batch.close()  # ready now: this class does its own lingering
        return batch, end

    def _acknowledged(self, n: int, round_: list[int]) -> None:
        self.acknowledged += n
        round_[1] -= n
        self._in_order()
        self._room.set()
        if self._trades:
            INGEST_BACKLOG.set(self.backlog)
            TRADES_OUT.labels("ingest").inc(n)
        if self.acknowledged >= self.accepted:
            self._settled.set()

    def when_acknowledged(self, call: Callable[[], None]) -> None:
        """Call ``call`` once every record accepted so far is acknowledged (at once if it is)."""
        self._when.append((self.accepted, call))
        self._in_order()

    def _in_order(self) -> None:
        rounds = self._rounds
        while rounds and rounds[0][1] == 0:
            self.acked_through = rounds.popleft()[0]
        when = self._when
        while when and when[0][0] <= self.acked_through:
            _, call = when.popleft()
            try:
                call()
            except Exception:  # a caller's failure must not stop acknowledgements
                log.exception("a call after acknowledgement failed")

    def _retried(self, why: str, backoff: float) -> None:
        self.retries += 1
        PUBLISH_RETRIES.labels(self.topic).inc()
        log.warning("%s; %d trades waiting, retrying in %.1fs", why, self.backlog, backoff)

    def _chain_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()  # surfaces in put() and wait_acknowledged(), never swallowed
            self._settled.set()
            self._room.set()
