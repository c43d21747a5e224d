"""The ingest role: a trade source -> validation -> the publisher -> ``crypto-trades``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from cryptostream.kafka import ensure_topics, start_producer
from cryptostream.metrics import TRADES_IN
from cryptostream.models import Trade
from cryptostream.settings import Settings
from ingest.publisher import Publisher

__all__ = ["run_ingest"]

log = logging.getLogger(__name__)


async def run_ingest(
    settings: Settings, source: AsyncIterator[list[Trade]], stop: asyncio.Event, *, name: str = "source"
) -> Publisher:
    """Publish every batch ``source`` yields until it ends or ``stop`` is set; flush before returning."""
    await ensure_topics(settings)
    producer = await start_producer(settings)
    publisher = Publisher(
        producer, settings.kafka_topic, batch_size=settings.batch_size, queue_size=settings.publish_queue_size
    )
    await publisher.start()
    log.info("ingest from %s -> Kafka %s topic %s", name, settings.kafka_bootstrap, settings.kafka_topic)
    try:
        async with contextlib.aclosing(source) as trades:  # type: ignore[type-var]
            stop_wait = asyncio.ensure_future(stop.wait())
            try:
                while not stop.is_set():
                    nxt = asyncio.ensure_future(anext(trades))
                    done, _ = await asyncio.wait({nxt, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    if nxt not in done:
                        nxt.cancel()
                        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                            await nxt
                        break
                    try:
                        batch = nxt.result()
                    except StopAsyncIteration:
                        break
                    TRADES_IN.labels("ingest", name).inc(len(batch))
                    await publisher.put(batch)
            finally:
                stop_wait.cancel()
    finally:
        await publisher.stop()
        await producer.stop()
    return publisher
