"""Venues: every candle, volatility row and prediction is keyed by (exchange, symbol, bucket).

Before this revision Binance's BTCUSDT and Coinbase's BTC-USDT went into one candle. Existing rows cannot be
split after the fact, so they move over as the venue ``unknown`` (see :mod:`cryptostream.venues`); new rows
carry their exchange. Candle fields a foreign archive lacks (trade count, VWAP, buy and sell volume: see
``cryptostream import``) become nullable.

On TimescaleDB a hypertable's key cannot change while compression is on, and continuous aggregates group by
the key, so the aggregates are dropped, chunks decompressed and compression turned off; the tables change;
then compression (segmented by exchange and symbol), its policy and the aggregates (grouped by exchange and
symbol) are set up again and refreshed. The downgrade goes back the same way; where two venues hold the
same (symbol, bucket), it keeps one row per key (``unknown`` first, then by exchange name) and says how
many it dropped, and candles without a trade count get 0 (and the close as VWAP): the old schema has no
place for either.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import context, op

from cryptostream.policies import paused

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

# table -> (key after this revision, key before it)
KEYS: dict[str, tuple[str, str]] = {
    "ohlc_1s": ("exchange, symbol, bucket", "symbol, bucket"),
    "volatility_1s": ("exchange, symbol, bucket", "symbol, bucket"),
    "predictions": ("exchange, symbol, bucket, horizon_seconds", "symbol, bucket, horizon_seconds"),
}
# table -> columns a foreign archive may lack -> the value the old schema gets for a null
NULLABLE: dict[str, dict[str, str]] = {
    "ohlc_1s": {"trade_count": "0", "vwap": "close", "buy_volume": "0", "sell_volume": "0"},
    "volatility_1s": {"window_seconds": "0"},
}
ORDER_BY = {"predictions": "bucket, horizon_seconds"}  # compression order (TimescaleDB warns otherwise)
AGGREGATES: dict[str, tuple[str, str]] = {
    "ohlc_1m": ("1 minute", "1 minute"),
    "ohlc_5m": ("5 minutes", "5 minutes"),
    "ohlc_1h": ("1 hour", "15 minutes"),
    "ohlc_1d": ("1 day", "1 hour"),
}


def _scalar(sql: str) -> object:
    return op.get_bind().execute(sa.text(sql)).scalar()


def _hypertable(table: str) -> bool:
    if not _scalar("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"):
        return False
    return bool(
        _scalar(
            "SELECT count(*) FROM timescaledb_information.hypertables "
            f"WHERE hypertable_schema = current_schema() AND hypertable_name = '{table}'"
        )
    )


def _compress_after_days() -> int:
    settings = context.config.attributes.get("settings")
    if settings is None:
        from cryptostream.settings import load_settings

        settings = load_settings()
    return int(settings.compress_after_days)


def _aggregate_sql(view: str, width: str, group: str) -> str:
    return f"""
        CREATE MATERIALIZED VIEW IF NOT EXISTS {view}
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT {group},
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
        GROUP BY {group}, time_bucket(INTERVAL '{width}', bucket)
        WITH NO DATA
    """


def _unwind_timescale(tables: list[str]) -> None:
    """Aggregates dropped, chunks decompressed, compression off: the key can change now."""
    with op.get_context().autocommit_block():
        for view in reversed(AGGREGATES):
            op.execute(f"DROP MATERIALIZED VIEW IF EXISTS {view}")
    for table in tables:
        op.execute(f"SELECT remove_compression_policy('{table}', if_exists => true)")
        op.execute(f"SELECT decompress_chunk(c, true) FROM show_chunks('{table}') c")
        op.execute(f"ALTER TABLE {table} SET (timescaledb.compress = false)")


def _rewind_timescale(tables: list[str], segment_by: str, group: str) -> None:
    """Compression (segmented by ``segment_by``), its policy and the aggregates (grouped by ``group``)."""
    days = _compress_after_days()
    for table in tables:
        order = ORDER_BY.get(table, "bucket")
        op.execute(
            f"ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = '{segment_by}', "
            f"timescaledb.compress_orderby = '{order}')"
        )
        op.execute(
            paused(
                f"add_compression_policy('{table}', compress_after => INTERVAL '{days} days', "
                "if_not_exists => true)"
            )
        )
    if "ohlc_1s" not in tables:
        return
    with op.get_context().autocommit_block():
        for view, (width, schedule) in AGGREGATES.items():
            op.execute(_aggregate_sql(view, width, group))
            op.execute(
                paused(
                    f"add_continuous_aggregate_policy('{view}', start_offset => NULL, "
                    f"end_offset => INTERVAL '{width}', schedule_interval => INTERVAL '{schedule}', "
                    "if_not_exists => true)"
                )
            )
            op.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, now() - INTERVAL '{width}')")


def upgrade() -> None:
    hypertables = [t for t in KEYS if _hypertable(t)]
    if hypertables:
        _unwind_timescale(hypertables)
    for table, (key, _) in KEYS.items():
        op.execute(f"ALTER TABLE {table} ADD COLUMN exchange text NOT NULL DEFAULT 'unknown'")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN exchange DROP DEFAULT")
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})")
        for column in NULLABLE.get(table, {}):
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL")
    if hypertables:
        _rewind_timescale(hypertables, "exchange, symbol", "exchange, symbol")


def downgrade() -> None:
    hypertables = [t for t in KEYS if _hypertable(t)]
    if hypertables:
        _unwind_timescale(hypertables)
    bind = op.get_bind()
    for table, (_, old_key) in KEYS.items():
        same = " AND ".join(f"a.{c} = b.{c}" for c in old_key.split(", "))
        dropped = bind.execute(
            sa.text(
                f"DELETE FROM {table} a USING {table} b WHERE {same} "
                "AND (a.exchange <> 'unknown', a.exchange) > (b.exchange <> 'unknown', b.exchange)"
            )
        ).rowcount
        if dropped:
            log.warning(
                "%s: %d row(s) of a second venue for the same key dropped (the old key has no venue)",
                table,
                dropped,
            )
        for column, fill in NULLABLE.get(table, {}).items():
            filled = bind.execute(
                sa.text(f"UPDATE {table} SET {column} = {fill} WHERE {column} IS NULL")
            ).rowcount
            if filled:
                log.warning(
                    "%s: %d row(s) without %s got %s (the old schema requires a value)",
                    table,
                    filled,
                    column,
                    fill,
                )
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL")
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({old_key})")
        op.execute(f"ALTER TABLE {table} DROP COLUMN exchange")
    if hypertables:
        _rewind_timescale(hypertables, "symbol", "symbol")
