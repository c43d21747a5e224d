"""The Parquet archive: layout, loading and roll-ups.

Layout under ``OUTPUT_DIR`` (hive partitions, zstd)::

    ohlc/exchange=binance/symbol=BTCUSDT/date=2025-11-10/compact-h13-5d41402abc4b2a76.parquet   an hour
    ohlc/exchange=binance/symbol=BTCUSDT/date=2025-11-08/compact-9e107d9d372bb682.parquet       a day
    volatility/exchange=.../symbol=.../date=.../...
    predictions/exchange=.../symbol=.../date=.../...
    _fresh/ohlc/date=2025-11-10/part-p0003-19a6b1c2d3e4f5a-00000042-h14.parquet   the open hour

The processor writes one ``_fresh`` file per partition, kind and hour at each checkpoint, holding every
market of that partition (with ``exchange`` and ``symbol`` columns, sorted by them and ``bucket``, in small
row groups), so a checkpoint writes a handful of files whatever the number of markets. Once an hour is
closed its fresh files are split into one ``compact-hHH-`` file per market in the market's ``date=`` folder
(:func:`cryptostream.compaction.merge_fresh`), and once a day is closed its hours become one
``compact-`` file, so a closed day is one file per market and kind. The market folders are created when a
market's first fresh rows are written, so listing markets and days needs no fresh file.

``exchange``, ``symbol`` and ``date`` (the UTC day of ``bucket``) live in the folder names only. Folders of
the older layout without the venue (``ohlc/symbol=BTCUSDT/date=...``, what cryptostream wrote before venues
and what the original course project wrote) are read as the ``unknown`` venue; files there that
cryptostream did not write are read as far as they can be (:mod:`cryptostream.foreign`), never a 500.

A ``part-`` file name (fresh files, and the per-market files of earlier versions) says which partition wrote
it, the lineage (epoch) of that partition, the checkpoint sequence number and the hour, so a replay after a
crash writes the same names again and never a second copy (see :mod:`processor.checkpoint`). A ``compact-``
file is many files merged into one by :mod:`cryptostream.compaction`; its footer lists every file whose rows
of its market it holds (fresh files included, and the files those replaced), and a reader of a market skips
those while they still exist, so it never counts a row twice, even halfway through a merge or after a crash
in one.

Roll-ups (1m ... 1d) are computed here from 1 s candles day by day: every interval divides a UTC day, so
no bucket spans two date folders.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cryptostream.codec import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS
from cryptostream.errors import QueryError
from cryptostream.foreign import ForeignFileError, canonical, is_ours, normalize, read_raw
from cryptostream.models import CANDLE_SCHEMA, INTERVALS, KIND_SCHEMAS
from cryptostream.venues import UNKNOWN, pick_venue

log = logging.getLogger(__name__)

__all__ = [
    "FRESH",
    "HOUR_MS",
    "fresh_dir",
    "fresh_files",
    "fsync_path",
    "list_markets",
    "market_span",
    "COMPACT_RE",
    "COMPACTED_FROM",
    "FILE_RE",
    "KEYS",
    "KINDS",
    "DataLoader",
    "check_query",
    "compacted_from",
    "day_folders",
    "file_name",
    "file_schema",
    "list_symbols",
    "listing",
    "one_per_key",
    "live_files",
    "load",
    "load_candles",
    "partition_dir",
    "read_day_folder",
    "rollup",
    "utc_day",
    "write_file",
]

KINDS: dict[str, pa.Schema] = KIND_SCHEMAS

FILE_RE = re.compile(
    r"part-p(?P<partition>\d{4})-(?P<epoch>[0-9a-f]+)-(?P<seq>\d{8})(?:-h(?P<hour>\d\d))?\.parquet"
)
COMPACT_RE = re.compile(r"compact-(?:h(?P<hour>\d\d)-)?[0-9a-f]{16}\.parquet")
FRESH = "_fresh"  # OUTPUT_DIR/_fresh/<kind>/date=<day>/: files of every market, until their hour is merged
HOUR_MS = 3_600_000
# Footer key of a compact file: the JSON list of the file names it replaces.
COMPACTED_FROM = b"cryptostream.compacted_from"
# What identifies a row of a symbol (the database's primary key without ``symbol``).
KEYS: dict[str, tuple[str, ...]] = {
    "ohlc": ("bucket",),
    "volatility": ("bucket",),
    "predictions": ("bucket", "horizon_seconds"),
}

_READ_ATTEMPTS = 3
_LISTING_ATTEMPTS = 20  # listings of a folder merges keep changing before a reader gives up


def file_name(partition: int, epoch: str, seq: int, hour: int | None = None) -> str:
    suffix = "" if hour is None else f"-h{hour:02d}"
    return f"part-p{partition:04d}-{epoch}-{seq:08d}{suffix}.parquet"


def fresh_dir(root: Path, kind: str, day: date | str) -> Path:
    return root / FRESH / kind / f"date={day}"


def fresh_files(root: Path, kind: str, day: date | str) -> list[Path]:
    """The fresh files of one kind and day, sorted by name."""
    folder = fresh_dir(root, kind, day)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))


def partition_dir(root: Path, kind: str, exchange: str, symbol: str, day: date | str) -> Path:
    return root / kind / f"exchange={exchange}" / f"symbol={symbol}" / f"date={day}"


def file_schema(kind: str) -> pa.Schema:
    """Schema of the rows inside a file (the venue and symbol live in the folder names)."""
    schema = KINDS[kind]
    return pa.schema([f for f in schema if f.name not in ("exchange", "symbol")])


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the names created in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(
    path: Path, table: pa.Table, row_group_size: int = 1 << 20, use_dictionary: bool | list[str] = True
) -> None:
    """Write ``table`` durably: temp file, fsync, atomic rename, fsync the folder (readers never see half a
    file, and a committed checkpoint never points past a file a power cut could take back). Every column
    chunk carries min/max statistics, so a filtered read skips the row groups it does not need."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    pq.write_table(
        table, tmp, compression="zstd", row_group_size=row_group_size, use_dictionary=use_dictionary
    )
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def _subfolders(folder: Path, prefix: str) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        p.name.removeprefix(prefix) for p in folder.iterdir() if p.is_dir() and p.name.startswith(prefix)
    )


