"""The schema a role finds: a process or API on a database never migrated (or migrated by another version)
stops at start with one line saying what to run, and `migrate REVISION` goes where it is told, up or (when
told so) down, or says in one line why not.

Before: `process` retried "relation ohlc_1s does not exist" forever while /health said healthy, `migrate
0002` on a database at 0005 logged "is at revision 0002" and changed nothing, and a revision that does not
exist was a 100-line traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from cryptostream.errors import InfraError
from cryptostream.kafka import ensure_topics
from cryptostream.migrate import check_schema, migrate_to
from cryptostream.settings import load_settings, mask_url
from tests.integration.roles import listen_port

pytestmark = pytest.mark.integration

HEAD = "0005"


def _cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "DATABASE_URL", "METRICS_PORT")
    }
    return subprocess.run(
        [sys.executable, "-m", "cryptostream", *args],
        cwd=tmp_path,
        env={**base, "STATE_DIR": str(tmp_path / "state"), "OUTPUT_DIR": str(tmp_path / "out"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _version(dsn: str) -> str | None:
    async def ask() -> str | None:
        conn = await asyncpg.connect(dsn)
        try:
            if await conn.fetchval("SELECT to_regclass('alembic_version')") is None:
                return None
            value: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
            return value
        finally:
            await conn.close()

    return asyncio.run(ask())


def test_roles_on_a_database_never_migrated_stop_at_once_saying_what_to_run(
    fresh_postgres: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    shown = mask_url(fresh_postgres)
    for args in (["process"], ["serve", "--port", str(listen_port())]):
        done = _cli(args, tmp_path, DATABASE_URL=fresh_postgres, KAFKA_BOOTSTRAP=kafka_bootstrap)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines()[-1] == (
            f"cryptostream: the database at {shown} has no cryptostream schema yet: run "
            "`cryptostream migrate`"
        ), done.stderr
        assert "Traceback" not in done.stderr and "does not exist" not in done.stderr
    assert _version(fresh_postgres) is None  # a role never migrates on its own


def test_migrate_goes_to_the_revision_named_up_and_down_only_when_told(fresh_postgres: str, tmp_path: Path):
    dsn = fresh_postgres
    done = _cli(["migrate", "0003"], tmp_path, DATABASE_URL=dsn)
    assert done.returncode == 0 and "is at revision 0003, was empty" in done.stderr, done.stderr
    assert _version(dsn) == "0003"
    with pytest.raises(InfraError, match=rf"is at schema revision 0003, this version needs {HEAD}: run "):
        check_schema(dsn)

    done = _cli(["migrate", "0002"], tmp_path, DATABASE_URL=dsn)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "cryptostream: REVISION 0002 is below the database's 0003: going back drops what the later revisions "
        "added (their tables and columns, with their rows); say so with --downgrade"
    ], done.stderr
    assert _version(dsn) == "0003"  # untouched
    done = _cli(["migrate", "0002", "--downgrade"], tmp_path, DATABASE_URL=dsn)
    assert done.returncode == 0 and "is taken back to revision 0002, was 0003" in done.stderr, done.stderr
    assert _version(dsn) == "0002"

    done = _cli(["migrate"], tmp_path, DATABASE_URL=dsn)
    assert done.returncode == 0 and f"is at revision {HEAD} (head), was 0002" in done.stderr, done.stderr
    check_schema(dsn)  # what process and serve ask at start: nothing to say
    assert "(head)" in migrate_to(dsn, "head", allow_downgrade=False) and _version(dsn) == HEAD

    async def from_a_newer_version() -> None:
        conn = await asyncpg.connect(dsn)
        await conn.execute("UPDATE alembic_version SET version_num = '0042'")
        await conn.close()

    asyncio.run(from_a_newer_version())
    with pytest.raises(InfraError) as info:
        check_schema(dsn)
    assert str(info.value) == (
        f"the database at {mask_url(dsn)} is at schema revision 0042, which this version of cryptostream "
        f"does not know (it needs {HEAD}; a newer version migrated it?): run that version, or take the "
        f"schema back with it (`cryptostream migrate {HEAD} --downgrade`)"
    )
    done = _cli(["migrate"], tmp_path, DATABASE_URL=dsn)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1].endswith("migrate it with the version that made it"), done.stderr


async def test_an_existing_trades_topic_with_fewer_partitions_is_said_not_ignored(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    names = {
        "kafka_topic": f"fewer-{os.getpid()}-{id(caplog)}",
        "kafka_candles_topic": f"fewer-c-{os.getpid()}-{id(caplog)}",
        "kafka_dlq_topic": f"fewer-d-{os.getpid()}-{id(caplog)}",
    }
    two = load_settings(kafka_bootstrap=kafka_bootstrap, kafka_partitions=2, _env_file=None, **names)

    def said() -> list[str]:  # this module's warnings only (a test before may leave asyncio's behind)
        return [r.getMessage() for r in caplog.records if r.name == "cryptostream.kafka" and r.levelno >= 30]

    await ensure_topics(two)
    with caplog.at_level("INFO", logger="cryptostream.kafka"):
        await ensure_topics(two)
        assert not said()  # as asked: nothing to say
        await ensure_topics(two.model_copy(update={"kafka_partitions": 6}))
    assert said() == [
        f"topic {names['kafka_topic']} already exists with 2 partitions: KAFKA_PARTITIONS=6 applies to new "
        "topics only (more partitions move markets between them: stop ingest, let the processors drain, "
        "then alter the topic)"
    ]
