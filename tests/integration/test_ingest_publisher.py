"""The publisher through a broker outage: back-pressure, retries, backlog counted, then nothing lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from cryptostream.embedded import EmbeddedKafka
from cryptostream.kafka import ensure_topics, start_producer, wait_for_broker
from cryptostream.models import Trade
from cryptostream.procs import free_port
from cryptostream.settings import load_settings
from ingest.publisher import Publisher
from tests.conftest import T0
from tests.integration.ingest_helpers import topic_records

pytestmark = pytest.mark.integration


def trades(ids: range) -> list[Trade]:
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    return [Trade("binance", symbols[i % 3], 100.0 + i, 1.0, T0 + i, i, i % 2 == 0) for i in ids]


def blocking(*steps: Coroutine[Any, Any, Any]) -> None:
    """Run ``steps`` in another thread while this thread (and its event loop) waits."""

    async def run() -> None:
        for step in steps:
            await step

    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    thread.join()


def ids_in(records: list) -> list[int]:
    return [orjson.loads(r.value)["trade_id"] for r in records]


async def test_broker_outage_is_retried_and_resumes_with_nothing_lost(tmp_path: Path):
    """Our own broker (not the session's): stopped mid-stream, then a new one on the same port."""
    port = free_port()
    first = EmbeddedKafka(tmp_path / "first", port=port).start()
    try:
        settings = load_settings(
            kafka_bootstrap=first.bootstrap,
            kafka_topic="outage",
            kafka_dlq_topic="outage-dlq",
            kafka_partitions=2,
        )
        await wait_for_broker(first.bootstrap, settings=settings)
        await ensure_topics(settings)
        producer = await start_producer(settings, request_timeout_ms=2_000, retry_backoff_ms=100)
        publisher = Publisher(producer, settings.kafka_topic, batch_size=50, queue_size=400, linger_ms=5)
        await publisher.start()

        await publisher.put(trades(range(0, 300)))
        assert await publisher.wait_acknowledged(timeout=30)
        assert sorted(ids_in(await topic_records(settings, settings.kafka_topic))) == list(range(300))
    finally:
        first.stop()  # the outage

    second: EmbeddedKafka | None = None
    try:
        # 1000 trades offered in the outage: 400 may be held unacknowledged, the rest wait (back-pressure),
        # the first 400 in four rounds, so each partition has several batches waiting for the broker.
        async def offer() -> None:
            for start in range(300, 700, 100):
                await publisher.put(trades(range(start, start + 100)))
                await asyncio.sleep(0.05)
            await publisher.put(trades(range(700, 1300)))

        offered = asyncio.create_task(offer())
        deadline = time.monotonic() + 30
        while publisher.retries < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert publisher.retries >= 2, "the publisher should keep retrying while the broker is down"
        assert not offered.done(), "a full queue must hold the source back"
        assert publisher.backlog == 400  # held, not dropped, and no more than the queue allows
        assert REGISTRY.get_sample_value("cryptostream_ingest_backlog") == publisher.backlog
        retried = REGISTRY.get_sample_value("cryptostream_publish_retries_total", {"topic": "outage"})
        assert retried is not None and retried >= 2

        # The broker is back. Tansu keeps topics in memory, so it comes back empty: create the topic while
        # this event loop is blocked, so the waiting publisher cannot produce before it exists (Tansu would
        # accept records for an unknown topic and lose them when the topic is created afterwards).
        second = EmbeddedKafka(tmp_path / "second", port=port).start()
        blocking(wait_for_broker(second.bootstrap, settings=settings), ensure_topics(settings))
        await asyncio.wait_for(offered, 60)
        assert await publisher.wait_acknowledged(timeout=60), f"backlog {publisher.backlog} never drained"
        assert publisher.backlog == 0 and publisher.accepted == publisher.acknowledged == 1300
        assert REGISTRY.get_sample_value("cryptostream_ingest_backlog") == 0

        records = await topic_records(settings, settings.kafka_topic)
        landed = ids_in(records)
        assert sorted(landed) == list(range(300, 1300)), "every trade accepted during the outage, once"
        for partition in {r.partition for r in records}:  # batches resent in place, not behind later ones
            ids = ids_in([r for r in records if r.partition == partition])
            assert ids == sorted(ids), f"partition {partition} out of the order accepted"
        await publisher.stop()
        await producer.stop()
    finally:
        if second is not None:
            second.stop()


async def test_stop_flushes_everything_accepted(make_settings):
    settings = make_settings(kafka_partitions=3)
    await ensure_topics(settings)
    producer = await start_producer(settings)
    publisher = Publisher(producer, settings.kafka_topic, batch_size=10_000, queue_size=1_000, linger_ms=200)
    await publisher.start()
    await publisher.put(trades(range(5_000)))  # more than the queue holds: put waits, then returns
    await publisher.stop()  # no wait_acknowledged first: stop itself must flush
    await producer.stop()
    records = await topic_records(settings, settings.kafka_topic)
    assert sorted(ids_in(records)) == list(range(5_000))
    by_symbol = {}
    for r in records:
        by_symbol.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_symbol.values())  # keyed by symbol: one partition each


async def test_a_broker_without_idempotent_producers_is_asked_and_reported_once_per_process(
    make_settings, caplog
):
    settings = make_settings()  # KAFKA_IDEMPOTENCE=auto, on the embedded Tansu broker (no idempotence)
    await ensure_topics(settings)
    with caplog.at_level("INFO", logger="cryptostream.kafka"):
        for _ in range(3):
            producer = await start_producer(settings)
            await producer.send_and_wait(settings.kafka_topic, b"{}", key=b"BTCUSDT")  # and it works
            await producer.stop()
    said = [r for r in caplog.records if "idempotent" in r.getMessage()]
    assert len(said) <= 1 and all(r.levelname == "INFO" for r in said), [r.getMessage() for r in said]