def list_markets(root: Path, kind: str = "ohlc") -> list[tuple[str, str]]:
    """(exchange, symbol) of every market with at least one folder in the archive (older-layout folders
    count as the ``unknown`` venue)."""
    base = root / kind
    out = {
        (exchange, symbol)
        for exchange in _subfolders(base, "exchange=")
        for symbol in _subfolders(base / f"exchange={exchange}", "symbol=")
    }
    out.update((UNKNOWN, symbol) for symbol in _subfolders(base, "symbol="))
    return sorted(out)


def list_symbols(root: Path, kind: str = "ohlc") -> list[str]:
    """Symbols with at least one folder in the archive, on any venue."""
    return sorted({symbol for _, symbol in list_markets(root, kind)})


def utc_day(ms: int) -> date:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).date()


# ------------------------------------------------------------------------------------------ queries
def _utc(value: datetime | date | None, *, end: bool = False) -> datetime | None:
    """A bound as an aware UTC datetime. Naive datetimes are UTC; a ``date`` is its whole UTC day, so
    ``end=date(2025, 11, 10)`` includes that day (the original ``DataLoader``'s date-range filter)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        if end and value >= _LAST_ROW.date():
            return None  # that day ends after every row: bounds nothing (9999-12-31 + 1 day overflowed)
        value = datetime(value.year, value.month, value.day, tzinfo=UTC) + (
            timedelta(days=1) if end else timedelta()
        )
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def check_query(
    interval: str, start: datetime | date | None, end: datetime | date | None, limit: int | None
) -> tuple[int, datetime | None, datetime | None]:
    """Validate a read: (interval in ms, start, end as aware UTC). Raises :class:`QueryError`.

    Every stored row lies between 2000 and 2100 (trades outside are rejected), so a start before 2000 or
    an end after 2100 bounds nothing and is dropped, and an end before 2000 or a start after 2100 is moved
    to that year (the range is empty either way): bounds at the ends of the calendar (the years 1 and
    9999) would otherwise be rounded to a bucket edge, or reached back from, past what a datetime or
    TimescaleDB holds."""
    if interval not in INTERVALS:
        raise QueryError(f"unknown interval {interval!r}: use one of {', '.join(INTERVALS)}")
    lo, hi = _utc(start), _utc(end, end=True)
    if lo is not None and hi is not None and lo > hi:
        raise QueryError(f"start {lo.isoformat()} is after end {hi.isoformat()}")
    if limit is not None and limit < 1:
        raise QueryError(f"limit must be >= 1, got {limit}")
    if hi is not None and hi < _FIRST_ROW:  # ends before any row: an empty range, bounded within the years
        hi = _FIRST_ROW
    if lo is not None and lo > _LAST_ROW:  # starts after any row: the same
        lo = _LAST_ROW
    if lo is not None and lo < _FIRST_ROW:
        lo = None
    if hi is not None and hi > _LAST_ROW:
        hi = None
    return INTERVALS[interval], lo, hi


_FIRST_ROW = datetime.fromtimestamp(MIN_TIMESTAMP_MS / 1000, UTC)
_LAST_ROW = datetime.fromtimestamp(MAX_TIMESTAMP_MS / 1000, UTC)


def _us(value: datetime) -> int:
    """Microseconds since the epoch, exactly (no float rounding)."""
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _ceil_ms(value: datetime, step_ms: int) -> int:
    """The first multiple of ``step_ms`` (epoch ms) at or after ``value``."""
    step_us = step_ms * 1000
    return -(-_us(value) // step_us) * step_ms


# ------------------------------------------------------------------------------------------ files
def day_folders(
    root: Path, kind: str, exchange: str, symbol: str, first: date | None, last: date | None
) -> list[tuple[date, list[Path]]]:
    """``(day, folders)`` of one market with ``first <= day <= last``, oldest first. The ``unknown`` venue
    also owns the folders of the older layout without a venue, so one day can have two folders."""
    bases = [root / kind / f"exchange={exchange}" / f"symbol={symbol}"]
    if exchange == UNKNOWN:
        bases.append(root / kind / f"symbol={symbol}")
    days: dict[date, list[Path]] = {}
    for base in bases:
        if not base.is_dir():
            continue
        for p in base.iterdir():
            if not p.name.startswith("date=") or not p.is_dir():
                continue
            try:
                day = date.fromisoformat(p.name.removeprefix("date="))
            except ValueError:
                continue
            if (first is None or day >= first) and (last is None or day <= last):
                days.setdefault(day, []).append(p)
    return sorted(days.items())


def compacted_from(path: Path) -> list[str]:
    """Names of the files a ``compact-`` file replaces (empty for any other file)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(COMPACTED_FROM)
    return list(json.loads(raw)) if raw else []


