"""Per-partition stream state: open windows, event-time frontiers, and what closes when. No clock, no I/O.

A *stream* is one venue's market, (exchange, symbol): Binance's BTCUSDT and Coinbase's BTCUSDT are two
streams with two candle series and two frontiers, even though they share a partition (the Kafka key is the
symbol). For each stream we keep:

* ``closed``: the frontier; windows starting before it are final. A trade for a window before the frontier
  is late (dead-lettered, never folded in).
* ``progress``: the highest watermark the stream's source promised in a progress record (see
  :mod:`cryptostream.codec`). Once a stream has carried progress it is *governed* by it: only progress moves
  its frontier, so a source can hold its frontier while it backfills a gap, and a quiet symbol closes
  without the processor reading a clock.
* ``max_event``: the highest event time accepted. A stream that never carried progress (records written by
  another tool) falls back to a watermark of ``max_event - MAX_BUFFER_SECONDS``.
* the open windows: the trades of each window not yet closed, as array chunks keyed by bucket, kept in the
  checkpoint (so the committed offset is simply the read position, never pinned by an open window);
* ``recent``: the last closed candles, for rolling volatility and prediction features.

**Quiet streams cost nothing per cycle.** A stream with no open window whose newest candle is more than
``history_ms`` behind its frontier is *quiet*: every later candle of it lies past the frontier, so its
volatility window and feature lookback (both within ``history_ms``) reach none of the kept history except
the last candle, whose close is the previous close of the next return; and :meth:`PartitionState.remember`
trims to the history before the newest candle plus one, which is then that last candle too. So a quiet
stream needs its frontier, highest event time, progress, first bucket and last candle, nothing else, and
every later output is the same bit for bit. Quiet streams are moved (*evicted*) to :class:`ColdStreams`,
one row of columns each; closing passes, live updates and snapshots never loop over them, progress records
move their frontiers as columns, and a trade brings one back as a :class:`StreamState` (looked up per batch,
not per trade). Whether a stream is evicted depends on the records only (it is checked when its frontier
moved, at the next closing pass) and never changes an output; a checkpoint stores hot and cold streams in
the same tables, and a restore evicts by the same rule.

**A cap on streams.** ``max_streams`` bounds the streams a partition holds (hot and cold, counted from the
partition's own records, so the answer does not depend on which processor owns it): trades of a new stream
past it are refused (the service dead-letters them naming ``MAX_STREAMS_PER_PARTITION``), progress naming
new streams past it is ignored, and streams already held carry on.

Everything here is a function of the records in offset order: the same records give the same frontiers,
candles and late trades whatever the fetch-batch cuts, pauses or crashes (a property test holds it to that).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cryptostream.codec import Progress
from cryptostream.models import CANDLE_SCHEMA, VOLATILITY_SCHEMA, TradeColumns
from processor.volatility import streams_volatility
from processor.windows import (
    Candles,
    aggregate,
    bucket_of,
    closed_through,
    dedupe,
    late_mask,
    search_segments,
)

__all__ = [
    "FAR_PAST",
    "Closed",
    "ColdStreams",
    "Histories",
    "Interner",
    "PartitionState",
    "Refused",
    "StreamState",
    "closed_candles",
    "concat_trades",
]

RECENT_FIELDS = CANDLE_SCHEMA.names[2:]  # bucket .. sell_volume (exchange and symbol are the stream)
FAR_PAST = -(2**62)  # "nothing seen yet", far from int64 overflow when the buffer is subtracted
_RECENT_DTYPE: dict[str, Any] = {"stream": np.int32, "bucket": np.int64, "trade_count": np.int64}
# A cold stream's row: its code, what StreamState keeps besides windows and history, and its last candle
# (bucket FAR_PAST when it has none; first_bucket FAR_PAST for None).
_COLD_DTYPE: dict[str, Any] = {
    "code": np.int64,
    "closed": np.int64,
    "max_event": np.int64,
    "progress": np.int64,
    "first_bucket": np.int64,
    "announced": np.int64,
    **{k: _RECENT_DTYPE.get(k, np.float64) for k in RECENT_FIELDS},
}


class Interner:
    """Process-wide small-integer codes for streams, so chunks from any batch and partition combine.

    After :meth:`adopt`, a batch's ``symbol`` and ``exchange`` arrays both hold the *stream* code, and its
    ``symbols``/``exchanges`` lists name each stream's symbol and exchange: every per-symbol computation
    (dedupe, windows, candles) is then per stream without knowing it.
    """

    def __init__(self) -> None:
        self.symbols: list[str] = []
        self.exchanges: list[str] = []
        self._code: dict[tuple[str, str], int] = {}
        self._free: list[int] = []  # codes released, to be given to new streams

    def __len__(self) -> int:
        """Streams known (released codes not counted)."""
        return len(self._code)

    def stream(self, exchange: str, symbol: str) -> int:
        code = self._code.get((exchange, symbol))
        if code is None:
            if self._free:
                code = self._free.pop()
                self.symbols[code], self.exchanges[code] = symbol, exchange
            else:
                code = len(self.symbols)
                self.symbols.append(symbol)
                self.exchanges.append(exchange)
            self._code[(exchange, symbol)] = code
        return code

    def release(self, codes: list[int]) -> None:
        """Forget streams no partition holds (new markets the cap refused), so a flood of them cannot grow
        the interner past the cap; their codes go to the next new streams."""
        for code in codes:
            key = (self.exchanges[code], self.symbols[code])
            if self._code.get(key) == code:
                del self._code[key]
                self._free.append(code)

    def codes(self, exchange: str, symbols: tuple[str, ...]) -> npt.NDArray[np.int64]:
        """Stream codes of one exchange's symbols (a progress record's), as an array."""
        stream = self.stream
        return np.fromiter((stream(exchange, s) for s in symbols), np.int64, len(symbols))

    def name(self, code: int) -> tuple[str, str]:
        """(exchange, symbol) of a stream."""
        return self.exchanges[code], self.symbols[code]

    def adopt(self, cols: TradeColumns) -> TradeColumns:
        """Re-code a decoded batch into stream codes (see the class docstring)."""
        n = len(cols)
        if n == 0:
            codes = np.empty(0, dtype=np.int32)
        else:
            pair = cols.exchange.astype(np.int64) * max(1, len(cols.symbols)) + cols.symbol
            unique, inverse = np.unique(pair, return_inverse=True)
            width = max(1, len(cols.symbols))
            table = np.array(
                [self.stream(cols.exchanges[int(p) // width], cols.symbols[int(p) % width]) for p in unique],
                dtype=np.int32,
            )
            codes = table[inverse.reshape(-1)]
        return TradeColumns(
            symbols=self.symbols,
            exchanges=self.exchanges,
            symbol=codes,
            exchange=codes,
            timestamp=cols.timestamp,
            price=cols.price,
            quantity=cols.quantity,
            trade_id=cols.trade_id,
            is_buyer_maker=cols.is_buyer_maker,
            offset=cols.offset,
        )


def concat_trades(chunks: list[TradeColumns]) -> TradeColumns:
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    return TradeColumns(
        symbols=first.symbols,
        exchanges=first.exchanges,
        symbol=np.concatenate([c.symbol for c in chunks]),
        exchange=np.concatenate([c.exchange for c in chunks]),
        timestamp=np.concatenate([c.timestamp for c in chunks]),
        price=np.concatenate([c.price for c in chunks]),
        quantity=np.concatenate([c.quantity for c in chunks]),
        trade_id=np.concatenate([c.trade_id for c in chunks]),
        is_buyer_maker=np.concatenate([c.is_buyer_maker for c in chunks]),
        offset=np.concatenate([c.offset for c in chunks]),
    )


@dataclass(slots=True)
class StreamState:
    closed: int = FAR_PAST
    max_event: int = FAR_PAST
    progress: int = FAR_PAST
    first_bucket: int | None = None
    open: dict[int, list[TradeColumns]] = field(default_factory=dict)
    recent: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    last_live: float = float("-inf")  # live (in-progress) updates only; never on the stored path
    touched: bool = False
    announced: int = FAR_PAST  # the frontier last told to the live feed (fan-out only, not stored)

    @property
    def governed(self) -> bool:
        """Whether progress records (not trade times) move this stream's frontier."""
        return self.progress > FAR_PAST


