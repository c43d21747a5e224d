"""Schema history on plain PostgreSQL and on TimescaleDB: up, down, up again; rows survive; no half-way state.

Each test gets an empty database of its own: a new database on the session's PostgreSQL server, or a fresh
TimescaleDB harness server, so the other tests' schema is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pyarrow as pa
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, event

from cryptostream.migrate import ALEMBIC_INI, downgrade, upgrade
from cryptostream.models import INTERVALS
from cryptostream.settings import load_settings
from cryptostream.store import DatabaseStore
from cryptostream.venues import UNKNOWN
from tests.integration.conftest import Backend, timescaledb_server
from tests.integration.helpers import as_deadlock_victim
from tests.integration.test_storage import START_MS, _trades, candles_of, write_candles
from tests.reference import assert_candles_equal, batch_candles, rows_by_key

pytestmark = [pytest.mark.integration, pytest.mark.timescale]

REPO = Path(__file__).resolve().parents[2]
CAGGS = ["ohlc_1d", "ohlc_1h", "ohlc_1m", "ohlc_5m"]
HEAD = "0005"


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
    assert version(empty_backend.dsn) == HEAD


async def _read_all(backend: Backend, exchange: str, symbol: str) -> dict[str, dict]:
    store = await DatabaseStore.connect(backend.dsn, max_size=backend.pool_size)
    try:
        return {
            i: rows_by_key((await store.candles(exchange, symbol, limit=10**6, interval=i)).to_pylist())
            for i in INTERVALS
        }
    finally:
        await store.close()


def write_legacy(dsn: str, candles: pa.Table) -> None:
    """Candles as revisions 0001/0002 stored them: no venue column."""
    table = candles.drop_columns(["exchange"])

    async def copy() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            records = list(zip(*(table[c].to_pylist() for c in table.column_names), strict=True))
            await conn.copy_records_to_table("ohlc_1s", records=records, columns=table.column_names)
        finally:
            await conn.close()

    asyncio.run(copy())


def as_venue(trades: list, exchange: str) -> list:
    return [dataclasses.replace(t, exchange=exchange) for t in trades]


def test_existing_rows_move_into_hypertables_and_back_out_on_downgrade(empty_backend: Backend):
    dsn = empty_backend.dsn
    command.upgrade(_config(dsn), "0001")
    symbols = ["MIGBTC"]
    trades = _trades(symbols, n=6000, start_ms=START_MS, seed=3)  # ~2.8 h across midnight
    write_legacy(dsn, candles_of(trades))
    count = fetch(dsn, "SELECT count(*) FROM ohlc_1s")[0][0]
    assert count > 1000

    # No retention here: on a real server its job would drop these 2023 rows whenever it ran (see
    # test_rollup_history.py for retention, with the jobs driven explicitly).
    upgrade(dsn, settings=load_settings(compress_after_days=3))
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
                "WHERE proc_name IN ('policy_compression', 'policy_refresh_continuous_aggregate')",
            )
        }
        for table in ("ohlc_1s", "volatility_1s", "predictions"):
            assert '"compress_after": "3 days"' in jobs[("policy_compression", table)]
        for view in CAGGS:  # bounded refresh windows (revision 0004)
            assert '"start_offset": "3 days"' in jobs[("policy_refresh_continuous_aggregate", view)]
        # The existing rows were materialized by the migration itself.
        for view in CAGGS:
            materialized = fetch(
                dsn,
                "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) "
                "FROM timescaledb_information.continuous_aggregates WHERE view_name = $1",
                view,
            )[0][0]
            assert fetch(dsn, f"SELECT count(*) FROM {materialized}")[0][0] > 0, view
    # rows stored before venues existed are the "unknown" venue's
    legacy = as_venue(trades, UNKNOWN)
    rolled = asyncio.run(_read_all(empty_backend, UNKNOWN, symbols[0]))
    for interval, ms in INTERVALS.items():
        assert_candles_equal(rolled[interval], batch_candles(legacy, ms))

    downgrade(dsn, "0001")
    assert tables(dsn) == dict.fromkeys(["ohlc_1s", "volatility_1s", "predictions"], "table")
    assert fetch(dsn, "SELECT count(*) FROM ohlc_1s")[0][0] == count
    assert {r[0] for r in fetch(dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")} >= {
        "ohlc_1s_pkey",
        "volatility_1s_pkey",
        "predictions_pkey",
    }
    legacy_1h = fetch(dsn, "SELECT count(*) FROM ohlc_1s WHERE symbol = $1", symbols[0])[0][0]
    assert legacy_1h == count

    upgrade(dsn)
    assert tables(dsn) == expected_schema(empty_backend.kind)
    assert fetch(dsn, "SELECT count(*) FROM ohlc_1s")[0][0] == count
    assert_candles_equal(
        asyncio.run(_read_all(empty_backend, UNKNOWN, symbols[0]))["1h"], batch_candles(legacy, 3_600_000)
    )


def test_venues_migrate_up_down_and_up_again_with_rows_of_several_venues(empty_backend: Backend):
    """At head two venues hold the same symbol apart; down to the venue-less schema one row per key is
    kept (the old key has no venue: the migration says how many it dropped) and fields the old schema
    requires are filled; up again, what was kept is the unknown venue's, every interval consistent."""
    dsn = empty_backend.dsn
    command.upgrade(_config(dsn), "head")
    binance = as_venue(_trades(["VENBTC"], n=3000, start_ms=START_MS, seed=8), "binance")
    coinbase = [  # ids of their own: merged into one venue below, they must not look like resends
        dataclasses.replace(t, trade_id=t.trade_id + 10**9)
        for t in as_venue(_trades(["VENBTC"], n=3000, start_ms=START_MS, seed=9), "coinbase")
    ]
    asyncio.run(write_candles(empty_backend, candles_of(binance + coinbase)))
    both = {e: asyncio.run(_read_all(empty_backend, e, "VENBTC")) for e in ("binance", "coinbase")}
    for exchange, trades in (("binance", binance), ("coinbase", coinbase)):
        for interval, ms in INTERVALS.items():
            assert_candles_equal(both[exchange][interval], batch_candles(trades, ms))
    keys = {k[2] for k in both["binance"]["1s"]} | {k[2] for k in both["coinbase"]["1s"]}
    shared = {k[2] for k in both["binance"]["1s"]} & {k[2] for k in both["coinbase"]["1s"]}
    assert shared, "the test needs seconds both venues traded in"
    # a candle of a foreign archive: no trade count, VWAP or side volumes
    fetch(
        dsn,
        "INSERT INTO ohlc_1s (exchange, symbol, bucket, open, high, low, close, volume) "
        "VALUES ('unknown', 'OLDBTC', to_timestamp($1 / 1000.0), 1, 2, 0.5, 1.5, 3)",
        START_MS,
    )

    command.downgrade(_config(dsn), "0002")
    rows = fetch(dsn, "SELECT symbol, bucket, close, trade_count, vwap FROM ohlc_1s")
    assert len(rows) == len(keys) + 1  # one row per (symbol, bucket): binance's where both had one
    kept = {(r["symbol"], int(r["bucket"].timestamp() * 1000)): r for r in rows}
    for ms in shared:
        assert kept[("VENBTC", ms)]["close"] == both["binance"]["1s"][("binance", "VENBTC", ms)]["close"]
    old = kept[("OLDBTC", START_MS)]
    assert old["trade_count"] == 0 and old["vwap"] == 1.5

    command.upgrade(_config(dsn), "head")
    assert tables(dsn) == expected_schema(empty_backend.kind)
    after = asyncio.run(_read_all(empty_backend, UNKNOWN, "VENBTC"))
    assert len(after["1s"]) == len(keys)
    assert asyncio.run(_read_all(empty_backend, "binance", "VENBTC"))["1s"] == {}
    kept_trades = as_venue(
        list(binance) + [t for t in coinbase if t.timestamp - t.timestamp % 1000 not in shared],
        UNKNOWN,
    )
    for interval, ms in INTERVALS.items():
        assert_candles_equal(after[interval], batch_candles(kept_trades, ms))


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
        assert version(dsn) == HEAD
        assert tables(dsn) == expected_schema("timescaledb")
        command.downgrade(_config(dsn), "base")
        assert tables(dsn) == {}


