"""Run the alembic migrations programmatically (``cryptostream migrate`` and ``cryptostream up``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

from cryptostream.errors import InfraError

__all__ = ["ALEMBIC_INI", "downgrade", "upgrade"]

log = logging.getLogger(__name__)

ALEMBIC_INI = Path(__file__).resolve().parents[1] / "alembic.ini"


def _config(dsn: str, connect_args: dict[str, Any] | None = None) -> Config:
    if not ALEMBIC_INI.exists():
        raise InfraError(f"{ALEMBIC_INI} not found: run cryptostream from its source tree or image")
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = dsn
    config.attributes["connect_args"] = connect_args or {}
    return config


def upgrade(dsn: str, revision: str = "head", connect_args: dict[str, Any] | None = None) -> None:
    """Bring the schema to ``revision``. Blocking: call from a thread inside an event loop."""
    command.upgrade(_config(dsn, connect_args), revision)


def downgrade(dsn: str, revision: str = "base", connect_args: dict[str, Any] | None = None) -> None:
    """Take the schema back to ``revision``."""
    command.downgrade(_config(dsn, connect_args), revision)
