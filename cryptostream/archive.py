"""The Parquet archive: layout and loading.

Layout under ``OUTPUT_DIR`` (hive partitions, zstd)::

    ohlc/symbol=BTCUSDT/date=2025-11-10/part-p0003-9f2c01ab-00000042.parquet
    volatility/symbol=.../date=.../...
    predictions/symbol=.../date=.../...

``symbol`` and ``date`` live in the folder names only. A file name says which partition wrote it, the
lineage (epoch) of that partition and the checkpoint sequence number, so a replay after a crash writes
the same names again and never a second copy (see :mod:`processor.checkpoint`).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cryptostream.models import CANDLE_SCHEMA, PREDICTION_SCHEMA, VOLATILITY_SCHEMA

__all__ = [
    "KINDS",
    "FILE_RE",
    "file_name",
    "list_symbols",
    "load",
    "partition_dir",
    "write_file",
]

KINDS: dict[str, pa.Schema] = {
    "ohlc": CANDLE_SCHEMA,
    "volatility": VOLATILITY_SCHEMA,
    "predictions": PREDICTION_SCHEMA,
}

FILE_RE = re.compile(r"part-p(?P<partition>\d{4})-(?P<epoch>[0-9a-f]+)-(?P<seq>\d{8})\.parquet")


def file_name(partition: int, epoch: str, seq: int) -> str:
    return f"part-p{partition:04d}-{epoch}-{seq:08d}.parquet"


def partition_dir(root: Path, kind: str, symbol: str, day: date | str) -> Path:
    return root / kind / f"symbol={symbol}" / f"date={day}"


def file_schema(kind: str) -> pa.Schema:
    """Schema of the rows inside a file (the partition columns live in the folder names)."""
    schema = KINDS[kind]
    return schema.remove(schema.get_field_index("symbol"))


def write_file(path: Path, table: pa.Table) -> None:
    """Write ``table`` durably: temp file, fsync, atomic rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def list_symbols(root: Path, kind: str = "ohlc") -> list[str]:
    """Symbols with at least one file in the archive."""
    base = root / kind
    if not base.is_dir():
        return []
    return sorted(
        p.name.removeprefix("symbol=") for p in base.iterdir() if p.is_dir() and p.name.startswith("symbol=")
    )


def _days(start: datetime | None, end: datetime | None, folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    out = []
    first = start.astimezone(UTC).date() if start else None
    last = end.astimezone(UTC).date() if end else None
    for p in sorted(folder.iterdir()):
        if not p.name.startswith("date="):
            continue
        try:
            day = date.fromisoformat(p.name.removeprefix("date="))
        except ValueError:
            continue
        if (first is None or day >= first) and (last is None or day <= last):
            out.append(p)
    return out


def load(
    root: Path,
    kind: str,
    symbol: str,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
    newest: bool = True,
) -> pa.Table:
    """Rows of one symbol with ``start <= bucket < end``, sorted by bucket, with the ``symbol`` column.

    With ``limit`` and ``newest`` the last ``limit`` rows of the range are returned (still ascending),
    which is what a chart asks for; ``newest=False`` returns the first ``limit`` rows.
    """
    schema = KINDS[kind]
    files: list[str] = []
    folders = _days(start, end, root / kind / f"symbol={symbol}")
    # A chart asks for the newest ``limit`` rows: read days newest first and stop once enough are in.
    newest_only = newest and limit is not None and start is None
    rows = 0
    for folder in folders[::-1] if newest_only else folders:
        day_files = [str(p) for p in sorted(folder.glob("*.parquet"))]
        files.extend(day_files)
        if newest_only:
            rows += sum(pq.ParquetFile(f).metadata.num_rows for f in day_files)
            if limit is not None and rows >= limit:
                break
    if not files:
        return schema.empty_table()
    table = ds.dataset(files, schema=file_schema(kind), format="parquet").to_table()
    mask = None
    if start is not None:
        mask = pc.greater_equal(table["bucket"], pa.scalar(start, pa.timestamp("ms", tz="UTC")))
    if end is not None:
        upper = pc.less(table["bucket"], pa.scalar(end, pa.timestamp("ms", tz="UTC")))
        mask = upper if mask is None else pc.and_(mask, upper)
    if mask is not None:
        table = table.filter(mask)
    table = table.sort_by("bucket")
    if limit is not None and table.num_rows > limit:
        table = table.slice(table.num_rows - limit) if newest else table.slice(0, limit)
    symbols = pa.array([symbol] * table.num_rows, pa.string())
    table = table.add_column(0, "symbol", symbols)
    return table.select(schema.names).cast(schema)


def utc_day(ms: int) -> date:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).date()
