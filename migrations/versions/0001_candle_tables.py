"""Tables of 1 s candles, volatility and predictions.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE ohlc_1s (
            symbol       text             NOT NULL,
            bucket       timestamptz      NOT NULL,
            open         double precision NOT NULL,
            high         double precision NOT NULL,
            low          double precision NOT NULL,
            close        double precision NOT NULL,
            volume       double precision NOT NULL,
            trade_count  bigint           NOT NULL,
            vwap         double precision NOT NULL,
            buy_volume   double precision NOT NULL,
            sell_volume  double precision NOT NULL,
            PRIMARY KEY (symbol, bucket)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE volatility_1s (
            symbol          text             NOT NULL,
            bucket          timestamptz      NOT NULL,
            volatility      double precision NOT NULL,
            window_seconds  integer          NOT NULL,
            PRIMARY KEY (symbol, bucket)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE predictions (
            symbol           text             NOT NULL,
            bucket           timestamptz      NOT NULL,
            horizon_seconds  integer          NOT NULL,
            probability_up   double precision NOT NULL,
            label            text             NOT NULL,
            model_version    text             NOT NULL,
            PRIMARY KEY (symbol, bucket, horizon_seconds)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS predictions")
    op.execute("DROP TABLE IF EXISTS volatility_1s")
    op.execute("DROP TABLE IF EXISTS ohlc_1s")
