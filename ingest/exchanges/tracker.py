"""Trade-id bookkeeping per (exchange, symbol): exactly-once delivery and gap detection in one structure.

Binance (``trade`` and ``aggTrade``) and Coinbase number a product's trades with consecutive integers, so
what we have delivered is fully described by the highest id delivered and the list of holes below it.
A trade above the high mark is new (and any jump opens a hole: the gap to backfill); a trade at or below
it is new only if it falls in a hole (a backfilled or late trade), otherwise it is a duplicate (exchanges
resend on reconnect, snapshots repeat recent trades, REST pages overlap). This is exact, unlike a window
of recent ids, and its memory is bounded by the number of open holes (:data:`MAX_OPEN_GAPS`), not by
trade volume. Holes the backfill could not fill are closed and counted as lost.

An id far below the high mark that is not in a hole means the exchange (or a test server, or a recorder
the user pointed us at) restarted its numbering: the tracker starts over instead of dropping everything.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["MAX_OPEN_GAPS", "RESET_DISTANCE", "Admission", "TradeIds"]

MAX_OPEN_GAPS = 1_000
RESET_DISTANCE = 10_000_000  # ids this far below the high mark mean the numbering restarted


@dataclass(slots=True)
class Admission:
    """What one :meth:`TradeIds.admit` decided."""

    new: bool
    gap: tuple[int, int] | None = None  # inclusive id range newly known to be missing
    dropped: int = 0  # ids of old holes given up to keep memory bounded


@dataclass(slots=True)
class TradeIds:
    """Delivered trade ids of one (exchange, symbol): a high mark and the holes below it."""

    high: int | None = None
    _lo: list[int] = field(default_factory=list)  # hole starts, sorted
    _hi: list[int] = field(default_factory=list)  # hole ends (inclusive), aligned with _lo
    resets: int = 0

    def admit(self, trade_id: int) -> Admission:
        """Record ``trade_id`` as delivered; ``new`` is False for a duplicate."""
        high = self.high
        if high is None or trade_id == high + 1:
            self.high = trade_id
            return Admission(True)
        if trade_id > high:
            self.high = trade_id
            dropped = self._open(high + 1, trade_id - 1)
            return Admission(True, (high + 1, trade_id - 1), dropped)
        if self._fill(trade_id):
            return Admission(True)
        if trade_id < high - RESET_DISTANCE:
            self.resets += 1
            self.high = trade_id
            self._lo.clear()
            self._hi.clear()
            return Admission(True)
        return Admission(False)

    def observe_last(self, last_id: int) -> Admission:
        """The exchange says ids up to ``last_id`` exist (Coinbase heartbeat): open a hole for any we lack.
        The first word on a market, trade or heartbeat, is where it starts: what came before is not owed,
        and a quiet market known only by its heartbeats still shows what an outage took."""
        high = self.high
        if high is None:
            self.high = last_id
            return Admission(False)
        if last_id <= high:
            return Admission(False)
        self.high = last_id
        dropped = self._open(high + 1, last_id)
        return Admission(False, (high + 1, last_id), dropped)

    def missing(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Holes still open within ``[lo, hi]``."""
        out = []
        for i in range(bisect.bisect_left(self._hi, lo), len(self._lo)):
            a, b = self._lo[i], self._hi[i]
            if a > hi:
                break
            out.append((max(a, lo), min(b, hi)))
        return out

    def give_up(self, lo: int, hi: int) -> int:
        """Close every hole within ``[lo, hi]`` (backfill could not fill it); return how many ids it held."""
        lost = 0
        for a, b in self.missing(lo, hi):
            lost += b - a + 1
            self._remove_range(a, b)
        return lost

    @property
    def open_gaps(self) -> int:
        return len(self._lo)

    # --------------------------------------------------------------------------------- internals
    def _open(self, lo: int, hi: int) -> int:
        self._lo.append(lo)  # new holes are always above every existing one
        self._hi.append(hi)
        dropped = 0
        while len(self._lo) > MAX_OPEN_GAPS:
            dropped += self._hi[0] - self._lo[0] + 1
            del self._lo[0], self._hi[0]
        return dropped

    def _fill(self, trade_id: int) -> bool:
        i = bisect.bisect_right(self._lo, trade_id) - 1
        if i < 0 or trade_id > self._hi[i]:
            return False
        self._remove_range(trade_id, trade_id, i)
        return True

    def _remove_range(self, a: int, b: int, i: int | None = None) -> None:
        """Remove ``[a, b]`` (inside one hole) from the holes."""
        if i is None:
            i = bisect.bisect_right(self._lo, a) - 1
        lo, hi = self._lo[i], self._hi[i]
        pieces = []
        if lo < a:
            pieces.append((lo, a - 1))
        if b < hi:
            pieces.append((b + 1, hi))
        self._lo[i : i + 1] = [p[0] for p in pieces]
        self._hi[i : i + 1] = [p[1] for p in pieces]
