"""Merging the archive's files: fresh files into one file per market and hour, hours into days.

The processor writes, per checkpoint, one fresh file per partition, kind and hour holding every market of
the partition (``_fresh/<kind>/date=<day>/part-p<partition>-<epoch>-<seq>-h<HH>.parquet``, see
:mod:`cryptostream.archive`). :func:`merge_fresh` (run by the processor as event time leaves an hour
behind, and by ``cryptostream compact``) splits a closed hour's fresh files into one
``compact-h<HH>-<hash>.parquet`` per market in its ``date=`` folder, and once a day is closed merges each
market's files of that day into one ``compact-<hash>.parquet`` (:func:`compact_folder`). :func:`compact`
does the same for older folders (the per-market files of earlier versions).

What may be merged, and why it is safe:

* Only closed hours and days (``compact``: days at least ``min_age_days`` old, default 2). Merging earlier
  would still be exact, only wasteful: rows written into a merged hour later are merged again.
* Only files no restart can still delete. On assignment the processor deletes the files of its lineage
  (partition, epoch) with a sequence number above the committed checkpoint's, because it is about to
  write them again. Any checkpoint file still on disk could be the committed one, so a ``part-`` file is
  merged only when its seq is <= the seq of every checkpoint of its lineage under
  ``OUTPUT_DIR/_checkpoints`` (a lineage with no checkpoint left can no longer be resumed). This also
  protects a replay of old trades (a historical dump), whose fresh files land in old date folders.
* The merge is crash-safe: a merged file is written atomically and lists in its footer every file whose
  rows of its market it holds (and, transitively, what those replaced); readers of the market skip listed
  files while they still exist, then the sources are deleted. An hour's merge is journaled
  (``_fresh/.merging.json``: its sources, then the folders it wrote) and a crash at any point is finished by
  the next run before anything else; a market's rows of a source its folder already lists are never added
  again, so finishing a merge twice is harmless. One merge runs at a time (an flock on ``_fresh/.lock``).

Rows are kept exactly, one per key (:data:`~cryptostream.archive.KEYS`), ordered by key: a candle stored
twice (the same trades processed again: a new consumer group, an offset reset) keeps the row every reader
already returned, the last written, as the database's upsert does. So a closed hour or day read with any
Parquet tool holds each candle once; the rows a merge drops are counted (``duplicates``) and logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from cryptostream.archive import (
    COMPACT_RE,
    COMPACTED_FROM,
    FILE_RE,
    FRESH,
    HOUR_MS,
    KEYS,
    KINDS,
    compacted_from,
    day_folders,
    file_schema,
    fresh_files,
    fsync_path,
    list_markets,
    listing,
    one_per_key,
    partition_dir,
    write_file,
)

__all__ = [
    "MERGE_GRACE_MS",
    "CompactionReport",
    "MergeReport",
    "MergeStopped",
    "committed_floor",
    "compact",
    "compact_folder",
    "merge_fresh",
]

MERGE_GRACE_MS = 60_000  # event time past an hour's end before the processor merges it
DAY_ROW_GROUP = 21_600  # rows: 6 h of 1 s candles per group (a range read skips the rest; more is slower)
JOURNAL = ".merging.json"
DAY_DONE = ".day-merged"

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CompactionReport:
    """What a compaction run did."""

    folders: int = 0  # day folders merged
    files_in: int = 0  # files replaced
    files_out: int = 0  # compact files written
    rows: int = 0  # rows moved (unchanged)
    duplicates: int = 0  # rows of a key stored twice, left out (the last written kept)
    kept_uncommitted: int = 0  # files left alone: a restart of their lineage could still delete them
    skipped: list[str] = field(default_factory=list)  # folders left alone, with the reason

    def __str__(self) -> str:
        return (
            f"{self.files_in} file(s) in {self.folders} day folder(s) merged into {self.files_out} "
            f"({self.rows} rows); {self.kept_uncommitted} file(s) kept because they are not yet safe to merge"
            + (f"; {self.duplicates} row(s) stored twice kept once" if self.duplicates else "")
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
        if COMPACT_RE.fullmatch(path.name) and path.name in names:
            try:
                listed = compacted_from(path)
            except FileNotFoundError:  # replaced by a newer compact file and deleted just now
                names.discard(path.name)
                continue
            for name in listed:
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
    read = pa.concat_tables([pq.read_table(p, schema=schema) for p in chosen])
    # in name order (chosen is sorted), as readers read them: the row kept is the one they returned
    table = one_per_key(read, KEYS[kind])
    report.duplicates += read.num_rows - table.num_rows
    names = [p.name for p in chosen]
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    target = folder / f"compact-{digest}.parquet"
    table = table.replace_schema_metadata({COMPACTED_FROM: json.dumps(_replaces(chosen)).encode()})
    write_file(target, table, row_group_size=DAY_ROW_GROUP, use_dictionary=False)
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
    if read.num_rows > table.num_rows:
        log.info(
            "%s: %d candle row(s) were stored twice (the same trades processed again); kept the last written",
            folder,
            read.num_rows - table.num_rows,
        )
    return report


def _replaces(sources: list[Path]) -> list[str]:
    """What a file merged from ``sources`` replaces: them, and whatever the compact ones among them did
    (a fresh file an hour file replaced must stay hidden once the hour file is merged into its day)."""
    names = [p.name for p in sources]
    seen = set(names)
    for path in sources:
        if COMPACT_RE.fullmatch(path.name):
            for name in compacted_from(path):
                if name not in seen:
                    seen.add(name)
                    names.append(name)
    return names


# ------------------------------------------------------------------------------------------ fresh files
@dataclass(slots=True)
class MergeReport:
    """What one :func:`merge_fresh` did."""

    hours: int = 0  # (kind, hour)s merged
    files_in: int = 0  # fresh files merged
    files_out: int = 0  # market files written
    rows: int = 0
    duplicates: int = 0  # rows of a key stored twice, left out (the last written kept)
    days: int = 0  # (kind, day)s merged into one file per market
    kept_uncommitted: int = 0  # fresh files of closed hours a restart of their lineage could still delete
    recovered: bool = False  # an interrupted merge was finished first
    busy: bool = False  # another merge held the lock: nothing was done

    def __str__(self) -> str:
        return (
            f"{self.files_in} fresh file(s) of {self.hours} hour(s) merged into {self.files_out} market "
            f"file(s) ({self.rows} rows), {self.days} day(s) merged"
            + (f", {self.kept_uncommitted} file(s) not yet committed" if self.kept_uncommitted else "")
            + (", an interrupted merge finished first" if self.recovered else "")
            + (f", {self.duplicates} row(s) stored twice kept once" if self.duplicates else "")
        )


@contextlib.contextmanager
def _exclusive(base: Path) -> Iterator[bool]:
    """Hold the archive's merge lock if no other process or thread does (yields whether it got it)."""
    fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def _write_journal(base: Path, body: dict[str, object]) -> None:
    tmp = base / (JOURNAL + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(body))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, base / JOURNAL)
    fsync_path(base)