def listing(folder: Path) -> tuple[list[Path], set[str]]:
    """(the Parquet files of a folder that hold its rows, the names its compact files replace).

    A merge writes its file (which names what it replaces) before it deletes those: a listing in which a
    file it found is gone by the end missed the merge's file, and is taken again (after
    ``_LISTING_ATTEMPTS`` tries, FileNotFoundError: a reader retries). Dropping the vanished files instead
    left a reader racing a merge with none of the folder's rows (9 of 841 reads in a reviewer's test)."""
    for _ in range(_LISTING_ATTEMPTS):
        files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
        replaced: set[str] = set()
        try:
            for path in files:
                if COMPACT_RE.fullmatch(path.name):
                    replaced.update(compacted_from(path))
        except FileNotFoundError:
            continue
        if all(p.exists() for p in files):
            return [p for p in files if p.name not in replaced], replaced
    raise FileNotFoundError(f"{folder}: files kept vanishing while it was listed (merges running)")


def live_files(folder: Path) -> list[Path]:
    """The Parquet files of a folder that hold its rows: every file minus those a compact file replaces."""
    return listing(folder)[0]


def _read_folder(
    folder: Path, kind: str, row_filter: ds.Expression | None, columns: list[str] | None = None
) -> pa.Table:
    """Rows of one day folder (file schema, or just ``columns``), unsorted. Retries if compaction replaced
    a file between listing and reading."""
    schema = file_schema(kind)
    venue_layout = folder.parent.parent.name.startswith("exchange=")
    for attempt in range(_READ_ATTEMPTS):
        # Fresh files are listed before the folder: a merge writes the market's compact file (which lists
        # them) before it deletes them, so whatever happens between the two listings no row is read twice
        # or missed (a fresh file gone by the time it is read is a retry).
        try:
            fresh = _fresh_of(folder, kind) if venue_layout else []
            files, replaced = listing(folder)
            fresh = [p for p in fresh if p.name not in replaced]
            if not files and not fresh:
                return schema.empty_table() if columns is None else schema.empty_table().select(columns)
            if venue_layout:  # only cryptostream writes here
                parts = [_read_ours(files, schema, row_filter, columns)] if files else []
                if fresh:
                    parts.append(_read_fresh(fresh, folder, kind, row_filter, columns or schema.names))
                return pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            table = _read_mixed(files, kind, schema, row_filter)
            return table if columns is None else table.select(columns)
        except FileNotFoundError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _fresh_of(folder: Path, kind: str) -> list[Path]:
    """The fresh files of a market folder's day (``<root>/<kind>/exchange=/symbol=/date=``)."""
    root = folder.parent.parent.parent.parent
    return fresh_files(root, kind, folder.name.removeprefix("date="))


