"""Compaction: merge the many small Parquet files of a past day into one, without changing any row.

The processor writes one file per checkpoint per symbol/day (``part-p<partition>-<epoch>-<seq>.parquet``),
so a day of live data is thousands of small files, and reading one large file is about 10x faster.

What may be merged, and why it is safe:

* Only days at least ``min_age_days`` old (default 2), which live data no longer touches.
* Only files no restart can still delete. On assignment the processor deletes the files of its lineage
  (partition, epoch) with a sequence number above the committed checkpoint's, because it is about to
  write them again. Any checkpoint file still on disk could be the committed one, so a ``part-`` file is
  merged only when its seq is <= the seq of every checkpoint of its lineage under
  ``OUTPUT_DIR/_checkpoints`` (a lineage with no checkpoint left can no longer be resumed). This also
  protects a replay of old trades (a historical dump), whose fresh files land in old date folders.
* The merge is crash-safe: the merged ``compact-<hash>.parquet`` is written atomically and lists in its
  footer the files it replaces; readers skip listed files while they still exist, then the sources are
  deleted. A crash between the two leaves a folder that reads the same and is tidied on the next run.

Rows are kept exactly: the same values, the same count (duplicates included), ordered by bucket with
ties in their previous order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from cryptostream.archive import (
    COMPACT_RE,
    COMPACTED_FROM,
    FILE_RE,
    KINDS,
    compacted_from,
    day_folders,
    file_schema,
    fsync_path,
    list_markets,
    write_file,
)

__all__ = ["CompactionReport", "committed_floor", "compact", "compact_folder"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CompactionReport:
    """What a compaction run did."""

    folders: int = 0  # day folders merged
    files_in: int = 0  # files replaced
    files_out: int = 0  # compact files written
    rows: int = 0  # rows moved (unchanged)
    kept_uncommitted: int = 0  # files left alone: a restart of their lineage could still delete them
    skipped: list[str] = field(default_factory=list)  # folders left alone, with the reason

    def __str__(self) -> str:
        return (
            f"{self.files_in} file(s) in {self.folders} day folder(s) merged into {self.files_out} "
            f"({self.rows} rows); {self.kept_uncommitted} file(s) kept because they are not yet safe to merge"
        )


def committed_floor(root: Path) -> dict[tuple[int, str], int]:
    """Per lineage (partition, epoch), the lowest checkpoint seq on disk: its files up to that seq can
    never be deleted as uncommitted. (A checkpoint is a zip whose ``header.json`` names its partition,
    epoch and seq, see :mod:`processor.checkpoint`.)"""
    floor: dict[tuple[int, str], int] = {}
    base = root / "_checkpoints"
    if not base.is_dir():
        return floor
    for path in base.rglob("*.ckpt"):
        if path.name.startswith("."):
            continue
        try:
            with zipfile.ZipFile(path) as zf:
                body = orjson.loads(zf.read("header.json"))
            key = (int(body["partition"]), str(body["epoch"]))
            seq = int(body["seq"])
        except FileNotFoundError:
            continue  # pruned by the processor meanwhile: a newer checkpoint replaced it
        except (orjson.JSONDecodeError, zipfile.BadZipFile, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable checkpoint {path}: {exc}; compaction stops to stay safe") from exc
        floor[key] = min(seq, floor.get(key, seq))
    return floor


def _mergeable(path: Path, floor: dict[tuple[int, str], int]) -> bool:
    if COMPACT_RE.fullmatch(path.name):
        return True
    match = FILE_RE.fullmatch(path.name)
    if match is None:
        return False  # a file we did not write: leave it as it is
    lowest = floor.get((int(match["partition"]), match["epoch"]))
    return lowest is None or int(match["seq"]) <= lowest


def _finish_interrupted(folder: Path) -> list[Path]:
    """Delete sources a previous run merged but did not get to delete; return the folder's files."""
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    names = {p.name for p in files}
    for path in files:
        if COMPACT_RE.fullmatch(path.name):
            for name in compacted_from(path):
                if name in names:
                    (folder / name).unlink(missing_ok=True)
                    names.discard(name)
    return [p for p in files if p.name in names]


def compact_folder(
    folder: Path, kind: str, floor: dict[tuple[int, str], int], report: CompactionReport | None = None
) -> CompactionReport:
    """Merge the mergeable files of one day folder into one ``compact-`` file."""
    report = report if report is not None else CompactionReport()
    files = _finish_interrupted(folder)
    chosen = [p for p in files if _mergeable(p, floor)]
    report.kept_uncommitted += sum(1 for p in files if FILE_RE.fullmatch(p.name) and p not in chosen)
    if len(chosen) < 2:
        return report
    schema = file_schema(kind)
    table = pa.concat_tables([pq.read_table(p, schema=schema) for p in chosen])
    # A stable sort: rows with equal buckets (e.g. the same candle from two topics) keep their order.
    table = table.sort_by("bucket")
    names = [p.name for p in chosen]
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    target = folder / f"compact-{digest}.parquet"
    table = table.replace_schema_metadata({COMPACTED_FROM: json.dumps(names).encode()})
    write_file(target, table)
    fsync_path(folder)
    for path in chosen:
        if path != target:
            path.unlink(missing_ok=True)
    fsync_path(folder)
    report.folders += 1
    report.files_in += len(chosen)
    report.files_out += 1
    report.rows += table.num_rows
    log.info("compacted %s: %d files -> %s (%d rows)", folder, len(chosen), target.name, table.num_rows)
    return report


def compact(root: Path, min_age_days: int = 2, today: date | None = None) -> CompactionReport:
    """Compact every kind/venue/symbol/day folder of the archive at ``root`` older than ``min_age_days``."""
    if min_age_days < 1:
        raise ValueError(
            f"min_age_days must be >= 1 (today's files are still being written), got {min_age_days}"
        )
    today = today or datetime.now(UTC).date()
    last_day = today - timedelta(days=min_age_days)
    floor = committed_floor(root)
    report = CompactionReport()
    for kind in KINDS:
        for exchange, symbol in list_markets(root, kind):
            for _day, folders in day_folders(root, kind, exchange, symbol, None, last_day):
                for folder in folders:
                    compact_folder(folder, kind, floor, report)
    return report
