"""Run the alembic migrations programmatically (``cryptostream migrate`` and ``cryptostream up``).

An upgrade to ``head`` then sets the TimescaleDB policies the settings ask for (retention of 1 s rows and
of each roll-up level, compression, bounded refresh windows: :mod:`cryptostream.policies`), so changing
``RETENTION_DAYS`` takes effect on the next ``migrate``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

from cryptostream.errors import InfraError
from cryptostream.policies import Policies, apply_policies
from cryptostream.settings import Settings, load_settings

__all__ = ["ALEMBIC_INI", "downgrade", "upgrade"]

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