def _read_fresh(
    files: list[Path], folder: Path, kind: str, row_filter: ds.Expression | None, columns: list[str]
) -> pa.Table:
    """One market's rows of fresh files (which hold every market of a partition)."""
    exchange = folder.parent.parent.name.removeprefix("exchange=")
    symbol = folder.parent.name.removeprefix("symbol=")
    market = (ds.field("exchange") == exchange) & (ds.field("symbol") == symbol)
    dataset = ds.dataset([str(f) for f in files], schema=KINDS[kind], format="parquet")
    return dataset.to_table(filter=market if row_filter is None else market & row_filter, columns=columns)


def read_day_folder(folder: Path, kind: str) -> pa.Table:
    """Every row of one day folder (file schema), as readers see them: foreign files merged per second,
    unreadable ones skipped with a logged reason (``cryptostream import`` copies what this returns)."""
    table = _read_folder(folder, kind, None)
    return one_per_key(table, KEYS[kind])


def _read_ours(
    files: list[Path], schema: pa.Schema, row_filter: ds.Expression | None, columns: list[str] | None = None
) -> pa.Table:
    dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
    return dataset.to_table(filter=row_filter, columns=columns)


_SKIPPED: set[Path] = set()  # foreign files already reported as unreadable (logged once, not per request)


