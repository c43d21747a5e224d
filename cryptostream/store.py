"""The read layer: candles, volatility and symbols from the database or the Parquet archive.

The API and the model trainer read through a :class:`ReadStore`; which one is a setting (``DATABASE_URL``
set: the database; otherwise the archive under ``OUTPUT_DIR``). Both return Arrow tables with the schemas
of :mod:`cryptostream.models`, sorted by bucket ascending.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from datetime import datetime
from pathlib import Path

import asyncpg
import pyarrow as pa

from cryptostream import archive
from cryptostream.models import CANDLE_SCHEMA, PREDICTION_SCHEMA, VOLATILITY_SCHEMA

__all__ = ["ArchiveStore", "DatabaseStore", "ReadStore", "open_store"]


class ReadStore(ABC):
    """Read access to what the processor stored. Every table comes back sorted by bucket ascending.

    ``interval`` is a key of :data:`cryptostream.models.INTERVALS` (1s, 1m, 5m, 15m, 1h, 1d); coarser
    candles are rolled up from 1 s candles (continuous aggregates on TimescaleDB, ``date_bin`` on plain
    PostgreSQL, the same roll-up over Parquet). ``limit`` keeps the newest rows of the range.
    Raises :class:`~cryptostream.errors.QueryError` for an unknown interval or ``start > end``.
    """

    name: str = "store"

    @abstractmethod
    async def symbols(self) -> list[str]:
        """Symbols with at least one stored candle."""

    @abstractmethod
    async def candles(
        self,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
        interval: str = "1s",
    ) -> pa.Table:
        """Candles (``CANDLE_SCHEMA``) with ``start <= bucket < end``: the newest ``limit``, ascending."""

    async def latest_candle(self, symbol: str, interval: str = "1s") -> pa.Table:
        """The newest candle (zero or one row)."""
        return await self.candles(symbol, limit=1, interval=interval)

    @abstractmethod
    async def volatility(
        self, symbol: str, start: datetime | None = None, end: datetime | None = None, limit: int = 100
    ) -> pa.Table:
        """Volatility rows (``VOLATILITY_SCHEMA``), newest ``limit`` of the range, ascending."""

    async def predictions(
        self, symbol: str, start: datetime | None = None, end: datetime | None = None, limit: int = 100
    ) -> pa.Table:
        """Prediction rows (``PREDICTION_SCHEMA``), newest ``limit`` of the range, ascending."""
        return PREDICTION_SCHEMA.empty_table()

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class ArchiveStore(ReadStore):
    """Reads the Parquet archive (no database configured)."""

    name = "parquet"

    def __init__(self, root: Path) -> None:
        self.root = root

    async def symbols(self) -> list[str]:
        return await asyncio.to_thread(archive.list_symbols, self.root)

    async def candles(
        self,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
        interval: str = "1s",
    ) -> pa.Table:
        return await asyncio.to_thread(archive.load, self.root, "ohlc", symbol, start, end, limit)

    async def volatility(
        self, symbol: str, start: datetime | None = None, end: datetime | None = None, limit: int = 100
    ) -> pa.Table:
        return await asyncio.to_thread(archive.load, self.root, "volatility", symbol, start, end, limit)


def _table(records: list[asyncpg.Record], schema: pa.Schema) -> pa.Table:
    if not records:
        return schema.empty_table()
    columns = list(zip(*records, strict=True))
    return pa.table(
        {f.name: pa.array(col, f.type) for f, col in zip(schema, columns, strict=True)}, schema=schema
    )


class DatabaseStore(ReadStore):
    """Reads PostgreSQL/TimescaleDB tables written by the processor's database sink."""

    name = "database"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str) -> DatabaseStore:
        return cls(await asyncpg.create_pool(dsn, min_size=1, max_size=8, command_timeout=30))

    async def symbols(self) -> list[str]:
        rows = await self.pool.fetch("SELECT DISTINCT symbol FROM ohlc_1s ORDER BY symbol")
        return [r[0] for r in rows]

    async def _range(
        self,
        table: str,
        columns: list[str],
        schema: pa.Schema,
        symbol: str,
        start: datetime | None,
        end: datetime | None,
        limit: int,
    ) -> pa.Table:
        cols = ", ".join(columns)
        sql = (
            f"SELECT {cols} FROM (SELECT {cols} FROM {table} WHERE symbol = $1 "
            "AND ($2::timestamptz IS NULL OR bucket >= $2) AND ($3::timestamptz IS NULL OR bucket < $3) "
            "ORDER BY bucket DESC LIMIT $4) newest ORDER BY bucket"
        )
        return _table(await self.pool.fetch(sql, symbol, start, end, limit), schema)

    async def candles(
        self,
        symbol: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
        interval: str = "1s",
    ) -> pa.Table:
        return await self._range("ohlc_1s", CANDLE_SCHEMA.names, CANDLE_SCHEMA, symbol, start, end, limit)

    async def volatility(
        self, symbol: str, start: datetime | None = None, end: datetime | None = None, limit: int = 100
    ) -> pa.Table:
        return await self._range(
            "volatility_1s", VOLATILITY_SCHEMA.names, VOLATILITY_SCHEMA, symbol, start, end, limit
        )

    async def ping(self) -> bool:
        try:
            return await self.pool.fetchval("SELECT 1") == 1
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False

    async def close(self) -> None:
        await self.pool.close()


async def open_store(database_dsn: str | None, output_dir: Path) -> ReadStore:
    """The database store when a database is configured, else the archive store."""
    if database_dsn:
        return await DatabaseStore.connect(database_dsn)
    return ArchiveStore(output_dir)
