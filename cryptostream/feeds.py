"""Where trades come from, as ingest sees it: one :class:`FeedStatus` per source (an exchange feed, the
synthetic market), sent to the candles topic about once a second with key ``__feed__``.

The API keeps the newest report of each source (``graphql_api/status.py``) and shows it in ``/health``,
``pipelineStatus`` and the dashboard: connected or reconnecting since when, the last trade, the last error.
A status is the ingest process's view in wall-clock time; it never enters a candle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CONNECTED", "CONNECTING", "ENDED", "FEED_KEY", "FINISHED", "RECONNECTING", "STATES", "FeedStatus"]

FEED_KEY = b"__feed__"
CONNECTING = "connecting"  # first connection not made yet
CONNECTED = "connected"  # a session delivers (trades or the exchange's heartbeats)
RECONNECTING = "reconnecting"  # the last session ended; the next is being opened
ENDED = "ended"  # stopped before its end (ingest stopping): its trades may go on without it
FINISHED = "finished"  # delivered all it has (a replay at the end of its file): nothing more is to come
STATES = (CONNECTING, CONNECTED, RECONNECTING, ENDED, FINISHED)


@dataclass(slots=True)
class FeedStatus:
    """One source's connection state; times are wall-clock epoch milliseconds."""

    source: str
    state: str
    since_ms: int  # when it entered ``state``
    last_trade_ms: int | None = None  # when the newest trade was received
    trades: int = 0  # trades delivered since ingest started
    reconnects: int = 0
    error: str | None = None  # why the last session ended, while not connected

    def enter(self, state: str, now_ms: int, error: str | None = None) -> None:
        """Move to ``state`` (``since_ms`` changes only when the state does)."""
        if state != self.state:
            self.state, self.since_ms = state, now_ms
        self.error = None if state == CONNECTED else (error or self.error)

    def traded(self, count: int, now_ms: int) -> None:
        if count:
            self.trades += count
            self.last_trade_ms = now_ms

    def message(self, now_ms: int, ingest: str) -> dict[str, Any]:
        """The candles-topic message (``type: feed``)."""
        return {
            "type": "feed",
            "source": self.source,
            "state": self.state,
            "since_ms": self.since_ms,
            "last_trade_ms": self.last_trade_ms,
            "trades": self.trades,
            "reconnects": self.reconnects,
            "error": self.error,
            "ingest": ingest,
            "time_ms": now_ms,
        }
