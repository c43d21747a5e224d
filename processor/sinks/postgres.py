"""PostgreSQL/TimescaleDB sink: binary COPY into a staging table, then one upsert per table.

COPY is the fast way in; the upsert keyed by (exchange, symbol, bucket) makes a replayed checkpoint overwrite
identical values instead of adding rows, which is what exactly-once needs (a row whose values did not
change is left alone, so a replay writes no new row versions). The COPY stream is PostgreSQL's binary
format built with NumPy (:mod:`processor.sinks.pgbinary`): exact float bytes, and neither side spends time
formatting or parsing text. Arrow's CSV remains the fallback for a column type the encoder does not know.
On TimescaleDB, candles written into buckets a continuous aggregate already materialized are refreshed
there right after they commit (:mod:`processor.sinks.rollups`), so every roll-up answers from all of them.
"""

from __future__ import annotations

import asyncio
import io
import logging

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cryptostream.errors import SinkWriteError
from processor.sinks import pgbinary
from processor.sinks.base import FlushBatch, Sink
from processor.sinks.rollups import RollupRefresh

__all__ = ["TABLES", "PostgresSink", "bucket_span"]

log = logging.getLogger(__name__)

# Errors that say "try again": PostgreSQL aborted this transaction to let a conflicting one through, or
# TimescaleDB refused a refresh while a policy refreshes an overlapping window.
TRANSIENT = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.LockNotAvailableError)
WRITE_ATTEMPTS = 5  # waits 0.1, 0.2, 0.4, 0.8 s; beyond that the checkpoint fails and is retried

# kind -> (table, key columns)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ohlc": ("ohlc_1s", ("exchange", "symbol", "bucket")),
    "volatility": ("volatility_1s", ("exchange", "symbol", "bucket")),
    "predictions": ("predictions", ("exchange", "symbol", "bucket", "horizon_seconds")),
}


def _csv(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buf.getvalue()


class PostgresSink(Sink):
    name = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._rollups: RollupRefresh | None = None

    async def start(self) -> None:
        try:
            # min_size=0: a floor is retried through an outage with a traceback each time (the sink says
            # the outage itself); checkpoints every few seconds keep a connection open anyway
            self._pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=2, command_timeout=120)
            async with self._pool.acquire() as conn:
                self._rollups = await RollupRefresh.detect(conn)
        except (OSError, asyncpg.PostgresError) as exc:
            raise SinkWriteError(f"cannot connect to the database: {exc}") from exc

    async def write(self, batch: FlushBatch) -> None:
        """One checkpoint's rows in one transaction, then the roll-ups they touch. A deadlock or a
        serialization failure (another session, such as a TimescaleDB compression or retention job, locking
        the same chunks in another order), or a refresh refused while a policy refreshes, is retried here:
        the write is an idempotent upsert, so running it again is exactly what a retried checkpoint would
        do, without failing the checkpoint."""
        if self._pool is None:
            raise SinkWriteError("PostgresSink.write before start()")
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                await self._write(self._pool, batch)
                return
            except TRANSIENT as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise SinkWriteError(f"database write failed {attempt} times: {exc}") from exc
                log.warning(
                    "database write: %s; retrying (attempt %d of %d)",
                    str(exc).splitlines()[0],
                    attempt + 1,
                    WRITE_ATTEMPTS,
                )
                await asyncio.sleep(0.1 * 2 ** (attempt - 1))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise SinkWriteError(f"database write failed: {exc}") from exc

    async def _write(self, pool: asyncpg.Pool, batch: FlushBatch) -> None:
        async with pool.acquire() as conn:
            async with conn.transaction():
                for kind, (table_name, keys) in TABLES.items():
                    table = batch.concat(kind)
                    if table is None:
                        continue
                    await upsert(conn, table_name, keys, table)
            candles = batch.concat("ohlc")
            if self._rollups is not None and candles is not None:
                await self._rollups.after_write(conn, *bucket_span(candles))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def bucket_span(table: pa.Table) -> tuple[int, int]:
    """(first, last) bucket of ``table``, epoch ms."""
    span = pc.min_max(table["bucket"].cast(pa.int64()))
    return span["min"].as_py(), span["max"].as_py()


def _last_per_key(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """One row per key, the last one (a batch holding a checkpoint twice): ON CONFLICT DO UPDATE cannot
    touch a row twice in one statement. Cheap when there are no duplicates, which is the usual case."""
    positions = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    last = positions.group_by(list(keys), use_threads=False).aggregate([("_row", "max")])
    if last.num_rows == table.num_rows:
        return table
    return table.take(pa.array(np.sort(last["_row_max"].to_numpy())))


async def upsert(conn: asyncpg.Connection, table_name: str, keys: tuple[str, ...], table: pa.Table) -> None:
    """COPY ``table`` into a temporary twin of ``table_name`` and upsert it in one statement."""
    columns = table.column_names
    table = _last_per_key(table, keys)
    staging = f"_stage_{table_name}"
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table_name} INCLUDING DEFAULTS) "
        "ON COMMIT DELETE ROWS"
    )
    if pgbinary.supports(table):
        stream, fmt = pgbinary.encode(table), "binary"
    else:
        stream, fmt = _csv(table), "csv"
    await conn.copy_to_table(staging, source=io.BytesIO(stream), columns=columns, format=fmt)
    values = [c for c in columns if c not in keys]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
    target = ", ".join(f"{table_name}.{c}" for c in values)
    excluded = ", ".join(f"EXCLUDED.{c}" for c in values)
    cols = ", ".join(columns)
    await conn.execute(
        f"INSERT INTO {table_name} ({cols}) SELECT {cols} FROM {staging} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates} "
        f"WHERE ({target}) IS DISTINCT FROM ({excluded})"
    )
