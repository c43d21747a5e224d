"""How far a live feed's event time is complete, per symbol, and what holds it back. No clock, no I/O.

A live feed writes progress records (:class:`~cryptostream.codec.Progress`) so the processor can close the
windows of quiet symbols from the log alone. For a feed that is connected and has nothing missing, a symbol's
watermark is its receipt clock minus ``MAX_BUFFER_SECONDS`` (trades reach us within that, out of order at
worst). It is held back, per symbol, while trades may still come for earlier windows:

* **disconnected**: no progress at all (we cannot know what we miss);
* **silent**: no progress past the last moment the feed proved it has every trade (``heard``: its last
  frame's sending time or, Binance sending nothing for a market without trades, the last time its REST API
  named no trade we lack; answered pings only for a feed that cannot ask) minus the buffer. A half-open
  connection, or a stream frozen while its pings are answered, delivers nothing until the stall timeout
  notices, and what it missed would come late from the backfill;
* **after a reconnect, or a restart**: each symbol stays where it was until it shows it lost nothing (a trade
  right after the last one we had, a Coinbase heartbeat naming an id we have) or shows a gap;
* **a gap** (ids missing, found by :class:`~ingest.exchanges.tracker.TradeIds`): the symbol stays before
  the last trade preceding the hole until the backfill of that hole ends, filled or given up.

Every hold lasts at most ``BACKFILL_HOLD_SECONDS``; a hold that runs out is counted and reported (trades a
backfill brings after that arrive late and are dead-lettered as such, never folded in silently). Watermarks
never go back.

:meth:`FeedWatermark.resume` is what a restart needs to find the gap across it: per symbol the last id whose
window the written progress closes, and that progress. Trades after that id are fetched again (the
processor counts duplicates once), so an in-memory broker that forgot the open windows loses nothing either.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cryptostream.codec import Progress

__all__ = ["FeedWatermark", "Hold"]

FAR_PAST = -(2**62)
RECENT_LIMIT = 100_000  # (id, time) pairs kept per symbol beyond the written progress (bounds memory)


@dataclass(slots=True)
class Hold:
    """One reason to hold a symbol: the watermark it may not pass, and until when (ms) at most."""

    watermark: int
    until: int


@dataclass(slots=True)
class _Symbol:
    last_id: int | None = None  # highest trade id delivered
    last_ts: int = FAR_PAST  # its event time
    emitted: int = FAR_PAST  # the watermark last written
    holds: dict[Any, Hold] = field(default_factory=dict)  # "reconnect" or ("gap", lo, hi) -> hold
    recent: deque[tuple[int, int]] = field(default_factory=deque)  # (id, ts) not yet behind `emitted`
    # trades `recent` had no room for: the lowest id and the latest time among them (until behind `emitted`)
    unrecorded: tuple[int, int] | None = None

    def note(self, trade_id: int, ts: int) -> None:
        """A trade the written progress does not cover yet (what :meth:`FeedWatermark.resume` needs)."""
        if len(self.recent) < RECENT_LIMIT:
            self.recent.append((trade_id, ts))
        elif self.unrecorded is None:
            self.unrecorded = (trade_id, ts)
        else:
            self.unrecorded = (min(self.unrecorded[0], trade_id), max(self.unrecorded[1], ts))


@dataclass
class FeedWatermark:
    """Progress of one live feed (see the module docstring). Times are epoch ms passed in by the caller."""

    exchange: str
    symbols: tuple[str, ...]
    buffer_ms: int
    hold_ms: int
    up: bool = False
    # when the feed last proved it has every trade (see the module doc): progress never passes it (minus the
    # buffer), so a connection gone silent claims nothing it may miss. None: no cap (``proof_required``:
    # no progress at all until the first proof)
    heard: int | None = None
    proof_required: bool = False
    expired: int = 0  # holds that ran out
    state: dict[str, _Symbol] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for symbol in self.symbols:
            self.state.setdefault(symbol, _Symbol())

    # ------------------------------------------------------------------ what happened
    def connected(self, now: int) -> None:
        """A session delivers again: every symbol that wrote progress before waits to show it lost nothing."""
        self.up = True
        for s in self.state.values():
            if s.emitted > FAR_PAST:
                s.holds["reconnect"] = Hold(s.emitted, now + self.hold_ms)

    def disconnected(self) -> None:
        self.up = False

    def trade(self, symbol: str, trade_id: int, ts: int, gap: tuple[int, int] | None, now: int) -> None:
        """A new trade was delivered (``gap``: the ids it showed missing, if any)."""
        s = self.state.setdefault(symbol, _Symbol())
        if gap is not None:
            s.holds[("gap", *gap)] = Hold(min(s.last_ts, ts), now + self.hold_ms)
        if s.last_id is None or trade_id > s.last_id:
            # The next trade after the last one we had: either nothing was lost, or what was is the gap.
            s.holds.pop("reconnect", None)
            s.last_id, s.last_ts = trade_id, ts
        if ts >= s.emitted:
            s.note(trade_id, ts)

    def heartbeat(
        self, symbol: str, last_id: int, gap: tuple[int, int] | None, now: int, made: int | None = None
    ) -> None:
        """The exchange said which id is its latest (a Coinbase heartbeat, Binance's REST API, which also
        says when it was ``made``): a gap, or proof that nothing is missing. Of a market with no trade yet,
        ``last_id`` is where it starts (made before ``now``, or at ``made``, so covered once progress
        passes that: the resume file of a quiet market finds its outage too; noted at ``now`` when its
        time was known, a restart fetched an old trade again, behind its progress: late)."""
        s = self.state.setdefault(symbol, _Symbol())
        if s.last_id is None:
            s.last_id = last_id
            s.note(last_id, now if made is None else made)
        if gap is not None:
            s.holds[("gap", *gap)] = Hold(s.last_ts, now + self.hold_ms)
        s.holds.pop("reconnect", None)

    def shift_deadlines(self, by_ms: int) -> None:
        """Move every hold's deadline by ``by_ms``: the clock they were set by was off by that much."""
        for s in self.state.values():
            for hold in s.holds.values():
                hold.until += by_ms

    def settled(self, symbol: str, lo: int, hi: int) -> None:
        """The backfill of ``[lo, hi]`` ended (filled, or given up and counted as lost)."""
        s = self.state.get(symbol)
        if s is not None:
            s.holds.pop(("gap", lo, hi), None)

    def behind(self, symbol: str, ts: int) -> bool:
        """Whether a (backfilled) trade at ``ts`` is before the progress already written: it will be late."""
        s = self.state.get(symbol)
        return s is not None and ts - ts % 1000 < s.emitted - s.emitted % 1000

    # ------------------------------------------------------------------ what to write
    def progress(self, now: int, *, complete: bool = False) -> list[Progress]:
        """Progress records to write now (only symbols whose watermark moved). ``complete``: the feed stops
        and closes up to the current second (nothing more will come from this run). A feed that is down
        writes nothing, stopping or not: it cannot know what trades it is missing (its last progress at a
        stop used to claim the outage complete, and the next run's backfill of it came late); the resume
        file keeps the progress written before, so the next run fetches the outage."""
        if not self.up or (self.heard is None and self.proof_required):
            return []
        clock = now if self.heard is None else min(now, self.heard)
        base = (clock - clock % 1000) if complete else clock - self.buffer_ms
        groups: dict[int, list[str]] = {}
        for symbol, s in self.state.items():
            for key in [k for k, h in s.holds.items() if h.until <= now]:
                del s.holds[key]
                self.expired += 1
            watermark = min([base, *(h.watermark for h in s.holds.values())])
            if watermark <= s.emitted:
                continue
            s.emitted = watermark
            while s.recent and s.recent[0][1] < watermark:
                s.recent.popleft()
            if s.unrecorded is not None and s.unrecorded[1] < watermark:
                s.unrecorded = None
            groups.setdefault(watermark, []).append(symbol)
        return [Progress(self.exchange, tuple(sorted(g)), w) for w, g in sorted(groups.items())]

    # ------------------------------------------------------------------ across restarts
    def resume(self) -> dict[str, dict[str, int]]:
        """Per symbol: the last id the written progress covers, and that progress (see the module doc)."""
        out = {}
        for symbol, s in self.state.items():
            if s.last_id is None or s.emitted == FAR_PAST:
                continue
            after = [i for i, ts in s.recent if ts >= s.emitted]
            if s.unrecorded is not None:
                after.append(s.unrecorded[0])
            out[symbol] = {"id": (min(after) - 1) if after else s.last_id, "watermark": s.emitted}
        return out

    def restore(self, saved: dict[str, dict[str, int]], now: int) -> dict[str, int]:
        """Start from a :meth:`resume` of an earlier run; returns the id each symbol resumes after."""
        ids = {}
        for symbol, entry in saved.items():
            if symbol not in self.state:
                continue
            s = self.state[symbol]
            s.last_id, s.emitted = int(entry["id"]), int(entry["watermark"])
            s.last_ts = s.emitted
            s.holds["reconnect"] = Hold(s.emitted, now + self.hold_ms)
            ids[symbol] = s.last_id
        return ids
