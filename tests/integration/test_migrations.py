"""Schema history on plain PostgreSQL and on TimescaleDB: up, down, up again; rows survive; no half-way state.

Each test gets an empty database of its own: a new database on the session's PostgreSQL server, or a fresh
TimescaleDB harness server, so the other tests' schema is never touched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from alembic.config import Config

from cryptostream.migrate import ALEMBIC_INI, downgrade, upgrade
from cryptostream.models import INTERVALS
from cryptostream.settings import load_settings
from cryptostream.store import DatabaseStore
from tests.integration.conftest import Backend, timescaledb_server
from tests.integration.test_storage import START_MS, _trades, candles_of, write_candles
from tests.reference import assert_candles_equal, batch_candles, rows_by_key

pytestmark = [pytest.mark.integration, pytest.mark.timescale]

REPO = Path(__file__).resolve().parents[2]
CAGGS = ["ohlc_1d", "ohlc_1h", "ohlc_1m", "ohlc_5m"]


@pytest.fixture(params=["postgresql", "timescaledb"])
def empty_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An empty database (no schema at all) of each kind."""
    if request.param == "postgresql":
        yield Backend("postgresql", request.getfixturevalue("fresh_postgres"), pool_size=4)
        return
    with timescaledb_server(tmp_path) as dsn:
        yield Backend("timescaledb", dsn, pool_size=1)


