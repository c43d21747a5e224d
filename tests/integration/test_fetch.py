"""fetch_values reads exactly what getmany() reads, from a real broker, through every way a read can go."""

from __future__ import annotations

import aiokafka
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from cryptostream.fetch import Fetched, batch_reading_supported, fetch_values
from cryptostream.kafka import ensure_topics, start_producer

pytestmark = pytest.mark.integration

N = 3_000  # per partition, written as several producer batches of uneven size


async def _fill(settings, compression: str | None = None) -> dict[int, list[bytes]]:
    await ensure_topics(settings)
    producer = await start_producer(settings, compression_type=compression, max_batch_size=16_384)
    written: dict[int, list[bytes]] = {0: [], 1: []}
    try:
        for i in range(N):
            for partition in written:
                value = b'{"n":%d,"p":%d,"pad":"%s"}' % (i, partition, b"x" * (i % 97))
                await producer.send(settings.kafka_topic, value, partition=partition)
                written[partition].append(value)
            if i % 700 == 0:
                await producer.flush()  # batch boundaries at uneven places
        await producer.flush()
    finally:
        await producer.stop()
    return written


def _consumer(settings, **options) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **options,
    )


async def _read_all(consumer, want: int, max_records: int) -> dict[int, Fetched]:
    got: dict[int, Fetched] = {}
    seen = 0
    while seen < want:
        batch = await fetch_values(consumer, timeout_ms=2_000, max_records=max_records)
        assert batch, f"no records after {seen} of {want}"
        for tp, fetched in batch.items():
            assert 0 < len(fetched) <= max_records
            acc = got.setdefault(tp.partition, Fetched([], [], []))
            acc.values += fetched.values
            acc.offsets += fetched.offsets
            acc.timestamps += fetched.timestamps
            seen += len(fetched)
        assert sum(len(f) for f in batch.values()) <= max_records
    return got


async def test_the_installed_aiokafka_gets_the_batch_path(make_settings) -> None:
    """CI fails here (not silently slows down) when an aiokafka upgrade changes the fetch buffer."""
    settings = make_settings()
    plain, deserializing = _consumer(settings), _consumer(settings, value_deserializer=bytes)
    await plain.start()
    await deserializing.start()
    try:
        assert batch_reading_supported(plain), f"aiokafka {aiokafka.__version__} is not verified"
        assert not batch_reading_supported(deserializing)
    finally:
        await plain.stop()
        await deserializing.stop()


@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.parametrize("max_records", [1, 7, 500, 100_000])
async def test_every_record_once_in_order_at_any_max_records(make_settings, compression, max_records) -> None:
    settings = make_settings(kafka_partitions=2)
    written = await _fill(settings, compression)
    consumer = _consumer(settings)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(settings.kafka_topic, p) for p in written])
        got = await _read_all(consumer, 2 * N, max_records)
        for partition, values in written.items():
            assert got[partition].offsets == list(range(N))
            assert got[partition].values == values
            assert await consumer.position(TopicPartition(settings.kafka_topic, partition)) == N
    finally:
        await consumer.stop()


async def test_seek_into_a_batch_pause_and_resume_match_getmany(make_settings) -> None:
    settings = make_settings(kafka_partitions=2)
    written = await _fill(settings)
    tps = [TopicPartition(settings.kafka_topic, p) for p in written]
    fast, slow = _consumer(settings), _consumer(settings, value_deserializer=lambda v: v)
    await fast.start()
    await slow.start()
    try:
        for consumer in (fast, slow):
            consumer.assign(tps)
            consumer.seek(tps[0], 1234)  # inside a producer batch: the broker sends the whole batch
            consumer.seek(tps[1], 2999)
            consumer.pause(tps[1])
        assert not batch_reading_supported(slow)  # the getmany() fallback is the reference
        first_fast = await _read_all(fast, N - 1234, 50)
        first_slow = await _read_all(slow, N - 1234, 50)
        assert first_fast.keys() == first_slow.keys() == {0}
        assert first_fast[0] == first_slow[0]
        assert first_fast[0].offsets == list(range(1234, N))
        assert first_fast[0].values == written[0][1234:]
        for consumer in (fast, slow):
            consumer.resume(tps[1])
            consumer.seek(tps[0], 10)
        rest_fast = await _read_all(fast, N - 10 + 1, 333)
        rest_slow = await _read_all(slow, N - 10 + 1, 333)
        assert rest_fast == rest_slow
        assert rest_fast[1].offsets == [2999] and rest_fast[1].values == [written[1][2999]]
        assert rest_fast[0].offsets == list(range(10, N))
        assert await fetch_values(fast, timeout_ms=200, max_records=10) == {}
    finally:
        await fast.stop()
        await slow.stop()
