"""Roll-ups that outlive the 1 s rows: refresh windows bounded to the last days, history materialized.

Up to revision 0003 every continuous aggregate's refresh policy covered all time (``start_offset NULL``).
When the retention policy dropped old 1 s chunks, TimescaleDB invalidated their range and the next refresh
recomputed it from nothing: ``RETENTION_DAYS`` erased the 1m/5m/1h/1d history it was meant to keep. Here each
policy is replaced in place by one over the last three days (late rows older than that are refreshed by the
writer, see :mod:`processor.sinks.postgres`), and every aggregate is materialized over the 1 s rows the
database still holds, starting at the oldest one, never below the retention policy's horizon (a late row
older than what retention dropped is no reason to recompute the dropped range).

Retention itself follows the settings and is set by ``cryptostream migrate`` after this revision
(:mod:`cryptostream.policies`), always longer than these windows. The downgrade keeps the bounded windows:
0003's unbounded ones, with retention in force, erased the roll-ups of every dropped range at their next
run, and the bounded ones work with 0003's schema as well.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from cryptostream.policies import JOB_ONLY_HORIZONS_SQL, paused

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

WINDOW = "3 days"
# view -> (bucket width, refresh schedule), as revision 0002 made them
AGGREGATES: dict[str, tuple[str, str]] = {
    "ohlc_1m": ("1 minute", "1 minute"),
    "ohlc_5m": ("5 minutes", "5 minutes"),
    "ohlc_1h": ("1 hour", "15 minutes"),
    "ohlc_1d": ("1 day", "1 hour"),
}


def _aggregates() -> list[str]:
    bind = op.get_bind()
    if not bind.execute(sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")).scalar():
        return []
    rows = bind.execute(
        sa.text(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates "
            "WHERE view_schema = current_schema()"
        )
    )
    have = {r[0] for r in rows}
    return [view for view in AGGREGATES if view in have]


def _policies(start_offset: str) -> None:
    for view in _aggregates():
        width, schedule = AGGREGATES[view]
        op.execute(f"SELECT remove_continuous_aggregate_policy('{view}', if_exists => true)")
        op.execute(
            paused(
                f"add_continuous_aggregate_policy('{view}', start_offset => {start_offset}, "
                f"end_offset => INTERVAL '{width}', schedule_interval => INTERVAL '{schedule}')"
            )
        )


def upgrade() -> None:
    views = _aggregates()
    if not views:
        return
    _policies(f"INTERVAL '{WINDOW}'")
    bind = op.get_bind()
    first = bind.execute(sa.text("SELECT min(bucket) FROM ohlc_1s")).scalar()
    if first is None:
        return
    horizons = dict(bind.execute(sa.text(JOB_ONLY_HORIZONS_SQL)).fetchall())
    if horizons.get("ohlc_1s") is not None:
        first = max(first, datetime.fromtimestamp(horizons["ohlc_1s"] / 1000, UTC))
    with op.get_context().autocommit_block():
        for view in views:
            width = AGGREGATES[view][0]
            op.execute(
                f"CALL refresh_continuous_aggregate('{view}', time_bucket(INTERVAL '{width}', "
                f"TIMESTAMPTZ '{first.isoformat()}'), now() - INTERVAL '{width}')"
            )


def downgrade() -> None:
    """Nothing to undo in the schema; the bounded refresh windows stay (see the module docstring)."""
