"""Parquet archive sink: one zstd file per (kind, venue, symbol, day) per checkpoint, named by lineage.

A checkpoint's rows for partition ``p`` go to ``part-p<p>-<epoch>-<seq>.parquet`` in each
``exchange=/symbol=/date=`` folder they touch. Rewriting a checkpoint after a crash produces the same names,
so the archive never holds a candle twice; :meth:`ParquetSink.remove_uncommitted` deletes files a crashed
attempt wrote past the last commit. Many small files are merged later by compaction, never by this hot
path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cryptostream.archive import FILE_RE, KINDS, file_name, file_schema, partition_dir, write_file
from cryptostream.errors import SinkWriteError
from processor.sinks.base import FlushBatch, Sink

__all__ = ["ParquetSink"]

log = logging.getLogger(__name__)


class ParquetSink(Sink):
    name = "parquet"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="parquet")

    async def write(self, batch: FlushBatch) -> None:
        try:
            await asyncio.to_thread(self._write, batch)
        except OSError as exc:
            raise SinkWriteError(f"cannot write Parquet under {self.root}: {exc}") from exc

    def _write(self, batch: FlushBatch) -> None:
        jobs = []
        for partition, tables in batch.tables.items():
            lineage = batch.lineage[partition]
            name = file_name(partition, lineage.epoch, lineage.seq)
            for kind, table in tables.items():
                if table.num_rows == 0:
                    continue
                for (exchange, symbol, day), part in _split_market_day(table):
                    path = partition_dir(self.root, kind, exchange, symbol, day) / name
                    jobs.append((path, part.select(file_schema(kind).names).sort_by("bucket")))
        # Each file is small and ends in an fsync: write them side by side (the GIL is released in both).
        list(self._pool.map(lambda job: write_file(*job), jobs))

    async def close(self) -> None:
        self._pool.shutdown(wait=True)

    def remove_uncommitted(self, partition: int, epoch: str, committed_seq: int) -> int:
        """Delete this partition's files of ``epoch`` with a sequence number above ``committed_seq``."""
        removed = 0
        prefix = f"part-p{partition:04d}-{epoch}-"
        for kind in KINDS:
            for path in (self.root / kind).glob(f"exchange=*/symbol=*/date=*/{prefix}*.parquet"):
                match = FILE_RE.fullmatch(path.name)
                if match and int(match["seq"]) > committed_seq:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
        if removed:
            log.info(
                "partition %d: removed %d Parquet file(s) written after its last commit", partition, removed
            )
        return removed


def _split_market_day(table: pa.Table) -> list[tuple[tuple[str, str, str], pa.Table]]:
    """Split rows by (exchange, symbol, UTC day) without a per-row loop."""
    days = pc.strftime(table["bucket"], format="%Y-%m-%d", locale="C")
    keyed = table.append_column("_day", days)
    keys = np.stack(
        [keyed[name].to_numpy(zero_copy_only=False).astype(str) for name in ("exchange", "symbol", "_day")],
        axis=1,
    )
    out = []
    for exchange, symbol, day in np.unique(keys, axis=0):
        mask = pc.and_(
            pc.and_(pc.equal(keyed["exchange"], exchange), pc.equal(keyed["symbol"], symbol)),
            pc.equal(keyed["_day"], day),
        )
        out.append(((str(exchange), str(symbol), str(day)), keyed.filter(mask).drop_columns(["_day"])))
    return out
