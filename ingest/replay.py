"""File replay: recorded trades back into Kafka, in real time (``REPLAY_SPEED=1``) or as fast as possible (0).

Formats, told apart by name and content:

* **Binance public dumps** (``BTCUSDT-trades-2025-01-01.zip`` / ``.csv``, ``...-aggTrades-...``): spot
  ``trades`` = ``id,price,qty,quote_qty,time,is_buyer_maker,is_best_match``, spot ``aggTrades`` =
  ``agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker,is_best_match``;
  no header row (futures files: no best-match column and a header row). Zipped or not. The symbol comes
  from the file name (or ``symbol=``). Times are µs in spot files from 2025 on and ms before; each row is
  read by magnitude, so a file mixing both still lands in exact milliseconds.
* **JSONL** of trades in the Kafka shape (``.jsonl``/``.ndjson``/``.json``, what ``ingest --record``
  writes), decoded and validated in bulk by :func:`cryptostream.codec.decode_trades`.
* **Parquet** with the columns of :data:`cryptostream.models.TRADE_SCHEMA` (``exchange`` optional).

Rows are read as Arrow/NumPy columns, checked column-wise (non-positive or non-finite price, negative or
non-finite quantity, timestamps outside 2000-2100, symbols that do not normalize) and encoded straight to
Kafka records (:class:`~ingest.source.EncodedBatch`), no ``Trade`` object per row: that is what lets a replay
publish well over 80,000 trades/s. Rejected rows ride along to the dead-letter topic; a CSV line with the
wrong number of fields is rejected as ``malformed_csv`` with the line as read, a value that does not convert
(``id`` ``12x``) as ``wrong_type`` with the row's fields as read (JSON), and a row that converts but is not a
trade (a negative price) with the trade it would have been (JSON, in the Kafka shape). A file replays as it
is: its own symbols (SYMBOLS does not filter a replay), its ids, its venue (a Binance dump is ``binance``;
JSONL and Parquet name theirs per row; ``--exchange`` names it for a file that does not).

Progress: the replay writes its own event-time progress, placed by the file alone
(:mod:`ingest.replay_frontier`): each time the file's event time minus ``MAX_BUFFER_SECONDS`` (for the dump's
small disorder) enters a new second, the batch is cut after that trade and each market (venue, symbol) gets
progress from its own highest event time minus the buffer; at the end of the file, progress that closes every
window it fed. ``REPLAY_SPEED`` only changes when the batches go out, never which records they hold or their
order, so the candles of a replay are a function of the file, whatever the speed or pauses.

The progress bar: a rich bar with trades, rate and ETA on a terminal; a log line every few seconds otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import logging
import re
import time
import zipfile
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cryptostream.codec import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, Rejected, decode_trades
from cryptostream.errors import CryptostreamError, UnsupportedSymbol
from cryptostream.feeds import CONNECTED, ENDED, FINISHED, FeedStatus
from cryptostream.settings import Settings
from cryptostream.symbols import normalize_symbol
from cryptostream.venues import UNKNOWN, normalize_exchange
from ingest.replay_frontier import ReplayFrontier
from ingest.source import EncodedBatch, now_ms

__all__ = ["Columns", "ReplayError", "ReplayProgress", "encode", "read_columns", "replay_trades"]

log = logging.getLogger(__name__)

CHUNK_ROWS = 65_536
TICK_SECONDS = 0.05  # paced replay releases trades in slices of this much (scaled) time
_DUMP_NAME = re.compile(r"(?P<symbol>[A-Za-z0-9]+)-(?P<kind>trades|aggTrades)-\d{4}-\d{2}(?:-\d{2})?")
_SAFE = re.compile(r"[A-Za-z0-9_.-]*")

# Binance dump layouts by (kind, number of fields): where trade_id, price, quantity, time, is_buyer_maker are
_LAYOUTS: dict[tuple[str, int], tuple[int, int, int, int, int]] = {
    ("trades", 7): (0, 1, 2, 4, 5),  # spot: id,price,qty,quote_qty,time,is_buyer_maker,is_best_match
    ("trades", 6): (0, 1, 2, 4, 5),  # futures: no is_best_match
    ("aggTrades", 8): (0, 1, 2, 5, 6),  # spot: agg_trade_id,price,quantity,first,last,transact_time,ibm,best
    ("aggTrades", 7): (0, 1, 2, 5, 6),  # futures: no is_best_match
}
_HEADER_NAMES = {
    "trade_id": ("id", "agg_trade_id", "a", "trade_id"),
    "price": ("price", "p"),
    "quantity": ("qty", "quantity", "q"),
    "timestamp": ("time", "transact_time", "timestamp", "t"),
    "is_buyer_maker": ("is_buyer_maker", "isbuyermaker", "m"),
}


class ReplayError(CryptostreamError):
    """A replay file that cannot be read as any supported format (the message says what to fix)."""


@dataclass(slots=True)
class Columns:
    """One chunk of trades as columns; ``symbol``/``exchange`` are per-row arrays or one value for all."""

    symbol: npt.NDArray[np.object_] | str
    exchange: npt.NDArray[np.object_] | str
    price: npt.NDArray[np.float64]
    quantity: npt.NDArray[np.float64]
    timestamp: npt.NDArray[np.int64]
    trade_id: npt.NDArray[np.int64]
    is_buyer_maker: npt.NDArray[np.bool_]
    rejected: list[Rejected]

    def __len__(self) -> int:
        return int(self.price.shape[0])


# ---------------------------------------------------------------------------------------------- reading
class _Counting(io.RawIOBase):
    """A readable stream that counts the (uncompressed) bytes read, for progress."""

    def __init__(self, inner: IO[bytes] | io.RawIOBase) -> None:
        self.inner = inner
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer)) or b""
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


# What a damaged or truncated .zip/.gz raises while it is opened or read (gzip.BadGzipFile is an OSError).
_DAMAGED = (zipfile.BadZipFile, EOFError, zlib.error, OSError)


def _damaged(path: Path, exc: BaseException) -> ReplayError:
    said = " ".join(str(exc).split()) or type(exc).__name__
    return ReplayError(
        f"{path}: the file is damaged or cut short ({type(exc).__name__}: {said}); what was read before "
        "it is published: replay a whole copy (its trades already published are then dead-lettered as late)"
    )


def _open_text(path: Path, stack: ExitStack) -> tuple[IO[bytes], int]:
    """The file's bytes (unzipped/gunzipped) and their total size."""
    try:
        return _open_raw(path, stack)
    except _DAMAGED as exc:
        raise _damaged(path, exc) from None


