"""Where each retention policy may have dropped rows, kept across changes of the policy (TimescaleDB only).

A roll-up bucket is recomputed from the 1 s rows the database holds; over a range a retention policy dropped,
that recomputes it from whatever late rows came in since, and a roll-up bucket brought back below its own
level's retention makes the aggregate look whole from there. Both the writer's refreshes
(:mod:`processor.sinks.rollups`) and ``migrate``'s (:mod:`cryptostream.policies`) stay above the *horizon*:
the day before which a policy in force now may have dropped rows. A policy that was replaced may have dropped
more (``RETENTION_DAYS`` raised from 5 to 6: the sixth day is gone all the same), so ``migrate`` records its
horizon here when it replaces or removes it, and the horizon is the later of the two.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _timescale() -> bool:
    bind = op.get_bind()
    return bool(
        bind.execute(sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")).scalar()
    )


def upgrade() -> None:
    if _timescale():
        op.execute(
            "CREATE TABLE IF NOT EXISTS retention_horizons ("
            "relation text PRIMARY KEY, dropped_before timestamptz NOT NULL)"
        )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS retention_horizons")