def _read_mixed(
    files: list[Path], kind: str, schema: pa.Schema, row_filter: ds.Expression | None
) -> pa.Table:
    """A folder of the older layout: cryptostream's own files, and files others wrote, read together
    (their rows of one second merged across files) as far as they can be (:mod:`cryptostream.foreign`;
    an unreadable file is skipped with a logged reason)."""
    ours: list[Path] = []
    raws: list[pa.Table] = []
    for path in sorted(files, key=_natural):  # others' files in their writer's order: part-9 before part-10
        try:
            if is_ours(pq.read_schema(path)):
                ours.append(path)
            else:
                raws.append(canonical(read_raw(path), kind, str(path)))
        except FileNotFoundError:
            raise
        except (ForeignFileError, OSError, pa.ArrowInvalid) as exc:
            _skip(path, exc)
    parts: list[pa.Table] = []
    if ours:
        parts.append(_read_ours(ours, schema, row_filter))
    if raws:
        try:
            table = normalize(
                pa.concat_tables(raws, promote_options="permissive"), kind, str(files[0].parent)
            )
        except (ForeignFileError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            _skip(files[0].parent, exc)
        else:
            parts.append(table.filter(row_filter) if row_filter is not None else table)
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _natural(path: Path) -> list[tuple[int, int | str]]:
    """A name's sort key with its digit runs as numbers (``part-9`` before ``part-10``)."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", path.name)]


def _skip(path: Path, exc: Exception) -> None:
    if path not in _SKIPPED:  # logged once, not per request
        _SKIPPED.add(path)
        log.warning("archive: skipping %s: %s", path, exc)


def one_per_key(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Sorted by ``keys``, one row per key: the last one read. The same candle can be in two files when
    the same trades were processed twice (a new consumer group, a second topic); the database's upsert
    keeps one row per key (the last written), and so does every read of the archive, and every merge
    (:mod:`cryptostream.compaction`): files are read in name order, which is the order they were written
    in (a lineage's name begins with its creation time), so the last read is the last written."""
    table = table.sort_by([(k, "ascending") for k in keys])  # stable: ties stay in read order
    n = table.num_rows
    if n < 2:
        return table
    last = np.ones(n, dtype=np.bool_)
    same = np.ones(n - 1, dtype=np.bool_)
    for key in keys:
        values = table[key].to_numpy() if key != "bucket" else table[key].cast(pa.int64()).to_numpy()
        same &= values[1:] == values[:-1]
    last[:-1] = ~same
    return table if last.all() else table.filter(pa.array(last))


def market_span(root: Path, kind: str, exchange: str, symbol: str) -> tuple[int | None, int | None]:
    """The first and last bucket (epoch ms) one market holds in the archive, (None, None) if none: only
    the first and last day folders are looked at, through :func:`_day_span`."""
    days = day_folders(root, kind, exchange, symbol, None, None)
    first: int | None = None
    last: int | None = None
    for _day, folders in days:  # oldest day with a row
        spans = [s for s in (_day_span(f, kind) for f in folders) if s is not None]
        if spans:
            first = min(lo for lo, _ in spans)
            break
    for _day, folders in reversed(days):  # newest day with a row
        spans = [s for s in (_day_span(f, kind) for f in folders) if s is not None]
        if spans:
            last = max(hi for _, hi in spans)
            break
    return first, last


# (path, size, mtime) -> {(exchange, symbol) or None: (first, last) bucket ms}. Archive files are never
# rewritten in place (a merge writes a new name), so what one says is read once: the API's market list,
# asked every few seconds, read every fresh file of the day once per market (130 markets: seconds, growing
# through the hour), and now reads each new file once.
_SPANS: dict[tuple[str, int, int], dict[tuple[str, str] | None, tuple[int, int]]] = {}
_SPANS_KEPT = 200_000  # (file, market) spans held (~40 MB); past it the cache starts over
_spans_held = 0


def _file_spans(path: Path, by_market: bool) -> dict[tuple[str, str] | None, tuple[int, int]]:
    """First and last bucket of a file, per (exchange, symbol) for a fresh file (``by_market``), else of
    the whole file (key None). Cached (see :data:`_SPANS`); FileNotFoundError if it is gone."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    spans = _SPANS.get(key)
    if spans is not None:
        return spans
    columns = ["exchange", "symbol", "bucket"] if by_market else ["bucket"]
    table = pq.ParquetFile(path).read(columns=columns)
    ms = table["bucket"].cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    table = table.set_column(columns.index("bucket"), "bucket", ms)
    spans = {}
    if table.num_rows:
        if by_market:
            grouped = table.group_by(["exchange", "symbol"]).aggregate([("bucket", "min"), ("bucket", "max")])
            for e, y, lo, hi in zip(
                grouped["exchange"].to_pylist(),
                grouped["symbol"].to_pylist(),
                grouped["bucket_min"].to_pylist(),
                grouped["bucket_max"].to_pylist(),
                strict=True,
            ):
                spans[(e, y)] = (lo, hi)
        else:
            values = table["bucket"].to_numpy()
            spans[None] = (int(values.min()), int(values.max()))
    global _spans_held
    if _spans_held + len(spans) + 1 > _SPANS_KEPT:  # files merged away are never asked again: start over
        _SPANS.clear()
        _spans_held = 0
    _SPANS[key] = spans
    _spans_held += len(spans) + 1
    return spans


def _day_span(folder: Path, kind: str) -> tuple[int, int] | None:
    """First and last bucket of one market's day folder, its fresh rows included (None: no row). Files of
    the venue layout are cryptostream's: their spans come from :func:`_file_spans`; other folders are read."""
    if not folder.parent.parent.name.startswith("exchange="):
        values = _read_folder(folder, kind, None, ["bucket"])["bucket"].cast(pa.int64()).to_numpy()
        return (int(values.min()), int(values.max())) if values.size else None
    market = (
        folder.parent.parent.name.removeprefix("exchange="),
        folder.parent.name.removeprefix("symbol="),
    )
    for attempt in range(_READ_ATTEMPTS):  # as _read_folder: a merge may replace files meanwhile
        try:
            fresh = _fresh_of(folder, kind)
            files, replaced = listing(folder)
            spans = [_file_spans(f, False).get(None) for f in files]
            spans += [_file_spans(f, True).get(market) for f in fresh if f.name not in replaced]
            found = [s for s in spans if s is not None]
            return (min(lo for lo, _ in found), max(hi for _, hi in found)) if found else None
        except FileNotFoundError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------ roll-ups
def rollup(table: pa.Table, interval_ms: int) -> pa.Table:
    """Roll 1 s candles of ONE market, sorted by bucket, up to ``interval_ms`` buckets (epoch aligned).

    open/close = first/last, high/low = max/min, sums of volume, trade count and buy/sell volume,
    ``vwap = sum(vwap * volume) / sum(volume)`` (the close when the volume is 0): the same definitions as
    the continuous aggregates and the ``date_bin`` SQL of the database, nulls included (a sum skips them; a
    bucket with no value at all is null), so candles of foreign files without trade counts roll up alike.
    """
    if interval_ms == 1000 or table.num_rows == 0:
        return table
    ms = table["bucket"].cast(pa.int64()).to_numpy()
    bucket = ms - np.mod(ms, interval_ms)
    n = bucket.shape[0]
    starts_mask = np.ones(n, dtype=np.bool_)
    starts_mask[1:] = bucket[1:] != bucket[:-1]
    starts = np.flatnonzero(starts_mask)
    ends = np.append(starts[1:], n) - 1

    def col(name: str) -> Any:
        return table[name].to_numpy()

    def total(values: Any, valid: Any) -> pa.Array:
        sums = np.add.reduceat(np.where(valid, values, 0.0), starts)
        return pa.array(sums, mask=np.add.reduceat(valid.astype(np.int64), starts) == 0)

    def valid(name: str) -> Any:
        return table[name].is_valid().to_numpy(zero_copy_only=False)

    def floats(name: str) -> Any:
        return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=np.float64)

    volume = np.add.reduceat(col("volume"), starts)
    has_vwap = valid("vwap")
    notional = total(np.nan_to_num(floats("vwap")) * col("volume"), has_vwap)
    close = col("close")[ends]
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = np.where(
            volume > 0, notional.to_numpy(zero_copy_only=False) / np.where(volume > 0, volume, 1.0), close
        )
    columns = {
        "exchange": table["exchange"].take(pa.array(starts)),
        "symbol": table["symbol"].take(pa.array(starts)),
        "bucket": pa.array(bucket[starts], pa.timestamp("ms", tz="UTC")),
        "open": col("open")[starts],
        "high": np.maximum.reduceat(col("high"), starts),
        "low": np.minimum.reduceat(col("low"), starts),
        "close": close,
        "volume": volume,
        "trade_count": total(np.nan_to_num(floats("trade_count")), valid("trade_count")).cast(pa.int64()),
        "vwap": pa.array(vwap, mask=notional.is_null().to_numpy(zero_copy_only=False)),
        "buy_volume": total(np.nan_to_num(floats("buy_volume")), valid("buy_volume")),
        "sell_volume": total(np.nan_to_num(floats("sell_volume")), valid("sell_volume")),
    }
    return pa.Table.from_pydict(columns, schema=CANDLE_SCHEMA)


