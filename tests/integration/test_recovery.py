"""Recovery paths, made to happen on purpose: a sink fails mid-checkpoint, then the process dies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pyarrow as pa
import pytest

from cryptostream import archive
from cryptostream.codec import Rejected, encode_dlq, encode_trade
from cryptostream.errors import SinkWriteError
from cryptostream.kafka import start_producer
from cryptostream.models import Trade
from cryptostream.settings import Settings
from ingest.synthetic import SyntheticMarket
from processor import service
from processor.service import Processor
from processor.sinks import FlushBatch, ParquetSink, PostgresSink
from tests.conftest import T0
from tests.integration.helpers import db_candles, db_count, parquet_rows, read_topic, run_processor_until
from tests.reference import assert_candles_equal, batch_candles, rows_by_key

pytestmark = pytest.mark.integration


class FailingDatabase(PostgresSink):
    """The real database sink, except that its second write of candles fails as a lost connection would;
    ``aborted`` names the Parquet files of that checkpoint (the archive sink wrote them just before)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.writes = 0
        self.failed = asyncio.Event()
        self.aborted: set[str] = set()

    async def write(self, batch: FlushBatch) -> None:
        if batch.rows("ohlc"):  # a checkpoint may close nothing, depending on how fetches fell
            self.writes += 1
        if self.writes == 2 and not self.failed.is_set():
            self.aborted = {
                archive.file_name(p, lineage.epoch, lineage.seq, hour % 24)
                for p, lineage in batch.lineage.items()
                if batch.tables.get(p, {}).get("ohlc") is not None
                for hour in set(
                    batch.tables[p]["ohlc"]["bucket"].cast(pa.int64()).to_numpy() // archive.HOUR_MS
                )
            }
            self.failed.set()
            raise SinkWriteError("connection lost (injected)")
        await super().write(batch)


async def dead_lettered_by_a_crashed_attempt(
    settings: Settings, raw: bytes, partition: int, offsets: tuple[int, ...]
) -> None:
    """What a processor that died before its checkpoint leaves: dead letters of ``offsets`` of
    ``partition``, written as the processor writes them (``encode_dlq``, to the partition it picks)."""
    producer = await start_producer(settings)
    try:
        letters = sorted(await producer.partitions_for(settings.kafka_dlq_topic))
        for offset in offsets:
            rejected = Rejected("non_positive_price", "price -5.0", raw, partition, offset)
            await producer.send_and_wait(
                settings.kafka_dlq_topic,
                encode_dlq(rejected, stage="processor", source_topic=settings.kafka_topic),
                partition=letters[partition % len(letters)],
            )
    finally:
        await producer.stop()


async def test_dead_letters_not_read_back_in_time_hold_the_partition_rather_than_go_out_twice(
    make_settings, produce_raw, monkeypatch
):
    """Reading back a crashed attempt's dead letters has a deadline (a broker that answers slowly); one
    missed used to log a warning and go on, writing those letters again: exactly once depended on speed.
    Now the partition waits and is set up again. Played with a deadline of 0 s for the first tries."""
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.5)
    good = [encode_trade(Trade("binance", "BTCUSDT", 100.0, 1.0, T0 + i * 100, i, False)) for i in range(30)]
    bad = orjson.dumps({**Trade("binance", "BTCUSDT", 1.0, 1.0, T0, 999, False).to_dict(), "price": -5.0})
    await produce_raw(settings, good[:20])  # offsets 0-19 of one partition
    (partition,) = {r.partition for r in await read_topic(settings, settings.kafka_topic, 20)}

    async def reach(proc: Processor, position: int, then: Callable[[], None] = lambda: None) -> Processor:
        async def there() -> bool:
            then()
            part = proc.parts.get(partition)
            return part is not None and part.position >= position

        return await run_processor_until(settings, there, processor=proc)

    await reach(Processor(settings, [ParquetSink(settings.output_dir)]), 20)  # a checkpoint at 20
    await dead_lettered_by_a_crashed_attempt(settings, bad, partition, (20, 21))
    await produce_raw(settings, [bad, bad, *good[22:]])  # offsets 20-29

    monkeypatch.setattr(service, "READ_BACK_S", 0.0)
    proc = Processor(settings, [ParquetSink(settings.output_dir)])
    held: list[bool] = []

    def in_time_again() -> None:
        if partition in proc.unsure and not held:  # its setup failed: the next try has the time it needs
            held.append(True)
            monkeypatch.setattr(service, "READ_BACK_S", 15.0)

    await reach(proc, 30, in_time_again)
    assert held, "the partition was set up without reading the dead letters back"
    assert proc.stats.rejected == 0
    dead = await read_topic(settings, settings.kafka_dlq_topic, 2)
    assert sorted(orjson.loads(r.value)["source"]["offset"] for r in dead) == [20, 21]


