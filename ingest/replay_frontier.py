"""Where a replay writes progress, decided by the file alone: never by the wall clock or ``REPLAY_SPEED``.

A replay's candles must be a function of the file, so the progress records among its trades must fall at the
same places at any speed. The replay's clock is the file's running maximum event time (the clock that paces
it). Each time that clock minus ``MAX_BUFFER_SECONDS`` enters a new second, the replay cuts its batch right
after that trade and writes progress for every market (venue, symbol) whose *own* highest event time minus
the buffer entered a new second since its last progress.

* Each market from its own high: a file may be ordered by symbol (ETHUSDT on day 2, then BTCUSDT on day 1),
  and progress from the file's high would close BTCUSDT's windows before its trades come.
* One clock for when: a recorded file interleaves many markets, and cutting wherever one of them enters a new
  second would cut every few rows. This way a replay cuts at most once per second of the file, and markets
  at the same second share one record.
* Watermarks are floored to their second: the processor closes whole seconds, so the promise is as strong.

The cuts do not depend on how the file is read in chunks (a market seen after a chunk's last cut is carried
into the next chunk's first cut). Pure state, no clock, no I/O: the replay loop only calls it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cryptostream.codec import MIN_TIMESTAMP_MS, Progress

__all__ = ["Cut", "ReplayFrontier"]

Market = tuple[str, str]  # (exchange, symbol)
_I64 = npt.NDArray[np.int64]
_NEVER = -(1 << 62)
_SPAN = 1 << 42  # above any event time in ms before 2100: keeps markets apart in one running maximum


@dataclass(frozen=True, slots=True)
class Cut:
    """The chunk's rows before ``end`` (from the previous cut on), then ``progress``."""

    end: int
    progress: tuple[Progress, ...]


class ReplayFrontier:
    """How far a replay's file has come, per market, and where its progress goes (module docstring)."""

    def __init__(self, buffer_ms: int) -> None:
        self.buffer_ms = buffer_ms
        self.clock: int | None = None  # the file's highest event time so far
        self.highs: dict[Market, int] = {}  # each market's highest event time so far
        self.said: dict[Market, int] = {}  # each market's last watermark cut
        self._uncut: set[Market] = set()  # markets with rows after the last cut
        # the last chunk (markets, row codes, times, highs before it), for :meth:`published`
        self._last: tuple[list[Market], _I64, _I64, dict[Market, int]] | None = None

    def advance(
        self,
        exchange: npt.NDArray[np.object_] | str,
        symbol: npt.NDArray[np.object_] | str,
        timestamp: npt.NDArray[np.int64],
    ) -> list[Cut]:
        """The cuts of the next chunk of the file (per-row or single ``exchange``/``symbol``), in order."""
        n = int(timestamp.shape[0])
        if n == 0:
            return []
        buffer_ms = self.buffer_ms
        clock = np.maximum.accumulate(timestamp)
        if self.clock is not None:
            np.maximum(clock, self.clock, out=clock)
        second = (clock - buffer_ms) // 1000
        before = _NEVER if self.clock is None else (self.clock - buffer_ms) // 1000
        ends = np.flatnonzero(np.diff(second, prepend=before) > 0) + 1  # after the trade entering a second
        self.clock = int(clock[-1])
        n_cuts = int(ends.shape[0])

        names, codes = _markets(exchange, symbol, n)
        index = {m: i for i, m in enumerate(names)}
        for kept in sorted(self._uncut - index.keys()):
            index[kept] = len(names)
            names.append(kept)
        self._last = (list(names), codes, timestamp, {m: self.highs[m] for m in names if m in self.highs})
        carried = np.fromiter((index[m] for m in sorted(self._uncut)), np.int64, len(self._uncut))
        prior = np.fromiter((self.highs.get(m, 0) for m in names), np.int64, len(names))
        said = np.fromiter((self.said.get(m, _NEVER) for m in names), np.int64, len(names))

        # the highest event time of each market in each segment (rows between two cuts; the last one, n_cuts,
        # is the rows after the last cut); markets carried from the last chunk count as rows of segment 0
        segment = np.zeros(n, np.int64)
        segment[ends[ends < n]] = 1
        segment = np.cumsum(segment)
        width = len(names)
        key = np.concatenate((segment * width + codes, carried))
        values = np.concatenate((timestamp, prior[carried]))
        order = np.argsort(key, kind="stable")
        key = key[order]
        starts = np.flatnonzero(np.diff(key, prepend=-1))
        group_max = np.maximum.reduceat(values[order], starts)
        group_seg, group_market = np.divmod(key[starts], width)

        # per market, in segment order: its high so far (one running maximum, markets kept apart by _SPAN)
        by_market = np.argsort(group_market, kind="stable")
        market = group_market[by_market]
        seg = group_seg[by_market]
        offset = market * _SPAN
        high = np.maximum.accumulate(np.maximum(group_max[by_market], prior[market]) + offset) - offset
        watermark = (high - buffer_ms) // 1000 * 1000
        first = np.diff(market, prepend=-1) != 0
        previous = np.empty_like(watermark)
        previous[1:] = watermark[:-1]
        previous[first] = said[market[first]]
        # a watermark before 2000 is no valid progress (the processor dead-letters it): say nothing yet
        emit = (watermark > previous) & (seg < n_cuts) & (watermark >= MIN_TIMESTAMP_MS)

        last = np.append(first[1:], True)
        self.highs.update(zip([names[m] for m in market[last].tolist()], high[last].tolist(), strict=True))
        self._uncut = {names[m] for m in market[seg == n_cuts].tolist()}
        seg, market, watermark = seg[emit], market[emit], watermark[emit]
        said_now = said.copy()
        np.maximum.at(said_now, market, watermark)
        self.said.update((names[m], int(said_now[m])) for m in np.flatnonzero(said_now != said).tolist())
        return _cuts(names, ends, seg, market, watermark)

    def published(self, rows: int) -> None:
        """Only the first ``rows`` rows of the last chunk went out (a stop): its other rows were not fed."""
        if self._last is None:
            return
        names, codes, timestamp, before = self._last
        high = np.zeros(len(names), np.int64)
        np.maximum.at(high, codes[:rows], timestamp[:rows])
        for market, h in zip(names, high.tolist(), strict=True):
            h = max(h, before.get(market, 0))
            if h:
                self.highs[market] = h
            else:
                self.highs.pop(market, None)
        self._last = None

    def progress(self, *, complete: bool) -> list[Progress]:
        """Each market's progress from its high: ``complete`` (the file is over) closes the window of its last
        trade too; otherwise the disorder buffer is kept."""
        groups: dict[tuple[str, int], list[str]] = {}
        for (venue, sym), high in self.highs.items():
            w = high - high % 1000 + 1000 if complete else (high - self.buffer_ms) // 1000 * 1000
            if w >= MIN_TIMESTAMP_MS:
                groups.setdefault((venue, w), []).append(sym)
        return list(_grouped(groups))


