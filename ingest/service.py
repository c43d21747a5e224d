"""The ingest role: a trade source -> the publisher -> ``KAFKA_TOPIC``; rejects -> ``KAFKA_DLQ_TOPIC``.

A source yields lists of trades (see :mod:`ingest.source`). Records it rejected ride along in the batch;
here they are counted per reason (``cryptostream_rejected{role="ingest"}``) and written to the dead-letter
topic with their raw payload, through a publisher of their own, so a bad record is kept, never lost and
never in the way of good ones. A batch's progress goes to the trades topic after its trades; the sources'
connection states (:mod:`cryptostream.feeds`) go to the candles topic, for the API, about once a second.

On ``stop`` (SIGINT/SIGTERM) the source, which watches the same event, yields its final progress and ends
(a source that does not end by itself within :data:`STOP_GRACE_SECONDS` is closed); then both publishers
flush: every trade accepted is acknowledged by Kafka before this returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from cryptostream.codec import Rejected, encode_dlq
from cryptostream.feeds import FEED_KEY, FeedStatus
from cryptostream.kafka import ensure_topics, start_producer
from cryptostream.metrics import REJECTED, TRADES_IN
from cryptostream.settings import Settings
from ingest.publisher import Publisher
from ingest.source import Batch, EncodedBatch, now_ms

__all__ = ["STOP_GRACE_SECONDS", "IngestResult", "run_ingest"]

log = logging.getLogger(__name__)

INGEST_ID = f"{socket.gethostname()}:{os.getpid()}"  # which ingest process a feed status comes from

STOP_GRACE_SECONDS = 5.0


class IngestResult:
    """What one ingest run did (the trades publisher, the dead-letter publisher, rejects per reason)."""

    def __init__(self, trades: Publisher, dead_letters: Publisher) -> None:
        self.trades = trades
        self.dead_letters = dead_letters
        self.rejected: dict[str, int] = {}

    # the publisher's counters without its progress records, for callers that only care about trades
    @property
    def accepted(self) -> int:
        return self.trades.accepted - self.trades.marks

    @property
    def acknowledged(self) -> int:
        """Trades acknowledged (exact once the run is over: progress records are acknowledged too)."""
        return self.trades.acknowledged - self.trades.marks


async def _dead_letter(dlq: Publisher, rejected: list[Rejected], source: str, result: IngestResult) -> None:
    records = []
    for item in rejected:
        REJECTED.labels("ingest", item.reason).inc()
        result.rejected[item.reason] = result.rejected.get(item.reason, 0) + 1
        value = encode_dlq(item, stage="ingest", source_topic=source)
        records.append((source.encode(), value, 0))
    log.debug("dead-lettered %d records from %s", len(records), source)
    await dlq.put_records(records)


def _reported(sent: asyncio.Future[Any]) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.debug("feed status not sent: %s", sent.exception())


async def _report(producer: AIOKafkaProducer, topic: str, feeds: list[FeedStatus]) -> None:
    """The sources' connection states to the API (candles topic, key ``__feed__``), best effort: a lost
    status is replaced a second later, so nothing waits for the broker's answer."""
    now = now_ms()
    for feed in feeds:
        sent = await producer.send(topic, orjson.dumps(feed.message(now, INGEST_ID)), key=FEED_KEY)
        sent.add_done_callback(_reported)


async def run_ingest(
    settings: Settings, source: AsyncIterator[Batch], stop: asyncio.Event, *, name: str = "source"
) -> IngestResult:
    """Publish every batch ``source`` yields until it ends or ``stop`` is set; flush before returning."""
    await ensure_topics(settings)
    producer = await start_producer(settings)
    trades = Publisher(
        producer,
        settings.kafka_topic,
        batch_size=settings.batch_size,
        queue_size=settings.publish_queue_size,
        linger_ms=settings.kafka_linger_ms,
    )
    dlq = Publisher(
        producer, settings.kafka_dlq_topic, batch_size=1, queue_size=10_000, linger_ms=50, trades=False
    )
    result = IngestResult(trades, dlq)
    await trades.start()
    await dlq.start()
    log.info("ingest from %s -> Kafka %s topic %s", name, settings.kafka_bootstrap, settings.kafka_topic)
    counter = TRADES_IN.labels("ingest", name)
    try:
        async with contextlib.aclosing(source) as batches:  # type: ignore[type-var]
            async for batch in _until_stopped(batches, stop):
                rejected = getattr(batch, "rejected", None)
                if rejected:
                    await _dead_letter(dlq, rejected, getattr(batch, "source", "") or name, result)
                if batch:
                    counter.inc(len(batch))
                    if isinstance(batch, EncodedBatch):
                        await trades.put_records(batch)
                    else:
                        await trades.put(batch)
                for progress in getattr(batch, "progress", ()):
                    await trades.put_progress(progress, getattr(batch, "stamped", None))
                feeds = getattr(batch, "feeds", ())
                if feeds:
                    await _report(producer, settings.kafka_candles_topic, feeds)
                acknowledged = getattr(batch, "acknowledged", None)
                if acknowledged is not None:
                    trades.when_acknowledged(acknowledged)
    finally:
        await trades.stop()
        await dlq.stop()
        await producer.stop()
    if result.rejected:
        log.info("rejected at ingest (in %s): %s", settings.kafka_dlq_topic, result.rejected)
    return result


async def _until_stopped(batches: AsyncIterator[Batch], stop: asyncio.Event) -> AsyncIterator[Batch]:
    """The source's batches until it ends; once ``stop`` is set, only for :data:`STOP_GRACE_SECONDS` more
    (the source sees ``stop`` too and should end with its final progress well within that)."""
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    stop_wait = asyncio.ensure_future(stop.wait())
    nxt: asyncio.Future[Batch] | None = None
    try:
        while True:
            nxt = asyncio.ensure_future(anext(batches))
            while not nxt.done():
                if deadline is None:
                    await asyncio.wait({nxt, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    if stop.is_set():
                        deadline = loop.time() + STOP_GRACE_SECONDS
                    continue
                await asyncio.wait({nxt}, timeout=max(0.0, deadline - loop.time()))
                if not nxt.done():
                    log.warning(
                        "the source did not end within %.0fs of the stop; closing it", STOP_GRACE_SECONDS
                    )
                    return
            try:
                batch = nxt.result()
            except StopAsyncIteration:
                return
            nxt = None
            yield batch
    finally:
        stop_wait.cancel()
        if nxt is not None and not nxt.done():  # the source must not be running when it is closed
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await nxt
