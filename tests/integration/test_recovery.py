"""Recovery paths, made to happen on purpose: a sink fails mid-checkpoint, then the process dies."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from cryptostream import archive
from cryptostream.errors import SinkWriteError
from ingest.synthetic import SyntheticMarket
from processor.service import Processor
from processor.sinks import FlushBatch, ParquetSink, PostgresSink
from tests.conftest import T0
from tests.integration.helpers import db_candles, db_count, parquet_rows, run_processor_until
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
