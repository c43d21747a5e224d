"""Parquet files cryptostream did not write, read as far as they can be: the original project's archive.

The course project this grew from wrote ``OUTPUT_DIR/ohlc/symbol=BTCUSD/date=2025-11-10/*.parquet`` with the
columns ``timestamp, open, high, low, close, volume, symbol`` and ``volatility/...`` with ``timestamp,
volatility, symbol``. It emitted partial candles as trades came in, so one second often has several rows,
each over different trades of that second; its volatility has NaN where it was undefined.

:func:`normalize` turns such a table into the archive's file schema (``bucket`` + cryptostream's columns):

* ohlc rows of one second become one candle: first open, last close (in file order), max high, min low,
  summed volume; the fields the file lacks (trade count, VWAP, buy and sell volume) are null, never made up;
* volatility keeps the last row of each second, NaN included (readers treat it as "no value");
* a file that cannot be read this way raises :class:`ForeignFileError` with the reason, so a reader can
  skip it with a logged reason instead of failing the whole request.

``cryptostream import`` uses the same function to copy such an archive into the database and the current
layout, so what the API shows for a foreign file and what import writes are the same rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cryptostream.errors import CryptostreamError
from cryptostream.models import KIND_SCHEMAS

__all__ = ["ForeignFileError", "canonical", "is_ours", "normalize", "read_raw"]

_TIME_NAMES = ("bucket", "timestamp", "time", "datetime", "date")


class ForeignFileError(CryptostreamError):
    """A Parquet file in the archive that cannot be read as candles or volatility (the message says why)."""


def is_ours(schema: pa.Schema) -> bool:
    """Whether a file has cryptostream's own layout (a ``bucket`` column, venue and symbol in folders)."""
    return "bucket" in schema.names and "timestamp" not in schema.names


def read_raw(path: Path) -> pa.Table:
    """A foreign file's rows as written. The rows of one second can be spread over several files (one
    per flush), so a day folder's files are read first and :func:`normalize`-d together."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ForeignFileError(f"{path}: not a readable Parquet file ({exc})") from None
    if not any(name in table.column_names for name in _TIME_NAMES):
        raise ForeignFileError(f"{path}: no time column (expected one of {', '.join(_TIME_NAMES)})")
    return table


def _times(table: pa.Table, where: str) -> npt.NDArray[np.int64]:
    """Each row's time in epoch ms (sub-second part kept)."""
    name = next((n for n in _TIME_NAMES if n in table.column_names), None)
    if name is None:
        raise ForeignFileError(f"{where}: no time column (expected one of {', '.join(_TIME_NAMES)})")
    column = table[name].combine_chunks()
    if pa.types.is_timestamp(column.type):
        # us or ns (pandas' default): the millisecond each falls in (a checked cast refused sub-ms parts)
        ms = pc.cast(pc.cast(column, pa.timestamp("ms", tz="UTC"), safe=False), pa.int64())
    elif pa.types.is_integer(column.type):  # epoch numbers: ms, or s/us/ns told apart by magnitude
        values = column.to_numpy(zero_copy_only=False).astype(np.int64)
        big = int(np.abs(values).max(initial=0))
        if big < 10**11:
            values = values * 1000  # seconds
        elif big >= 10**17:
            values = values // 1_000_000  # nanoseconds
        elif big >= 10**14:
            values = values // 1000  # microseconds
        ms = pa.array(values, pa.int64())
    else:
        raise ForeignFileError(f"{where}: time column {name!r} is {column.type}, not a timestamp")
    if ms.null_count:
        raise ForeignFileError(f"{where}: {ms.null_count} rows without a time")
    return np.asarray(ms.to_numpy(zero_copy_only=False), dtype=np.int64)


def _floats(table: pa.Table, name: str, where: str) -> np.ndarray:
    if name not in table.column_names:
        raise ForeignFileError(f"{where}: no {name!r} column")
    column = table[name]
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise ForeignFileError(f"{where}: column {name!r} is {column.type}, not a number")
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


_VALUES = {"ohlc": ("open", "high", "low", "close", "volume"), "volatility": ("volatility",)}


def canonical(table: pa.Table, kind: str, where: str = "file") -> pa.Table:
    """One foreign file's rows as ``timestamp`` (ms) and float64 values: files of one folder whose types
    differ (a double column in one, integers in another, a timestamp or epoch numbers) then concatenate,
    and a file that cannot be read as ``kind`` is found alone (skipped, not its whole folder)."""
    if kind not in _VALUES:
        raise ForeignFileError(f"{where}: only candles and volatility can be read from foreign files")
    columns = {"timestamp": pa.array(_times(table, where), pa.timestamp("ms", tz="UTC"))}
    for name in _VALUES[kind]:
        columns[name] = pa.array(_floats(table, name, where))
    return pa.table(columns)


def normalize(table: pa.Table, kind: str, where: str = "file") -> pa.Table:
    """``table`` (a foreign file's rows) in the archive's file schema for ``kind``, sorted by bucket."""
    schema = KIND_SCHEMAS[kind]
    file_schema = pa.schema([f for f in schema if f.name not in ("exchange", "symbol")])
    if table.num_rows == 0:
        return file_schema.empty_table()
    times = _times(table, where)
    # Open and close by time within the second (rows of one instant keep their file order): by file order
    # alone they depended on how the writer named its files ("part-10" sorts before "part-9").
    order = np.argsort(times, kind="stable")
    bucket = times[order] - times[order] % 1000
    starts = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
    ends = np.append(starts[1:], bucket.shape[0]) - 1
    ts = pa.array(bucket[starts], pa.timestamp("ms", tz="UTC"))
    rows = starts.shape[0]
    if kind == "ohlc":
        o, h, lo, c, v = (_floats(table, n, where)[order] for n in ("open", "high", "low", "close", "volume"))
        # a null (NaN) in one of a second's rows leaves the others' values (it made the whole candle's
        # high, low or volume NaN); a second whose rows are all null stays null
        missing = np.logical_and.reduceat(np.isnan(v), starts)
        volume = np.add.reduceat(np.nan_to_num(v, nan=0.0), starts)
        volume[missing] = np.nan
        columns: dict[str, pa.Array] = {
            "bucket": ts,
            "open": pa.array(o[starts]),
            "high": pa.array(np.fmax.reduceat(h, starts)),
            "low": pa.array(np.fmin.reduceat(lo, starts)),
            "close": pa.array(c[ends]),
            "volume": pa.array(volume),
        }
    elif kind == "volatility":
        vol = _floats(table, "volatility", where)[order]
        columns = {"bucket": ts, "volatility": pa.array(vol[ends])}
    else:
        raise ForeignFileError(f"{where}: only candles and volatility can be read from foreign files")
    out = [columns[f.name] if f.name in columns else pa.nulls(rows, f.type) for f in file_schema]
    return pa.Table.from_arrays(out, schema=file_schema)