def merge_fresh(
    root: Path,
    before_ms: int,
    floor: dict[tuple[int, str], int] | None = None,
    pace: float = 0.0,
    stop: threading.Event | None = None,
) -> MergeReport:
    """Merge the committed fresh files of every hour that ends at or before ``before_ms`` (epoch ms) into
    one file per market and hour, and each market's files of every day that ends by then into one file.

    ``pace``: after each market, sleep that many times as long as its merge took (1.0: the merge uses at
    most about half a core, so the processor beside it keeps its share). ``stop``: once set, the merge
    ends at its next market with :class:`MergeStopped`, as a crash there would (the next merge finishes it).

    Returns at once (an empty report) when another merge holds the lock; finishes an interrupted merge
    before anything else."""
    report = MergeReport()
    base = root / FRESH
    if not base.is_dir():
        return report
    with _exclusive(base) as mine:
        if not mine:
            report.busy = True
            return report
        pacer = _Pacer(pace, stop)
        _recover(root, base, report, pacer)
        floor = committed_floor(root) if floor is None else floor
        for kind in KINDS:
            for day_dir in sorted((base / kind).glob("date=*")):
                try:
                    day = date.fromisoformat(day_dir.name.removeprefix("date="))
                except ValueError:
                    continue
                start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
                hours: dict[int, list[Path]] = {}
                for path in fresh_files(root, kind, day):
                    match = FILE_RE.fullmatch(path.name)
                    if match is not None and match["hour"] is not None:
                        hours.setdefault(int(match["hour"]), []).append(path)
                merged_hour = False
                for hour, group in sorted(hours.items()):
                    if start + (hour + 1) * HOUR_MS > before_ms:
                        continue
                    chosen = [p for p in group if _mergeable(p, floor)]
                    report.kept_uncommitted += len(group) - len(chosen)
                    if chosen:
                        _merge_hour(root, base, kind, day, hour, chosen, report, pacer)
                        merged_hour = True
                done = day_dir / DAY_DONE
                if start + 24 * HOUR_MS <= before_ms and not fresh_files(root, kind, day):
                    if merged_hour or not done.exists():
                        _merge_day(root, kind, day, floor, report, pacer)
                        done.touch()
        return report


