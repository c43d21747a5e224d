"""``cryptostream import``: an archive of the older layout into the database and the current archive.

The original course project (and cryptostream before venues) wrote ``<root>/ohlc/symbol=BTCUSD/date=D/*``
and ``<root>/volatility/...`` with no venue. Import reads each day folder as the API reads it
(:func:`cryptostream.archive.read_day_folder`: the original's partial rows of one second merged into one
candle, first open, last close, max high, min low, summed volume; fields it never recorded null; files that
cannot be read skipped with the reason), gives the rows the venue ``--exchange`` names (``unknown`` by
default: nobody knows which exchange the original streamed), and writes them

* to the archive under ``OUTPUT_DIR``, one ``import-<hash>.parquet`` per market and day of the rows' own
  UTC day (a row in a folder of another day still lands in its day), the hash naming the rows themselves,
  so importing the same archive again, from wherever, rewrites the same file instead of adding a copy (and
  after a compaction merged it, the name stays one the compacted file replaces), and
* to the database when ``DATABASE_URL`` is set, upserted by (exchange, symbol, bucket) like the processor's
  rows, so importing twice stores every candle once.

A folder's symbol is normalized as everywhere else (``symbol=btc-usd`` is BTCUSD); one that is no symbol
is skipped with a warning naming it, as is a folder that is no ``date=YYYY-MM-DD``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import asyncpg
import pyarrow as pa
from rich.progress import Progress

from cryptostream.archive import KINDS, partition_dir, read_day_folder, utc_day, write_file
from cryptostream.errors import SettingsError, UnsupportedSymbol
from cryptostream.symbols import normalize_symbol
from cryptostream.venues import UNKNOWN, normalize_exchange
from processor.sinks.postgres import TABLES, bucket_span, upsert
from processor.sinks.rollups import RollupRefresh

__all__ = ["ImportReport", "import_archive", "legacy_days"]

log = logging.getLogger(__name__)

IMPORTED = ("ohlc", "volatility")  # what the older layout holds (predictions never existed there)


@dataclass
class ImportReport:
    folders: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    markets: set[tuple[str, str]] = field(default_factory=set)

    def __str__(self) -> str:
        rows = ", ".join(f"{n} {kind} rows" for kind, n in sorted(self.rows.items())) or "no rows"
        return f"{rows} from {self.folders} day folder(s), {len(self.markets)} market(s)"


def legacy_days(root: Path) -> list[tuple[str, str, date, Path]]:
    """(kind, symbol, day, folder) of every day folder of the older layout under ``root``."""
    out = []
    for kind in IMPORTED:
        for symbol_dir in sorted((root / kind).glob("symbol=*")):
            for day_dir in sorted(symbol_dir.glob("date=*")):
                try:
                    day = date.fromisoformat(day_dir.name.removeprefix("date="))
                except ValueError:
                    log.warning("import: skipping %s: not a date=YYYY-MM-DD folder", day_dir)
                    continue
                given = symbol_dir.name.removeprefix("symbol=")
                try:
                    symbol = normalize_symbol(given)
                except UnsupportedSymbol as exc:
                    log.warning("import: skipping %s: %s", day_dir, exc)
                    continue
                if day_dir.is_dir():
                    out.append((kind, symbol, day, day_dir))
    return out


async def import_archive(
    source: Path,
    output_dir: Path,
    database_dsn: str | None,
    exchange: str = UNKNOWN,
    *,
    show_progress: bool = True,
) -> ImportReport:
    """Copy every day folder of the older layout under ``source`` (see the module docstring)."""
    venue = normalize_exchange(exchange)
    if venue is None:
        raise SettingsError(f"--exchange must be a venue name (1-32 of a-z, 0-9, _ . -), got {exchange!r}")
    days = legacy_days(source)
    if not days:
        raise SettingsError(
            f"{source} holds no folder of the older archive layout (ohlc/symbol=X/date=YYYY-MM-DD/*.parquet)"
        )
    report = ImportReport()
    conn = await asyncpg.connect(database_dsn) if database_dsn else None
    rollups = await RollupRefresh.detect(conn) if conn is not None else None
    try:
        with Progress(disable=not show_progress, transient=False) as progress:
            task = progress.add_task(f"importing {source}", total=len(days))
            for kind, symbol, day, folder in days:
                table = await asyncio.to_thread(read_day_folder, folder, kind)
                if table.num_rows:
                    rows = _with_market(table, kind, venue, symbol)
                    for row_day, part in _by_day(rows):
                        await asyncio.to_thread(_write_import, output_dir, kind, venue, symbol, row_day, part)
                    if conn is not None:
                        table_name, keys = TABLES[kind]
                        async with conn.transaction():
                            await upsert(conn, table_name, keys, rows)
                        if rollups is not None and kind == "ohlc":
                            await rollups.after_write(conn, *bucket_span(rows))
                    report.rows[kind] = report.rows.get(kind, 0) + rows.num_rows
                    report.markets.add((venue, symbol))
                report.folders += 1
                progress.update(task, advance=1, description=f"{kind} {symbol} {day}")
    finally:
        if conn is not None:
            await conn.close()
    return report


def _by_day(rows: pa.Table) -> list[tuple[date, pa.Table]]:
    """The rows of each UTC day they hold (a folder's name is not always its rows' day)."""
    ms = rows["bucket"].cast(pa.int64()).to_numpy()
    days = ms // 86_400_000
    distinct = sorted(set(days.tolist()))
    return [(utc_day(d * 86_400_000), rows.filter(pa.array(days == d))) for d in distinct]


def _write_import(output_dir: Path, kind: str, venue: str, symbol: str, day: date, rows: pa.Table) -> None:
    """One market-day of imported rows, named by their content (see the module docstring)."""
    body = rows.drop_columns(["exchange", "symbol"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, body.schema) as writer:
        writer.write_table(body)
    digest = hashlib.sha256(f"{kind}/{venue}/{symbol}/{day}/".encode() + sink.getvalue().to_pybytes())
    target = partition_dir(output_dir, kind, venue, symbol, day) / f"import-{digest.hexdigest()[:16]}.parquet"
    write_file(target, body)


def _with_market(table: pa.Table, kind: str, exchange: str, symbol: str) -> pa.Table:
    """The day's rows (file schema) with their venue and symbol, in the schema of ``kind``."""
    n = table.num_rows
    out = table.add_column(0, "symbol", pa.array([symbol] * n, pa.string()))
    out = out.add_column(0, "exchange", pa.array([exchange] * n, pa.string()))
    return out.select(KINDS[kind].names).cast(KINDS[kind])
