"""Roll-ups kept by their writer: every checkpoint's candles reach the 1m/5m/1h/1d aggregates it touches.

A continuous aggregate answers buckets before its *watermark* from materialized rows and newer ones from
``ohlc_1s`` in real time. Left to its refresh policies, which only look at the last days
(:mod:`cryptostream.policies`), rows written into a materialized bucket (a reprocess, a processor catching
up after an outage, an import) stay invisible until a policy runs, and rows older than the policy window
when it first runs (a replay of last month) are skipped for good: the watermark passes them unmaterialized.
So right after its rows commit, the writer refreshes, per aggregate, one window of whole buckets:

* from the earliest of its rows' first bucket and the watermark (buckets written since the last refresh),
* to the bucket of its newest row, exclusive: that bucket may still fill and stays real time; unless it is
  older than the policies' window (nothing else would ever materialize it), then it is included, and a later
  row in it is below the watermark and refreshes it again;
* rows in already materialized buckets are recomputed there, except below the raw retention horizon:
  retention may have dropped the rest of such a bucket's rows, and a refresh would recompute it from the
  late ones alone, so those roll-ups stay as they were (the late 1 s rows are stored all the same); and
  never below the level's own retention horizon (``ROLLUP_RETENTION_DAYS``): a bucket brought back there
  would make the aggregate look whole from it, hiding the days before from the archive reads. Horizons
  include those of policies since replaced (:func:`cryptostream.policies.horizons`).

Writers refresh one at a time (a session advisory lock, :data:`REFRESH_LOCK`, from reading the watermarks to
the last refresh): with several processors, one's refresh could materialize a bucket from a snapshot taken
before another's rows in it committed, while that other, reading the watermark before the refresh committed,
took the bucket for real time and left it; the bucket then lacked those rows until a refresh policy ran.
Serialized, the later writer sees the new watermark and recomputes the bucket, or the refresh sees its rows.

On the live path that is one catalog query per checkpoint and a refresh of one bucket whenever a write
crosses a bucket boundary: the work the refresh policies would do, at the time it is due, whether or not the
server's background jobs run.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from cryptostream.policies import AGGREGATES, HORIZONS_SQL, JOB_ONLY_HORIZONS_SQL, REFRESH_DAYS

__all__ = ["RollupRefresh"]

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_MS = "(extract(epoch FROM bucket) * 1000)::int8"
REFRESH_MS = REFRESH_DAYS * 86_400_000  # the refresh policies' window
REFRESH_LOCK = 0x6372_7970_746F_0001  # pg_advisory_lock key of writers' refreshes (see the module docstring)


def _floor(ms: int, step: int) -> int:
    return ms - ms % step


def _ceil(ms: int, step: int) -> int:
    return -(-ms // step) * step


def _literal(ms: int) -> str:
    return f"TIMESTAMPTZ '{(_EPOCH + timedelta(milliseconds=ms)).isoformat()}'"


@dataclass(slots=True)
class RollupRefresh:
    """The aggregates over ``ohlc_1s`` and how to read their watermarks (see the module docstring)."""

    widths: dict[str, int]  # view -> bucket width, ms
    functions: str  # the schema of TimescaleDB's internal functions (renamed in 2.12)
    horizons_sql: str = HORIZONS_SQL
    # view -> the bucket this writer last materialized before it was complete (an old one): its next rows
    # are this writer's own, so they recompute it even below the retention horizon
    partial: dict[str, int] = field(default_factory=dict)

    @classmethod
    async def detect(cls, conn: asyncpg.Connection) -> RollupRefresh | None:
        """None on plain PostgreSQL or without the aggregates."""
        if not await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"):
            return None
        have = {
            r[0]
            for r in await conn.fetch(
                "SELECT view_name FROM timescaledb_information.continuous_aggregates "
                "WHERE view_schema = current_schema()"
            )
        }
        widths = {
            view: int(width.total_seconds() * 1000) for view, width, _ in AGGREGATES.values() if view in have
        }
        if not widths:
            return None
        functions = await conn.fetchval(
            "SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.proname = 'cagg_watermark' ORDER BY n.nspname = '_timescaledb_functions' DESC LIMIT 1"
        )
        if not functions:
            return None
        recorded = await conn.fetchval("SELECT to_regclass('retention_horizons') IS NOT NULL")
        return cls(widths, functions, HORIZONS_SQL if recorded else JOB_ONLY_HORIZONS_SQL)

    async def _state(self, conn: asyncpg.Connection) -> tuple[dict[str, int | None], dict[str, int], int]:
        """(view -> watermark ms, None before a first refresh; relation -> retention horizon ms; now ms)."""
        fn = self.functions
        # A never refreshed aggregate's watermark is TimescaleDB's lowest time, beyond what a client can
        # decode: epoch ms come back, NULL for anything outside years 1970-9999.
        rows = await conn.fetch(
            "SELECT view, CASE WHEN w >= 'epoch' AND w < '9999-01-01' "
            "THEN (extract(epoch FROM w) * 1000)::int8 END FROM (SELECT c.user_view_name AS view, "
            f"{fn}.to_timestamp({fn}.cagg_watermark(c.mat_hypertable_id)) AS w "
            "FROM _timescaledb_catalog.continuous_agg c "
            "WHERE c.user_view_schema = current_schema() AND c.user_view_name = ANY($1::text[])) m",
            list(self.widths),
        )
        marks = {r[0]: r[1] for r in rows}
        horizons = {r[0]: r[1] for r in await conn.fetch(self.horizons_sql)}
        now = await conn.fetchval("SELECT (extract(epoch FROM now()) * 1000)::int8")
        return marks, horizons, now

    async def after_write(self, conn: asyncpg.Connection, lo_ms: int, hi_ms: int) -> list[str]:
        """Refresh what 1 s rows in ``[lo_ms, hi_ms]`` (bucket starts) leave unmaterialized or stale (see
        the module docstring). Outside a transaction (a refresh cannot run in one). Returns the views
        refreshed."""
        await conn.execute("SELECT pg_advisory_lock($1)", REFRESH_LOCK)
        try:
            return await self._refresh(conn, lo_ms, hi_ms)
        finally:  # a connection lost with it releases it too
            with contextlib.suppress(OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
                await conn.execute("SELECT pg_advisory_unlock($1)", REFRESH_LOCK)

    async def _refresh(self, conn: asyncpg.Connection, lo_ms: int, hi_ms: int) -> list[str]:
        marks, horizons, now = await self._state(conn)
        horizon = horizons.get("ohlc_1s")
        first: int | None = None
        done = []
        for view, width in self.widths.items():
            mark = marks.get(view)
            beyond_policy = _floor(hi_ms, width) + width <= now - REFRESH_MS
            end = _ceil(hi_ms + 1000, width) if beyond_policy else _floor(hi_ms, width)
            if mark is None:  # never refreshed: everything written so far is real time, from the first row
                if first is None:
                    oldest = await conn.fetchval(f"SELECT {_EPOCH_MS} FROM ohlc_1s ORDER BY bucket LIMIT 1")
                    first = min(lo_ms, oldest if oldest is not None else lo_ms)
                start = _floor(first, width)
            else:
                start = mark  # what was written since the last refresh, never materialized
                if lo_ms < mark:  # rows in materialized buckets: recompute those, where no raw row is gone
                    late = _floor(lo_ms, width)
                    if horizon is not None and late < self.partial.get(view, mark):
                        late = max(late, _ceil(horizon, width))
                    if view in horizons:  # the level's own retention: never bring a dropped bucket back
                        late = max(late, _ceil(horizons[view], width))
                    start = min(start, late)
                    end = max(end, min(_ceil(hi_ms + 1000, width), mark))
            if start >= end:
                continue
            await conn.execute(
                f"CALL refresh_continuous_aggregate('{view}', {_literal(start)}, {_literal(end)})"
            )
            if beyond_policy:
                self.partial[view] = end - width
            done.append(view)
        if done:
            log.debug("refreshed %s over the rows from %s", ", ".join(done), _literal(lo_ms)[12:-1])
        return done
