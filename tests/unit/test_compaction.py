"""Compaction of the Parquet archive: fewer files, the same rows, and never a file a restart may delete.

Fresh files are written by the real ``ParquetSink`` and checkpoints by the real ``CheckpointStore``, exactly
as the processor lays them out; per-market ``part-`` files as earlier versions wrote them; the loader is the
one the API reads with. (The merge under SIGKILL at every step: test_archive_merge.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from cryptostream import archive
from cryptostream.cli import app
from cryptostream.compaction import committed_floor, compact
from cryptostream.models import CANDLE_SCHEMA
from processor.checkpoint import Checkpoint, CheckpointStore
from processor.sinks import FlushBatch, Lineage, ParquetSink

TODAY = date(2024, 1, 20)
OLD = date(2024, 1, 10)
RECENT = date(2024, 1, 19)
SYMBOL = "BTCUSDT"
EXCHANGE = "binance"


def candles(day: date, first_second: int, n: int, price: float = 100.0) -> pa.Table:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=first_second)
    buckets = [start + timedelta(seconds=i) for i in range(n)]
    prices = [price + i * 0.25 for i in range(n)]
    return pa.table(
        {
            "exchange": [EXCHANGE] * n,
            "symbol": [SYMBOL] * n,
            "bucket": buckets,
            "open": prices,
            "high": [p + 1 for p in prices],
            "low": [p - 1 for p in prices],
            "close": [p + 0.5 for p in prices],
            "volume": [1.5] * n,
            "trade_count": [3] * n,
            "vwap": prices,
            "buy_volume": [1.0] * n,
            "sell_volume": [0.5] * n,
        },
        schema=CANDLE_SCHEMA,
    )


async def write(root: Path, partition: int, epoch: str, seq: int, table: pa.Table) -> None:
    batch = FlushBatch()
    batch.tables[partition] = {"ohlc": table}
    batch.lineage[partition] = Lineage(epoch, seq)
    await ParquetSink(root).write(batch)


def write_legacy(root: Path, partition: int, epoch: str, seq: int, table: pa.Table) -> None:
    """A per-market file of one checkpoint, as versions before the fresh files wrote them."""
    day = table["bucket"][0].as_py().date()
    folder = archive.partition_dir(root, "ohlc", EXCHANGE, SYMBOL, day)
    archive.write_file(
        folder / archive.file_name(partition, epoch, seq), table.drop_columns(["exchange", "symbol"])
    )


def checkpoint(root: Path, partition: int, epoch: str, seq: int, offset: int) -> None:
    CheckpointStore(root, "group", "trades").save(Checkpoint("trades", partition, offset, epoch, seq))


def files(root: Path, day: date) -> list[str]:
    folder = archive.partition_dir(root, "ohlc", EXCHANGE, SYMBOL, day)
    return sorted(p.name for p in folder.glob("*.parquet"))


def everything(root: Path) -> pa.Table:
    """What readers see: one row per bucket."""
    return archive.load(root, "ohlc", EXCHANGE, SYMBOL, unique=True)


async def test_merges_committed_files_of_past_days_and_keeps_every_row(tmp_path: Path):
    # Lineage e1 of partition 0: seven checkpoints wrote files; checkpoints 3..5 are still on disk, so a
    # restart may resume from seq 3 and delete seq 4..7. A dead lineage e0 (no checkpoint left) wrote two.
    for seq in range(1, 8):
        await write(tmp_path, 0, "e1", seq, candles(OLD, seq * 100, 40, price=seq))
    for seq in (1, 2):
        await write(tmp_path, 0, "e0", seq, candles(OLD, 5000 + seq * 100, 10, price=50 + seq))
    # The same buckets as e1 seq 1 (the trades processed twice): readers show one, the merge keeps that one.
    await write(tmp_path, 0, "e0", 3, candles(OLD, 100, 5, price=77))
    for seq in (1, 2, 3):
        await write(tmp_path, 1, "e9", seq, candles(RECENT, seq * 100, 30))
    for seq, offset in ((3, 300), (4, 400), (5, 500)):
        checkpoint(tmp_path, 0, "e1", seq, offset)
    checkpoint(tmp_path, 1, "e9", 1, 10)
    assert committed_floor(tmp_path) == {(0, "e1"): 3, (1, "e9"): 1}
    before = everything(tmp_path)
    recent_before = [p.name for p in archive.fresh_files(tmp_path, "ohlc", RECENT)]

    report = compact(tmp_path, min_age_days=2, today=TODAY)

    # Hour 0 (e0 seq 3, e1 seq 1..3) and hour 1 (e0 seq 1, 2) of the old day: one file per hour, then those
    # two into one file of the day; e1 seq 4..7 stay fresh while a restart may still rewrite them.
    assert report.files_in == 6 + 2 and report.files_out == 2 + 1 and report.kept_uncommitted == 4
    old_files = files(tmp_path, OLD)
    assert len(old_files) == 1 and old_files[0].startswith("compact-") and "-h" not in old_files[0]
    assert [p.name for p in archive.fresh_files(tmp_path, "ohlc", OLD)] == [
        archive.file_name(0, "e1", seq, 0) for seq in (4, 5, 6, 7)
    ]
    assert [p.name for p in archive.fresh_files(tmp_path, "ohlc", RECENT)] == recent_before  # too young
    assert everything(tmp_path).equals(before)  # the same rows, in the same order
    folder = archive.partition_dir(tmp_path, "ohlc", EXCHANGE, SYMBOL, OLD)
    stored = sum(archive.pq.read_metadata(folder / name).num_rows for name in old_files)
    assert stored == 3 * 40 + 2 * 10 and report.duplicates == 5  # the 5 candles stored twice: once
    assert before.num_rows == 7 * 40 + 2 * 10 + 3 * 30  # readers see each bucket once
    everything_stored = archive.load(tmp_path, "ohlc", EXCHANGE, SYMBOL)
    assert everything_stored.num_rows == stored + 4 * 40 + 3 * 30  # all stored rows, if asked

    # A restart of lineage e1 from seq 3 deletes exactly what it will write again; the merge is untouched.
    removed = ParquetSink(tmp_path).remove_uncommitted(0, "e1", 3)
    assert removed == 4
    # Read order is file-name order (e0 before e1), and the last copy of a bucket wins.
    newest_copy = {}
    for table in (
        [candles(OLD, 5000 + seq * 100, 10, price=50 + seq) for seq in (1, 2)]
        + [candles(OLD, 100, 5, price=77)]
        + [candles(OLD, seq * 100, 40, price=seq) for seq in (1, 2, 3)]
        + [candles(RECENT, seq * 100, 30) for seq in (1, 2, 3)]
    ):
        newest_copy.update({row["bucket"]: row for row in table.to_pylist()})
    got = everything(tmp_path).to_pylist()
    assert got == [newest_copy[b] for b in sorted(newest_copy)]


def test_a_compaction_cut_short_reads_the_same_and_is_finished_by_the_next_run(tmp_path: Path):
    for seq in (1, 2, 3):
        write_legacy(tmp_path, 0, "e1", seq, candles(OLD, seq * 100, 20, price=seq))
    before = everything(tmp_path)
    folder = archive.partition_dir(tmp_path, "ohlc", EXCHANGE, SYMBOL, OLD)
    sources = files(tmp_path, OLD)
    # The state a crash leaves between writing the merged file and deleting its sources.
    merged = pa.concat_tables(
        [archive.pq.read_table(folder / name, schema=archive.file_schema("ohlc")) for name in sources]
    ).sort_by("bucket")
    merged = merged.replace_schema_metadata({archive.COMPACTED_FROM: json.dumps(sources).encode()})
    archive.write_file(folder / "compact-0123456789abcdef.parquet", merged)
    assert len(files(tmp_path, OLD)) == 4
    assert everything(tmp_path).equals(before)  # readers skip the replaced files: no row counted twice

    report = compact(tmp_path, min_age_days=2, today=TODAY)
    assert files(tmp_path, OLD) == ["compact-0123456789abcdef.parquet"]
    assert report.files_in == 0  # nothing left to merge: the run only tidied up
    assert everything(tmp_path).equals(before)

    # New files for that day (a replay of old trades, committed) merge with the compact file later.
    write_legacy(tmp_path, 2, "f1", 1, candles(OLD, 9000, 10, price=9))
    report = compact(tmp_path, min_age_days=2, today=TODAY)
    assert report.files_in == 2 and len(files(tmp_path, OLD)) == 1
    assert everything(tmp_path).num_rows == before.num_rows + 10


async def test_rollups_and_limits_read_the_same_after_compaction(tmp_path: Path):
    for seq in range(1, 6):
        await write(tmp_path, 0, "e1", seq, candles(OLD, seq * 700, 300, price=seq))
    queries = [
        {"interval": i, "limit": limit} for i in ("1s", "1m", "15m", "1h", "1d") for limit in (1, 50, 10_000)
    ]
    before = [archive.load_candles(tmp_path, EXCHANGE, SYMBOL, **q) for q in queries]
    compact(tmp_path, min_age_days=1, today=TODAY)
    assert len(files(tmp_path, OLD)) == 1 and not archive.fresh_files(tmp_path, "ohlc", OLD)
    for q, table in zip(queries, before, strict=True):
        assert archive.load_candles(tmp_path, EXCHANGE, SYMBOL, **q).equals(table), q


def test_unreadable_checkpoint_stops_compaction(tmp_path: Path):
    folder = tmp_path / "_checkpoints" / "g" / "t" / "p0000" / "e1"
    folder.mkdir(parents=True)
    (folder / "00000000000000000001.ckpt").write_text("not a zip")
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        compact(tmp_path, today=TODAY)


async def test_cli_compact_command(tmp_path: Path):
    for seq in (1, 2):
        await write(tmp_path, 0, "e1", seq, candles(OLD, seq * 100, 10))
    write_legacy(tmp_path, 0, "e0", 1, candles(OLD, 5000, 10))
    result = CliRunner().invoke(app, ["compact", "--min-age-days", "2"], env={"OUTPUT_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert len(files(tmp_path, OLD)) == 1


def test_cli_compact_on_a_missing_archive_says_so_in_one_line(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "cryptostream", "compact"],
        env={**os.environ, "OUTPUT_DIR": str(tmp_path / "typo")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"cryptostream: OUTPUT_DIR {tmp_path / 'typo'} is not a folder: there is no archive to compact"
    )
    assert not (tmp_path / "typo").exists()