@contextlib.contextmanager
def jobs_scheduled_mid_migration(dsn: str) -> Iterator[list[tuple[str, list[int]]]]:
    """Each statement of a migration run after which a policy job the run created is scheduled, as the run's
    own connection sees it: a job TimescaleDB's scheduler could start (a new job runs at once) while the
    migrations still refresh or drop what it works on. The hand-back at the end (``scheduled => true``) is
    what is meant to schedule them."""
    installed = "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
    scheduled = "SELECT job_id FROM timescaledb_information.jobs WHERE job_id >= 1000 AND scheduled"
    jobs = "SELECT job_id FROM timescaledb_information.jobs"
    known = {r[0] for r in fetch(dsn, jobs)} if fetch(dsn, installed)[0][0] else set()
    seen: list[tuple[str, list[int]]] = []

    def after(conn: Connection, cursor: object, statement: str, *_: object) -> None:
        if "scheduled => true" in statement:
            return
        probe = conn.connection.cursor()  # the run's own connection and transaction
        try:
            probe.execute(installed)
            if probe.fetchone()[0]:
                probe.execute(scheduled)
                new = sorted(r[0] for r in probe.fetchall() if r[0] not in known)
                if new:
                    seen.append((" ".join(statement.split())[:120], new))
        finally:
            probe.close()

    event.listen(Engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(Engine, "after_cursor_execute", after)


def test_migrations_hold_the_jobs_and_hand_them_back_scheduled(tmp_path: Path):
    """Migrations pause TimescaleDB's jobs while they run (a refresh policy racing a migration's refresh or
    DROP fails it on a server whose jobs run: "could not refresh continuous aggregate ... due to a concurrent
    refresh", 2 runs in 8 on a native server before jobs were created paused) and schedule them again after:
    no job a migration creates is scheduled before the last migration ran, and every policy job is scheduled
    after an upgrade, a downgrade and another upgrade, except one the operator had paused, which stays so."""
    with timescaledb_server(tmp_path) as dsn:
        with jobs_scheduled_mid_migration(dsn) as early:
            upgrade(dsn, settings=load_settings(retention_days=5))
        assert early == []
        jobs = "SELECT job_id, proc_name, scheduled FROM timescaledb_information.jobs WHERE job_id >= 1000"
        first = asyncio.run(_fetch(dsn, jobs))
        assert {r["proc_name"] for r in first} >= {"policy_refresh_continuous_aggregate", "policy_retention"}
        assert all(r["scheduled"] for r in first)
        held = min(r["job_id"] for r in first if r["proc_name"] == "policy_retention")
        asyncio.run(_fetch(dsn, f"SELECT alter_job({held}, scheduled => false)"))
        with jobs_scheduled_mid_migration(dsn) as early:
            downgrade(dsn, "0003")
        assert early == []
        with jobs_scheduled_mid_migration(dsn) as early:
            upgrade(dsn, settings=load_settings(retention_days=5))
        assert early == []
        again = asyncio.run(_fetch(dsn, jobs))
        assert {r["proc_name"] for r in again} == {r["proc_name"] for r in first}
        assert {r["job_id"]: r["scheduled"] for r in again} == {
            r["job_id"]: r["job_id"] != held for r in again
        }


async def test_a_migration_that_loses_a_race_runs_again(
    fresh_postgres: str, caplog: pytest.LogCaptureFixture
):
    """A migration chosen as a deadlock victim (another session locks its tables in the other order, as
    TimescaleDB's workers can on a live server) is rolled back and run again from where the last committed
    one left: the upgrade completes."""
    await asyncio.to_thread(upgrade, fresh_postgres, "0002")
    await as_deadlock_victim(fresh_postgres, lambda: asyncio.to_thread(upgrade, fresh_postgres))  # 0003
    assert any("lost a race" in r.getMessage() for r in caplog.records)
    columns = await _fetch(
        fresh_postgres,
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'exchange' ORDER BY 1",
    )
    assert [r[0] for r in columns] == ["ohlc_1s", "predictions", "volatility_1s"]