def _cuts(names: list[Market], ends: _I64, seg: _I64, market: _I64, watermark: _I64) -> list[Cut]:
    """The progress of each cut (``seg``: its index in ``ends``): one record per venue and watermark, in the
    order :func:`_grouped` gives. Vectorized, since a market trading less than once a second gets progress
    about as often as it trades."""
    if not seg.shape[0]:
        return []
    venues = sorted({venue for venue, _ in names})
    venue = np.asarray([venues.index(v) for v, _ in names], np.int64)[market]
    rank = np.empty(len(names), np.int64)
    rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    order = np.lexsort((rank[market], watermark, venue, seg))
    seg, market, watermark, venue = seg[order], market[order], watermark[order], venue[order]
    new = np.ones(seg.shape[0], np.bool_)
    new[1:] = (np.diff(seg) != 0) | (np.diff(venue) != 0) | (np.diff(watermark) != 0)
    starts = np.flatnonzero(new).tolist()
    symbols = np.asarray([sym for _, sym in names], dtype=object)[market].tolist()
    out: list[tuple[int, list[Progress]]] = []
    for a, b, s, v, w in zip(
        starts,
        [*starts[1:], len(symbols)],
        seg[new].tolist(),
        venue[new].tolist(),
        watermark[new].tolist(),
        strict=True,
    ):
        mark = Progress(venues[v], tuple(symbols[a:b]), w)
        if out and out[-1][0] == s:
            out[-1][1].append(mark)
        else:
            out.append((s, [mark]))
    at = ends.tolist()
    return [Cut(at[s], tuple(marks)) for s, marks in out]


def _grouped(groups: dict[tuple[str, int], list[str]]) -> tuple[Progress, ...]:
    """One progress record per venue and watermark, in a fixed order."""
    return tuple(Progress(venue, tuple(sorted(syms)), w) for (venue, w), syms in sorted(groups.items()))


def _markets(
    exchange: npt.NDArray[np.object_] | str, symbol: npt.NDArray[np.object_] | str, n: int
) -> tuple[list[Market], npt.NDArray[np.int64]]:
    """The markets of a chunk and each row's index into them."""
    venues, venue_codes = _factorize(exchange, n)
    symbols, symbol_codes = _factorize(symbol, n)
    if len(venues) == 1 and len(symbols) == 1:
        return [(venues[0], symbols[0])], np.zeros(n, np.int64)
    present, codes = np.unique(venue_codes * len(symbols) + symbol_codes, return_inverse=True)
    names = [(venues[p // len(symbols)], symbols[p % len(symbols)]) for p in present.tolist()]
    return names, codes.astype(np.int64, copy=False).reshape(n)


def _factorize(values: npt.NDArray[np.object_] | str, n: int) -> tuple[list[str], npt.NDArray[np.int64]]:
    """Distinct values and each row's index into them: a dict of the few distinct names (hashes of str are
    cached, so this beats sorting Python objects)."""
    if isinstance(values, str):
        return [values], np.zeros(n, np.int64)
    seen: dict[str, int] = {}
    first = np.fromiter(map(seen.setdefault, values.tolist(), itertools.count()), np.int64, n)
    dense = np.zeros(n, np.int64)
    dense[list(seen.values())] = np.arange(len(seen))
    return list(seen), dense[first]