# ------------------------------------------------------------------------------------------ loading
def _scan(
    root: Path,
    kind: str,
    exchange: str,
    symbol: str,
    lo_ms: int | None,
    hi_ms: int | None,
    limit: int | None,
    newest: bool,
    interval_ms: int,
    unique: bool,
) -> pa.Table:
    """Rows with ``lo_ms <= bucket < hi_ms`` rolled up to ``interval_ms``, sorted, with venue and symbol.

    Day by day, so a chart asking for the newest ``limit`` rows reads only the newest days it needs.
    """
    schema = KINDS[kind]
    if lo_ms is not None and hi_ms is not None and lo_ms >= hi_ms:
        return schema.empty_table()
    first = utc_day(lo_ms) if lo_ms is not None else None
    last = utc_day(hi_ms - 1) if hi_ms is not None else None
    days = day_folders(root, kind, exchange, symbol, first, last)
    if newest:
        days.reverse()
    ts = pa.timestamp("ms", tz="UTC")
    parts: list[pa.Table] = []
    rows = 0
    for day, folders in days:
        start = (day - date(1970, 1, 1)).days * 86_400_000
        row_filter = None  # none when the range holds the whole day: the files are read as they are
        if lo_ms is not None and lo_ms > start:
            row_filter = ds.field("bucket") >= pa.scalar(lo_ms, ts)
        if hi_ms is not None and hi_ms < start + 86_400_000:
            upper = ds.field("bucket") < pa.scalar(hi_ms, ts)
            row_filter = upper if row_filter is None else row_filter & upper
        tables = [_read_folder(folder, kind, row_filter) for folder in folders]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        if table.num_rows == 0:
            continue
        if unique or interval_ms != 1000 or len(tables) > 1:
            table = one_per_key(table, KEYS[kind])
        else:
            table = table.sort_by([(k, "ascending") for k in KEYS[kind]])
        zeros = np.zeros(table.num_rows, np.int32)
        table = table.add_column(0, "symbol", pa.array([symbol], pa.string()).take(zeros))
        table = table.add_column(0, "exchange", pa.array([exchange], pa.string()).take(zeros))
        table = table.select(schema.names).cast(schema)
        if kind == "ohlc":
            table = rollup(table, interval_ms)
        parts.append(table)
        rows += table.num_rows
        if limit is not None and rows >= limit:
            break
    if not parts:
        return schema.empty_table()
    if newest:
        parts.reverse()
    table = pa.concat_tables(parts)
    if limit is not None and table.num_rows > limit:
        table = table.slice(table.num_rows - limit) if newest else table.slice(0, limit)
    return table.combine_chunks()


