"""TimescaleDB: hypertables, continuous aggregates 1m/5m/1h/1d, refresh and compression policies.

Only where the ``timescaledb`` extension is available. On plain PostgreSQL this revision creates nothing:
the read layer (:mod:`cryptostream.store`) rolls 1 s candles up with ``date_bin`` at query time into the
same columns, so both kinds of server answer alike.

How it avoids failing half-way: everything transactional (extension, hypertables with their existing
rows, compression) comes first in one transaction; continuous aggregates cannot be created
or refreshed inside a transaction, so they follow in autocommit, each statement idempotent
(``IF NOT EXISTS``, ``if_not_exists``). If anything in that second part fails, the revision is not
recorded and running the upgrade again finishes the job; the downgrade copes with any partial state.

``COMPRESS_AFTER_DAYS`` is read here; retention is not set here: a retention job started before the
aggregates below were materialized dropped raw rows no roll-up had yet (and revision 0004 bounds the
refresh windows it would otherwise recompute from nothing). ``cryptostream migrate`` sets retention from
the settings once every revision ran (:mod:`cryptostream.policies`).

Each aggregate is built directly on ``ohlc_1s`` rather than stacked on a finer one: stacked real-time
aggregates slow planning and refresh (timescaledb #4662, #4699), and buckets stay UTC.

The aggregates store ``notional = sum(vwap * volume)``; readers derive ``vwap = notional / volume`` (the
last close when the volume is 0, as for 1 s candles), which also lets 15 m roll up from 5 m exactly.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import context, op

from cryptostream.policies import paused

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

TABLES = ("ohlc_1s", "volatility_1s", "predictions")

# view -> (bucket width, refresh schedule). end_offset = one bucket: the newest, still-filling bucket is
# answered by real-time aggregation from ohlc_1s, so readers never see a half-materialized bucket.
AGGREGATES: dict[str, tuple[str, str]] = {
    "ohlc_1m": ("1 minute", "1 minute"),
    "ohlc_5m": ("5 minutes", "5 minutes"),
    "ohlc_1h": ("1 hour", "15 minutes"),
    "ohlc_1d": ("1 day", "1 hour"),
}


def _compress_after_days() -> int:
    """COMPRESS_AFTER_DAYS of the settings this migration runs with."""
    settings = context.config.attributes.get("settings")
    if settings is None:
        from cryptostream.settings import load_settings

        settings = load_settings()
    return int(settings.compress_after_days)


def _scalar(sql: str) -> object:
    return op.get_bind().execute(sa.text(sql)).scalar()


def _installed() -> bool:
    return bool(_scalar("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"))


def _ensure_extension() -> bool:
    """True when TimescaleDB is (now) installed in this database."""
    if _installed():
        return True
    if not _scalar("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"):
        log.info("timescaledb is not available: plain tables, roll-ups computed at query time")
        return False
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
    except sa.exc.DBAPIError as exc:
        # Typically: the library is installed but not in shared_preload_libraries. Plain tables still work.
        log.warning("timescaledb is available but could not be created (%s): staying on plain tables", exc)
        return False
    return True


def _is_hypertable(table: str) -> bool:
    return bool(
        _scalar(
            "SELECT count(*) FROM timescaledb_information.hypertables "
            f"WHERE hypertable_schema = current_schema() AND hypertable_name = '{table}'"
        )
    )


def _compression_enabled(table: str) -> bool:
    return bool(
        _scalar(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE compression_enabled "
            f"AND hypertable_schema = current_schema() AND hypertable_name = '{table}'"
        )
    )


def _aggregate_sql(view: str, width: str) -> str:
    return f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {view}
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT symbol,
               time_bucket(INTERVAL '{width}', bucket) AS bucket,
               first(open, bucket)                    AS open,
               max(high)                              AS high,
               min(low)                               AS low,
               last(close, bucket)                    AS close,
               sum(volume)                            AS volume,
               sum(trade_count)::bigint               AS trade_count,
               sum(vwap * volume)                     AS notional,
               sum(buy_volume)                        AS buy_volume,
               sum(sell_volume)                       AS sell_volume
        FROM ohlc_1s
        GROUP BY symbol, time_bucket(INTERVAL '{width}', bucket)
        WITH NO DATA
    """


def upgrade() -> None:
    if not _ensure_extension():
        return
    compress_after_days = _compress_after_days()

    # Part 1, one transaction: hypertables (existing rows move into chunks), compression.
    for table in TABLES:
        op.execute(
            # No default index on bucket: the (symbol, bucket) key serves every read, and one index less
            # keeps COPY + upsert fast.
            f"SELECT create_hypertable('{table}', by_range('bucket', INTERVAL '1 day'), "
            "create_default_indexes => false, migrate_data => true, if_not_exists => true)"
        )
        if not _compression_enabled(table):  # set once: a re-run must not touch compressed chunks
            op.execute(
                f"ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol', "
                "timescaledb.compress_orderby = 'bucket')"
            )
        op.execute(
            paused(
                f"add_compression_policy('{table}', compress_after => INTERVAL '{compress_after_days} days', "
                "if_not_exists => true)"
            )
        )

    # Part 2, autocommit: continuous aggregates, their refresh policies, and materializing existing rows.
    with op.get_context().autocommit_block():
        for view, (width, schedule) in AGGREGATES.items():
            op.execute(_aggregate_sql(view, width))
            # start_offset NULL: rows written into old buckets (a replay of last year's trades) are picked
            # up from the invalidation log on the next run, wherever they fall.
            op.execute(
                paused(
                    f"add_continuous_aggregate_policy('{view}', start_offset => NULL, "
                    f"end_offset => INTERVAL '{width}', schedule_interval => INTERVAL '{schedule}', "
                    "if_not_exists => true)"
                )
            )
            op.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, now() - INTERVAL '{width}')")


def downgrade() -> None:
    if not _installed():
        return
    # Aggregates first (dropping a view drops its refresh policy), outside a transaction like their DDL.
    with op.get_context().autocommit_block():
        for view in reversed(AGGREGATES):
            op.execute(f"DROP MATERIALIZED VIEW IF EXISTS {view}")
    # Back to ordinary tables, rows kept (compressed chunks are read back transparently).
    for table in TABLES:
        if not _is_hypertable(table):
            continue
        op.execute(f"SELECT remove_retention_policy('{table}', if_exists => true)")
        op.execute(f"SELECT remove_compression_policy('{table}', if_exists => true)")
        op.execute(f"CREATE TABLE {table}_plain (LIKE {table} INCLUDING ALL)")
        op.execute(f"INSERT INTO {table}_plain SELECT * FROM {table}")
        op.execute(f"DROP TABLE {table}")
        op.execute(f"ALTER TABLE {table}_plain RENAME TO {table}")
        op.execute(f"ALTER INDEX {table}_plain_pkey RENAME TO {table}_pkey")
    # The extension stays: other schemas or applications may use it, and the next upgrade reuses it.