def _open_raw(path: Path, stack: ExitStack) -> tuple[IO[bytes], int]:
    if path.suffix == ".zip":
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.endswith(".CHECKSUM")]
        if len(members) != 1:
            raise ReplayError(
                f"{path}: expected one CSV inside the zip, found {[m.filename for m in members]}"
            )
        return stack.enter_context(archive.open(members[0])), members[0].file_size
    if path.suffix == ".gz":
        unzipped = gzip.open(path, "rb")  # noqa: SIM115 - closed by the stack
        stack.callback(unzipped.close)
        return cast(IO[bytes], unzipped), path.stat().st_size * 4  # size unknown: estimate
    return stack.enter_context(open(path, "rb")), path.stat().st_size  # noqa: SIM115


def _inner_name(path: Path) -> str:
    name = path.name
    for suffix in (".zip", ".gz"):
        name = name.removesuffix(suffix)
    return name


def _kind(path: Path) -> str:
    name = _inner_name(path).lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv") or path.suffix == ".zip":  # Binance ships NAME.zip holding NAME.csv
        return "csv"
    raise ReplayError(
        f"{path}: unknown replay format; use a Binance dump (.csv/.zip), JSONL (.jsonl) or Parquet (.parquet)"
    )


def read_columns(
    path: Path,
    symbol: str | None = None,
    progress: ReplayProgress | None = None,
    exchange: str | None = None,
) -> Generator[Columns, None, None]:
    """Chunks of validated trade columns from ``path`` (any supported format). ``exchange`` is the venue of
    a file that does not name one (a Binance dump is ``binance``)."""
    if not path.is_file():
        raise ReplayError(f"replay file {path} does not exist")
    if exchange is not None and normalize_exchange(exchange) is None:
        raise ReplayError(f"--exchange {exchange!r} is not a venue name (1-32 of a-z, 0-9, _ . -)")
    venue = normalize_exchange(exchange) if exchange is not None else None
    kind = _kind(path)
    if kind == "parquet":
        yield from _read_parquet(path, progress, venue or UNKNOWN)
    elif kind == "jsonl":
        yield from _read_jsonl(path, progress, venue)
    else:
        yield from _read_dump(path, symbol, progress, venue or "binance")