class ColdStreams:
    """The evicted (quiet) streams of a partition as columns, one row per stream, sorted by stream code.

    A row holds what a quiet stream still needs (see the module docstring): frontier, highest event time,
    progress, first bucket, the frontier last announced to the live feed, and its last candle. Every
    operation is on arrays: a progress record for thousands of quiet symbols moves their frontiers without
    a Python object per symbol."""

    def __init__(self) -> None:
        self.cols: dict[str, npt.NDArray[Any]] = {k: np.empty(0, d) for k, d in _COLD_DTYPE.items()}

    def __len__(self) -> int:
        return int(self.cols["code"].shape[0])

    def find(self, codes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The row of each stream code, -1 where the stream is not cold."""
        have = self.cols["code"]
        rows = np.searchsorted(have, codes)
        hit = rows < have.shape[0]
        hit[hit] = have[rows[hit]] == codes[hit]
        return np.where(hit, rows, -1)

    def add(self, rows: dict[str, npt.NDArray[Any]]) -> None:
        """Take in rows of streams not cold yet (any order)."""
        merged = {k: np.concatenate([v, np.asarray(rows[k], v.dtype)]) for k, v in self.cols.items()}
        order = np.argsort(merged["code"], kind="stable")
        self.cols = {k: v[order] for k, v in merged.items()}

    def pop(self, rows: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[Any]]:
        """Remove ``rows`` (distinct) and return them."""
        out = {k: v[rows] for k, v in self.cols.items()}
        keep = np.ones(len(self), dtype=np.bool_)
        keep[rows] = False
        self.cols = {k: v[keep] for k, v in self.cols.items()}
        return out

    def advance(self, rows: npt.NDArray[np.int64], watermark: int, through: int) -> None:
        """A progress record for the streams at ``rows`` (as :meth:`PartitionState.advance` does one)."""
        for name, value in (("progress", watermark), ("closed", through)):
            column = self.cols[name]
            column[rows] = np.maximum(column[rows], value)


@dataclass(slots=True)
class Refused:
    """Offsets of a batch's trades the state did not take: late ones, and those of new streams past the
    cap on streams (``over_cap``)."""

    late: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    over_cap: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @classmethod
    def of(cls, parts: list[Refused]) -> Refused:
        if len(parts) == 1:
            return parts[0]
        return cls(
            _concat([p.late for p in parts]),
            _concat([p.over_cap for p in parts]),
        )


@dataclass
class PartitionState:
    """Everything the processor holds for one assigned partition."""

    topic: str
    partition: int
    epoch: str
    seq: int
    position: int  # next offset to read
    buffer_ms: int
    history_ms: int
    max_streams: int | None = None  # cap on streams (hot + cold); None: no cap
    evict: bool = True  # move quiet streams to ``cold`` (off: every stream stays a StreamState)
    streams: dict[int, StreamState] = field(default_factory=dict)  # hot streams
    cold: ColdStreams = field(default_factory=ColdStreams)
    dirty: bool = False  # something happened since the last checkpoint
    refused_streams: set[int] = field(default_factory=set)  # new streams the cap refused (not held)
    _moved: set[int] = field(default_factory=set)  # hot streams to check for quiet at the next close

    def holds(self, codes: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Which of the stream ``codes`` this partition holds (hot or cold)."""
        hot = np.fromiter((c in self.streams for c in codes.tolist()), np.bool_, codes.shape[0])
        return hot | (self.cold.find(codes) >= 0)

    def stream_count(self) -> int:
        """Streams held, hot and cold (what the cap counts)."""
        return len(self.streams) + len(self.cold)

    # ------------------------------------------------------------------------------------------ input
    def apply(self, trades: TradeColumns, progress: list[Progress], interner: Interner) -> Refused:
        """Add one batch: trades (interned stream codes, offset order) and progress marks, in offset order.

        Returns the offsets of the trades not taken (to dead-letter)."""
        if not progress:
            return self.ingest(trades)
        refused: list[Refused] = []
        start = 0
        for mark in progress:
            end = int(np.searchsorted(trades.offset, mark.offset))
            if end > start:
                refused.append(self.ingest(trades.take(slice(start, end))))
            self.advance(mark, interner)
            start = end
        if start < len(trades):
            refused.append(self.ingest(trades.take(slice(start, None))))
        return Refused.of(refused) if refused else Refused()

    def ingest(self, trades: TradeColumns) -> Refused:
        """Add trades (one partition, offset order, stream codes); returns the offsets of those not taken."""
        if len(trades) == 0:
            return Refused()
        self.dirty = True
        if (trades.symbol[1:] != trades.symbol[:-1]).any():
            # One stable sort, then a view per stream (arrival order within a stream is kept for late_mask)
            trades = trades.take(np.argsort(trades.symbol, kind="stable"))
        runs = _runs(trades.symbol)
        starts = np.fromiter((a for a, _ in runs), np.int64, len(runs))
        states = self._resolve(trades.symbol[starts].astype(np.int64), trades.offset[starts])
        late_offsets: list[npt.NDArray[np.int64]] = []
        over_cap: list[npt.NDArray[np.int64]] = []
        for (a, b), state in zip(runs, states, strict=True):
            rows = trades.take(slice(a, b))
            if state is None:
                over_cap.append(rows.offset)
                self.refused_streams.add(int(trades.symbol[a]))
                continue
            self._moved.add(int(trades.symbol[a]))
            state.touched = True
            if state.governed:
                late = bucket_of(rows.timestamp) < state.closed
                state.max_event = max(state.max_event, int(rows.timestamp.max()))
            else:
                late, state.max_event, state.closed = late_mask(
                    rows.timestamp, state.max_event, state.closed, self.buffer_ms
                )
            if late.any():
                late_offsets.append(rows.offset[late])
                rows = rows.take(~late)
            if len(rows):
                _add_open(state, rows)
        return Refused(_concat(late_offsets), _concat(over_cap))

    def _resolve(
        self, codes: npt.NDArray[np.int64], first_offsets: npt.NDArray[np.int64]
    ) -> list[StreamState | None]:
        """The StreamState of each stream code of a batch: hot, brought back from cold (all at once), or new
        (in the order of their first trade, while the cap allows; None past it)."""
        streams = self.streams
        out = [streams.get(code) for code in codes.tolist()]
        missing = np.fromiter((i for i, s in enumerate(out) if s is None), np.int64)
        if not missing.size:
            return out
        rows = self.cold.find(codes[missing])
        warm = rows >= 0
        if warm.any():
            for i, state in zip(missing[warm].tolist(), _warm(self.cold.pop(rows[warm])), strict=True):
                streams[int(codes[i])] = out[i] = state
        new = missing[~warm]
        if new.size:
            new = new[np.argsort(first_offsets[new], kind="stable")]
            for i in new[: self._room()].tolist():
                streams[int(codes[i])] = out[i] = StreamState()
        return out

    def _room(self) -> int:
        """How many more streams the cap allows."""
        held = self.stream_count()
        return held + 2**62 if self.max_streams is None else max(0, self.max_streams - held)

    def advance(self, mark: Progress, interner: Interner) -> None:
        """Apply a progress record: its streams' frontiers move to the windows its watermark completes.

        Cold streams move as columns; a stream first named here (within the cap) starts cold, having no
        windows and no candles."""
        self.dirty = True
        through = closed_through(mark.watermark)
        codes = interner.codes(mark.exchange, mark.symbols)
        rows = self.cold.find(codes)
        cold = rows >= 0
        if cold.any():
            self.cold.advance(rows[cold], mark.watermark, through)
        new: list[int] = []
        for code in dict.fromkeys(codes[~cold].tolist()):
            state = self.streams.get(code)
            if state is None:
                new.append(code)
                continue
            if mark.watermark > state.progress:
                state.progress = mark.watermark
            if through > state.closed:
                state.closed = through
                self._moved.add(code)
        self.refused_streams.update(new[self._room() :])
        del new[self._room() :]
        if not new:
            return
        if not self.evict:
            for code in new:
                self.streams[code] = StreamState(
                    closed=max(FAR_PAST, through), progress=max(FAR_PAST, mark.watermark)
                )
            return
        fresh = {k: np.zeros(len(new), d) for k, d in _COLD_DTYPE.items()}
        for k in ("max_event", "first_bucket", "announced", "bucket"):
            fresh[k][:] = FAR_PAST
        fresh["code"] = np.asarray(new, np.int64)
        fresh["closed"][:] = max(FAR_PAST, through)
        fresh["progress"][:] = max(FAR_PAST, mark.watermark)
        self.cold.add(fresh)

    # ------------------------------------------------------------------------------------------ output
    def take_closed(self) -> list[TradeColumns]:
        """Pop the trades of every window before its stream's frontier."""
        out: list[TradeColumns] = []
        for state in self.streams.values():
            if not state.open:
                continue
            done = [b for b in state.open if b < state.closed]
            for b in sorted(done):
                out.extend(state.open.pop(b))
        return out

    def close(self, interner: Interner, window_s: int) -> Closed | None:
        """Everything the windows behind their frontiers make: candles, their volatility, and per stream
        the history (ending with its new candles) prediction hooks read. None when nothing closed. Every step
        is on the columns of all streams at once: the cost per closed candle does not grow with the number of
        markets.

        Then the streams that went quiet are evicted (``window_s`` must be within ``history_ms``, as the
        history kept for volatility needs anyway)."""
        candles = closed_candles(self.take_closed())
        if candles is None:
            self._evict_quiet()
            return None
        segments = candles.segments()
        states = [self.streams[code] for code, _ in segments]
        counts = np.fromiter((rows.stop - rows.start for _, rows in segments), np.int64, len(segments))
        new_firsts = candles.columns["bucket"][np.cumsum(counts) - counts]
        firsts = np.fromiter(
            (FAR_PAST if s.first_bucket is None else s.first_bucket for s in states), np.int64, len(states)
        )
        firsts = np.where(firsts == FAR_PAST, new_firsts, firsts)
        merged, starts, new_rows = self._extend_histories(states, candles.columns, counts, firsts)
        vol = streams_volatility(
            merged["bucket"], merged["close"], starts, new_rows, np.repeat(firsts, counts), window_s
        )
        ohlc = candles.to_table()
        ok = ~np.isnan(vol)
        keep = pa.array(ok)
        volatility = pa.table(
            {
                "exchange": ohlc["exchange"].filter(keep),
                "symbol": ohlc["symbol"].filter(keep),
                "bucket": ohlc["bucket"].filter(keep),
                "volatility": vol[ok],
                "window_seconds": np.full(int(ok.sum()), window_s, np.int32),
            },
            schema=VOLATILITY_SCHEMA,
        )
        names = [interner.name(code) for code, _ in segments]
        histories = Histories([e for e, _ in names], [y for _, y in names], merged, starts, counts)
        self._evict_quiet()
        return Closed(ohlc, volatility, histories)

    def _extend_histories(
        self,
        states: list[StreamState],
        columns: dict[str, npt.NDArray[Any]],
        counts: npt.NDArray[np.int64],
        firsts: npt.NDArray[np.int64],
    ) -> tuple[dict[str, npt.NDArray[Any]], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Append each stream's newly closed candles (``columns``: stream after stream, ``counts`` each, in
        bucket order) to its recent history, trimmed to ``history_ms`` plus the candle before it (the
        previous close of the first return).

        Returns every stream's untrimmed history + new candles, one stream after another (so hooks see every
        new candle even when a backlog closes more than the history keeps), where each stream starts (then
        the end), and where the new candles are."""
        n = len(states)
        held = np.fromiter((s.recent["bucket"].shape[0] if s.recent else 0 for s in states), np.int64, n)
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(held + counts, out=starts[1:])
        new_rows = np.repeat(starts[:-1] + held - (np.cumsum(counts) - counts), counts) + np.arange(
            int(counts.sum())
        )
        old_rows = np.ones(int(starts[-1]), dtype=np.bool_)
        old_rows[new_rows] = False
        with_history = [s.recent for s in states if s.recent]
        merged: dict[str, npt.NDArray[Any]] = {}
        for k in RECENT_FIELDS:
            column = np.empty(int(starts[-1]), dtype=columns[k].dtype)
            column[new_rows] = columns[k]
            if with_history:
                column[old_rows] = np.concatenate([h[k] for h in with_history])
            merged[k] = column
        ends = starts[1:]
        stream = np.arange(n, dtype=np.int64)
        keep = search_segments(merged["bucket"], starts, stream, merged["bucket"][ends - 1] - self.history_ms)
        keep = np.maximum(keep - 1, starts[:-1])
        for state, a, b, first in zip(states, keep.tolist(), ends.tolist(), firsts.tolist(), strict=True):
            # copies: a view would keep this call's arrays of every stream alive as long as one stream lives
            state.recent = {k: v[a:b].copy() for k, v in merged.items()}
            state.first_bucket = first
        return merged, starts, new_rows

    def _evict_quiet(self) -> None:
        """Move the streams that went quiet to ``cold`` (see the module docstring for why that is exact).

        Only streams whose frontier moved or that got trades since the last pass can have become quiet."""
        moved, self._moved = self._moved, set()
        if not self.evict or not moved:
            return
        codes: list[int] = []
        states: list[StreamState] = []
        for code in sorted(moved):
            state = self.streams.get(code)
            if state is None or state.open:
                continue
            last = int(state.recent["bucket"][-1]) if state.recent else FAR_PAST
            if _quiet(last, state.closed, self.history_ms):
                codes.append(code)
                states.append(state)
        if codes:
            self.cold.add(_cold_rows(codes, states))
            for code in codes:
                del self.streams[code]

    def live_candles(self, now: float, interval_s: float) -> list[TradeColumns]:
        """Trades of each touched stream's newest open window, at most once per ``interval_s`` (the
        in-progress updates the dashboard shows; ``now`` is a clock, so nothing stored depends on this)."""
        out: list[TradeColumns] = []
        for state in self.streams.values():
            if not state.touched or not state.open or now - state.last_live < interval_s:
                continue
            state.touched = False
            state.last_live = now
            out.extend(state.open[max(state.open)])
        return out

    def frontiers(self) -> list[tuple[int, int]]:
        """(stream code, frontier) of each stream whose frontier moved since it was last announced: the
        live feed closes a quiet market's minute or hour on it (closed candles only say so when they come)."""
        out = []
        for code, state in self.streams.items():
            if state.closed > state.announced and state.closed > FAR_PAST:
                state.announced = state.closed
                out.append((code, state.closed))
        cols = self.cold.cols
        moved = np.flatnonzero((cols["closed"] > cols["announced"]) & (cols["closed"] > FAR_PAST))
        if moved.size:
            cols["announced"][moved] = cols["closed"][moved]
            out.extend(zip(cols["code"][moved].tolist(), cols["closed"][moved].tolist(), strict=True))
        return out

    def event_times(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(highest event time, stream code, frontier) of every stream held, hot and cold."""
        hot = self.streams
        cols = self.cold.cols
        return (
            _concat(
                [np.fromiter((s.max_event for s in hot.values()), np.int64, len(hot)), cols["max_event"]]
            ),
            _concat([np.fromiter(hot, np.int64, len(hot)), cols["code"]]),
            _concat([np.fromiter((s.closed for s in hot.values()), np.int64, len(hot)), cols["closed"]]),
        )

    def remember(self, code: int, new: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Append one stream's newly closed candles (bucket order) to its recent history, trimmed; returns
        the untrimmed history + new candles (see :meth:`_extend_histories`)."""
        state = self.streams[code]
        first = new["bucket"][0] if state.first_bucket is None else state.first_bucket
        counts = np.array([new["bucket"].shape[0]], np.int64)
        merged, _, _ = self._extend_histories([state], new, counts, np.array([first], np.int64))
        return merged

    # ------------------------------------------------------------------------------------------ checkpoints
    def snapshot(self, interner: Interner) -> tuple[pa.Table, pa.Table, pa.Table]:
        """(streams, recent candles, open-window trades) as Arrow tables: what a checkpoint stores.

        Hot and cold streams share the tables (a cold stream's recent candles are its last one): which
        streams are cold is a matter of memory, decided again on restore. Every window behind a frontier
        must have been taken first (its rows belong to the sinks)."""
        codes = list(self.streams)
        for code in codes:
            s = self.streams[code]
            if s.open and min(s.open) < s.closed:
                raise RuntimeError("snapshot with closed windows not taken: their trades would be lost")
        states = [self.streams[c] for c in codes]
        cold = self.cold.cols
        n_hot = len(codes)
        all_codes = _concat([np.asarray(codes, np.int64), cold["code"]])

        def column(name: str) -> npt.NDArray[np.int64]:
            return _concat([np.fromiter((getattr(s, name) for s in states), np.int64, n_hot), cold[name]])

        firsts = _concat(
            [
                np.fromiter(
                    (FAR_PAST if s.first_bucket is None else s.first_bucket for s in states), np.int64, n_hot
                ),
                cold["first_bucket"],
            ]
        )
        streams = pa.table(
            {
                "exchange": pa.array(np.asarray(interner.exchanges, dtype=object)[all_codes], pa.string()),
                "symbol": pa.array(np.asarray(interner.symbols, dtype=object)[all_codes], pa.string()),
                "closed": pa.array(column("closed"), pa.int64()),
                "max_event": pa.array(column("max_event"), pa.int64()),
                "progress": pa.array(column("progress"), pa.int64()),
                "first_bucket": pa.array(firsts, pa.int64(), mask=firsts == FAR_PAST),
            }
        )
        recent_parts: dict[str, list[npt.NDArray[Any]]] = {"stream": []}
        for k in RECENT_FIELDS:
            recent_parts[k] = []
        chunks: list[TradeColumns] = []
        chunk_rows: list[npt.NDArray[np.int32]] = []
        for i, s in enumerate(states):
            if s.recent:
                rows = s.recent["bucket"].shape[0]
                recent_parts["stream"].append(np.full(rows, i, np.int32))
                for k in RECENT_FIELDS:
                    recent_parts[k].append(s.recent[k])
            for bucket in sorted(s.open):
                for chunk in s.open[bucket]:
                    chunks.append(chunk)
                    chunk_rows.append(np.full(len(chunk), i, np.int32))
        has_last = np.flatnonzero(cold["bucket"] != FAR_PAST)
        recent_parts["stream"].append((has_last + n_hot).astype(np.int32))
        for k in RECENT_FIELDS:
            recent_parts[k].append(cold[k][has_last])
        recent = pa.table({k: np.concatenate(v) for k, v in recent_parts.items()})
        if chunks:
            trades = concat_trades(chunks)
            open_rows = pa.table(
                {
                    "stream": np.concatenate(chunk_rows),
                    "timestamp": trades.timestamp,
                    "price": trades.price,
                    "quantity": trades.quantity,
                    "trade_id": trades.trade_id,
                    "is_buyer_maker": trades.is_buyer_maker,
                    "offset": trades.offset,
                }
            )
        else:
            open_rows = OPEN_SCHEMA.empty_table()
        return streams, recent, open_rows

    @classmethod
    def restore(
        cls,
        head: dict[str, Any],
        tables: tuple[pa.Table, pa.Table, pa.Table],
        interner: Interner,
        buffer_ms: int,
        history_ms: int,
        *,
        max_streams: int | None = None,
        evict: bool = True,
    ) -> PartitionState:
        """The state a :meth:`snapshot` (with its header) describes, ready to read from ``head["offset"]``.

        Streams that are quiet by the rule of the module docstring come back cold."""
        streams, recent, open_rows = tables
        state = cls(
            topic=head["topic"],
            partition=head["partition"],
            epoch=head["epoch"],
            seq=head["seq"],
            position=head["offset"],
            buffer_ms=buffer_ms,
            history_ms=history_ms,
            max_streams=max_streams,
            evict=evict,
        )
        codes = np.fromiter(
            (
                interner.stream(e, s)
                for e, s in zip(streams["exchange"].to_pylist(), streams["symbol"].to_pylist(), strict=True)
            ),
            np.int64,
            streams.num_rows,
        )
        n = codes.shape[0]
        closed = streams["closed"].to_numpy()
        max_event = streams["max_event"].to_numpy()
        progress = streams["progress"].to_numpy()
        firsts = streams["first_bucket"].fill_null(FAR_PAST).to_numpy()
        index = recent["stream"].to_numpy()
        history = {
            k: recent[k].to_numpy().astype(_RECENT_DTYPE.get(k, np.float64), copy=False)
            for k in RECENT_FIELDS
        }
        runs = _runs(index) if index.size else []
        last_row = np.full(n, -1, np.int64)
        if runs:
            ends = np.fromiter((b - 1 for _, b in runs), np.int64, len(runs))
            last_row[index[ends]] = ends
        last = _gather(history["bucket"], last_row, FAR_PAST)
        has_open = np.zeros(n, dtype=np.bool_)
        if open_rows.num_rows:
            has_open[open_rows["stream"].to_numpy()] = True
        cold = ~has_open & _quiet(last, closed, history_ms) if evict else np.zeros(n, dtype=np.bool_)
        if cold.any():
            pick = np.flatnonzero(cold)
            rows: dict[str, npt.NDArray[Any]] = {
                "code": codes[pick],
                "closed": closed[pick],
                "max_event": max_event[pick],
                "progress": progress[pick],
                "first_bucket": firsts[pick],
                "announced": np.full(pick.size, FAR_PAST, np.int64),
            }
            source = last_row[pick]
            for k in RECENT_FIELDS:
                rows[k] = _gather(history[k], source, FAR_PAST if k == "bucket" else 0)
            state.cold.add(rows)
        for i in np.flatnonzero(~cold).tolist():
            state.streams[int(codes[i])] = StreamState(
                closed=int(closed[i]),
                max_event=int(max_event[i]),
                progress=int(progress[i]),
                first_bucket=None if firsts[i] == FAR_PAST else int(firsts[i]),
            )
        for a, b in runs:
            target = state.streams.get(int(codes[int(index[a])]))
            if target is not None:
                target.recent = {k: v[a:b] for k, v in history.items()}
        if open_rows.num_rows:
            stream_codes = codes.astype(np.int32)[open_rows["stream"].to_numpy()]
            trades = TradeColumns(
                symbols=interner.symbols,
                exchanges=interner.exchanges,
                symbol=stream_codes,
                exchange=stream_codes,
                timestamp=open_rows["timestamp"].to_numpy(),
                price=open_rows["price"].to_numpy(),
                quantity=open_rows["quantity"].to_numpy(),
                trade_id=open_rows["trade_id"].to_numpy(),
                is_buyer_maker=open_rows["is_buyer_maker"].to_numpy(zero_copy_only=False),
                offset=open_rows["offset"].to_numpy(),
            )
            for a, b in _runs(stream_codes):
                _add_open(state.streams[int(stream_codes[a])], trades.take(slice(a, b)))
        return state


@dataclass(slots=True)
class Histories:
    """Each stream that closed candles: its recent history then its new candles, streams one after another
    (what prediction hooks read, all at once)."""

    exchanges: list[str]  # per stream
    symbols: list[str]
    columns: dict[str, npt.NDArray[Any]]  # bucket .. sell_volume (RECENT_FIELDS)
    starts: npt.NDArray[np.int64]  # where each stream begins, then the end
    counts: npt.NDArray[np.int64]  # new candles of each stream: its last rows

    def __len__(self) -> int:
        return len(self.exchanges)

    def __iter__(self) -> Iterator[tuple[str, str, dict[str, npt.NDArray[Any]], int]]:
        """(exchange, symbol, history + new candles, number of new candles) of each stream."""
        for i in range(len(self)):
            a, b = int(self.starts[i]), int(self.starts[i + 1])
            yield (
                self.exchanges[i],
                self.symbols[i],
                {k: v[a:b] for k, v in self.columns.items()},
                int(self.counts[i]),
            )

    def select(self, streams: list[int]) -> Histories:
        """Only the streams at positions ``streams`` (at least one, in that order)."""
        sizes = np.diff(self.starts)[streams]
        rows = np.concatenate([np.arange(self.starts[i], self.starts[i + 1]) for i in streams])
        return Histories(
            [self.exchanges[i] for i in streams],
            [self.symbols[i] for i in streams],
            {k: v[rows] for k, v in self.columns.items()},
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            self.counts[streams],
        )

    @classmethod
    def one(cls, exchange: str, symbol: str, history: dict[str, npt.NDArray[Any]], n_new: int) -> Histories:
        """One stream's history (its last ``n_new`` candles new)."""
        n = int(history["bucket"].shape[0]) if "bucket" in history else 0
        return cls([exchange], [symbol], history, np.array([0, n], np.int64), np.array([n_new], np.int64))


@dataclass(slots=True)
class Closed:
    """What one :meth:`PartitionState.close` made."""

    ohlc: pa.Table
    volatility: pa.Table
    histories: Histories


OPEN_SCHEMA = pa.schema(
    [
        ("stream", pa.int32()),
        ("timestamp", pa.int64()),
        ("price", pa.float64()),
        ("quantity", pa.float64()),
        ("trade_id", pa.int64()),
        ("is_buyer_maker", pa.bool_()),
        ("offset", pa.int64()),
    ]
)


def _add_open(state: StreamState, rows: TradeColumns) -> None:
    bucket = bucket_of(rows.timestamp)
    # Out of order: sort, so a bucket gets one chunk rather than one per run (trades mostly come in order)
    if (bucket[1:] < bucket[:-1]).any():
        order = np.argsort(bucket, kind="stable")
        rows, bucket = rows.take(order), bucket[order]
    for a, b in _runs(bucket):
        state.open.setdefault(int(bucket[a]), []).append(rows.take(slice(a, b)))  # views, not copies


def closed_candles(chunks: list[TradeColumns]) -> Candles | None:
    """Candles of popped window trades (deduplicated), or None when there are none."""
    if not chunks:
        return None
    return aggregate(dedupe(concat_trades(chunks)))


def _quiet(last: Any, closed: Any, history_ms: int) -> Any:
    """Whether a stream without open windows is quiet (its history can go, see the module docstring): it
    has no candle, or its last candle (bucket ``last``) is more than ``history_ms`` behind its frontier.
    Works on ints and on arrays alike."""
    return (last == FAR_PAST) | (last < closed - history_ms)


def _cold_rows(codes: list[int], states: list[StreamState]) -> dict[str, npt.NDArray[Any]]:
    """Cold rows of quiet streams (see :class:`ColdStreams`)."""
    n = len(codes)
    rows: dict[str, npt.NDArray[Any]] = {
        "code": np.asarray(codes, np.int64),
        "closed": np.fromiter((s.closed for s in states), np.int64, n),
        "max_event": np.fromiter((s.max_event for s in states), np.int64, n),
        "progress": np.fromiter((s.progress for s in states), np.int64, n),
        "first_bucket": np.fromiter(
            (FAR_PAST if s.first_bucket is None else s.first_bucket for s in states), np.int64, n
        ),
        "announced": np.fromiter((s.announced for s in states), np.int64, n),
    }
    for k in RECENT_FIELDS:
        empty = FAR_PAST if k == "bucket" else 0
        rows[k] = np.array([s.recent[k][-1] if s.recent else empty for s in states], _COLD_DTYPE[k])
    return rows


def _warm(rows: dict[str, npt.NDArray[Any]]) -> list[StreamState]:
    """StreamStates of cold rows (their history: the last candle, kept as a one-candle ``recent``)."""
    out = []
    for i in range(rows["code"].shape[0]):
        first = int(rows["first_bucket"][i])
        has_last = int(rows["bucket"][i]) != FAR_PAST
        out.append(
            StreamState(
                closed=int(rows["closed"][i]),
                max_event=int(rows["max_event"][i]),
                progress=int(rows["progress"][i]),
                first_bucket=None if first == FAR_PAST else first,
                recent={k: rows[k][i : i + 1].copy() for k in RECENT_FIELDS} if has_last else {},
                announced=int(rows["announced"][i]),
            )
        )
    return out


def _gather(values: npt.NDArray[Any], rows: npt.NDArray[np.int64], missing: int) -> npt.NDArray[Any]:
    """``values[rows]``, with ``missing`` where a row is -1."""
    out = np.full(rows.shape[0], missing, values.dtype)
    found = rows >= 0
    out[found] = values[rows[found]]
    return out


def _concat(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _runs(values: npt.NDArray[Any]) -> list[tuple[int, int]]:
    """(start, end) of each run of equal values."""
    cut = (np.flatnonzero(values[1:] != values[:-1]) + 1).tolist()
    return list(zip([0, *cut], [*cut, len(values)], strict=True))