def load(
    root: Path,
    kind: str,
    exchange: str,
    symbol: str,
    start: datetime | date | None = None,
    end: datetime | date | None = None,
    limit: int | None = None,
    newest: bool = True,
    unique: bool = False,
) -> pa.Table:
    """Rows of one market with ``start <= bucket < end``, sorted by key, with ``exchange`` and ``symbol``.

    ``start``/``end`` are datetimes (naive = UTC) or dates (``end`` date inclusive). With ``limit`` and
    ``newest`` the last ``limit`` rows of the range are returned (still ascending), which is what a chart
    asks for; ``newest=False`` returns the first ``limit`` rows. Timestamps are UTC-aware.
    ``unique=True`` returns one row per key, as the database holds them (the read layer asks for that);
    the default returns every stored row, so a check for rows written twice can see them (until a merge
    of their hour keeps one).
    """
    if kind not in KINDS:
        raise QueryError(f"unknown archive kind {kind!r}: use one of {', '.join(KINDS)}")
    _, lo, hi = check_query("1s", start, end, limit)
    lo_ms = _ceil_ms(lo, 1) if lo is not None else None
    hi_ms = _ceil_ms(hi, 1) if hi is not None else None
    return _scan(root, kind, exchange, symbol, lo_ms, hi_ms, limit, newest, 1000, unique)


