"""Alembic environment: the URL comes from cryptostream's settings, migrations run on asyncpg."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from cryptostream.errors import SettingsError
from cryptostream.settings import load_settings

config = context.config
log = logging.getLogger("cryptostream.migrate")


def _url() -> str:
    url = config.attributes.get("database_url") or load_settings().database_dsn
    if not url:
        raise SettingsError("DATABASE_URL is not set: migrations need a database (postgresql://...)")
    return re.sub(r"^postgres(ql)?(\+asyncpg)?://", "postgresql+asyncpg://", url)


def _engine_args() -> tuple[str, dict[str, Any]]:
    """The URL and asyncpg connect arguments. SQLAlchemy hands URL query parameters to asyncpg as keyword
    arguments, and asyncpg has no ``sslmode`` keyword: move it to ``ssl`` (which takes the same modes)."""
    url = make_url(_url())
    connect_args = dict(config.attributes.get("connect_args", {}))
    sslmode = url.query.get("sslmode")
    if sslmode is not None:
        connect_args.setdefault("ssl", sslmode if isinstance(sslmode, str) else sslmode[-1])
        url = url.difference_update_query(["sslmode"])
    return url.render_as_string(hide_password=False), connect_args


# TimescaleDB's jobs of this database (policies: id >= 1000) that are scheduled to run on their own.
_SCHEDULED = "SELECT job_id FROM timescaledb_information.jobs WHERE job_id >= 1000 AND scheduled"
_RUNNING = (
    "SELECT count(*) FROM timescaledb_information.job_stats WHERE job_id >= 1000 AND job_status = 'Running'"
)


# What a migration can lose to TimescaleDB's own workers on a live server even with the jobs paused (the
# scheduler updating a job's rows while a migration drops its aggregate): the migration's transaction is
# rolled back, and running it again is safe.
_RACES = ("tuple concurrently deleted", "tuple concurrently updated", "deadlock detected")
_ATTEMPTS = 3


def _timescaledb(connection: Connection) -> bool:
    sql = "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
    return bool(connection.exec_driver_sql(sql).scalar())


def _pause(connection: Connection) -> list[int]:
    """Unschedule this database's TimescaleDB jobs (a job refreshing an aggregate while a migration drops or
    refreshes it fails the migration: "tuple concurrently deleted", "concurrent refresh"); returns them."""
    ids = [row[0] for row in connection.exec_driver_sql(_SCHEDULED)]
    for job in ids:
        connection.exec_driver_sql(f"SELECT alter_job({job}, scheduled => false)")
    return ids


def _jobs(connection: Connection) -> set[int]:
    """This database's policy jobs (TimescaleDB's own jobs have ids below 1000)."""
    sql = "SELECT job_id FROM timescaledb_information.jobs WHERE job_id >= 1000"
    return {row[0] for row in connection.exec_driver_sql(sql)}


def _run(connection: Connection) -> None:
    """The migrations with TimescaleDB's background jobs held: those scheduled are paused first (and any
    still running waited for, up to a minute); a migration creates its jobs paused, in the statement that
    creates them (:func:`cryptostream.policies.paused`: a job committed scheduled starts at once, and its
    refresh collided with the migration's own), and any other job a migration leaves scheduled is paused
    before its transaction commits. At the end (also when a migration fails) the jobs paused here and every
    job the migrations created are scheduled. A migration that loses a race anyway (:data:`_RACES`) is run
    again, up to :data:`_ATTEMPTS` times."""
    held: list[int] = []
    timescaledb = _timescaledb(connection)
    before = _jobs(connection) if timescaledb else set()
    if timescaledb:
        held += _pause(connection)
        connection.commit()
        deadline = time.monotonic() + 60
        while connection.exec_driver_sql(_RUNNING).scalar() and time.monotonic() < deadline:
            connection.rollback()  # a fresh snapshot of the jobs' state
            time.sleep(0.2)
    connection.rollback()  # alembic begins each migration's own transaction: none may be open here

    def hold_new_jobs(*, ctx: Any, **_: Any) -> None:
        if timescaledb or _timescaledb(ctx.connection):
            held.extend(_pause(ctx.connection))

    try:
        context.configure(
            connection=connection,
            target_metadata=None,
            transaction_per_migration=True,
            on_version_apply=hold_new_jobs,
        )
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with context.begin_transaction():
                    context.run_migrations()  # from the revision the last committed migration left
                break
            except DBAPIError as exc:
                if attempt == _ATTEMPTS or not any(race in str(exc) for race in _RACES):
                    raise
                connection.rollback()
                log.warning("migration lost a race (%s); running it again", str(exc.orig).splitlines()[0])
                time.sleep(0.5 * attempt)
    finally:
        connection.rollback()  # whatever a failed migration left open
        if _timescaledb(connection):
            existing = _jobs(connection)
            for job in sorted((set(held) | (existing - before)) & existing):
                connection.exec_driver_sql(f"SELECT alter_job({job}, scheduled => true)")
            connection.commit()


async def _run_async() -> None:
    url, connect_args = _engine_args()
    # No cached prepared statements: TimescaleDB rewrites a DDL statement's parse tree while running it, so
    # the same DROP MATERIALIZED VIEW run twice in one session (0003 down, then 0002 down) came back from
    # the cache as a DROP VIEW it refuses. Migrations run each statement once anyway.
    connect_args.setdefault("prepared_statement_cache_size", 0)
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