def _read_dump(
    path: Path, symbol: str | None, progress: ReplayProgress | None, venue: str
) -> Iterator[Columns]:
    match = _DUMP_NAME.search(_inner_name(path))
    raw_symbol = symbol or (match["symbol"] if match else None)
    if raw_symbol is None:
        raise ReplayError(
            f"{path}: cannot tell the symbol from the name (expected e.g. BTCUSDT-trades-2025-01-01.csv); "
            "pass --symbol"
        )
    try:
        sym = normalize_symbol(raw_symbol)
    except UnsupportedSymbol as exc:
        raise ReplayError(f"{path}: {exc}") from None
    with ExitStack() as stack:
        raw, total = _open_text(path, stack)
        head = raw.read(64 * 1024).removeprefix(b"\xef\xbb\xbf")  # a BOM (spreadsheets write one)
        while head and not head.strip():  # blank lines before the first row (a whole file of them: no rows)
            head = raw.read(64 * 1024)
        head = head.lstrip(b"\r\n\t ")
        first = head.split(b"\n", 1)[0].strip()
        if not first:
            return
        fields = first.decode("utf-8", "replace").split(",")
        has_header = not fields[0].strip().lstrip("-").isdigit()
        kind = match["kind"] if match else ("aggTrades" if len(fields) == 8 else "trades")
        if has_header:
            lowered = [f.strip().lower() for f in fields]
            positions = []
            for name, aliases in _HEADER_NAMES.items():
                found = [i for i, f in enumerate(lowered) if f in aliases]
                if not found:
                    raise ReplayError(f"{path}: header {first[:120]!r} has no {name} column")
                positions.append(found[0])
            layout = tuple(positions)
        else:
            layout_ = _LAYOUTS.get((kind, len(fields)))
            if layout_ is None:
                raise ReplayError(
                    f"{path}: a Binance {kind} dump has {'/'.join(str(n) for k, n in _LAYOUTS if k == kind)} "
                    f"fields per line, this one {len(fields)}: {first[:120]!r}"
                )
            layout = layout_
        counting = _Counting(_Prefixed(head, raw))
        if progress is not None:
            progress.track(lambda: counting.count, total)
        names = [f"f{i}" for i in range(len(fields))]
        id_i, price_i, qty_i, time_i, ibm_i = layout
        # read as text, converted per batch (_convert): a value that does not convert costs its row only
        columns = [
            _DumpColumn(names[id_i], "id", pa.int64()),
            _DumpColumn(names[price_i], "price", pa.float64()),
            _DumpColumn(names[qty_i], "quantity", pa.float64()),
            _DumpColumn(names[time_i], "time", pa.int64()),
            _DumpColumn(names[ibm_i], "is_buyer_maker", pa.bool_()),
        ]
        bad_lines: list[Rejected] = []

        def invalid_row(row: Any) -> str:
            bad_lines.append(
                Rejected(
                    "malformed_csv",
                    f"CSV line has {row.actual_columns} fields, expected {row.expected_columns}",
                    _b(row.text),
                )
            )
            return "skip"

        try:  # opening converts the first block already: a bad value there is the same error
            reader = pacsv.open_csv(
                io.BufferedReader(counting, buffer_size=1 << 20),
                read_options=pacsv.ReadOptions(
                    column_names=names, skip_rows=1 if has_header else 0, block_size=4 << 20
                ),
                parse_options=pacsv.ParseOptions(invalid_row_handler=invalid_row),
                convert_options=pacsv.ConvertOptions(
                    column_types={c.name: pa.string() for c in columns},
                    include_columns=[c.name for c in columns],
                    strings_can_be_null=True,  # "", NULL, NaN...: nulls, as a typed read had them
                ),
            )
            for batch in reader:
                (ids, price, qty, ts, ibm), wrong = _convert(batch, columns)
                yield _checked(sym, venue, price, qty, ts, ids, ibm, bad_lines + wrong)
                bad_lines = []
        except pa.ArrowInvalid as exc:
            said = " ".join(str(exc).split())  # one line
            raise ReplayError(f"{path}: {said}; fix or drop the offending line and replay again") from None
        except _DAMAGED as exc:
            raise _damaged(path, exc) from None
        if bad_lines:
            yield _empty(sym, venue, bad_lines)


