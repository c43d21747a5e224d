"""Alembic environment: the URL comes from cryptostream's settings, migrations run on asyncpg."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from cryptostream.errors import SettingsError
from cryptostream.settings import load_settings

config = context.config


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


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


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
