"""Live roll-ups of 1 s candles into coarser intervals, against a naive roll-up of the same seconds."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphql_api.rollup import Bar, RollUp
from tests.integration.api_helpers import roll_up

BASE = 1_700_000_040_000  # a minute boundary


def bar(bucket: int, price: float, qty: float = 1.0, buy: bool = True) -> Bar:
    return Bar(
        bucket, price, price, price, price, qty, 1, price * qty, qty if buy else 0.0, 0.0 if buy else qty
    )


def as_row(b: Bar) -> dict[str, Any]:
    return {
        "open": b.open,
        "high": b.high,
        "low": b.low,
        "close": b.close,
        "volume": b.volume,
        "trade_count": b.trade_count,
        "vwap": b.vwap,
        "buy_volume": b.buy_volume,
        "sell_volume": b.sell_volume,
    }


seconds_strategy = st.lists(
    st.tuples(st.integers(0, 400), st.floats(1, 1000), st.floats(0.001, 10), st.booleans()),
    min_size=1,
    max_size=120,
    unique_by=lambda t: t[0],
)


def feed_like_the_processor(rollup: RollUp, seconds: list[Bar], lag: int) -> list[tuple[Bar, bool]]:
    """Live updates of each second as it opens (a partial, then the full candle), its close ``lag`` seconds
    later (the watermark), then a frontier at the end, as status messages carry it."""
    out: list[tuple[Bar, bool]] = []
    for i, second in enumerate(seconds):
        half = Bar(
            second.bucket,
            second.open,
            second.open,
            second.open,
            second.open,
            0.5,
            1,
            0.5 * second.open,
            0.5,
            0.0,
        )
        out += rollup.live_second(half)
        out += rollup.live_second(second)
        if i >= lag:
            out += rollup.closed_second(seconds[i - lag])
    for second in seconds[max(0, len(seconds) - lag) :]:
        out += rollup.closed_second(second)
    out += rollup.advance(seconds[-1].bucket + 10**9)
    return out


@settings(max_examples=200, deadline=None)
@given(rows=seconds_strategy, interval=st.sampled_from([1_000, 5_000, 60_000]), lag=st.integers(0, 5))
def test_closed_roll_ups_equal_a_naive_roll_up(
    rows: list[tuple[int, float, float, bool]], interval: int, lag: int
) -> None:
    seconds = sorted((bar(BASE + s * 1000, p, q, b) for s, p, q, b in rows), key=lambda b: b.bucket)
    out = feed_like_the_processor(RollUp(interval), seconds, lag)
    closed = [b for b, c in out if c]
    expected = roll_up({("x", "X", s.bucket): as_row(s) for s in seconds}, interval)
    assert [b.bucket for b in closed] == sorted(k[2] for k in expected), "each bucket closes once, in order"
    for b in closed:
        exp = expected[("x", "X", b.bucket)]
        got = as_row(b)
        for name in ("open", "high", "low", "close", "trade_count"):
            assert got[name] == exp[name]
        for name in ("volume", "vwap", "buy_volume", "sell_volume"):
            assert got[name] == pytest.approx(exp[name], rel=1e-9)
    for b, c in out:
        if not c:
            assert b.trade_count >= 1  # an open update always carries what is known so far


def test_a_bucket_closes_only_when_the_frontier_passes_its_end() -> None:
    rollup = RollUp(60_000)
    assert rollup.closed_second(bar(BASE + 58_000, 10.0)) == [(rollup.latest(), False)]
    assert [c for _, c in rollup.closed_second(bar(BASE + 59_000, 11.0))] == [True]  # the last second
    rollup.closed_second(bar(BASE + 61_000, 12.0))
    assert rollup.advance(BASE + 119_000) == []
    (final,) = rollup.advance(BASE + 120_000)
    assert final[1] is True and final[0].bucket == BASE + 60_000 and final[0].close == 12.0


def test_stale_and_duplicate_updates_are_ignored() -> None:
    rollup = RollUp(60_000)
    rollup.closed_second(bar(BASE + 1_000, 10.0))
    assert rollup.closed_second(bar(BASE + 1_000, 99.0)) == []  # a replayed close counts once
    assert rollup.live_second(bar(BASE + 1_000, 99.0)) == []  # a live update of a closed second
    rollup.advance(BASE + 60_000)
    assert rollup.closed_second(bar(BASE + 2_000, 5.0)) == []  # its minute is already final
    assert rollup.latest() is None


def test_seeding_then_streaming_equals_streaming_from_the_start() -> None:
    seconds = [bar(BASE + s * 1000, 100.0 + s, 1.0 + s / 10, s % 3 == 0) for s in range(0, 150, 2)]
    whole = RollUp(60_000)
    expected = [u for second in seconds for u in whole.closed_second(second)]
    seeded = RollUp(60_000)
    for second in seconds[:40]:
        seeded.closed_second(second)  # as the fan-out seeds from the store
    later = [u for second in seconds[40:] for u in seeded.closed_second(second)]
    assert [x for x in later if x[1]] == [x for x in expected if x[1] and x[0].bucket >= BASE + 60_000]


def test_whole_seconds_only() -> None:
    with pytest.raises(ValueError, match="whole number of seconds"):
        RollUp(1_500)


def test_seeded_rows_ahead_of_the_live_stream_never_hold_its_buckets_open() -> None:
    rollup = RollUp(60_000)
    rollup.closed_second(bar(BASE + 600_000, 5.0), advance=False)  # the store holds a later period
    out = [u for s in range(61) for u in rollup.closed_second(bar(BASE + s * 1000, 1.0 + s))]
    assert [(b.bucket, b.close, c) for b, c in out if c] == [(BASE, 60.0, True)]


def test_a_seeded_minute_counts_its_seconds_once() -> None:
    """A stored minute seeds an hour whole: a second of it that arrives again later is not added twice,
    a later second is, and the hour closes when the frontier passes its end."""
    minute = bar(BASE, 10.0, 60.0)  # one minute's candle: 60 seconds of 1.0 each, folded
    hour = RollUp(3_600_000)
    start = BASE - BASE % 3_600_000
    assert hour.closed_second(minute, advance=False, through=BASE + 59_000)[0][0].volume == 60.0
    assert hour.closed_second(bar(BASE + 30_000, 99.0)) == []  # already in the minute
    ((current, closed),) = hour.closed_second(bar(BASE + 60_000, 11.0))
    assert (current.bucket, current.volume, current.high, closed) == (start, 61.0, 11.0, False)
    assert hour.advance(start + 3_599_000) == []
    ((final, closed),) = hour.advance(start + 3_600_000)
    assert closed and (final.open, final.close, final.volume) == (10.0, 11.0, 61.0)
