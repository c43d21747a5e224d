"""Alembic environment: the URL comes from cryptostream's settings, migrations run on asyncpg."""

from __future__ import annotations

import asyncio
import re

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from cryptostream.errors import SettingsError
from cryptostream.settings import load_settings

config = context.config


def _url() -> str:
    url = config.attributes.get("database_url") or load_settings().database_dsn
    if not url:
        raise SettingsError("DATABASE_URL is not set: migrations need a database (postgresql://...)")
    return re.sub(r"^postgres(ql)?(\+asyncpg)?://", "postgresql+asyncpg://", url)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(
        _url(), poolclass=pool.NullPool, connect_args=config.attributes.get("connect_args", {})
    )
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
