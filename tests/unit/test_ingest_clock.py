"""The exchange's clock as its frames tell it: what live progress is measured in."""

from __future__ import annotations

from ingest.exchanges.clock import SAMPLE_EVERY_MS, ExchangeClock

AHEAD = 7_200_000  # the exchange's clock is two hours ahead of our monotonic one


def test_unknown_until_two_frames_tell_it_then_runs_on_our_monotonic_clock() -> None:
    clock = ExchangeClock()
    assert clock.now(1_000) is None
    clock.saw(1_000 + AHEAD - 40, 1_000)  # sent 40 ms before it arrived
    assert clock.now(1_000) is None  # one frame alone could be wild
    clock.saw(1_100 + AHEAD - 60, 1_100)
    assert clock.now(1_100) == 1_100 + AHEAD - 60  # of two, the lower (the later estimate)
    assert clock.now(61_100) == 61_100 + AHEAD - 60  # a minute later by our monotonic clock, nothing else


def test_a_wild_first_timestamp_moves_nothing() -> None:
    """A first frame stamped 8 s ahead set the clock 8 s ahead: 30 of the next 31 trades came after a
    progress record covering their second (a reviewer's test)."""
    for wild in (8_000, 86_400_000, -86_400_000):
        clock = ExchangeClock()
        clock.saw(AHEAD + wild, 0)
        clock.saw(SAMPLE_EVERY_MS + AHEAD - 40, SAMPLE_EVERY_MS)
        estimate = clock.now(SAMPLE_EVERY_MS)
        assert estimate is not None and estimate <= SAMPLE_EVERY_MS + AHEAD - 40  # never ahead of it
        clock.saw(2 * SAMPLE_EVERY_MS + AHEAD - 50, 2 * SAMPLE_EVERY_MS)
        third = clock.now(2 * SAMPLE_EVERY_MS)  # the median of three: one of the two true ones
        assert third is not None and -50 <= third - 2 * SAMPLE_EVERY_MS - AHEAD <= -40


def test_one_wild_timestamp_moves_nothing_and_delay_only_makes_it_later() -> None:
    clock = ExchangeClock()
    mono = 0
    for delay in [30, 50, 40, 35, 45]:
        mono += SAMPLE_EVERY_MS
        clock.saw(mono + AHEAD - delay, mono)
    assert clock.now(mono) == mono + AHEAD - 40  # the median delay
    mono += SAMPLE_EVERY_MS
    clock.saw(mono + AHEAD + 3_600_000, mono)  # a frame stamped an hour in the future
    assert clock.now(mono) == mono + AHEAD - 40
    mono += SAMPLE_EVERY_MS
    clock.saw(mono + AHEAD - 9_000, mono)  # one frame 9 s late
    assert clock.now(mono) == mono + AHEAD - 40
    for _ in range(40):  # the exchange's clock really moved (a leap): the median follows within ~16 frames
        mono += SAMPLE_EVERY_MS
        clock.saw(mono + AHEAD - 1_040, mono)
    assert clock.now(mono) == mono + AHEAD - 1_040


def test_a_burst_of_frames_is_one_sample() -> None:
    clock = ExchangeClock()
    clock.saw(AHEAD, 0)
    for i in range(1, 50):  # 49 frames within SAMPLE_EVERY_MS, stamped wildly
        clock.saw(AHEAD + 10_000, i)
    assert clock.now(0) is None  # still one sample
    clock.saw(AHEAD + SAMPLE_EVERY_MS, SAMPLE_EVERY_MS)
    assert clock.now(0) == AHEAD
