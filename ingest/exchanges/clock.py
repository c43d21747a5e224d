"""The exchange's time now, as its frames tell it: what a live feed's progress is measured in. No I/O.

Trades carry the exchange's timestamps, so progress ("every trade before this time has arrived") must be
in the exchange's time too. Our wall clock is not: a laptop whose clock runs 4 s ahead of the exchange's
claimed every trade of the last 4 s complete before it arrived (each one then late), and a wall-clock step
(NTP, a suspended VM waking up) moved progress with it. Frames that carry the exchange's sending time
(Binance ``E``, Coinbase ``time``, Advanced Trade ``timestamp``) are samples of the offset between the
exchange's clock and our monotonic one; the feed's clock is our monotonic clock plus the median of the
last :data:`SAMPLES` offsets (the lower of the first two, before there are three). One wild timestamp moves
nothing, from the first frame on; a wall-clock step moves nothing; and delivery delay only makes the
estimate (and so progress) later, never earlier.

Until two frames have carried the exchange's time the feed's clock is unknown and the feed writes no
progress. A feed that has seen no trade since it started has no window of its own to close; windows an
earlier run left open (its last progress stopped the buffer short of its last trades) close at the next
trades of the feed's markets, or at Coinbase's first heartbeats.
"""

from __future__ import annotations

import time
from collections import deque

__all__ = ["ExchangeClock", "monotonic_ms"]

SAMPLES = 31  # offsets kept: the median of the last ~3 s of a busy feed, of the last 31 frames of a quiet one
KNOWN_AFTER = 2  # samples before the clock is known: the first alone could be wild
SAMPLE_EVERY_MS = 100  # at most one sample this often (a burst of frames is one moment)


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class ExchangeClock:
    """Median offset between the exchange's sending times and our monotonic clock (module docstring)."""

    def __init__(self) -> None:
        self._offsets: deque[int] = deque(maxlen=SAMPLES)
        self._sampled_at: int | None = None
        self._offset: int | None = None

    def saw(self, exchange_ms: int, mono_ms: int) -> None:
        """A frame the exchange sent at ``exchange_ms`` (its clock) arrived at ``mono_ms`` (ours)."""
        if self._sampled_at is not None and mono_ms - self._sampled_at < SAMPLE_EVERY_MS:
            return
        self._sampled_at = mono_ms
        self._offsets.append(exchange_ms - mono_ms)
        if len(self._offsets) >= KNOWN_AFTER:
            ordered = sorted(self._offsets)
            self._offset = ordered[(len(ordered) - 1) // 2]  # of two: the lower; of three on: the median

    def now(self, mono_ms: int) -> int | None:
        """The exchange's time at ``mono_ms`` (ours), or None before two frames told it."""
        return None if self._offset is None else mono_ms + self._offset
