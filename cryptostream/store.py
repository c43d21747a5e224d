"""The read layer: markets, candles, volatility and predictions from the database or the Parquet archive.

The API and the model trainer read through a :class:`ReadStore`; which one is a setting (``DATABASE_URL``
set: the database, with the archive under ``OUTPUT_DIR`` behind it; otherwise the archive alone). Every
store returns Arrow tables with the schemas of :mod:`cryptostream.models`, sorted by bucket ascending, and
the same rows for the same data. Every read names a market: a venue (exchange) and a symbol.

* 1 s rows are read as stored;
* 1m/5m/1h/1d candles come from the continuous aggregates on TimescaleDB, 15m from ``ohlc_5m``; on plain
  PostgreSQL (or if an aggregate is missing) they are rolled up from ``ohlc_1s`` with ``date_bin``;
  over Parquet by :func:`cryptostream.archive.rollup`. All use one definition: open/close = first/last,
  high/low = max/min, sums, ``vwap = sum(vwap * volume) / sum(volume)``, buckets aligned to the epoch;
* ranges older than the database's first row (dropped by a retention policy, or written before the
  database existed) are read from the archive.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cryptostream import archive
from cryptostream.archive import check_query
from cryptostream.models import CANDLE_SCHEMA, INTERVALS, PREDICTION_SCHEMA, VOLATILITY_SCHEMA

__all__ = ["MARKET_SCHEMA", "ArchiveStore", "DatabaseStore", "ReadStore", "open_store"]

log = logging.getLogger(__name__)

# One row per market with stored candles: its venue, symbol, and the first and last candle's bucket.
MARKET_SCHEMA = pa.schema(
    [
        ("exchange", pa.string()),
        ("symbol", pa.string()),
        ("first", pa.timestamp("ms", tz="UTC")),
        ("last", pa.timestamp("ms", tz="UTC")),
    ]
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ORIGIN = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"  # date_bin origin: buckets aligned like time_bucket's
_CAGGS = {"ohlc_1m", "ohlc_5m", "ohlc_1h", "ohlc_1d"}
# Session settings of the read pool. JIT compiles a plan over many chunks for seconds (a real-time roll-up
# across a year took 11-19 s with jit on, 0.25 s off); custom plans see a query's time bounds, so
# TimescaleDB prunes chunks while planning instead of planning every chunk of the hypertable.
READ_SETTINGS = {"jit": "off", "plan_cache_mode": "force_custom_plan"}
# The first "latest N" window starts on a grid of 1/8 of its span, so it is 1 to 1.125 spans long: its SQL
# (the start is a constant) changes once a grid step, and a roll-up made at query time aggregates few rows
# more than it needs (15 m candles over a year: p50 17 against 28 ms when windows were 1 to 2 spans long).
_GRID = 8
_WIDEN = 5  # recent windows tried before the whole range: 2x limit intervals, then x16 each (x131,072)


class ReadStore(ABC):
    """Read access to what the processor stored. Every table comes back sorted by bucket ascending.

    ``interval`` is a key of :data:`cryptostream.models.INTERVALS` (1s, 1m, 5m, 15m, 1h, 1d); coarser
    candles are rolled up from 1 s candles (continuous aggregates on TimescaleDB, ``date_bin`` on plain
    PostgreSQL, the same roll-up over Parquet). ``limit`` keeps the newest rows of the range. A roll-up
    bucket is in ``[start, end)`` when its start is, and always covers its whole interval. Naive datetimes
    are UTC. Raises :class:`~cryptostream.errors.QueryError` for an unknown interval, ``start > end`` or
    ``limit < 1``.
    """

    name: str = "store"
    unmigrated = False  # the last ping found the store answering without its tables (DatabaseStore)

    @abstractmethod
    async def markets(self) -> pa.Table:
        """Markets with at least one stored candle (``MARKET_SCHEMA``, sorted by exchange and symbol)."""

    async def symbols(self) -> list[str]:
        """Symbols with at least one stored candle, on any venue."""
        return sorted(set((await self.markets())["symbol"].to_pylist()))

    @abstractmethod
    async def candles(
        self,
        exchange: str,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
        interval: str = "1s",
    ) -> pa.Table:
        """Candles (``CANDLE_SCHEMA``) with ``start <= bucket < end``: the newest ``limit``, ascending."""

    async def latest_candle(self, exchange: str, symbol: str, interval: str = "1s") -> pa.Table:
        """The newest candle (zero or one row)."""
        return await self.candles(exchange, symbol, limit=1, interval=interval)

    @abstractmethod
    async def volatility(
        self,
        exchange: str,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> pa.Table:
        """Volatility rows (``VOLATILITY_SCHEMA``), newest ``limit`` of the range, ascending."""

    async def predictions(
        self,
        exchange: str,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> pa.Table:
        """Prediction rows (``PREDICTION_SCHEMA``), newest ``limit`` of the range, ascending."""
        return PREDICTION_SCHEMA.empty_table()

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


# ---------------------------------------------------------------------------------------------- archive
def _unique(
    root: Path,
    kind: str,
    exchange: str,
    symbol: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> pa.Table:
    """Archive rows with one row per key, as the database holds them."""
    return archive.load(root, kind, exchange, symbol, start, end, limit, unique=True)


def _archive_markets(root: Path) -> pa.Table:
    spans = [(e, s, archive.market_span(root, "ohlc", e, s)) for e, s in archive.list_markets(root)]
    rows = [(e, s, first, last) for e, s, (first, last) in spans if first is not None]
    return pa.Table.from_arrays(
        [
            pa.array([r[0] for r in rows], pa.string()),
            pa.array([r[1] for r in rows], pa.string()),
            pa.array([r[2] for r in rows], pa.int64()).cast(MARKET_SCHEMA.field("first").type),
            pa.array([r[3] for r in rows], pa.int64()).cast(MARKET_SCHEMA.field("last").type),
        ],
        schema=MARKET_SCHEMA,
    )


class ArchiveStore(ReadStore):
    """Reads the Parquet archive (no database configured)."""

    name = "parquet"

    def __init__(self, root: Path) -> None:
        self.root = root

    async def markets(self) -> pa.Table:
        return await asyncio.to_thread(_archive_markets, self.root)

    async def candles(
        self,
        exchange: str,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
        interval: str = "1s",
    ) -> pa.Table:
        check_query(interval, start, end, limit)
        return await asyncio.to_thread(
            archive.load_candles, self.root, exchange, symbol, start, end, limit, interval
        )

    async def volatility(
        self,
        exchange: str,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> pa.Table:
        check_query("1s", start, end, limit)
        return await asyncio.to_thread(_unique, self.root, "volatility", exchange, symbol, start, end, limit)

    async def predictions(
        self,
        exchange: str,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> pa.Table:
        check_query("1s", start, end, limit)
        return await asyncio.to_thread(_unique, self.root, "predictions", exchange, symbol, start, end, limit)


# ---------------------------------------------------------------------------------------------- database
# Above this many rows, records become Arrow on a worker thread: the API's /health and small queries do not
# wait behind the conversion on the event loop (below it, the hop costs more than the work).
THREAD_ROWS = 2_000
# From this many rows asked for, candles are read as columns (see _in_columns): below it, wrapping the
# select in an aggregate costs more than it saves (1 row: 0.74 against 0.62 ms; even at 300; 1,000: 2.7
# against 3.1 ms, 1,000 rows read alternately each way on the year's TimescaleDB)
COLUMNS_ROWS = 300
# ... and up to this many: the answer is one row of the protocol, each column one bytea, and PostgreSQL
# refuses values over 1 GB (the trainer reads a market's whole history: 30 million 1 s candles is 240 MB a
# column); above it rows, as before
COLUMNS_MOST = 1_000_000


def _table(records: list[asyncpg.Record], schema: pa.Schema, market: Market) -> pa.Table:
    """Rows read newest first, their columns those of ``schema`` after exchange and symbol, with ``bucket``
    as epoch milliseconds (see :func:`_ms_of`), as an Arrow table oldest first. The market is the same on
    every row, so it does not cross the wire (two of twelve columns: about 0.2 ms of reading 1,000 candles);
    the rows are turned around here rather than sorted again on the server, and become columns in Arrow
    (as one struct array: 0.2 ms less than transposing them in Python)."""
    if not records:
        return schema.empty_table()
    rows = pa.array([tuple(r) for r in reversed(records)], pa.struct(list(schema)[2:]))
    return pa.Table.from_arrays([*_market_columns(market, len(records)), *rows.flatten()], schema=schema)


def _market_columns(market: Market, n: int) -> list[pa.Array]:
    """Exchange and symbol ``n`` times (``pa.repeat``: 16 against 83 us a column of 1,000 from a list)."""
    return [pa.repeat(pa.scalar(market[0], pa.string()), n), pa.repeat(pa.scalar(market[1], pa.string()), n)]


def _in_columns(sql: str, schema: pa.Schema) -> str:
    """``sql`` (rows whose columns are those of ``schema`` after exchange and symbol, all 8-byte numbers)
    as one row: the row count, then each column as the concatenation of its values in PostgreSQL's binary
    form (``int8send``/``float8send``: big-endian 8 bytes; NaN and infinities intact), a NULL as the bits
    of :data:`_NULL` (``string_agg`` would leave it out, and the rows would not line up: the original
    project's candles have no trade count or VWAP). Decoded by :func:`_columns_table` with numpy, no
    Python object per value: reading the newest 1,000 candles took 0.86 ms of Python for 10,000 cells,
    and the server's ``string_agg`` costs about what the driver's row decoding did."""
    fields = list(schema)[2:]
    aliases = ", ".join(f"c{i}" for i in range(len(fields)))
    columns = ", ".join(
        f"string_agg(coalesce({_wire(f.type)}send(c{i}::{_wire(f.type)}), "
        f"'\\x{_NULL[_wire(f.type)]:016x}'::bytea), ''::bytea)"
        for i, f in enumerate(fields)
    )
    return f"SELECT count(*), {columns} FROM ({sql}) r({aliases})"


# The bits standing for NULL: a NaN no arithmetic makes (they make 0x7ff8000000000000), and the least
# int64 (no bucket, trade count or second count is).
_NULL = {"float8": 0x7FF8_DEAD_0000_BEEF, "int8": 0x8000_0000_0000_0000}
_WIDE = {"float8": pa.float64(), "int8": pa.int64()}  # the Arrow type of the same bits


def _wire(kind: pa.DataType) -> str:
    """The PostgreSQL type a column crosses the wire as in :func:`_in_columns`."""
    return "float8" if pa.types.is_floating(kind) else "int8"


def _columns_table(row: asyncpg.Record, schema: pa.Schema, market: Market) -> pa.Table:
    """The answer of :func:`_in_columns` as an Arrow table oldest first. ``string_agg`` sees rows in the
    order its input yields them, which SQL does not promise, but every column the same order (one row at
    a time through all of them): sorting by bucket puts them back together."""
    n = row[0]
    if not n:
        return schema.empty_table()
    fields = list(schema)[2:]
    # All columns at once, as 64-bit words (one numpy call each step, not one per column): NULLs found,
    # bytes swapped, rows put oldest first (a view when they came newest first, as selected).
    words = np.frombuffer(b"".join(row[1:]), ">u8").reshape(len(fields), n)
    bucket = words[0].view(">i8")
    order: Any = (
        slice(None, None, -1) if (bucket[1:] < bucket[:-1]).all() else np.argsort(bucket, kind="stable")
    )
    native = np.ascontiguousarray(words.astype(np.uint64)[:, order])
    null = words == np.array([[_NULL[_wire(f.type)]] for f in fields], np.uint64)
    nulls = null.any(axis=1)
    arrays = []
    for i, field in enumerate(fields):
        valid = pa.py_buffer(np.packbits(~null[i][order], bitorder="little")) if nulls[i] else None
        kind = field.type if field.name == "bucket" else _WIDE[_wire(field.type)]
        array = pa.Array.from_buffers(kind, n, [valid, pa.py_buffer(native[i])])  # the same 64 bits
        arrays.append(array if array.type == field.type else array.cast(field.type))
    return pa.Table.from_arrays([*_market_columns(market, n), *arrays], schema=schema)


def _ms_of(column: str) -> str:
    """SQL for a timestamptz as epoch milliseconds: integers cross the wire and become Arrow timestamps
    without a Python datetime per row (half the cost of reading 1,000 candles). ``date_part`` is float8
    arithmetic where ``extract`` is numeric (0.4 against 0.75 ms of the server's time for 1,000 rows); a
    float8 holds today's epoch seconds to a quarter of a microsecond, so whole milliseconds come out exact."""
    return f"(date_part('epoch', {column}) * 1000)::int8"


def _ms(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else _EPOCH + timedelta(milliseconds=ms)


def _ceil(value: datetime | None, step_ms: int) -> int | None:
    """The first multiple of ``step_ms`` (epoch ms) at or after ``value``."""
    if value is None:
        return None
    delta = value - _EPOCH
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return -(-us // (step_ms * 1000)) * step_ms


def _where(lo: datetime | None, hi: datetime | None) -> tuple[str, list[datetime]]:
    """``exchange = $1 AND symbol = $2`` plus only the bounds given, so the planner sees an index range."""
    sql, args = "exchange = $1 AND symbol = $2", []
    if lo is not None:
        args.append(lo)
        sql += f" AND bucket >= ${len(args) + 2}"
    if hi is not None:
        args.append(hi)
        sql += f" AND bucket < ${len(args) + 2}"
    return sql, args


_VWAP = "CASE WHEN volume > 0 THEN notional / volume ELSE close END AS vwap"
_HEAD_MS = f"{_ms_of('bucket')}, open, high, low, close, volume, trade_count"
_SIDES = "buy_volume, sell_volume"

# (WHERE clause, LIMIT placeholder) -> SQL of the newest rows first, columns as :func:`_table` takes them
Select = Callable[[str, str], str]
Market = tuple[str, str]  # (exchange, symbol)
_SAME_MARKET = "FROM ohlc_1s o WHERE o.exchange = m.exchange AND o.symbol = m.symbol"
# The stored markets as ``m``: a loose index scan (PostgreSQL), or DISTINCT, which TimescaleDB runs as a
# SkipScan of each chunk's index.
_MARKETS_LOOSE = (
    "WITH RECURSIVE m(exchange, symbol) AS ("
    "(SELECT exchange, symbol FROM ohlc_1s ORDER BY exchange, symbol LIMIT 1) UNION ALL "
    "SELECT n.exchange, n.symbol FROM m, LATERAL (SELECT exchange, symbol FROM ohlc_1s "
    "WHERE (exchange, symbol) > (m.exchange, m.symbol) ORDER BY exchange, symbol LIMIT 1) n)"
)
_MARKETS_SKIP = "WITH m AS (SELECT DISTINCT exchange, symbol FROM ohlc_1s)"


@dataclass(frozen=True, slots=True)
class _Plan:
    """How candles of one interval are read.

    ``direct``: rows of ``table`` are the candles (``ohlc_1s``, or a continuous aggregate with ``notional``).
    ``first_last``: rolled up from a continuous aggregate with TimescaleDB's first()/last().
    ``date_bin``: rolled up from ``ohlc_1s`` in plain SQL (open/close looked up at the first/last bucket).
    """

    method: str
    table: str
    interval_ms: int

    def select(self, where: str, limit: str) -> str:
        iv = f"INTERVAL '{self.interval_ms // 1000} seconds'"
        if self.method == "direct":
            vwap = "vwap" if self.table == "ohlc_1s" else _VWAP
            return (
                f"SELECT {_HEAD_MS}, {vwap}, {_SIDES} FROM {self.table} "
                f"WHERE {where} ORDER BY bucket DESC LIMIT {limit}"
            )
        if self.method == "first_last":
            return (
                f"SELECT {_HEAD_MS}, {_VWAP}, {_SIDES} FROM ("
                f"SELECT date_bin({iv}, bucket, {_ORIGIN}) AS b, first(open, bucket), "
                "max(high), min(low), last(close, bucket), sum(volume), sum(trade_count)::bigint, "
                f"sum(notional), sum(buy_volume), sum(sell_volume) FROM {self.table} "
                f"WHERE {where} GROUP BY b ORDER BY b DESC LIMIT {limit}"
                ") g(bucket, open, high, low, close, volume, trade_count, notional, "
                "buy_volume, sell_volume) ORDER BY bucket DESC"
            )
        return (
            f"SELECT {_ms_of('g.b')}, o.open, g.high, g.low, c.close, g.volume, "
            "g.trade_count, CASE WHEN g.volume > 0 THEN g.notional / g.volume ELSE c.close END, "
            "g.buy_volume, g.sell_volume "
            f"FROM (SELECT exchange, symbol, date_bin({iv}, bucket, {_ORIGIN}) AS b, "
            "min(bucket) AS first_at, max(bucket) AS last_at, max(high) AS high, min(low) AS low, "
            "sum(volume) AS volume, "
            "sum(trade_count)::bigint AS trade_count, sum(vwap * volume) AS notional, "
            "sum(buy_volume) AS buy_volume, sum(sell_volume) AS sell_volume "
            f"FROM ohlc_1s WHERE {where} GROUP BY exchange, symbol, b ORDER BY b DESC LIMIT {limit}) g "
            "JOIN ohlc_1s o ON o.exchange = g.exchange AND o.symbol = g.symbol AND o.bucket = g.first_at "
            "JOIN ohlc_1s c ON c.exchange = g.exchange AND c.symbol = g.symbol AND c.bucket = g.last_at "
            "ORDER BY g.b DESC"
        )


class DatabaseStore(ReadStore):
    """Reads PostgreSQL/TimescaleDB tables written by the processor's database sink.

    ``archive_root`` (the Parquet archive) serves ranges older than the database's first row.
    """

    name = "database"

    def __init__(self, pool: asyncpg.Pool, archive_root: Path | None = None) -> None:
        self.pool = pool
        self.archive_root = archive_root
        self.backend: str | None = None  # "timescaledb" or "postgresql", known after the first read
        self._plans: dict[str, _Plan] | None = None
        # (kind, market) -> the newest bucket (epoch ms) seen of it: where "latest N" windows end (_newest)
        self._newest_seen: dict[tuple[str, Market], int] = {}
        self.unmigrated = False  # the last ping found no candles table (logged once until it is back)

    @classmethod
    async def connect(cls, dsn: str, archive_root: Path | None = None, *, max_size: int = 8) -> DatabaseStore:
        """A store on a new pool (``max_size=1`` for servers that take one connection at a time)."""
        pool = await asyncpg.create_pool(
            dsn,
            # no floor: a pool keeping one connection retries it through an outage, logging a traceback
            # each time; the store probe's ping each second keeps a connection open anyway
            min_size=0,
            max_size=max_size,
            command_timeout=30,
            server_settings=READ_SETTINGS,
            reset=_keep_session,
        )
        return cls(pool, archive_root)

    async def _detect(self, conn: asyncpg.Connection) -> dict[str, _Plan]:
        """Which continuous aggregates exist decides how each interval is read (looked up once)."""
        if self._plans is not None:
            return self._plans
        caggs: set[str] = set()
        if await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"):
            rows = await conn.fetch(
                "SELECT view_name FROM timescaledb_information.continuous_aggregates "
                "WHERE view_schema = current_schema()"
            )
            caggs = {r[0] for r in rows} & _CAGGS
            self.backend = "timescaledb"
        else:
            self.backend = "postgresql"
        plans = {}
        for interval, ms in INTERVALS.items():
            view = f"ohlc_{interval}"
            if interval == "1s":
                plans[interval] = _Plan("direct", "ohlc_1s", ms)
            elif view in caggs:
                plans[interval] = _Plan("direct", view, ms)
            elif interval == "15m" and "ohlc_5m" in caggs:
                plans[interval] = _Plan("first_last", "ohlc_5m", ms)
            else:
                plans[interval] = _Plan("date_bin", "ohlc_1s", ms)
        self._plans = plans
        return plans

    async def read_plan(self, interval: str) -> tuple[str, str]:
        """(method, relation) candles of ``interval`` are read with, e.g. ``("direct", "ohlc_1m")`` on
        TimescaleDB or ``("date_bin", "ohlc_1s")`` on plain PostgreSQL (for status pages and tests)."""
        check_query(interval, None, None, None)
        async with self.pool.acquire() as conn:
            plan = (await self._detect(conn))[interval]
        return plan.method, plan.table

    async def markets(self) -> pa.Table:
        # The markets, then each one's first and last bucket from the key's index. On PostgreSQL a loose
        # index scan over the (exchange, symbol, bucket) key: a few probes per market, not a scan of every
        # row. On TimescaleDB each step of that scan probed every chunk's index (50 ms a market over a year
        # of chunks, and the API's catalog asks every few seconds); its SkipScan does the same probes chunk
        # by chunk, once: 39-52 against 144-201 ms of the server's time for 2 markets over 368 chunks.
        async with self.pool.acquire() as conn:
            await self._detect(conn)
            markets = _MARKETS_SKIP if self.backend == "timescaledb" else _MARKETS_LOOSE
            rows = await conn.fetch(
                f"{markets} SELECT exchange, symbol, "
                f"(SELECT {_ms_of('bucket')} {_SAME_MARKET} ORDER BY bucket LIMIT 1), "
                f"(SELECT {_ms_of('bucket')} {_SAME_MARKET} ORDER BY bucket DESC LIMIT 1) FROM m"
            )
        spans = {(r[0], r[1]): (r[2], r[3]) for r in rows}
        for market, (_, last) in spans.items():  # where its "latest N" windows end (``_newest``)
            if last is not None:
                self._saw(("ohlc", market), last)
        if self.archive_root is not None:
            older = await asyncio.to_thread(_archive_markets, self.archive_root)
            for e, s, f, last in zip(
                older["exchange"].to_pylist(),
                older["symbol"].to_pylist(),
                older["first"].cast(pa.int64()).to_pylist(),
                older["last"].cast(pa.int64()).to_pylist(),
                strict=True,
            ):
                db = spans.get((e, s))
                spans[(e, s)] = (f, last) if db is None else (min(f, db[0]), max(last, db[1]))
        keys = sorted(spans)
        return pa.Table.from_arrays(
            [
                pa.array([k[0] for k in keys], pa.string()),
                pa.array([k[1] for k in keys], pa.string()),
                pa.array([spans[k][0] for k in keys], pa.int64()).cast(MARKET_SCHEMA.field("first").type),
                pa.array([spans[k][1] for k in keys], pa.int64()).cast(MARKET_SCHEMA.field("last").type),
            ],
            schema=MARKET_SCHEMA,
        )

    async def candles(
        self,
        exchange: str,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
        interval: str = "1s",
    ) -> pa.Table:
        _, lo, hi = check_query(interval, start, end, limit)
        market = (exchange, symbol)
        async with self.pool.acquire() as conn:
            plan = (await self._detect(conn))[interval]
            if plan.method == "direct":
                table = await self._newest(
                    conn, "ohlc", plan.select, CANDLE_SCHEMA, market, lo, hi, limit, plan.interval_ms
                )
            elif self.backend == "timescaledb":
                # A roll-up at query time (15 m from 5 m) in recent windows too: its edge queries and a
                # window bound as a parameter planned every chunk (122 ms of latest 1,000 over a year).
                # Bounds on bucket edges, so windows (multiples of the interval) hold whole buckets.
                iv = plan.interval_ms
                lo_ms, hi_ms = _ceil(lo, iv), _ceil(hi, iv)
                if lo_ms is not None and hi_ms is not None and lo_ms >= hi_ms:
                    table = CANDLE_SCHEMA.empty_table()
                else:
                    table = await self._newest(
                        conn, "ohlc", plan.select, CANDLE_SCHEMA, market, _at(lo_ms), _at(hi_ms), limit, iv
                    )
            else:
                table = await _rolled(conn, plan, market, lo, hi, limit)
            # a row of the database before the range's first bucket, not before ``lo``: rows between
            # ``lo`` and that bucket belong to a bucket begun before the range, so to none of its own
            since = _at(_ceil(lo, plan.interval_ms))
            first = await self._first_bucket(conn, plan.table, market, table, limit, since)
            # The database's first row in the range (not a row before it, found to say the archive has
            # nothing to add): is the bucket holding it whole?
            if (
                first[0]
                and first[1] is not None
                and plan.interval_ms > 1000
                and (since is None or first[1] >= since)
            ):
                edge = _ms(first[1]) - _ms(first[1]) % plan.interval_ms
                if await self._partial(conn, market, edge, plan.interval_ms):
                    table = table.filter(pc.not_equal(table["bucket"].cast(pa.int64()), edge))
                    first = (True, _at(edge + plan.interval_ms))  # that bucket is the archive's too
        return await self._older(table, "ohlc", market, lo, hi, limit, interval, first)

    async def _partial(self, conn: asyncpg.Connection, market: Market, edge: int, interval_ms: int) -> bool:
        """Whether the bucket ``[edge, edge + interval_ms)`` holding the database's first row lacks seconds
        the archive holds before that row: a database added to a deployment that ran on the archive alone
        begins mid-bucket, and its minute, hour or day there holds only its own part (a reviewer's 1 d
        candle: 5,370 of 7,200 units of volume). The archive is written alongside the database, so its
        bucket is the whole one. A database whose 1 s rows of the bucket are gone (retention; its roll-ups
        were made while they were there) is taken as whole."""
        assert self.archive_root is not None
        lo, hi = _at(edge), _at(edge + interval_ms)
        assert lo is not None and hi is not None
        first = await conn.fetchval(  # bounds as constants: TimescaleDB plans the bucket's chunks alone
            "SELECT bucket FROM ohlc_1s WHERE exchange = $1 AND symbol = $2 AND bucket >= "
            f"TIMESTAMPTZ '{lo.isoformat()}' AND bucket < TIMESTAMPTZ '{hi.isoformat()}' "
            "ORDER BY bucket LIMIT 1",
            *market,
        )
        if first is None or first <= lo:
            return False
        if not await self._archive_before(("ohlc", *market), first):
            return False
        before = await asyncio.to_thread(
            archive.load_candles, self.archive_root, market[0], market[1], lo, first, 1, "1s"
        )
        return bool(before.num_rows)

    async def volatility(
        self,
        exchange: str,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> pa.Table:
        market = (exchange, symbol)
        return await self._rows("volatility_1s", "volatility", VOLATILITY_SCHEMA, market, start, end, limit)

    async def predictions(
        self,
        exchange: str,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> pa.Table:
        market = (exchange, symbol)
        return await self._rows("predictions", "predictions", PREDICTION_SCHEMA, market, start, end, limit)

    async def _rows(
        self,
        table_name: str,
        kind: str,
        schema: pa.Schema,
        market: Market,
        start: datetime | None,
        end: datetime | None,
        limit: int,
    ) -> pa.Table:
        _, lo, hi = check_query("1s", start, end, limit)
        out = ", ".join(_ms_of(c) if c == "bucket" else c for c in schema.names[2:])
        key = "bucket DESC, horizon_seconds DESC" if kind == "predictions" else "bucket DESC"

        def select(where: str, limit_param: str) -> str:
            return f"SELECT {out} FROM {table_name} WHERE {where} ORDER BY {key} LIMIT {limit_param}"

        async with self.pool.acquire() as conn:
            await self._detect(conn)
            table = await self._newest(conn, kind, select, schema, market, lo, hi, limit, 1000)
            first = await self._first_bucket(conn, table_name, market, table, limit, _at(_ceil(lo, 1000)))
        return await self._older(table, kind, market, lo, hi, limit, "1s", first)

    async def _newest(
        self,
        conn: asyncpg.Connection,
        kind: str,
        select: Select,
        schema: pa.Schema,
        market: Market,
        lo: datetime | None,
        hi: datetime | None,
        limit: int,
        step_ms: int,
    ) -> pa.Table:
        """The newest ``limit`` rows of ``[lo, hi)``. On TimescaleDB first from a recent window (so only its
        chunks are planned and read: "latest 1000" must not cost more with a year of history), widened x16
        while it holds fewer rows; every window is open towards newer rows, so whatever it holds are the
        newest, and the last try is the whole range. A window starts on a grid (:data:`_GRID`, then its
        span; multiples of ``step_ms``, so windows hold whole buckets of a roll-up): its SQL, which holds
        the start as a constant, is the same from one request to the next, and the server parses and
        describes it once, not per request (0.5-0.9 ms of 3-4).

        Windows end now, or at the newest row this store has seen of the market (``kind``: its candles,
        volatility or predictions), if older: a market whose rows stopped (a venue down for a day, a
        database of history) would otherwise miss every recent window and pay for each, up to planning
        every chunk. What a read returns never depends on that anchor, only what it costs: a window holds
        the newest rows whatever its start."""
        if self.backend != "timescaledb":
            return await _direct(conn, select, schema, market, lo, hi, limit)
        key = (kind, market)
        top = _ms(hi or datetime.now(UTC))
        seen = self._newest_seen.get(key)
        if seen is not None:
            top = min(top, seen + step_ms)
        floor = _ms(lo) if lo is not None else 0
        span = 2 * limit * step_ms
        grid = max(span // _GRID // step_ms, 1) * step_ms  # whole steps
        for _ in range(_WIDEN):
            since = (top - span) // grid * grid
            if since <= floor:
                break
            table = await _direct(conn, select, schema, market, None, hi, limit, since=_at(since))
            if table.num_rows >= limit:
                self._saw(key, table.column("bucket")[-1].value)
                return table
            span *= 16
            grid = span  # wider windows aligned as wide: no more tries than before the grid (1 d x 400)
        table = await _direct(conn, select, schema, market, lo, hi, limit)
        if table.num_rows:
            self._saw(key, table.column("bucket")[-1].value)
        return table

    def _saw(self, key: tuple[str, Market], newest_ms: int) -> None:
        """Remember a bucket (epoch ms) of the market's rows, if newer than any seen."""
        if newest_ms > self._newest_seen.get(key, newest_ms - 1):
            self._newest_seen[key] = newest_ms

    async def _first_bucket(
        self,
        conn: asyncpg.Connection,
        table_name: str,
        market: Market,
        table: pa.Table,
        limit: int,
        lo: datetime | None,
    ) -> tuple[bool, datetime | None]:
        """(whether the archive may have to fill in, where the database's rows of ``market`` begin: its
        first bucket, or any bucket before ``lo``, the range's first bucket; None when it holds none before
        the range's end).

        A short answer (fewer rows than ``limit``) holds every row of its range, so without ``lo`` its
        oldest row is the database's first. With ``lo`` what is left to know is whether the database holds
        a row before ``lo``, looked for in windows back from it (a day, then x16) with constant bounds, so
        that TimescaleDB plans only their chunks; every chunk is planned only when none holds one (the
        archive's case). Asking for the first row outright planned every chunk for every short answer:
        151 ms for the last 10 minutes of 1 s candles over a year's chunks, 2.7 ms without the archive."""
        if self.archive_root is None or table.num_rows >= limit:
            return False, None
        oldest = _at(table.column("bucket")[0].value) if table.num_rows else None
        if lo is None:
            return True, oldest
        before = f"SELECT bucket FROM {table_name} WHERE exchange = $1 AND symbol = $2 AND bucket < "
        if self.backend == "timescaledb":
            span = timedelta(days=1)
            for _ in range(3):
                window = (
                    f"TIMESTAMPTZ '{lo.isoformat()}' AND bucket >= TIMESTAMPTZ '{(lo - span).isoformat()}'"
                )
                found = await conn.fetchval(f"{before}{window} ORDER BY bucket DESC LIMIT 1", *market)
                if found is not None:
                    return True, found
                span *= 16
        found = await conn.fetchval(f"{before}$3 ORDER BY bucket LIMIT 1", *market, lo)
        return True, found if found is not None else oldest

    async def _older(
        self,
        table: pa.Table,
        kind: str,
        market: Market,
        lo: datetime | None,
        hi: datetime | None,
        limit: int,
        interval: str,
        first: tuple[bool, datetime | None],
    ) -> pa.Table:
        """Prepend what the archive holds before the database's first row (a retention policy dropped it,
        or it predates the database). The bucket holding that first row is the database's, unless it is
        partial (:meth:`_partial`: then ``first`` names the bucket after it)."""
        needed, first_bucket = first
        if not needed or self.archive_root is None:
            return table
        cut = hi
        if first_bucket is not None:
            iv = INTERVALS[interval]
            edge = _EPOCH + timedelta(milliseconds=_ms(first_bucket) - _ms(first_bucket) % iv)
            cut = edge if hi is None else min(hi, edge)
        if lo is not None and cut is not None and lo >= cut:
            return table
        if cut is not None and not await self._archive_before((kind, *market), cut):
            return table
        want = limit - table.num_rows
        exchange, symbol = market
        if kind == "ohlc":
            older = await asyncio.to_thread(
                archive.load_candles, self.archive_root, exchange, symbol, lo, cut, want, interval
            )
        else:
            older = await asyncio.to_thread(_unique, self.archive_root, kind, exchange, symbol, lo, cut, want)
        if older.num_rows == 0:
            return table
        return pa.concat_tables([older.cast(table.schema), table]).combine_chunks()

    async def _archive_before(self, of: tuple[str, str, str], cut: datetime) -> bool:
        """Whether the archive may hold rows of (kind, exchange, symbol) before ``cut``: its first bucket,
        from the spans of its files, read once each (:func:`cryptostream.archive.market_span`). Without it
        every short answer read the day's fresh files once more (a dashboard's 10 markets: 80 -> 400 ms in
        a minute of a 130-market venue, growing with the files until their hour was merged)."""
        assert self.archive_root is not None
        first, _ = await asyncio.to_thread(archive.market_span, self.archive_root, *of)
        return first is not None and first < _ms(cut)

    async def ping(self) -> bool:
        """Whether the database answers and still has the candles table: a schema dropped under a running
        API failed every read while ``/health`` said healthy (a bare ``SELECT 1`` still answered)."""
        try:
            migrated = await self.pool.fetchval("SELECT to_regclass('ohlc_1s') IS NOT NULL")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        if not migrated and not self.unmigrated:
            log.warning("the database has no ohlc_1s table (dropped? run `cryptostream migrate`)")
        self.unmigrated = not migrated
        return bool(migrated)

    async def close(self) -> None:
        await self.pool.close()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the read pool does to a connection it takes back: nothing. Reads never SET, LISTEN, lock or
    keep a cursor, and asyncpg itself still rolls back a transaction left open; its default reset (RESET
    ALL, CLOSE ALL, UNLISTEN, advisory unlocks) is one more round trip per read, 0.5-0.8 ms of the 4.5 of
    reading the newest 1,000 candles (``bench/bench_timescale.py``)."""


async def _direct(
    conn: asyncpg.Connection,
    select: Select,
    schema: pa.Schema,
    market: Market,
    lo: datetime | None,
    hi: datetime | None,
    limit: int,
    since: datetime | None = None,
) -> pa.Table:
    """``since``: a lower bound written into the SQL as a constant. TimescaleDB excludes chunks while
    planning only for constants: a parameter leaves every chunk of the hypertable to plan (about 180 ms at
    366 chunks on the test server, against under 1 ms)."""
    where, args = _where(lo, hi)
    if since is not None:
        where += f" AND bucket >= TIMESTAMPTZ '{since.isoformat()}'"
    sql = select(where, f"${len(args) + 3}")
    if schema is CANDLE_SCHEMA and COLUMNS_ROWS <= limit <= COLUMNS_MOST:  # 8-byte numbers (not predictions)
        return _columns_table(
            await conn.fetchrow(_in_columns(sql, schema), *market, *args, limit), schema, market
        )
    records = await conn.fetch(sql, *market, *args, limit)
    if len(records) >= THREAD_ROWS:  # a Python value per cell: on a thread, so the event loop keeps turning
        return await asyncio.to_thread(_table, records, schema, market)
    return _table(records, schema, market)


async def _rolled(
    conn: asyncpg.Connection,
    plan: _Plan,
    market: Market,
    lo: datetime | None,
    hi: datetime | None,
    limit: int,
) -> pa.Table:
    """A roll-up computed at query time on plain PostgreSQL (TimescaleDB's go through ``_newest``: its
    edge queries here plan every chunk of a hypertable).

    Source rows with ``ceil(start) <= t < ceil(end)`` make exactly the buckets with
    ``start <= bucket < end``. For the newest ``limit`` buckets only the rows of the last ``limit``
    intervals are aggregated, a window widened (x4) while gaps leave fewer buckets than asked for.
    """
    iv = plan.interval_ms
    lo_ms, hi_ms = _ceil(lo, iv), _ceil(hi, iv)
    if lo_ms is not None and hi_ms is not None and lo_ms >= hi_ms:
        return CANDLE_SCHEMA.empty_table()
    where, args = _where(_at(lo_ms), _at(hi_ms))
    edge = f"SELECT bucket FROM {plan.table} WHERE {where} ORDER BY bucket"
    top = await conn.fetchval(edge + " DESC LIMIT 1", *market, *args)
    if top is None:
        return CANDLE_SCHEMA.empty_table()
    bottom = _ms(await conn.fetchval(edge + " LIMIT 1", *market, *args))
    top_bucket = _ms(top) - _ms(top) % iv
    span = limit * iv
    while True:
        lower = top_bucket - span + iv
        whole = lower <= bottom  # the window reaches the first row: no narrower one holds more buckets
        window_start = lo_ms if whole else lower
        table = await _direct(conn, plan.select, CANDLE_SCHEMA, market, _at(window_start), _at(hi_ms), limit)
        if whole or table.num_rows >= limit:
            return table
        span *= 4


async def open_store(database_dsn: str | None, output_dir: Path) -> ReadStore:
    """The database store (the archive behind it) when a database is configured, else the archive store."""
    if database_dsn:
        return await DatabaseStore.connect(database_dsn, archive_root=output_dir)
    return ArchiveStore(output_dir)