def _config(dsn: str, **settings: object) -> Config:
    """The alembic config ``cryptostream migrate`` builds, with settings of the test's choosing."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = dsn
    config.attributes["settings"] = load_settings(**settings)
    return config


async def _fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(dsn, sql, *args))


def tables(dsn: str) -> dict[str, str]:
    """Our tables and views with their kind: 'table', 'hypertable' or 'continuous aggregate'."""
    out = {
        r[0]: "table"
        for r in fetch(
            dsn,
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relname IN ('ohlc_1s', 'volatility_1s', 'predictions', 'ohlc_1m', 'ohlc_5m', 'ohlc_1h', "
            "'ohlc_1d')",
        )
    }
    if fetch(dsn, "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        for r in fetch(dsn, "SELECT hypertable_name FROM timescaledb_information.hypertables"):
            out[r[0]] = "hypertable"
        for r in fetch(dsn, "SELECT view_name FROM timescaledb_information.continuous_aggregates"):
            out[r[0]] = "continuous aggregate"
    return out


def version(dsn: str) -> str | None:
    if fetch(dsn, "SELECT to_regclass('alembic_version')")[0][0] is None:
        return None
    rows = fetch(dsn, "SELECT version_num FROM alembic_version")
    return rows[0][0] if rows else None


def expected_schema(kind: str) -> dict[str, str]:
    if kind == "timescaledb":
        return {
            "ohlc_1s": "hypertable",
            "volatility_1s": "hypertable",
            "predictions": "hypertable",
            **dict.fromkeys(CAGGS, "continuous aggregate"),
        }
    return dict.fromkeys(["ohlc_1s", "volatility_1s", "predictions"], "table")


@pytest.mark.slow
def test_alembic_command_line_upgrade_downgrade_upgrade(empty_backend: Backend):
    """The documented commands, as a user types them, with DATABASE_URL in the environment."""
    env = {**os.environ, "DATABASE_URL": empty_backend.dsn}
    alembic = [sys.executable, "-m", "alembic"]
    for args in (["upgrade", "head"], ["downgrade", "base"], ["upgrade", "head"]):
        result = subprocess.run(
            [*alembic, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"alembic {' '.join(args)} failed:\n{result.stderr[-3000:]}"
        if args == ["downgrade", "base"]:
            assert tables(empty_backend.dsn) == {}
    assert tables(empty_backend.dsn) == expected_schema(empty_backend.kind)
    assert version(empty_backend.dsn) == "0002"


async def _read_all(backend: Backend, symbol: str) -> dict[str, dict]:
    store = await DatabaseStore.connect(backend.dsn, max_size=backend.pool_size)
    try:
        return {
            i: rows_by_key((await store.candles(symbol, limit=10**6, interval=i)).to_pylist())
            for i in INTERVALS
        }
    finally:
        await store.close()


def test_existing_rows_move_into_hypertables_and_back_out_on_downgrade(empty_backend: Backend):
    dsn = empty_backend.dsn
    command.upgrade(_config(dsn), "0001")
    symbols = ["MIGBTC"]
    trades = _trades(symbols, n=6000, start_ms=START_MS, seed=3)  # ~2.8 h across midnight
    asyncio.run(write_candles(empty_backend, candles_of(trades)))
    count = fetch(dsn, "SELECT count(*) FROM ohlc_1s")[0][0]
    assert count > 1000

    command.upgrade(_config(dsn, compress_after_days=3, retention_days=30), "head")
    assert tables(dsn) == expected_schema(empty_backend.kind)
    assert fetch(dsn, "SELECT count(*) FROM ohlc_1s")[0][0] == count
    if empty_backend.kind == "timescaledb":
        days = {t.timestamp // 86_400_000 for t in trades}
        assert fetch(dsn, "SELECT count(*) FROM show_chunks('ohlc_1s')")[0][0] == len(days)  # 1-day chunks
        jobs = {
            (r[0], r[1]): r[2]
            for r in fetch(
                dsn,
                "SELECT proc_name, hypertable_name, config::text FROM timescaledb_information.jobs "
                "WHERE proc_name IN ('policy_compression', 'policy_retention')",
            )
        }
        for table in ("ohlc_1s", "volatility_1s", "predictions"):
            assert '"compress_after": "3 days"' in jobs[("policy_compression", table)]
            assert '"drop_after": "30 days"' in jobs[("policy_retention", table)]
        # The existing rows were materialized by the migration itself.
        for view in CAGGS:
            materialized = fetch(
                dsn,
                "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) "
                "FROM timescaledb_information.continuous_aggregates WHERE view_name = $1",
                view,
            )[0][0]
            assert fetch(dsn, f"SELECT count(*) FROM {materialized}")[0][0] > 0, view
    rolled = asyncio.run(_read_all(empty_backend, symbols[0]))
    for interval, ms in INTERVALS.items():
        assert_candles_equal(rolled[interval], batch_candles(trades, ms))

    downgrade(dsn, "0001")
    assert tables(dsn) == dict.fromkeys(["ohlc_1s", "volatility_1s", "predictions"], "table")
    assert fetch(dsn, "SELECT count(*) FROM ohlc_1s")[0][0] == count
    assert {r[0] for r in fetch(dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")} >= {
        "ohlc_1s_pkey",
        "volatility_1s_pkey",
        "predictions_pkey",
    }
    assert_candles_equal(
        asyncio.run(_read_all(empty_backend, symbols[0]))["1h"], batch_candles(trades, 3_600_000)
    )

    upgrade(dsn)
    assert tables(dsn) == expected_schema(empty_backend.kind)
    assert fetch(dsn, "SELECT count(*) FROM ohlc_1s")[0][0] == count


def test_an_upgrade_that_fails_midway_is_finished_by_running_it_again(tmp_path: Path):
    """Continuous aggregates are created outside a transaction; if that part fails, the revision is not
    recorded, and the next run completes it from wherever the first one stopped."""
    with timescaledb_server(tmp_path) as dsn:
        command.upgrade(_config(dsn), "0001")
        fetch(dsn, "CREATE TABLE ohlc_5m (symbol text)")  # squats the name of an aggregate
        with pytest.raises(Exception, match="ohlc_5m"):
            command.upgrade(_config(dsn), "head")
        assert version(dsn) == "0001"
        partial = tables(dsn)
        assert partial["ohlc_1s"] == "hypertable" and partial["ohlc_1m"] == "continuous aggregate"

        fetch(dsn, "DROP TABLE ohlc_5m")
        command.upgrade(_config(dsn), "head")
        assert version(dsn) == "0002"
        assert tables(dsn) == expected_schema("timescaledb")
        command.downgrade(_config(dsn), "base")
        assert tables(dsn) == {}
