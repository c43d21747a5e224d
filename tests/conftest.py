"""Shared fixtures: the real embedded Kafka broker and PostgreSQL, started once per test session.

``KAFKA_BOOTSTRAP`` / ``DATABASE_URL`` in the environment take precedence (run the suite against real
services that way). Each test gets its own topics and consumer group, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from cryptostream.codec import Progress
from cryptostream.embedded import EmbeddedKafka, EmbeddedPostgres
from cryptostream.kafka import ensure_topics, start_producer, wait_for_broker
from cryptostream.models import Trade
from cryptostream.settings import Settings, load_settings
from ingest.publisher import Publisher

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z

# Property tests check what is generated, not how fast: on a loaded machine (2 shared cores, a browser test
# next door) generation and each example slow down, and neither may fail the suite. Tests that set their own
# @settings inherit these; a few that need a time limit can still ask for one.
hypothesis_settings.register_profile(
    "cryptostream", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("cryptostream")


@pytest.fixture(scope="session")
def infra_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infra")


@pytest.fixture(scope="session")
def kafka_bootstrap(infra_dir: Path) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    with EmbeddedKafka(infra_dir) as broker:
        asyncio.run(
            wait_for_broker(broker.bootstrap, settings=load_settings(kafka_bootstrap=broker.bootstrap))
        )
        yield broker.bootstrap


@pytest.fixture(scope="session")
def database_url(infra_dir: Path) -> Iterator[str]:
    from cryptostream.migrate import upgrade

    if os.environ.get("DATABASE_URL"):
        upgrade(os.environ["DATABASE_URL"])
        yield os.environ["DATABASE_URL"]
        return
    with EmbeddedPostgres(infra_dir / "postgres", fast_unsafe=True) as pg:
        upgrade(pg.url)
        yield pg.url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a migrated database with empty tables."""
    conn = await asyncpg.connect(database_url)
    await conn.execute("TRUNCATE ohlc_1s, volatility_1s, predictions")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def make_settings(kafka_bootstrap: str, database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings on the session's broker and database, with topics and a group of this test's own."""
    tag = uuid.uuid4().hex[:8]

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "database_url": database_url,
            "kafka_topic": f"trades-{tag}",
            "kafka_candles_topic": f"candles-{tag}",
            "kafka_dlq_topic": f"dlq-{tag}",
            "consumer_group": f"group-{tag}",
            "output_dir": tmp_path / "outputs",
            "state_dir": tmp_path / "state",
            "kafka_partitions": 4,
            "max_poll_records": 2000,
            "batch_size": 1000,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


def closing_progress(trades: list[Trade], watermark: int | None = None) -> list[Progress]:
    """What a source that ends after ``trades`` writes: per venue, progress through the end of the second
    of its last trade (or up to ``watermark``), so every window they fed closes."""
    by_venue: dict[str, set[str]] = {}
    for t in trades:
        by_venue.setdefault(t.exchange, set()).add(t.symbol)
    last = max((t.timestamp for t in trades), default=0)
    end = watermark if watermark is not None else last - last % 1000 + 1000
    return [Progress(e, tuple(sorted(s)), end) for e, s in sorted(by_venue.items())]


@pytest.fixture
def produce() -> Callable[..., Any]:
    """Publish trades through the real publisher, as a source does: then, unless ``close=False``, progress
    that closes every window they fed (``progress``: other progress records to write after them). Waits
    until Kafka acknowledged everything."""

    async def publish(
        settings: Settings, trades: list[Trade], *, close: bool = True, progress: list[Progress] | None = None
    ) -> None:
        await ensure_topics(settings)
        producer = await start_producer(settings)
        publisher = Publisher(
            producer, settings.kafka_topic, batch_size=settings.batch_size, queue_size=50_000
        )
        await publisher.start()
        marks = list(progress or []) + (closing_progress(trades) if close and trades else [])
        try:
            await publisher.put(trades)
            for mark in marks:
                await publisher.put_progress(mark)
        finally:
            await publisher.stop()
            await producer.stop()
        assert publisher.acknowledged - publisher.marks == len(trades)

    return publish


@pytest.fixture
def produce_raw() -> Callable[..., Any]:
    """Write raw values (anything, even garbage) to a topic, as a third-party producer could."""

    async def publish(settings: Settings, values: list[bytes | None], key: bytes = b"BTCUSDT") -> None:
        await ensure_topics(settings)
        producer = await start_producer(settings)
        try:
            for value in values:
                await producer.send(settings.kafka_topic, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

    return publish
