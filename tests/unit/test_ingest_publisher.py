"""Progress records of a whole market stay far below the record size the processor accepts."""

from __future__ import annotations

from typing import Any

import orjson

from cryptostream.codec import MAX_RECORD_BYTES, Progress
from ingest.publisher import PROGRESS_SYMBOLS, Publisher


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
