"""TimescaleDB policies that follow the settings, applied by every ``cryptostream migrate`` (and ``up``).

What users rely on: a roll-up (1m/5m/1h/1d) keeps its history however long the 1 s rows are kept.

* **Refresh windows are bounded**: each continuous aggregate's policy refreshes only the last
  :data:`REFRESH_DAYS` days. TimescaleDB invalidates a range when retention drops its raw chunks, and a
  refresh over that range would recompute it from nothing; a window that never reaches the dropped range
  never does. Older late rows are refreshed by the writer itself (:mod:`processor.sinks.rollups`), never
  below the raw retention horizon.
* **Raw retention only beyond the window**: ``RETENTION_DAYS`` (1 s candles, volatility, predictions) must be
  longer than the refresh window; before a retention policy is (re)set, every aggregate is refreshed over
  the raw rows it may drop, so no roll-up depends on a job having run first.
* **Retention per roll-up level**: ``ROLLUP_RETENTION_DAYS`` (``1m=30,5m=180``; unset levels keep forever).
* **Horizons**: no refresh reaches below the day before which a retention policy may have dropped rows,
  now or before it was changed (:func:`horizons`, recorded in ``retention_horizons`` by revision 0005):
  a bucket recomputed there would hold the late rows alone, and a roll-up bucket brought back below its own
  retention would make the aggregate look whole from there.
* A job you paused stays paused when a setting change replaces it.
* **Compression** after ``COMPRESS_AFTER_DAYS``.

Policies are compared with what the server holds and only what differs is changed (each change logged), so
running it again is a no-op. On plain PostgreSQL there is nothing to do.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

__all__ = [
    "AGGREGATES",
    "HORIZONS_SQL",
    "JOB_ONLY_HORIZONS_SQL",
    "RAW_TABLES",
    "REFRESH_DAYS",
    "Policies",
    "apply_policies",
    "paused",
]

log = logging.getLogger(__name__)

REFRESH_DAYS = 3  # the refresh policies' window: at least two 1 d buckets plus the newest (end_offset)
RAW_TABLES = ("ohlc_1s", "volatility_1s", "predictions")
# level -> (view, bucket width, refresh schedule)
AGGREGATES: dict[str, tuple[str, timedelta, timedelta]] = {
    "1m": ("ohlc_1m", timedelta(minutes=1), timedelta(minutes=1)),
    "5m": ("ohlc_5m", timedelta(minutes=5), timedelta(minutes=5)),
    "1h": ("ohlc_1h", timedelta(hours=1), timedelta(minutes=15)),
    "1d": ("ohlc_1d", timedelta(days=1), timedelta(hours=1)),
}


@dataclass(frozen=True, slots=True)
class Policies:
    """What the settings ask for (days; ``None`` = keep forever)."""

    retention_days: int | None
    rollup_retention_days: dict[str, int]
    compress_after_days: int


def paused(add_policy: str) -> str:
    """One statement that runs ``add_policy`` (an ``add_*_policy(...)`` call) and unschedules the job it
    creates, for migrations: the job is never committed scheduled, so TimescaleDB's scheduler cannot start
    it (a new job runs at once) while the migration still refreshes or drops what it works on ("could not
    refresh continuous aggregate ... due to a concurrent refresh"). ``migrations/env.py`` schedules every job
    the migrations created once they have all run. A policy that already exists (-1) is left as it is."""
    return f"SELECT alter_job(job, scheduled => false) FROM {add_policy} AS job WHERE job > 0"


# relation -> the day (ms) before which its rows may have been dropped: by the retention policy in force (a
# chunk is dropped once it ends before now - drop_after; chunks are whole UTC days) or one it replaced.
JOB_HORIZONS_SQL = (
    "SELECT hypertable_name AS relation, date_trunc('day', now() - (config->>'drop_after')::interval, 'UTC') "
    "AS dropped_before FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention' "
    "AND hypertable_schema = current_schema()"
)
HORIZONS_SQL = (
    "SELECT relation, (extract(epoch FROM max(dropped_before)) * 1000)::int8 FROM ("
    f"{JOB_HORIZONS_SQL} UNION ALL SELECT relation, dropped_before FROM retention_horizons) h "
    "GROUP BY relation"
)
# the same before revision 0005 (a writer of this version on a database not migrated yet)
JOB_ONLY_HORIZONS_SQL = HORIZONS_SQL.replace(
    " UNION ALL SELECT relation, dropped_before FROM retention_horizons", ""
)


async def horizons(conn: asyncpg.Connection) -> dict[str, int]:
    """Relation (``ohlc_1s``, a roll-up view) -> epoch ms before which its rows may be gone."""
    return {r[0]: r[1] for r in await conn.fetch(HORIZONS_SQL)}


async def _record_horizon(conn: asyncpg.Connection, relation: str, days: int) -> None:
    """Before a retention policy of ``days`` on ``relation`` is replaced or removed: what it may have
    dropped stays dropped (see :func:`horizons`)."""
    await conn.execute(
        "INSERT INTO retention_horizons VALUES ($1, date_trunc('day', now() - make_interval(days => $2), "
        "'UTC')) ON CONFLICT (relation) DO UPDATE SET dropped_before = "
        "greatest(retention_horizons.dropped_before, excluded.dropped_before)",
        relation,
        days,
    )


def _days(text: str | None) -> int | None:
    """Whole days of an interval TimescaleDB reports as text ('5 days', '72:00:00'); None for none."""
    if text is None:
        return None
    parts = text.split()
    if len(parts) == 2 and parts[1].startswith("day"):
        return int(parts[0])
    if len(parts) == 1 and ":" in parts[0]:
        hours, minutes, seconds = (float(p) for p in parts[0].split(":"))
        total = hours * 3600 + minutes * 60 + seconds
        return int(total // 86_400) if total % 86_400 == 0 else None
    return None  # anything else differs from every setting: it gets replaced


async def _jobs(conn: asyncpg.Connection, proc: str) -> dict[str, dict[str, str | None]]:
    """Relation name -> config of its jobs running ``proc`` (policy_retention, policy_compression, ...),
    with ``"scheduled"`` ("false" for a job someone paused)."""
    rows = await conn.fetch(
        "SELECT hypertable_name, config::text, scheduled FROM timescaledb_information.jobs "
        "WHERE proc_name = $1 AND hypertable_schema = current_schema()",
        proc,
    )
    return {r[0]: {**json.loads(r[1]), "scheduled": str(r[2]).lower()} for r in rows}


async def _add(conn: asyncpg.Connection, add_policy: str, replaced: dict[str, str | None] | None) -> None:
    """Run ``add_policy`` (returns the job id); a job it replaces that was paused leaves this one paused."""
    job = await conn.fetchval(f"SELECT {add_policy}")
    if replaced is not None and replaced.get("scheduled") == "false" and job is not None and job > 0:
        await conn.execute("SELECT alter_job($1, scheduled => false)", job)


async def _installed(conn: asyncpg.Connection) -> bool:
    if not await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"):
        return False
    views = await conn.fetch(
        "SELECT view_name FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = current_schema()"
    )
    return {r[0] for r in views} >= {view for view, _, _ in AGGREGATES.values()}


def _interval(value: timedelta) -> str:
    return f"INTERVAL '{int(value.total_seconds())} seconds'"


async def refresh_raw_range(conn: asyncpg.Connection, before: timedelta) -> None:
    """Materialize every aggregate over the raw rows older than ``now() - before`` (and only where raw rows
    are, above the raw horizon: a range retention dropped is never recomputed). Simple-protocol SQL: a
    refresh refuses to run in the implicit transaction of a prepared statement."""
    first = await conn.fetchval("SELECT min(bucket) FROM ohlc_1s")
    if first is None:
        return
    horizon = (await horizons(conn)).get("ohlc_1s")
    if horizon is not None:  # a late row older than what retention dropped: not a reason to recompute
        first = max(first, datetime.fromtimestamp(horizon / 1000, UTC))
    for view, width, _ in AGGREGATES.values():
        await refresh(
            conn,
            f"CALL refresh_continuous_aggregate('{view}', "
            f"time_bucket({_interval(width)}, TIMESTAMPTZ '{first.isoformat()}'), "
            f"now() - {_interval(max(before, width))})",
        )


async def refresh(conn: asyncpg.Connection, call: str, wait: float = 60.0) -> None:
    """Run a ``CALL refresh_continuous_aggregate(...)``, waiting while another refresh of an overlapping
    window runs (a refresh policy, on a server whose jobs run): TimescaleDB refuses a concurrent one."""
    deadline = asyncio.get_running_loop().time() + wait
    pause = 0.1
    while True:
        try:
            await conn.execute(call)
            return
        except asyncpg.LockNotAvailableError:
            if asyncio.get_running_loop().time() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


async def apply(conn: asyncpg.Connection, want: Policies) -> list[str]:
    """Make the server's policies ``want``; returns what changed, one line each."""
    if not await _installed(conn):
        return []
    changes: list[str] = []
    window = timedelta(days=REFRESH_DAYS)

    refresh = await _jobs(conn, "policy_refresh_continuous_aggregate")
    for view, width, schedule in AGGREGATES.values():
        config = refresh.get(view)
        if config is not None and _days(config.get("start_offset")) == REFRESH_DAYS:
            continue
        await conn.execute(f"SELECT remove_continuous_aggregate_policy('{view}', if_exists => true)")
        await _add(
            conn,
            f"add_continuous_aggregate_policy('{view}', start_offset => {_interval(window)}, "
            f"end_offset => {_interval(width)}, schedule_interval => {_interval(schedule)})",
            config,
        )
        changes.append(f"{view}: refresh policy over the last {REFRESH_DAYS} days")

    compression = await _jobs(conn, "policy_compression")
    for table in RAW_TABLES:
        config = compression.get(table)
        if config is not None and _days(config.get("compress_after")) == want.compress_after_days:
            continue
        await conn.execute(f"SELECT remove_compression_policy('{table}', if_exists => true)")
        await _add(
            conn,
            f"add_compression_policy('{table}', compress_after => "
            f"INTERVAL '{want.compress_after_days} days')",
            config,
        )
        changes.append(f"{table}: compress chunks after {want.compress_after_days} days")

    retention = await _jobs(conn, "policy_retention")
    raw_now = {t: _days(retention[t].get("drop_after")) if t in retention else None for t in RAW_TABLES}
    if any(raw_now[t] != want.retention_days for t in RAW_TABLES) and want.retention_days is not None:
        # Whatever the new policy may drop is materialized first: no roll-up waits on a job.
        await refresh_raw_range(conn, window)
    for table in RAW_TABLES:
        if raw_now[table] == want.retention_days:
            continue
        old = raw_now[table]
        if old is not None:
            await _record_horizon(conn, table, old)
        await conn.execute(f"SELECT remove_retention_policy('{table}', if_exists => true)")
        if want.retention_days is None:
            changes.append(f"{table}: rows kept (retention policy removed)")
            continue
        await _add(
            conn,
            f"add_retention_policy('{table}', drop_after => INTERVAL '{want.retention_days} days')",
            retention.get(table),
        )
        changes.append(f"{table}: rows older than {want.retention_days} days dropped (roll-ups keep theirs)")

    for level, (view, _, _) in AGGREGATES.items():
        days = want.rollup_retention_days.get(level)
        now = _days(retention[view].get("drop_after")) if view in retention else None
        if now == days:
            continue
        if now is not None:
            await _record_horizon(conn, view, now)
        await conn.execute(f"SELECT remove_retention_policy('{view}', if_exists => true)")
        if days is None:
            changes.append(f"{view}: kept forever (retention policy removed)")
            continue
        await _add(
            conn,
            f"add_retention_policy('{view}', drop_after => INTERVAL '{days} days')",
            retention.get(view),
        )
        changes.append(f"{view}: buckets older than {days} days dropped")
    return changes


def apply_policies(dsn: str, want: Policies, connect_args: dict[str, object] | None = None) -> list[str]:
    """:func:`apply` on a connection of its own. Blocking: call from a thread inside an event loop."""

    async def run() -> list[str]:
        conn = await asyncpg.connect(dsn, **(connect_args or {}))
        try:
            return await apply(conn, want)
        finally:
            await conn.close()

    changes = asyncio.run(run())
    for line in changes:
        log.info("timescaledb policy: %s", line)
    return changes
