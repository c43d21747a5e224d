"""Prometheus metrics of every role, in one registry per process.

The API serves them at ``/metrics``; ingest and processor serve them on ``METRICS_PORT`` when it is set.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "BACKFILLED",
    "CANDLES",
    "CHECKPOINT_SECONDS",
    "CONSUMER_LAG",
    "DUPLICATES",
    "FEED_ERRORS",
    "FEED_STALLS",
    "INGEST_BACKLOG",
    "INGEST_DUPLICATES",
    "LATE",
    "LOST_TRADES",
    "PUBLISH_RETRIES",
    "RECONNECTS",
    "REJECTED",
    "SINK_ROWS",
    "TRADES_IN",
    "TRADES_OUT",
    "TRADE_GAPS",
    "PREDICTION_FAILURES",
    "serve_metrics",
]

TRADES_IN = Counter("cryptostream_trades_in", "Trades received", ["role", "source"])
TRADES_OUT = Counter("cryptostream_trades_out", "Trades handed on (published to Kafka / windowed)", ["role"])
REJECTED = Counter("cryptostream_rejected", "Records rejected to the dead-letter topic", ["role", "reason"])
LATE = Counter(
    "cryptostream_late_trades", "Trades that arrived after their window closed", ["exchange", "symbol"]
)
DUPLICATES = Counter("cryptostream_duplicate_trades", "Duplicate trades counted once", [])
CANDLES = Counter("cryptostream_candles", "Closed 1 s candles", [])
PREDICTION_FAILURES = Counter(
    "cryptostream_prediction_failures", "Markets a scorer failed on in a closing pass (candles kept)", []
)
SINK_ROWS = Counter("cryptostream_sink_rows", "Rows made durable", ["sink", "kind"])
CHECKPOINT_SECONDS = Histogram(
    "cryptostream_checkpoint_seconds",
    "Time to flush every sink and commit offsets",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge("cryptostream_consumer_lag", "Records behind the log end", ["topic", "partition"])
RECONNECTS = Counter("cryptostream_reconnects", "Exchange WebSocket reconnects", ["exchange"])
INGEST_BACKLOG = Gauge("cryptostream_ingest_backlog", "Trades accepted but not yet acknowledged by Kafka", [])
# ingest: feed health, trade-id gaps and their backfill, publisher retries
FEED_STALLS = Counter("cryptostream_feed_stalls", "Feeds silent too long (reconnected)", ["exchange"])
FEED_ERRORS = Counter("cryptostream_feed_errors", "Error messages sent by an exchange", ["exchange"])
TRADE_GAPS = Counter("cryptostream_trade_gaps", "Trade-id gaps detected", ["exchange", "symbol"])
BACKFILLED = Counter("cryptostream_backfilled_trades", "Missing trades recovered from REST", ["exchange"])
LOST_TRADES = Counter("cryptostream_lost_trades", "Missing trades not recovered", ["exchange"])
INGEST_DUPLICATES = Counter("cryptostream_ingest_duplicates", "Resent trades dropped at ingest", ["exchange"])
PUBLISH_RETRIES = Counter("cryptostream_publish_retries", "Kafka sends retried by the publisher", ["topic"])


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` on ``port`` in a background thread (no-op when ``port`` is falsy)."""
    if port:
        start_http_server(port, addr=host)
