"""The publisher against producers of its own: progress records of a whole market stay far below the
record size the processor accepts, and a batch the producer gives up on keeps its place."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka.errors import KafkaTimeoutError

from cryptostream.codec import MAX_RECORD_BYTES, Progress
from cryptostream.models import Trade
from ingest.publisher import PROGRESS_SYMBOLS, Publisher
from tests.conftest import T0


class OnePartition:
    """What the publisher asks a producer before it sends: the topic's partitions (one here)."""

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}


async def test_a_whole_market_of_progress_is_split_into_records_of_at_most_progress_symbols() -> None:
    publisher = Publisher(OnePartition(), "trades", batch_size=1, queue_size=10)  # type: ignore[arg-type]
    await publisher.start()
    try:
        symbols = tuple(f"{i:05d}" + "X" * 19 for i in range(5000))  # 24 characters: the longest symbol
        records = publisher.progress_records(Progress("synthetic", symbols, 1_700_000_000_000), 1)
        assert len(records) == 5000 // PROGRESS_SYMBOLS
        values: list[dict[str, Any]] = [orjson.loads(value) for _, value, _ in records]
        assert [s for v in values for s in v["symbols"]] == list(symbols)
        assert all(len(value) < MAX_RECORD_BYTES for _, value, _ in records)
        assert all(key == v["symbols"][0].encode() for (key, _, _), v in zip(records, values, strict=True))
    finally:
        await publisher.stop()


class FirstBatchTimesOut:
    """A producer whose broker writes batches in the order handed over, except that the first batch
    handed over is given up on 50 ms later, as aiokafka gives up on a batch after ``request_timeout_ms``
    when idempotence is off (the batch queued behind it then goes first)."""

    def __init__(self) -> None:
        self.log: list[int] = []  # trade ids in the order the broker wrote them
        self.handed = 0

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[None]:
        self.handed += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.handed == 1:
            asyncio.get_running_loop().call_later(0.05, done.set_exception, KafkaTimeoutError())
        else:
            self.log.extend(orjson.loads(value)["trade_id"] for value in batch.values)
            done.set_result(None)
        return done


class Batch:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def append(self, *, key: bytes, value: bytes, timestamp: int) -> object:
        self.values.append(value)
        return True

    def close(self) -> None:
        pass


async def test_a_batch_the_producer_gives_up_on_is_written_before_the_records_accepted_after_it() -> None:
    producer = FirstBatchTimesOut()
    publisher = Publisher(producer, "trades", batch_size=1, queue_size=100, linger_ms=0)  # type: ignore[arg-type]
    await publisher.start()
    await publisher.put([Trade("binance", "BTCUSDT", 1.0, 1.0, T0, 1, True)])
    await asyncio.sleep(0.01)  # the first batch is at the producer
    await publisher.put([Trade("binance", "BTCUSDT", 1.0, 1.0, T0, 2, True)])
    assert await publisher.wait_acknowledged(timeout=10)
    await publisher.stop()
    assert producer.log == [1, 2]
    assert publisher.retries == 1