@dataclass(frozen=True, slots=True)
class _DumpColumn:
    name: str  # in the reader (f0, f1...)
    field: str  # as the dump's documentation names it
    kind: pa.DataType


_TRUE = pa.array(["True", "true", "TRUE", "1"])
_FALSE = pa.array(["False", "false", "FALSE", "0"])
_KIND_NAMES = {pa.int64(): "an integer", pa.float64(): "a number", pa.bool_(): "a boolean"}


def _convert(batch: pa.RecordBatch, columns: list[_DumpColumn]) -> tuple[list[pa.Array], list[Rejected]]:
    """A batch of a dump read as text -> its columns in their types, and the rows whose value does not
    convert, rejected as ``wrong_type``. One cast per column (Arrow's); only a column of a batch where a
    cast fails is cast in parts (:func:`_cast_each`), so a good file costs what a typed read did, and a bad
    value costs its row, not the rest of the file (a replay used to stop there, after publishing what came
    before)."""
    n = batch.num_rows
    bad = np.zeros(n, dtype=np.bool_)
    converted: list[pa.Array] = []
    for column in columns:
        text = batch.column(column.name)
        if column.kind == pa.bool_():
            yes, no = pc.is_in(text, value_set=_TRUE), pc.is_in(text, value_set=_FALSE)
            odd = pc.and_not(pc.is_valid(text), pc.or_(yes, no))
            bad |= np.asarray(odd.to_numpy(zero_copy_only=False), dtype=np.bool_)
            converted.append(pc.if_else(pc.is_valid(text), yes, pa.scalar(None, pa.bool_())))
            continue
        values, refused = _cast_each(text, column.kind)
        bad[refused] = True
        converted.append(values)
    if not bad.any():
        return converted, []
    rows = np.flatnonzero(bad)
    texts = {c.field: batch.column(c.name).take(pa.array(rows)).to_pylist() for c in columns}
    wrong: list[Rejected] = []
    for k in range(len(rows)):
        row = {field: values[k] for field, values in texts.items()}
        first = next(c for c in columns if not _converts(row[c.field], c.kind))
        wrong.append(
            Rejected(
                "wrong_type",
                f"{first.field} is {row[first.field]!r:.40}, expected {_KIND_NAMES[first.kind]}",
                orjson.dumps(row),
            )
        )
    keep = pa.array(~bad)
    return [c.filter(keep) for c in converted], wrong


