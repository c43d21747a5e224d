"""Feed status as the API keeps it: the newest report per source, silent sources not delivering."""

from __future__ import annotations

import orjson
import pytest

from cryptostream.feeds import CONNECTED, CONNECTING, ENDED, FINISHED, RECONNECTING, FeedStatus
from graphql_api.rest import _undelivered
from graphql_api.status import FORGET_AFTER_S, StatusBoard


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
    "message",
    [
        {"type": "feed"},
        {"type": "feed", "source": "binance", "state": ""},
        {"type": "feed", "source": "binance", "state": "  "},
        {"type": "feed", "source": "", "state": "connected"},
        {"source": 3},
    ],
)
def test_a_malformed_feed_report_is_refused_not_kept(message: dict[str, object]) -> None:
    board = StatusBoard()
    with pytest.raises(ValueError, match="feed status needs a source and a state"):
        board.update_feed(orjson.loads(orjson.dumps(message)))
    assert board.snapshot().feeds == []


def test_a_state_from_a_newer_ingest_is_shown_as_it_came_and_not_taken_for_delivering(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rolling upgrade runs a newer ingest beside this API: a state it added (``finished`` was one) was
    refused as malformed, so the source vanished from the status and /health asked whether ingest ran."""
    board = StatusBoard(stale_after=10)
    feed = FeedStatus("binance", "paused-by-venue", 1_000)
    with caplog.at_level("WARNING", logger="graphql_api.status"):
        for t in range(3):
            board.update_feed(feed.message(1_000 + t, "host:1"), now=float(t))
    (report,) = board.snapshot(now=3.0).feeds
    assert (report.source, report.state, report.alive) == ("binance", "paused-by-venue", True)
    assert not report.delivering and not report.finished
    assert not board.snapshot(now=3.0).fed
    assert (
        _undelivered([report])
        == "no trade source delivers: binance paused-by-venue since 1970-01-01T00:00:01+00:00"
    )
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "'paused-by-venue'" in warnings[0] and "newer ingest" in warnings[0]

    # another source connected beside it: fed, and the unknown one still shown
    live = FeedStatus("coinbase", CONNECTED, 2_000)
    board.update_feed(live.message(2_500, "host:1"), now=3.5)
    snapshot = board.snapshot(now=4.0)
    assert snapshot.fed and [f.state for f in snapshot.feeds] == ["paused-by-venue", CONNECTED]


def test_a_finished_replay_is_not_a_problem_however_old_its_report_but_a_stopped_source_is() -> None:
    """`up --source replay` said "degraded: replay silent" 10 s after the file ended, and forgot the replay
    after an hour ("is ingest running?"), while it kept serving what the file held, as the README says."""
    board = StatusBoard(stale_after=10)
    replay = FeedStatus("replay", CONNECTED, 1_000)
    board.update_feed(replay.message(1_000, "host:1"), now=0.0)
    replay.traded(300, 1_500)
    replay.enter(FINISHED, 2_000)
    board.update_feed(replay.message(2_000, "host:1"), now=1.0)
    for now in (2.0, 11.0, FORGET_AFTER_S + 60):
        snapshot = board.snapshot(now=now)
        (report,) = snapshot.feeds
        assert report.finished and report.trades == 300 and not report.delivering
        assert snapshot.fed, now

    # a live source beside it that delivers nothing is the problem, and the only one named
    live = FeedStatus("binance", RECONNECTING, 3_000, error="cannot connect (refused)")
    board.update_feed(live.message(3_000, "host:2"), now=FORGET_AFTER_S + 61)
    snapshot = board.snapshot(now=FORGET_AFTER_S + 62)
    assert not snapshot.fed
    said = _undelivered(snapshot.feeds)
    assert said.startswith("no trade source delivers: binance reconnecting since") and "replay" not in said

    # ... and once that source is forgotten (an hour without a report), the old finished replay alone does
    # not make the pipeline fed again: nothing delivers since the live ingest went away
    snapshot = board.snapshot(now=2 * FORGET_AFTER_S + 62)
    assert [f.source for f in snapshot.feeds] == ["replay"] and not snapshot.fed
    assert _undelivered(snapshot.feeds) == "no trade source reports: is ingest running?"

    # a replay that finishes after that: fed again
    again = FeedStatus("replay", CONNECTED, 9_000)
    again.enter(FINISHED, 9_500)
    board.update_feed(again.message(9_500, "host:3"), now=2 * FORGET_AFTER_S + 70)
    assert board.snapshot(now=2 * FORGET_AFTER_S + 71).fed

    # a source stopped before its end (ENDED) is not finished: nothing delivers, and it is forgotten in time
    stopped = StatusBoard(stale_after=10)
    feed = FeedStatus("replay", CONNECTED, 1_000)
    feed.enter(ENDED, 2_000)
    stopped.update_feed(feed.message(2_000, "host:1"), now=0.0)
    assert not stopped.snapshot(now=1.0).fed
    assert stopped.snapshot(now=FORGET_AFTER_S + 1).feeds == []
