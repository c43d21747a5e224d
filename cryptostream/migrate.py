"""Run the alembic migrations programmatically (``cryptostream migrate`` and ``cryptostream up``).

An upgrade to ``head`` then sets the TimescaleDB policies the settings ask for (retention of 1 s rows and
of each roll-up level, compression, bounded refresh windows: :mod:`cryptostream.policies`), so changing
``RETENTION_DAYS`` takes effect on the next ``migrate``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from cryptostream.errors import InfraError, SettingsError
from cryptostream.policies import Policies, apply_policies
from cryptostream.settings import Settings, load_settings, mask_url

__all__ = ["ALEMBIC_INI", "check_schema", "downgrade", "migrate_to", "revision_named", "upgrade"]

log = logging.getLogger(__name__)

ALEMBIC_INI = Path(__file__).resolve().parents[1] / "alembic.ini"


def _config(dsn: str, connect_args: dict[str, Any] | None = None, settings: Settings | None = None) -> Config:
    if not ALEMBIC_INI.exists():
        raise InfraError(f"{ALEMBIC_INI} not found: run cryptostream from its source tree or image")
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = dsn
    config.attributes["connect_args"] = connect_args or {}
    if settings is not None:
        config.attributes["settings"] = settings
    return config


def upgrade(
    dsn: str,
    revision: str = "head",
    connect_args: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> None:
    """Bring the schema to ``revision`` (at ``head``, with the policies of ``settings``, default: the
    environment's). Blocking: call from a thread inside an event loop."""
    command.upgrade(_config(dsn, connect_args, settings), revision)
    if revision != "head":
        return
    settings = settings or load_settings()
    want = Policies(settings.retention_days, settings.rollup_retention_days, settings.compress_after_days)
    apply_policies(dsn, want, connect_args)


def downgrade(dsn: str, revision: str = "base", connect_args: dict[str, Any] | None = None) -> None:
    """Take the schema back to ``revision``."""
    command.downgrade(_config(dsn, connect_args), revision)


def _current(dsn: str) -> str | None:
    """The revision the database at ``dsn`` is at; ``None`` where no migration ever ran."""
    import asyncpg

    async def ask() -> str | None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            if await conn.fetchval("SELECT to_regclass('alembic_version')") is None:
                return None
            version: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
            return version
        finally:
            await conn.close()

    return asyncio.run(ask())


def _revisions() -> list[str]:
    """This version's schema revisions, oldest first."""
    script = ScriptDirectory.from_config(_config("postgresql://"))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def revision_named(revision: str) -> str | None:
    """The revision id ``revision`` names (``head``, ``base`` = ``None``, or an id); a one-line
    :class:`SettingsError` for any other name (it was alembic's traceback)."""
    order = _revisions()
    target = {"head": order[-1], "base": None}.get(revision, revision)
    if target is not None and target not in order:
        raise SettingsError(f"REVISION must be head, base or one of {', '.join(order)}, got {revision!r}")
    return target


def check_schema(dsn: str) -> None:
    """Raise a one-line :class:`InfraError` unless the database at ``dsn`` has this version's schema: a
    process or API started on a database never migrated retried "relation ohlc_1s does not exist" forever
    while /health said healthy. Blocking (its own event loop): call before the role's loop starts."""
    where = mask_url(dsn)
    current = _current(dsn)
    order = _revisions()
    head = order[-1]
    if current == head:
        return
    if current is None:
        raise InfraError(
            f"the database at {where} has no cryptostream schema yet: run `cryptostream migrate`"
        )
    if current in order:
        raise InfraError(
            f"the database at {where} is at schema revision {current}, this version needs {head}: run "
            "`cryptostream migrate`"
        )
    raise InfraError(
        f"the database at {where} is at schema revision {current}, which this version of cryptostream does "
        f"not know (it needs {head}; a newer version migrated it?): run that version, or take the schema "
        f"back with it (`cryptostream migrate {head} --downgrade`)"
    )


def migrate_to(dsn: str, revision: str, *, allow_downgrade: bool, settings: Settings | None = None) -> str:
    """Take the schema to ``revision`` (``head``, ``base`` or a revision id), up or down, and return what was
    done in words. An unknown revision is a one-line :class:`SettingsError` (it was alembic's traceback); a
    revision below the database's is refused unless ``allow_downgrade`` (it drops what later ones added:
    ``upgrade`` to it did nothing and said it had)."""
    order = _revisions()
    target = revision_named(revision)
    current = _current(dsn)
    if current is not None and current not in order:
        raise InfraError(
            f"the database at {mask_url(dsn)} is at schema revision {current}, which this version of "
            "cryptostream does not know: migrate it with the version that made it"
        )
    rank: dict[str | None, int] = {None: -1, **{rev: i for i, rev in enumerate(order)}}
    if rank[target] >= rank[current]:
        upgrade(dsn, "head" if target == order[-1] else str(target), settings=settings)
        head = " (head)" if target == order[-1] else ""
        return f"is at revision {target}{head}" + ("" if target == current else f", was {current or 'empty'}")
    if not allow_downgrade:
        raise SettingsError(
            f"REVISION {revision} is below the database's {current}: going back drops what the later "
            "revisions added (their tables and columns, with their rows); say so with --downgrade"
        )
    downgrade(dsn, "base" if target is None else target)
    return f"is taken back to revision {target or 'base'}, was {current}"