def _cast_each(text: pa.Array, kind: pa.DataType) -> tuple[pa.Array, list[int]]:
    """Arrow's cast of ``text`` where a value does not convert: the halves are cast apart until each
    refusal is one value (set null and listed), so every value gets the verdict of Arrow's cast of it
    alone, as in a batch that converts whole (Python's own parsers differ: ``0x10``, ``1_000``)."""
    pieces: list[pa.Array] = []
    wrong: list[int] = []

    def cast(lo: int, hi: int) -> None:
        try:
            pieces.append(pc.cast(text.slice(lo, hi - lo), kind))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if hi - lo == 1:
                wrong.append(lo)
                pieces.append(pa.nulls(1, kind))
            else:
                cast(lo, (lo + hi) // 2)
                cast((lo + hi) // 2, hi)

    cast(0, len(text))
    return pa.concat_arrays(pieces), wrong


def _converts(value: str | None, kind: pa.DataType) -> bool:
    if value is None:
        return True
    if kind == pa.bool_():
        return value in _TRUE.to_pylist() or value in _FALSE.to_pylist()
    return not _cast_each(pa.array([value], pa.string()), kind)[1]


class _Prefixed(io.RawIOBase):
    """``head`` (already read to sniff the format) followed by the rest of ``inner``."""

    def __init__(self, head: bytes, inner: IO[bytes]) -> None:
        self.head = head
        self.inner = inner

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.head:
            if size < 0 or size >= len(self.head):
                out, self.head = self.head, b""
                return out + (self.inner.read(size - len(out)) if size > 0 else b"")
            out, self.head = self.head[:size], self.head[size:]
            return out
        return self.inner.read(size)


def _read_jsonl(path: Path, progress: ReplayProgress | None, venue: str | None) -> Iterator[Columns]:
    with ExitStack() as stack:
        raw, total = _open_text(path, stack)
        counting = _Counting(raw)
        if progress is not None:
            progress.track(lambda: counting.count, total)
        stream = io.BufferedReader(counting, buffer_size=1 << 20)
        while True:
            try:
                chunk = stream.readlines(8 << 20)
            except _DAMAGED as exc:
                raise _damaged(path, exc) from None
            if not chunk:
                return
            values = [line.rstrip(b"\r\n") for line in chunk if line.strip()]
            if not values:
                continue
            cols, rejected = decode_trades(values)
            symbol = np.asarray(cols.symbols, dtype=object)[cols.symbol]
            names = [venue if venue is not None and e == UNKNOWN else e for e in cols.exchanges]
            exchange = np.asarray(names, dtype=object)[cols.exchange]
            yield Columns(
                symbol,
                exchange,
                cols.price,
                cols.quantity,
                cols.timestamp,
                cols.trade_id,
                cols.is_buyer_maker,
                rejected,
            )


def _text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _number(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind))


# What each Parquet column may be: anything else was converted silently ("false" strings became True,
# a trade id of 1.5 became 1) or stopped the replay with a traceback.
_PARQUET_TYPES: dict[str, Callable[[pa.DataType], bool]] = {
    "symbol": _text,
    "exchange": _text,
    "price": _number,
    "quantity": _number,
    "timestamp": lambda k: bool(pa.types.is_integer(k) or pa.types.is_timestamp(k)),
    "trade_id": pa.types.is_integer,
    "is_buyer_maker": pa.types.is_boolean,
}
_PARQUET_EXPECTED = {
    "symbol": "a string",
    "exchange": "a string",
    "price": "a number",
    "quantity": "a number",
    "timestamp": "epoch ms (an integer) or a timestamp",
    "trade_id": "an integer",
    "is_buyer_maker": "a boolean",
}


def _read_parquet(path: Path, progress: ReplayProgress | None, venue: str) -> Iterator[Columns]:
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReplayError(f"{path}: not a readable Parquet file ({exc})") from None
    names = set(file.schema_arrow.names)
    needed = ["symbol", "price", "quantity", "timestamp", "trade_id", "is_buyer_maker"]
    missing = [n for n in needed if n not in names]
    if missing:
        raise ReplayError(f"{path}: Parquet file lacks column(s) {', '.join(missing)} (see TRADE_SCHEMA)")
    columns = needed + (["exchange"] if "exchange" in names else [])
    for name in columns:
        kind = file.schema_arrow.field(name).type
        if not _PARQUET_TYPES[name](kind):
            raise ReplayError(
                f"{path}: column {name} is {kind}, expected {_PARQUET_EXPECTED[name]} (see TRADE_SCHEMA): "
                "convert it, nothing is guessed"
            )
    done = 0
    if progress is not None:
        progress.track(lambda: done, file.metadata.num_rows, unit_rows=True)
    for batch in _batches(path, file, columns):
        ts = batch.column("timestamp")
        if pa.types.is_timestamp(ts.type):  # µs or ns (pandas' default): the millisecond it falls in
            ts = ts.cast(pa.timestamp("ms", ts.type.tz), safe=False).cast(pa.int64())
        exchange = batch.column("exchange") if "exchange" in columns else venue
        yield _checked(
            batch.column("symbol"),
            exchange,
            batch.column("price"),
            batch.column("quantity"),
            ts,
            batch.column("trade_id"),
            batch.column("is_buyer_maker"),
            [],
        )
        done += batch.num_rows


def _batches(path: Path, file: pq.ParquetFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    try:
        yield from file.iter_batches(batch_size=CHUNK_ROWS, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:  # a page that does not decode: the file is damaged
        raise _damaged(path, exc) from None


# ---------------------------------------------------------------------------------------------- checks
def _np(array: Any, dtype: Any) -> Any:
    if isinstance(array, (pa.Array, pa.ChunkedArray)):
        if array.null_count:
            fill = {np.float64: float("nan"), np.int64: -1, np.bool_: False}[dtype]
            array = array.fill_null(fill)
        return array.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return np.asarray(array, dtype=dtype)


def _nulls(values: Any, n: int) -> npt.NDArray[np.bool_]:
    """Which rows of a column are null (a str or a plain list: none are)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)
    return np.zeros(n, dtype=np.bool_)


def _objects(values: Any) -> npt.NDArray[np.object_]:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_pylist()
    return np.asarray(values, dtype=object)


_DETAIL: dict[str, Callable[[dict[str, Any]], str]] = {
    "bad_symbol": lambda r: f"symbol {r['symbol']!r:.40}",
    "bad_exchange": lambda r: f"exchange {r['exchange']!r:.40}",
    "non_finite_price": lambda r: f"price {r['price']!r}",
    "non_positive_price": lambda r: f"price {r['price']!r}",
    "non_finite_quantity": lambda r: f"quantity {r['quantity']!r}",
    "negative_quantity": lambda r: f"quantity {r['quantity']!r}",
    "bad_timestamp": lambda r: f"timestamp {r['timestamp']!r}",
    "wrong_type": lambda r: f"trade_id {r['trade_id']!r} (missing or negative)",
    "missing_field": lambda r: "symbol, exchange or is_buyer_maker is null",
}


def _checked(
    symbol: Any,
    exchange: Any,
    price: Any,
    quantity: Any,
    timestamp: Any,
    trade_id: Any,
    is_buyer_maker: Any,
    rejected: list[Rejected],
) -> Columns:
    """Column-wise validation; bad rows leave as rejects (with the row as JSON for the raw payload)."""
    p = _np(price, np.float64)
    q = _np(quantity, np.float64)
    ts = _np(timestamp, np.int64)
    ts = np.where(ts >= 10**17, ts // 1_000_000, np.where(ts >= 10**14, ts // 1_000, ts))  # ns / µs -> ms
    ids = _np(trade_id, np.int64)
    ibm = _np(is_buyer_maker, np.bool_)
    n = p.shape[0]
    # nulls are no values: a null symbol read as the market "NONE", a null side as a sell (Parquet)
    null = _nulls(symbol, n) | _nulls(exchange, n) | _nulls(is_buyer_maker, n)
    sym: Any = symbol
    given: Any = symbol
    bad_symbol = np.zeros(n, dtype=np.bool_)
    if not isinstance(symbol, str):
        given = _objects(symbol)
        uniques, inverse = np.unique(given.astype(str), return_inverse=True)
        normalized = []
        for u in uniques:
            try:
                normalized.append(normalize_symbol(u))
            except UnsupportedSymbol:
                normalized.append("")
        table = np.asarray(normalized, dtype=object)
        sym = table[inverse]
        bad_symbol = sym == ""
    ex: Any = exchange
    bad_exchange = np.zeros(n, dtype=np.bool_)
    if isinstance(exchange, str):
        ex = normalize_exchange(exchange) or exchange
        bad_exchange[:] = normalize_exchange(exchange) is None
    else:
        given_ex = _objects(exchange)
        uniques, inverse = np.unique(given_ex.astype(str), return_inverse=True)
        table = np.asarray([normalize_exchange(u) or "" for u in uniques], dtype=object)
        ex = table[inverse]
        bad_exchange = ex == ""
        ex = np.where(bad_exchange, given_ex, ex)
    checks = (
        ("missing_field", null),
        ("bad_symbol", bad_symbol),
        ("bad_exchange", bad_exchange),
        ("non_finite_price", ~np.isfinite(p)),
        ("non_positive_price", np.isfinite(p) & (p <= 0)),
        ("non_finite_quantity", ~np.isfinite(q)),
        ("negative_quantity", np.isfinite(q) & (q < 0)),
        ("bad_timestamp", (ts < MIN_TIMESTAMP_MS) | (ts >= MAX_TIMESTAMP_MS)),
        ("wrong_type", ids < 0),
    )
    invalid = np.zeros(n, dtype=np.bool_)
    out = list(rejected)
    for reason, mask in checks:
        mask = mask & ~invalid
        if mask.any():
            for i in np.flatnonzero(mask).tolist():
                row = {
                    "symbol": sym if isinstance(sym, str) else str(given[i]),
                    "price": float(p[i]),
                    "quantity": float(q[i]),
                    "timestamp": int(ts[i]),
                    "trade_id": int(ids[i]),
                    "is_buyer_maker": bool(ibm[i]),
                    "exchange": ex if isinstance(ex, str) else str(ex[i]),
                }
                out.append(Rejected(reason, _DETAIL[reason](row), orjson.dumps(row)))
            invalid |= mask
    if invalid.any():
        keep = ~invalid
        p, q, ts, ids, ibm = p[keep], q[keep], ts[keep], ids[keep], ibm[keep]
        if not isinstance(sym, str):
            sym = sym[keep]
        if not isinstance(ex, str):
            ex = ex[keep]
    return Columns(sym, ex, p, q, ts, ids, ibm, out)


def _empty(symbol: str, exchange: str, rejected: list[Rejected]) -> Columns:
    return Columns(
        symbol,
        exchange,
        np.empty(0, np.float64),
        np.empty(0, np.float64),
        np.empty(0, np.int64),
        np.empty(0, np.int64),
        np.empty(0, np.bool_),
        rejected,
    )


def _b(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


# ---------------------------------------------------------------------------------------------- encoding
def encode(cols: Columns, received_at: int) -> EncodedBatch:
    """Columns -> Kafka records in the trade JSON shape (one ``orjson`` call for the whole chunk), stamped
    with the receipt time ``received_at``."""
    n = len(cols)
    tl = cols.timestamp.tolist()
    symbols = [cols.symbol] * n if isinstance(cols.symbol, str) else cols.symbol.tolist()
    exchanges = [cols.exchange] * n if isinstance(cols.exchange, str) else cols.exchange.tolist()
    rows = [
        {
            "symbol": s,
            "price": p,
            "quantity": q,
            "timestamp": t,
            "trade_id": i,
            "is_buyer_maker": m,
            "exchange": e,
            "received_at": received_at,
        }
        for s, p, q, t, i, m, e in zip(
            symbols,
            cols.price.tolist(),
            cols.quantity.tolist(),
            tl,
            cols.trade_id.tolist(),
            cols.is_buyer_maker.tolist(),
            exchanges,
            strict=True,
        )
    ]
    values: list[bytes] = []
    if rows and all(_SAFE.fullmatch(e) for e in set(exchanges)):
        # Symbols are normalized and exchanges plain names, so "},{" only ever separates two records:
        # dumping the list once and splitting is ~3x faster than one dumps() per row.
        values = [b"{%s}" % part for part in orjson.dumps(rows)[2:-2].split(b"},{")]
    if len(values) != n:
        values = [orjson.dumps(row) for row in rows]
    keys: dict[str, bytes] = {}
    records = [
        (keys.get(s) or keys.setdefault(s, s.encode()), v, received_at)  # record time = receipt time
        for s, v in zip(symbols, values, strict=True)
    ]
    return EncodedBatch(records, cols.rejected, source="replay")


# ---------------------------------------------------------------------------------------------- progress
class ReplayProgress:
    """A rich progress bar (trades, rate, ETA) on a terminal; a log line every few seconds elsewhere."""

    LOG_EVERY_SECONDS = 5.0

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.label = label
        self.trades = 0
        self.rejected = 0
        self.started = time.monotonic()
        self._position: Any = lambda: 0
        self._total = 0
        self._bar: Any = None
        self._task: Any = None
        self._last_log = self.started

    def track(self, position: Any, total: int, unit_rows: bool = False) -> None:
        """Progress is ``position()`` out of ``total`` (bytes, or rows for Parquet)."""
        self._position, self._total = position, max(1, total)
        if not self.enabled:
            return
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[trades]:>12,} trades"),
            TextColumn("{task.fields[rate]:>9,.0f} trades/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self._total, trades=0, rate=0.0)

    def update(self, trades: int, rejected: int = 0) -> None:
        self.trades += trades
        self.rejected += rejected
        now = time.monotonic()
        rate = self.trades / max(now - self.started, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, completed=self._position(), trades=self.trades, rate=rate)
        elif now - self._last_log >= self.LOG_EVERY_SECONDS:
            self._last_log = now
            done = min(1.0, self._position() / self._total) if self._total else 0.0
            eta = (now - self.started) * (1 - done) / done if done > 0 else float("nan")
            log.info(
                "replay %s: %.0f%%, %d trades, %.0f trades/s, ETA %.0fs",
                self.label,
                100 * done,
                self.trades,
                rate,
                eta,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self._total)
            self._bar.stop()
            self._bar = None
        elapsed = time.monotonic() - self.started
        log.info(
            "replay %s: %d trades in %.1fs (%.0f trades/s), %d rejected",
            self.label,
            self.trades,
            elapsed,
            self.trades / max(elapsed, 1e-9),
            self.rejected,
        )


# ---------------------------------------------------------------------------------------------- replay
async def replay_trades(
    settings: Settings,
    path: Path,
    *,
    symbol: str | None = None,
    exchange: str | None = None,
    progress: bool | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[EncodedBatch]:
    """Batches of encoded trades from ``path``, paced by ``REPLAY_SPEED`` (0 = as fast as possible), with
    the replay's progress; the last batch closes every window the file fed (see the module docstring).
    A ``stop`` ends it early, with progress that closes everything only under ``FLUSH_WINDOWS_ON_STOP``.
    About once a second a batch also carries the replay's feed status (source ``replay``), for the API."""
    feed = FeedStatus("replay", CONNECTED, now_ms())
    reported = 0
    batches = _replay(settings, path, symbol=symbol, exchange=exchange, progress=progress, stop=stop)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            now = now_ms()
            feed.traded(len(batch), now)
            if now - reported >= 1000:
                reported = now
                batch.feeds.append(replace(feed))
            yield batch
    feed.enter(ENDED if stop is not None and stop.is_set() else FINISHED, now_ms())
    yield EncodedBatch(source="replay", feeds=[feed])


async def _replay(
    settings: Settings,
    path: Path,
    *,
    symbol: str | None,
    exchange: str | None,
    progress: bool | None,
    stop: asyncio.Event | None,
) -> AsyncGenerator[EncodedBatch, None]:
    path = Path(path)
    speed = settings.replay_speed
    bar = ReplayProgress(path.name, progress)
    reader = read_columns(path, symbol, bar, exchange)
    sentinel = object()
    frontier = ReplayFrontier(int(settings.max_buffer_seconds * 1000))

    def next_encoded() -> Any:
        # reading (Arrow releases the GIL), placing progress and encoding run off the event loop, so the
        # publisher keeps sending
        cols = next(reader, sentinel)
        if cols is sentinel:
            return None
        cuts = frontier.advance(cols.exchange, cols.symbol, cols.timestamp)  # type: ignore[attr-defined]
        return cols, encode(cols, now_ms()), cuts  # type: ignore[arg-type]

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    t0: int | None = None
    w0 = 0.0
    high: int | None = None
    try:
        while not stopped():
            item = await asyncio.to_thread(next_encoded)
            if item is None:
                yield EncodedBatch(source="replay", progress=frontier.progress(complete=True))
                return
            cols, batch, cuts = item
            bar.update(len(batch), len(batch.rejected))
            if not len(batch):
                yield batch
                continue
            # Progress goes where the file's event time puts it (the cuts); pacing may only add slices
            after = {cut.end: cut.progress for cut in cuts}
            ends = [*after, len(batch)]
            due = None
            if speed > 0:
                # pace by the running maximum: disorder never waits
                ts = np.maximum.accumulate(cols.timestamp)
                if high is not None:
                    ts = np.maximum(ts, high)
                high = int(ts[-1])
                if t0 is None:
                    t0, w0 = int(ts[0]), time.monotonic()
                due = (ts - t0) / 1000.0 / speed
                ticks = np.floor(due / TICK_SECONDS).astype(np.int64)
                ends += (np.flatnonzero(np.diff(ticks)) + 1).tolist()
            a = 0
            for b in sorted(set(ends)):
                if due is not None:
                    wait = w0 + float(due[a]) - time.monotonic()
                    if wait > 0:
                        if stop is None:
                            await asyncio.sleep(wait)
                        else:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(stop.wait(), wait)
                if stopped():
                    frontier.published(a)
                    break
                yield EncodedBatch(
                    batch[a:b], batch.rejected if a == 0 else (), source="replay", progress=after.get(b, ())
                )
                a = b
        if stopped():
            yield EncodedBatch(
                source="replay", progress=frontier.progress(complete=settings.flush_windows_on_stop)
            )
    finally:
        with contextlib.suppress(ValueError):  # still running in its thread after a cancel: it ends there
            reader.close()
        bar.close()