def _recover(root: Path, base: Path, report: MergeReport, pacer: _Pacer) -> None:
    """Finish a merge a crash interrupted (see the module docstring)."""
    try:
        body = orjson.loads((base / JOURNAL).read_bytes())
    except FileNotFoundError:
        return
    report.recovered = True
    kind, day, hour = str(body["kind"]), date.fromisoformat(body["day"]), int(body["hour"])
    sources = [base / kind / f"date={day}" / name for name in body["sources"]]
    if "folders" not in body:  # crashed while writing market files: every source is still there
        _merge_hour(root, base, kind, day, hour, [p for p in sources if p.exists()], report, pacer)
        return
    _finish_deletes(base, [root / f for f in body["folders"]], sources)


def _finish_deletes(base: Path, folders: list[Path], sources: list[Path]) -> None:
    for folder in folders:
        _finish_interrupted(folder)
        fsync_path(folder)
    for path in sources:
        path.unlink(missing_ok=True)
    if sources:
        fsync_path(sources[0].parent)
    (base / JOURNAL).unlink(missing_ok=True)
    fsync_path(base)


def _merge_hour(
    root: Path,
    base: Path,
    kind: str,
    day: date,
    hour: int,
    sources: list[Path],
    report: MergeReport,
    pacer: _Pacer,
) -> None:
    """Split one hour's fresh files into one ``compact-h<HH>-`` file per market (with the market's earlier
    files of that hour), then delete what they replace."""
    names = [p.name for p in sources]
    _write_journal(base, {"kind": kind, "day": day.isoformat(), "hour": hour, "sources": names})
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    target_name = f"compact-h{hour:02d}-{digest}.parquet"
    schema = KINDS[kind]
    tables = []
    for i, path in enumerate(sources):
        table = pq.read_table(path, schema=schema)
        tables.append(table.append_column("_source", pa.array(np.full(table.num_rows, i, np.int32))))
    table = pa.concat_tables(tables)
    # A stable sort: a market's rows with equal buckets keep the order readers met them in (file names).
    table = table.sort_by([("exchange", "ascending"), ("symbol", "ascending"), ("bucket", "ascending")])
    exchange = table["exchange"].to_numpy(zero_copy_only=False)
    symbol = table["symbol"].to_numpy(zero_copy_only=False)
    n = table.num_rows
    cuts = np.flatnonzero((exchange[1:] != exchange[:-1]) | (symbol[1:] != symbol[:-1])) + 1
    columns = file_schema(kind).names
    folders: list[Path] = []
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), n], strict=True):
        pacer.rest()
        if a == b:
            continue
        folder = partition_dir(root, kind, str(exchange[a]), str(symbol[a]), day)
        folder.mkdir(parents=True, exist_ok=True)
        folders.append(folder)
        target = folder / target_name
        if target.exists():
            continue  # written before a crash: it holds this market's rows of every source
        live, replaced = listing(folder)
        rows = table.slice(a, b - a)
        done = [i for i, name in enumerate(names) if name in replaced]
        if done:  # a source this market's folder already holds (a merge finished twice): never again
            keep = ~np.isin(rows["_source"].to_numpy(), np.asarray(done, np.int32))
            rows = rows.filter(pa.array(keep))
        if rows.num_rows == 0:
            continue
        olds = [p for p in live if (m := COMPACT_RE.fullmatch(p.name)) and m["hour"] == f"{hour:02d}"]
        parts = [pq.read_table(p, schema=file_schema(kind)) for p in olds]
        # the market's earlier file of the hour, then the sources in name order: as readers read them
        both = pa.concat_tables([*parts, rows.select(columns)])
        merged = one_per_key(both, KEYS[kind])
        if both.num_rows > merged.num_rows:
            report.duplicates += both.num_rows - merged.num_rows
            log.info(
                "%s: %d candle row(s) were stored twice (the same trades processed again); kept the last "
                "written",
                folder,
                both.num_rows - merged.num_rows,
            )
        replaces = [*_replaces(olds), *names]
        meta = {COMPACTED_FROM: json.dumps(replaces).encode()}
        write_file(target, merged.replace_schema_metadata(meta), DAY_ROW_GROUP, use_dictionary=False)
        report.files_out += 1
        report.rows += rows.num_rows
    _write_journal(
        base,
        {
            "kind": kind,
            "day": day.isoformat(),
            "hour": hour,
            "sources": names,
            "folders": [str(f.relative_to(root)) for f in folders],
        },
    )
    _finish_deletes(base, folders, sources)
    report.hours += 1
    report.files_in += len(sources)
    log.info(
        "merged %s %s hour %02d: %d fresh file(s) into %d market folder(s)",
        kind,
        day,
        hour,
        len(sources),
        len(folders),
    )


