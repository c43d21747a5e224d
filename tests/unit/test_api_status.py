"""Feed status as the API keeps it: the newest report per source, silent sources not delivering."""

from __future__ import annotations

import orjson
import pytest

from cryptostream.feeds import CONNECTED, CONNECTING, RECONNECTING, FeedStatus
from graphql_api.status import StatusBoard


def test_a_source_delivers_while_its_newest_report_is_fresh_and_connected() -> None:
    board = StatusBoard(stale_after=10)
    feed = FeedStatus("binance", CONNECTING, 1_000)
    board.update_feed(feed.message(1_000, "host:1"), now=0.0)
    feed.enter(CONNECTED, 2_000)
    feed.traded(5, 2_500)
    board.update_feed(feed.message(3_000, "host:1"), now=1.0)
    (report,) = board.snapshot(now=2.0).feeds
    got = (report.state, report.since_ms, report.last_trade_ms, report.trades)
    assert got == (CONNECTED, 2_000, 2_500, 5)
    assert report.delivering and report.error is None

    # no report for longer than stale_after: the ingest process is gone, whatever it last said
    (silent,) = board.snapshot(now=11.5).feeds
    assert not silent.alive and not silent.delivering


def test_reconnecting_keeps_its_since_and_reason_until_connected_again() -> None:
    feed = FeedStatus("coinbase", CONNECTED, 1_000)
    feed.enter(RECONNECTING, 5_000, "connection closed")
    feed.enter(RECONNECTING, 6_000, "cannot connect (refused)")
    assert (feed.since_ms, feed.error) == (5_000, "cannot connect (refused)")
    feed.enter(CONNECTED, 7_000)
    assert (feed.state, feed.since_ms, feed.error) == (CONNECTED, 7_000, None)


@pytest.mark.parametrize(
    "message", [{"type": "feed"}, {"type": "feed", "source": "binance", "state": "dancing"}, {"source": 3}]
)
def test_a_malformed_feed_report_is_refused_not_kept(message: dict[str, object]) -> None:
    board = StatusBoard()
    with pytest.raises(ValueError, match="feed status needs a source and a state"):
        board.update_feed(orjson.loads(orjson.dumps(message)))
    assert board.snapshot().feeds == []