def load_candles(
    root: Path,
    exchange: str,
    symbol: str,
    start: datetime | date | None = None,
    end: datetime | date | None = None,
    limit: int | None = None,
    interval: str = "1s",
    newest: bool = True,
) -> pa.Table:
    """Candles of one market at ``interval`` with ``start <= bucket < end`` (``CANDLE_SCHEMA``, sorted).

    A roll-up bucket is in the range when its start is; it always aggregates its whole interval.
    """
    interval_ms, lo, hi = check_query(interval, start, end, limit)
    # Bucket b (a multiple of the interval) holds 1 s rows t with b <= t < b + interval, so
    # start <= b < end  <=>  ceil(start) <= t < ceil(end).
    lo_ms = _ceil_ms(lo, interval_ms) if lo is not None else None
    hi_ms = _ceil_ms(hi, interval_ms) if hi is not None else None
    return _scan(root, "ohlc", exchange, symbol, lo_ms, hi_ms, limit, newest, interval_ms, unique=True)


class DataLoader:
    """The original ``DataLoader`` surface over the archive: symbols, and OHLC or volatility rows of a
    symbol filtered by date range and limit, sorted and timezone-aware (Arrow tables; ``.to_pandas()``
    gives the DataFrames the original returned). A symbol alone means the venue
    :func:`cryptostream.venues.pick_venue` picks among those that have it (``exchanges``: the preferred
    order, e.g. the ``EXCHANGES`` setting); ``exchange=`` names one."""

    def __init__(self, root: Path | str, exchanges: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.exchanges = list(exchanges)

    def get_available_symbols(self) -> list[str]:
        return list_symbols(self.root)

    def _venue(self, symbol: str, exchange: str | None) -> str:
        if exchange is not None:
            return exchange
        venues = [e for e, s in list_markets(self.root) if s == symbol]
        return pick_venue(venues, self.exchanges) or UNKNOWN

    def load_ohlc(
        self,
        symbol: str,
        start: datetime | date | None = None,
        end: datetime | date | None = None,
        limit: int | None = None,
        interval: str = "1s",
        exchange: str | None = None,
    ) -> pa.Table:
        return load_candles(self.root, self._venue(symbol, exchange), symbol, start, end, limit, interval)

    def load_volatility(
        self,
        symbol: str,
        start: datetime | date | None = None,
        end: datetime | date | None = None,
        limit: int | None = None,
        exchange: str | None = None,
    ) -> pa.Table:
        venue = self._venue(symbol, exchange)
        return load(self.root, "volatility", venue, symbol, start, end, limit, unique=True)