async def test_parquet_files_of_an_aborted_checkpoint_are_removed_and_rewritten_after_a_crash(
    make_settings, produce, db
):
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.5)
    trades = SyntheticMarket(["BTCUSDT", "ETHUSDT"], rate=300, seed=3).generate(6_000, start_ms=T0)
    expected = batch_candles(trades)
    await produce(settings, trades[:3_000], close=False)  # the source goes on later

    failing = FailingDatabase(settings.database_dsn)
    first = Processor(settings, [ParquetSink(settings.output_dir), failing])
    task = asyncio.create_task(first.run(asyncio.Event()))
    await asyncio.wait_for(failing.failed.wait(), 60)
    await asyncio.sleep(0.2)
    task.cancel()  # the process dies: no final checkpoint, no commit
    with pytest.raises(asyncio.CancelledError):
        await task

    # Parquet of the aborted checkpoint is on disk, beyond what Kafka has committed.
    written = {p.name for p in settings.output_dir.glob("_fresh/ohlc/*/*.parquet")}
    assert failing.aborted and failing.aborted <= written, (failing.aborted, written)

    await produce(settings, trades[3_000:])

    async def all_stored() -> bool:
        return await db_count(settings.database_dsn) >= len(expected)

    second = await run_processor_until(settings, all_stored)
    assert second.stats.late == 0
    assert_candles_equal(rows_by_key(await db_candles(db)), expected)
    assert_candles_equal(rows_by_key(parquet_rows(settings.output_dir)), expected)


async def test_dead_letters_of_a_crashed_attempt_outlive_a_checkpoint_written_before_their_records(
    make_settings, produce_raw
):
    """A crashed attempt dead-lettered records that the next attempt had not reached when it wrote a
    checkpoint (soon after its assignment: the five-SIGKILL test met this); the attempt after that still
    reads those dead letters back and writes none of them again.

    The crashed attempt is played by what it leaves: its dead letters, written as the processor writes them
    (``encode_dlq``, to the dead-letter partition it picks), for records produced only after the next
    attempt stopped, so that attempt checkpoints before them whatever its speed."""
    settings = make_settings(max_buffer_seconds=0.5, parquet_chunk_seconds=0.5)

    def trades(first: int, n: int) -> list[bytes | None]:
        return [
            encode_trade(Trade("binance", "BTCUSDT", 100.0 + i % 7, 1.0, T0 + i * 100, i, False))
            for i in range(first, first + n)
        ]

    bad = orjson.dumps(
        {**Trade("binance", "BTCUSDT", 1.0, 1.0, T0 + 9_000, 999, False).to_dict(), "price": -5.0}
    )
    await produce_raw(settings, trades(0, 50))  # offsets 0-49 of one partition
    (partition,) = {r.partition for r in await read_topic(settings, settings.kafka_topic, 50)}

    async def run_to(position: int) -> Processor:
        proc = Processor(settings, [ParquetSink(settings.output_dir)])

        async def there() -> bool:
            part = proc.parts.get(partition)
            return part is not None and part.position >= position

        return await run_processor_until(settings, there, processor=proc)

    await run_to(50)  # a checkpoint at offset 50

    # The crashed attempt read on, dead-lettered the records at offsets 60 and 61, and died before its
    # checkpoint.
    await dead_lettered_by_a_crashed_attempt(settings, bad, partition, (60, 61))

    await produce_raw(settings, trades(50, 10))  # offsets 50-59
    second = await run_to(60)  # reads the letters back, checkpoints at 60: before their records
    await produce_raw(settings, [bad, bad, *trades(60, 8)])  # offsets 60-69: 60 and 61 are the bad ones
    third = await run_to(70)

    assert (second.stats.rejected, third.stats.rejected) == (0, 0)  # nothing dead-lettered again
    dead = await read_topic(settings, settings.kafka_dlq_topic, 2)
    assert sorted(orjson.loads(r.value)["source"]["offset"] for r in dead) == [60, 61]
