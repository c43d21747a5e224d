"""Trade-id bookkeeping: each id admitted once, every hole reported, memory bounded by holes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.exchanges import tracker
from ingest.exchanges.tracker import TradeIds


def test_in_order_ids_are_new_and_resends_are_duplicates():
    ids = TradeIds()
    assert all(ids.admit(i).new for i in range(100, 110))
    assert not any(ids.admit(i).new for i in (100, 105, 109))
    assert ids.open_gaps == 0


def test_a_jump_opens_a_gap_that_late_or_backfilled_trades_fill_once():
    ids = TradeIds()
    ids.admit(10)
    admission = ids.admit(20)
    assert admission.new and admission.gap == (11, 19)
    assert ids.missing(0, 100) == [(11, 19)]
    assert ids.admit(15).new and not ids.admit(15).new
    assert ids.missing(0, 100) == [(11, 14), (16, 19)]
    for i in (11, 12, 13, 14, 16, 17, 18, 19):
        assert ids.admit(i).new
    assert ids.missing(0, 100) == [] and ids.open_gaps == 0


def test_heartbeat_last_id_ahead_of_us_opens_a_gap():
    ids = TradeIds()
    assert ids.observe_last(4).gap is None  # nothing seen yet: no history to owe, but a start
    assert not ids.admit(4).new  # the heartbeat's trade, resent
    ids.admit(5)
    assert ids.observe_last(5).gap is None
    assert ids.observe_last(9).gap == (6, 9)
    assert ids.admit(10).gap is None  # the heartbeat already moved the high mark
    assert ids.missing(0, 20) == [(6, 9)]


def test_a_market_known_only_by_heartbeats_shows_the_gap_an_outage_left():
    ids = TradeIds()
    ids.observe_last(7)  # quiet: no trade, only heartbeats
    ids.observe_last(7)
    assert ids.observe_last(12).gap == (8, 12)  # after a reconnect: traded while we were away


def test_giving_up_closes_the_hole_and_counts_it():
    ids = TradeIds()
    ids.admit(1)
    ids.admit(11)
    ids.admit(5)
    assert ids.give_up(2, 10) == 8
    assert ids.open_gaps == 0
    assert not ids.admit(3).new  # a straggler after giving up is not published twice... nor at all


def test_open_gaps_are_bounded(monkeypatch):
    monkeypatch.setattr(tracker, "MAX_OPEN_GAPS", 3)
    ids = TradeIds()
    ids.admit(0)
    dropped = [ids.admit(i).dropped for i in range(2, 12, 2)]  # five one-id holes
    assert ids.open_gaps == 3
    assert sum(dropped) == 2  # the two oldest holes were given up, and said so


def test_a_numbering_restart_is_followed_instead_of_dropping_everything():
    ids = TradeIds()
    ids.admit(50_000_000)
    assert ids.admit(3).new and ids.resets == 1
    assert ids.admit(4).new and not ids.admit(4).new


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=400))
def test_any_delivery_order_with_resends_admits_each_id_exactly_once(delivery):
    """Ids from the first one seen on: each admitted once (history before start-up is not owed)."""
    ids = TradeIds()
    admitted = [i for i in delivery if ids.admit(i).new]
    first, high = delivery[0], max(delivery)
    assert sorted(admitted) == sorted({i for i in delivery if i >= first})
    # every id between the first seen and the highest is either delivered or still reported missing
    holes = {i for a, b in ids.missing(first, high) for i in range(a, b + 1)}
    assert holes | set(admitted) == set(range(first, high + 1))
    assert not holes & set(admitted)
