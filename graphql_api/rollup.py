"""Live candles of any interval, rolled up from the processor's live and closed 1 s candles.

The processor publishes a 1 s candle several times while its second is open (``closed: false``) and once
more when the watermark closes it. Because windows close by event time, several seconds are open at once:
live updates for t+1..t+5 arrive before t is closed. A coarse candle (1m, 1h, ...) is therefore the fold
of the closed seconds in its bucket plus the newest in-progress version of every still-open second, and it
is final once the symbol's close frontier (every 1 s window starting before it is final, as the closed
candles, which arrive in order per symbol, tell) reaches the bucket's end. Pure arithmetic on integer
milliseconds, no I/O: :class:`graphql_api.fanout.Fanout` feeds it and seeds it from the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Bar", "RollUp"]

SECOND_MS = 1000


@dataclass(slots=True)
class Bar:
    """An OHLCV aggregate over ``[bucket, bucket + interval)``; ``notional`` = sum of price x quantity."""

    bucket: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int
    notional: float
    buy_volume: float
    sell_volume: float

    # A candle's fields in the order :meth:`of` takes them after its bucket (messages and stored rows alike).
    FIELDS = ("open", "high", "low", "close", "volume", "trade_count", "vwap", "buy_volume", "sell_volume")

    @classmethod
    def of(
        cls,
        bucket_ms: int,
        open: float,
        high: float,
        low: float,
        close: float,
        volume: float,
        trade_count: int,
        vwap: float,
        buy_volume: float,
        sell_volume: float,
    ) -> Bar:
        """A candle as published or stored (with its VWAP) as a roll-up input (with its notional)."""
        volume = float(volume)
        return cls(
            bucket_ms,
            float(open),
            float(high),
            float(low),
            float(close),
            volume,
            int(trade_count),
            float(vwap) * volume,
            float(buy_volume),
            float(sell_volume),
        )

    @classmethod
    def from_message(cls, m: dict[str, Any], bucket_ms: int) -> Bar:
        return cls.of(bucket_ms, *(m[name] for name in cls.FIELDS))

    @property
    def vwap(self) -> float:
        return self.notional / self.volume if self.volume > 0 else self.close

    def then(self, later: Bar) -> Bar:
        """This aggregate followed by ``later`` (a later second), keeping this one's bucket."""
        return Bar(
            bucket=self.bucket,
            open=self.open,
            high=max(self.high, later.high),
            low=min(self.low, later.low),
            close=later.close,
            volume=self.volume + later.volume,
            trade_count=self.trade_count + later.trade_count,
            notional=self.notional + later.notional,
            buy_volume=self.buy_volume + later.buy_volume,
            sell_volume=self.sell_volume + later.sell_volume,
        )


@dataclass(slots=True)
class _Open:
    """A coarse bucket not final yet."""

    folded: Bar | None = None  # the closed seconds, in order
    through: int = -(2**62)  # the newest closed second folded in
    pending: dict[int, Bar] = field(default_factory=dict)  # newest version of each open second

    def current(self, start: int) -> Bar | None:
        out = self.folded
        for second in sorted(self.pending):
            bar = self.pending[second]
            out = replace(bar, bucket=start) if out is None else out.then(bar)
        return out


class RollUp:
    """The live candles of one symbol at one interval. Each method returns the updates to publish:
    ``(candle, closed)`` pairs, oldest first."""

    def __init__(self, interval_ms: int) -> None:
        if interval_ms < SECOND_MS or interval_ms % SECOND_MS:
            raise ValueError(f"interval must be a whole number of seconds, got {interval_ms} ms")
        self.interval_ms = interval_ms
        self.open: dict[int, _Open] = {}
        self.frontier = -(2**62)  # every 1 s window starting before this is final
        self.done_before = -(2**62)  # coarse buckets starting before this were published as closed

    def _start(self, ms: int) -> int:
        return ms - ms % self.interval_ms

    def closed_second(
        self, bar: Bar, *, advance: bool = True, through: int | None = None
    ) -> list[tuple[Bar, bool]]:
        """A closed 1 s candle. ``advance=False`` folds it in without moving the frontier (seeding from the
        store: stored data may be ahead of the live stream, e.g. while an older period is replayed, and a
        frontier taken from it would keep the live stream's buckets from ever closing). ``through``: the
        last second ``bar`` holds when it holds more than one (a stored minute seeding a coarser roll-up)."""
        start = self._start(bar.bucket)
        last = bar.bucket if through is None else through
        changed = False
        if start >= self.done_before:
            state = self.open.setdefault(start, _Open())
            if bar.bucket > state.through:
                state.folded = replace(bar, bucket=start) if state.folded is None else state.folded.then(bar)
                state.through = last
                for second in [s for s in state.pending if s <= last]:
                    del state.pending[second]
                changed = True
        # May close this bucket (at its last second) and older ones.
        out = self.advance(last + SECOND_MS) if advance else []
        if changed and start in self.open:
            current = self.open[start].current(start)
            if current is not None:
                out.append((current, False))
        return out

    def live_second(self, bar: Bar) -> list[tuple[Bar, bool]]:
        """An in-progress 1 s candle (the newest version replaces older ones of the same second)."""
        start = self._start(bar.bucket)
        if start < self.done_before or bar.bucket < self.frontier:
            return []
        state = self.open.setdefault(start, _Open())
        if bar.bucket <= state.through:
            return []
        state.pending[bar.bucket] = bar
        current = state.current(start)
        return [(current, False)] if current is not None else []

    def advance(self, frontier: int) -> list[tuple[Bar, bool]]:
        """Every 1 s window starting before ``frontier`` is final: publish the coarse buckets that ended."""
        if frontier <= self.frontier:
            return []
        self.frontier = frontier
        out: list[tuple[Bar, bool]] = []
        for start in sorted(s for s in self.open if s + self.interval_ms <= frontier):
            current = self.open.pop(start).current(start)
            if current is not None:
                out.append((current, True))
        # Every bucket that ended by the frontier is final, published here or not (a roll-up seeded while
        # the processor was down): seconds of those buckets sent again (a restarted processor republishes
        # what it closed since its checkpoint) change nothing and go to nobody.
        self.done_before = max(self.done_before, self._start(frontier))
        return out

    def latest(self) -> Bar | None:
        """The newest coarse candle still open (what a new subscriber is shown first)."""
        for start in sorted(self.open, reverse=True):
            current = self.open[start].current(start)
            if current is not None:
                return current
        return None
