"""Per-partition window state: open windows, watermarks, and what closes when.

Each symbol lives in exactly one partition (the Kafka key is the symbol), so a partition's state is the
state of its symbols. For each symbol we keep:

* ``closed``: the frontier; windows starting before it are final (emitted or, if the symbol went quiet,
  closed by wall-clock). A trade for a window before the frontier is late.
* ``max_event``: the highest event time seen; the watermark is ``max_event - MAX_BUFFER_SECONDS``.
* the open windows: the trades of each window not yet closed, as array chunks keyed by bucket.
* ``recent``: the last closed candles, for rolling volatility (and prediction features).

The watermark is per symbol because symbols share partitions but not clocks: a busy symbol must not
close the windows of a quiet one before its trades arrive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cryptostream.models import CANDLE_SCHEMA, TradeColumns
from processor.checkpoint import Checkpoint, SymbolCheckpoint
from processor.windows import WINDOW_MS, Candles, aggregate, bucket_of, dedupe, late_mask

__all__ = ["Interner", "PartitionState", "SymbolState", "concat_trades"]

RECENT_FIELDS = CANDLE_SCHEMA.names[1:]  # bucket .. sell_volume (symbol is the dict key)


class Interner:
    """Process-wide small-integer codes for symbols and exchanges, so chunks from any batch combine."""

    def __init__(self) -> None:
        self.symbols: list[str] = []
        self.exchanges: list[str] = []
        self._sym: dict[str, int] = {}
        self._exch: dict[str, int] = {}

    def symbol(self, name: str) -> int:
        code = self._sym.get(name)
        if code is None:
            code = self._sym[name] = len(self.symbols)
            self.symbols.append(name)
        return code

    def exchange(self, name: str) -> int:
        code = self._exch.get(name)
        if code is None:
            code = self._exch[name] = len(self.exchanges)
            self.exchanges.append(name)
        return code

    def adopt(self, cols: TradeColumns) -> TradeColumns:
        """Re-code a decoded batch into this interner's codes."""
        s_map = np.array([self.symbol(s) for s in cols.symbols] or [0], dtype=np.int32)
        e_map = np.array([self.exchange(e) for e in cols.exchanges] or [0], dtype=np.int32)
        return TradeColumns(
            symbols=self.symbols,
            exchanges=self.exchanges,
            symbol=s_map[cols.symbol],
            exchange=e_map[cols.exchange],
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


FAR_PAST = -(2**62)  # "nothing seen yet", far from int64 overflow when the buffer is subtracted


@dataclass(slots=True)
class SymbolState:
    closed: int = FAR_PAST
    max_event: int = FAR_PAST
    first_bucket: int | None = None
    open: dict[int, list[TradeColumns]] = field(default_factory=dict)
    open_min_offset: dict[int, int] = field(default_factory=dict)
    recent: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    last_arrival: float = 0.0
    last_live: float = 0.0
    touched: bool = False

    def min_offset(self) -> int | None:
        return min(self.open_min_offset.values()) if self.open_min_offset else None


@dataclass
class PartitionState:
    """Everything the processor holds for one assigned partition."""

    topic: str
    partition: int
    epoch: str
    seq: int
    position: int  # next offset to read
    replay_until: int  # offsets below this were handled before the last checkpoint
    buffer_ms: int
    history_ms: int
    symbols: dict[int, SymbolState] = field(default_factory=dict)
    dirty: bool = False  # something happened since the last checkpoint

    # ------------------------------------------------------------------------------------------
    def ingest(self, trades: TradeColumns, now: float) -> npt.NDArray[np.int64]:
        """Add a batch (one partition, offset order, interned codes). Returns offsets of late trades to
        dead-letter (late trades already dead-lettered before the last checkpoint are left out)."""
        late_offsets: list[npt.NDArray[np.int64]] = []
        if len(trades) == 0:
            return np.empty(0, dtype=np.int64)
        self.dirty = True
        if (trades.symbol[1:] != trades.symbol[:-1]).any():
            # One stable sort, then a view per symbol (arrival order within a symbol is kept for late_mask)
            trades = trades.take(np.argsort(trades.symbol, kind="stable"))
        for a, b in _runs(trades.symbol):
            code = int(trades.symbol[a])
            rows = trades.take(slice(a, b))
            state = self.symbols.get(code)
            if state is None:
                state = self.symbols[code] = SymbolState()
            state.last_arrival = now
            state.touched = True
            late, state.max_event, state.closed = late_mask(
                rows.timestamp, state.max_event, state.closed, self.buffer_ms
            )
            if late.any():
                offs = rows.offset[late]
                late_offsets.append(offs[offs >= self.replay_until])
                rows = rows.take(~late)
            if len(rows) == 0:
                continue
            self._add_open(state, rows)
        if late_offsets:
            return np.concatenate(late_offsets)
        return np.empty(0, dtype=np.int64)

    @staticmethod
    def _add_open(state: SymbolState, rows: TradeColumns) -> None:
        bucket = bucket_of(rows.timestamp)
        # Out of order: sort, so a bucket gets one chunk rather than one per run (trades mostly come in order)
        if (bucket[1:] < bucket[:-1]).any():
            order = np.argsort(bucket, kind="stable")
            rows, bucket = rows.take(order), bucket[order]
        for a, b in _runs(bucket):
            chunk = rows.take(slice(a, b))  # views, not copies
            key = int(bucket[a])
            state.open.setdefault(key, []).append(chunk)
            low = int(chunk.offset.min())
            prev = state.open_min_offset.get(key)
            state.open_min_offset[key] = low if prev is None else min(prev, low)

    def close_idle(self, now: float, idle_s: float) -> None:
        """Close every open window of symbols that have been quiet for ``idle_s`` of wall-clock time."""
        for state in self.symbols.values():
            if state.open and now - state.last_arrival >= idle_s:
                state.closed = max(state.closed, max(state.open) + WINDOW_MS)
                self.dirty = True

    def take_closed(self) -> list[TradeColumns]:
        """Pop the trades of every window before its symbol's frontier."""
        out: list[TradeColumns] = []
        for state in self.symbols.values():
            if not state.open:
                continue
            done = [b for b in state.open if b < state.closed]
            for b in sorted(done):
                out.extend(state.open.pop(b))
                state.open_min_offset.pop(b, None)
        return out

    def live_candles(self, now: float, interval_s: float) -> list[TradeColumns]:
        """Trades of each touched symbol's newest open window, at most once per ``interval_s``."""
        out: list[TradeColumns] = []
        for state in self.symbols.values():
            if not state.touched or not state.open or now - state.last_live < interval_s:
                continue
            state.touched = False
            state.last_live = now
            out.extend(state.open[max(state.open)])
        return out

    def commit_offset(self) -> int:
        """Oldest offset still needed to rebuild open windows (or the read position if none)."""
        lows = [low for s in self.symbols.values() if (low := s.min_offset()) is not None]
        return min([*lows, self.position])

    # ------------------------------------------------------------------------------------------
    def remember(self, code: int, new: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Append a symbol's newly closed candles (bucket order) to its recent history, trimmed.

        Returns the untrimmed history + new candles, so hooks see every new candle even when a backlog
        closes more of them at once than the history keeps."""
        state = self.symbols[code]
        if state.first_bucket is None:
            state.first_bucket = int(new["bucket"][0])
        if state.recent:
            merged = {k: np.concatenate([state.recent[k], new[k]]) for k in RECENT_FIELDS}
        else:
            merged = {k: new[k] for k in RECENT_FIELDS}
        buckets = merged["bucket"]
        # keep the history window plus the candle before it (the previous close of the first return)
        keep_from = max(0, int(np.searchsorted(buckets, buckets[-1] - self.history_ms, side="right")) - 1)
        state.recent = {k: v[keep_from:] for k, v in merged.items()}
        return merged

    def checkpoint(self, interner: Interner, offset: int) -> Checkpoint:
        """The state to resume from ``offset``. Every window behind a frontier must have been taken."""
        for s in self.symbols.values():
            if s.open and min(s.open) < s.closed:
                raise RuntimeError("checkpoint with closed windows not taken: their trades would be skipped")
        symbols = {}
        for code, s in self.symbols.items():
            recent = (
                [list(row) for row in zip(*(s.recent[k].tolist() for k in RECENT_FIELDS), strict=True)]
                if s.recent
                else []
            )
            symbols[interner.symbols[code]] = SymbolCheckpoint(
                closed=int(s.closed), max_event=int(s.max_event), first_bucket=s.first_bucket, recent=recent
            )
        return Checkpoint(self.topic, self.partition, offset, self.position, self.epoch, self.seq, symbols)

    @classmethod
    def restore(cls, ckpt: Checkpoint, interner: Interner, buffer_ms: int, history_ms: int) -> PartitionState:
        state = cls(
            topic=ckpt.topic,
            partition=ckpt.partition,
            epoch=ckpt.epoch,
            seq=ckpt.seq,
            position=ckpt.offset,
            replay_until=ckpt.read_until,
            buffer_ms=buffer_ms,
            history_ms=history_ms,
        )
        now = time.monotonic()
        for name, s in ckpt.symbols.items():
            sym = SymbolState(
                closed=s.closed, max_event=s.max_event, first_bucket=s.first_bucket, last_arrival=now
            )
            if s.recent:
                cols = list(zip(*s.recent, strict=True))
                sym.recent = {
                    k: np.asarray(v, dtype=np.int64 if k in ("bucket", "trade_count") else np.float64)
                    for k, v in zip(RECENT_FIELDS, cols, strict=True)
                }
            state.symbols[interner.symbol(name)] = sym
        return state


def closed_candles(chunks: list[TradeColumns]) -> Candles | None:
    """Candles of popped window trades (deduplicated), or None when there are none."""
    if not chunks:
        return None
    return aggregate(dedupe(concat_trades(chunks)))


def _runs(values: npt.NDArray[Any]) -> list[tuple[int, int]]:
    """(start, end) of each run of equal values."""
    cut = (np.flatnonzero(values[1:] != values[:-1]) + 1).tolist()
    return list(zip([0, *cut], [*cut, len(values)], strict=True))