def _merge_day(
    root: Path, kind: str, day: date, floor: dict[tuple[int, str], int], report: MergeReport, pacer: _Pacer
) -> None:
    """One file per market for a closed day: each market's hour files (and any others) merged."""
    for exchange, symbol in list_markets(root, kind):
        folder = partition_dir(root, kind, exchange, symbol, day)
        if folder.is_dir():
            pacer.rest()
            report.duplicates += compact_folder(folder, kind, floor).duplicates
    report.days += 1


class MergeStopped(Exception):
    """A merge asked to stop (its process is shutting down) ended between two markets."""


class _Pacer:
    """Between markets: sleeps ``pace`` times the work done since the last rest (a duty cycle for a
    background merge), and ends the merge once ``stop`` is set."""

    def __init__(self, pace: float, stop: threading.Event | None) -> None:
        self.pace = pace
        self.stop = stop or threading.Event()
        self.since = time.perf_counter()

    def rest(self) -> None:
        if self.pace > 0:
            self.stop.wait((time.perf_counter() - self.since) * self.pace)
        if self.stop.is_set():
            raise MergeStopped("the merge was asked to stop; the next merge finishes it")
        self.since = time.perf_counter()


def compact(
    root: Path, min_age_days: int = 2, today: date | None = None, fresh_before_ms: int | None = None
) -> CompactionReport:
    """Merge the archive at ``root``: fresh files of the hours ending by ``fresh_before_ms`` (default: the
    end of the last day old enough) into one file per market and hour, then every kind/venue/symbol/day
    folder older than ``min_age_days`` into one file."""
    if min_age_days < 1:
        raise ValueError(
            f"min_age_days must be >= 1 (today's files are still being written), got {min_age_days}"
        )
    today = today or datetime.now(UTC).date()
    last_day = today - timedelta(days=min_age_days)
    floor = committed_floor(root)
    report = CompactionReport()
    end_of_last_day = (
        int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp() * 1000)
        - (min_age_days - 1) * 24 * HOUR_MS
    )
    merged = merge_fresh(root, max(end_of_last_day, fresh_before_ms or 0), floor)
    report.files_in += merged.files_in
    report.files_out += merged.files_out
    report.rows += merged.rows
    report.duplicates += merged.duplicates
    report.kept_uncommitted += merged.kept_uncommitted
    for kind in KINDS:
        for exchange, symbol in list_markets(root, kind):
            for _day, folders in day_folders(root, kind, exchange, symbol, None, last_day):
                for folder in folders:
                    compact_folder(folder, kind, floor, report)
    return report
