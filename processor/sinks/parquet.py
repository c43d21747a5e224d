"""Parquet archive sink: per checkpoint, one zstd file per partition, kind and hour, named by lineage.

A checkpoint's rows for partition ``p`` go to
``_fresh/<kind>/date=<day>/part-p<p>-<epoch>-<seq>-h<HH>.parquet``: every market of the partition in one
file, sorted by (exchange, symbol, bucket) in small row groups, so a checkpoint writes a handful of files
whatever the number of markets and a read of one market skips the row groups of the others. Rewriting a
checkpoint after a crash produces the same names, so the archive never holds a candle twice;
:meth:`ParquetSink.remove_uncommitted` deletes files a crashed attempt wrote past the last commit. Once the
event time passes an hour, :meth:`ParquetSink.merge_closed` splits that hour's fresh files into one file per
market (:func:`cryptostream.compaction.merge_fresh`), off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from cryptostream.archive import (
    FILE_RE,
    FRESH,
    HOUR_MS,
    KINDS,
    file_name,
    fresh_dir,
    partition_dir,
    utc_day,
    write_file,
)
from cryptostream.compaction import MERGE_GRACE_MS, MergeStopped, merge_fresh
from cryptostream.errors import SinkWriteError
from processor.sinks.base import FlushBatch, Sink

__all__ = ["ParquetSink"]

log = logging.getLogger(__name__)

MERGE_PACE = 1.0  # a merge sleeps as long as it works: at most about half a core beside the processor
CLOSE_MERGE_S = 5.0  # at shutdown, a merge still running gets this long before it is stopped
FRESH_ROW_GROUP = 4096  # rows; with rows sorted by market, a one-market read skips the others' groups


class ParquetSink(Sink):
    name = "parquet"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="parquet")
        self._folders: set[tuple[str, str, str, str]] = set()  # market folders made: kind, venue, symbol, day
        self.newest_ms: int | None = None  # the newest 1 s candle written: how far event time has come
        self._merged_before = 0  # hours ending at or before this (epoch ms) are merged
        self._wanted = 0  # ... and those ending by this are to be
        self._commits = 0  # commits seen (a merge that waited for one knows when it came)
        self._again = False  # run again: files were not committed yet, or another merge held the lock
        self._merging: asyncio.Task[None] | None = None
        self._stop = threading.Event()

    async def write(self, batch: FlushBatch) -> None:
        try:
            await asyncio.to_thread(self._write, batch)
        except OSError as exc:
            raise SinkWriteError(f"cannot write Parquet under {self.root}: {exc}") from exc

    def _write(self, batch: FlushBatch) -> None:
        jobs = []
        for partition, tables in batch.tables.items():
            lineage = batch.lineage[partition]
            for kind, table in tables.items():
                if table.num_rows == 0:
                    continue
                ms = table["bucket"].cast(pa.int64()).to_numpy()
                if kind == "ohlc":
                    newest = int(ms.max())
                    self.newest_ms = newest if self.newest_ms is None else max(self.newest_ms, newest)
                hours = ms // HOUR_MS
                distinct = np.unique(hours).tolist()
                for hour in distinct:
                    # (rows are sorted by market, not time: first and last rows say nothing of the rest)
                    part = table if len(distinct) == 1 else table.filter(pa.array(hours == hour))
                    day = utc_day(hour * HOUR_MS)
                    self._make_folders(kind, part, day.isoformat())
                    name = file_name(partition, lineage.epoch, lineage.seq, hour % 24)
                    order = [("exchange", "ascending"), ("symbol", "ascending"), ("bucket", "ascending")]
                    jobs.append((fresh_dir(self.root, kind, day) / name, part.sort_by(order)))
        # Each file ends in an fsync: write them side by side (the GIL is released in both).
        list(
            self._pool.map(
                lambda job: write_file(job[0], job[1], FRESH_ROW_GROUP, ["exchange", "symbol"]), jobs
            )
        )

    def _make_folders(self, kind: str, table: pa.Table, day: str) -> None:
        """Create the ``date=`` folder of each market with rows here, so listing markets and days never
        needs to open a fresh file (made once per market and day)."""
        pairs = table.select(["exchange", "symbol"]).group_by(["exchange", "symbol"]).aggregate([])
        for exchange, symbol in zip(pairs["exchange"].to_pylist(), pairs["symbol"].to_pylist(), strict=True):
            key = (kind, exchange, symbol, day)
            if key not in self._folders:
                partition_dir(self.root, kind, exchange, symbol, day).mkdir(parents=True, exist_ok=True)
                self._folders.add(key)
        if len(self._folders) > 200_000:  # days long gone: forget them (a mkdir again is harmless)
            self._folders = {k for k in self._folders if k[3] >= day}

    async def merge_closed(self) -> None:
        """Merge the hours event time has left behind, after a commit: in a thread, one merge at a time
        (asked again while one runs, it runs again after). Hours end MERGE_GRACE_MS of event time before they
        are merged, so a market a little behind the others lands in the same merge; rows written later into
        a merged hour are merged into it again. Files a restart could still replace wait for their commit."""
        self._commits += 1
        if self.newest_ms is None:
            return
        before = (self.newest_ms - MERGE_GRACE_MS) // HOUR_MS * HOUR_MS
        if before <= self._merged_before and not self._again:
            return
        self._wanted = max(self._wanted, before)
        if self._merging is None or self._merging.done():
            self._merging = asyncio.create_task(self._merge())

    async def _merge(self) -> None:
        while self._wanted > self._merged_before or self._again:
            before, self._again, commits = self._wanted, False, self._commits
            try:
                report = await asyncio.to_thread(merge_fresh, self.root, before, None, MERGE_PACE, self._stop)
            except MergeStopped:
                log.info("archive merge stopped for shutdown; the next merge finishes it")
                return
            except (OSError, ValueError) as exc:
                log.warning("archive merge failed (tried again after the next commit): %s", exc)
                self._again = True
                return
            self._merged_before = before
            if report.files_in or report.days:
                log.info("archive: %s", report)
            if report.kept_uncommitted or report.busy:
                self._again = True  # once committed (now, if a commit came meanwhile), or the other is done
                if self._commits == commits:
                    return

    async def close(self) -> None:
        if self._merging is not None:  # a merge running gets a few seconds, then ends at its next market
            try:
                await asyncio.wait_for(asyncio.shield(self._merging), CLOSE_MERGE_S)
            except TimeoutError:
                self._stop.set()  # as a crash there would: the next merge finishes it
                with contextlib.suppress(Exception):
                    await self._merging
            except Exception:  # noqa: S110 - logged where it failed
                pass
        self._pool.shutdown(wait=True)

    def remove_uncommitted(self, partition: int, epoch: str, committed_seq: int) -> int:
        """Delete this partition's files of ``epoch`` with a sequence number above ``committed_seq``."""
        removed = 0
        prefix = f"part-p{partition:04d}-{epoch}-"
        for kind in KINDS:
            paths = [
                *(self.root / FRESH / kind).glob(f"date=*/{prefix}*.parquet"),
                *(self.root / kind).glob(f"exchange=*/symbol=*/date=*/{prefix}*.parquet"),  # older layout
            ]
            for path in paths:
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
