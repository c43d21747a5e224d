"""Window arithmetic on integer milliseconds: pure functions over NumPy columns.

Nothing here knows about Kafka or sinks, so every rule can be property-tested on its own:

* a trade at ``t`` ms belongs to the 1 s window starting at ``t - t % 1000``;
* candles are per venue: trades of (exchange, symbol) make that market's candles, never another's;
* duplicates (same symbol, exchange, trade id and second) count once, whatever order they arrive in;
* open/close are the first/last trade by (event time, trade id), never by arrival;
* a window closes when its stream's frontier passes its end (see :mod:`processor.state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cryptostream.models import CANDLE_SCHEMA, TradeColumns

__all__ = [
    "WINDOW_MS",
    "Candles",
    "aggregate",
    "bucket_of",
    "closed_through",
    "dedupe",
    "late_mask",
    "search_segments",
    "window_sums",
]

WINDOW_MS = 1_000

I64 = npt.NDArray[np.int64]


def bucket_of(timestamp: I64) -> I64:
    """Start of the 1 s window each timestamp falls in (floor, also for pre-1970 values)."""
    return timestamp - np.mod(timestamp, WINDOW_MS)


def closed_through(watermark: int | np.int64) -> int:
    """Windows starting before the returned bucket have ended at or before ``watermark``."""
    return int(watermark) - int(watermark) % WINDOW_MS


def late_mask(
    timestamp: I64, max_event: int, closed: int, buffer_ms: int
) -> tuple[npt.NDArray[np.bool_], int, int]:
    """Which trades (in arrival order) land in windows already closed when they arrive.

    ``max_event`` and ``closed`` are the symbol's state before the batch. The watermark each trade meets
    is the running maximum of everything before it, so the answer does not depend on how the stream
    was cut into batches. Returns the mask and the state after the batch.
    """
    if timestamp.size == 0:
        return np.zeros(0, dtype=np.bool_), max_event, closed
    running = np.maximum.accumulate(timestamp)
    before = np.empty_like(running)
    before[0] = max_event
    np.maximum(running[:-1], max_event, out=before[1:])
    watermark = before - buffer_ms
    frontier = np.maximum(watermark - np.mod(watermark, WINDOW_MS), closed)
    late = bucket_of(timestamp) < frontier
    new_max = max(int(running[-1]), max_event)
    return late, new_max, max(closed, closed_through(new_max - buffer_ms))


def window_sums(values: npt.NDArray[np.float64], lo: I64, hi: I64) -> npt.NDArray[np.float64]:
    """``values[lo[i]:hi[i]].sum()`` for every i, each added left to right.

    Exact in the sense that matters here: a sum depends only on the values in its window, never on where
    the array starts (a running prefix sum would carry the rounding of everything before the window, so
    the same candle's volatility or features would differ in the last bits after a restart)."""
    lengths = np.maximum(hi - lo, 0)
    total = int(lengths.sum())
    out = np.zeros(lo.shape[0], dtype=np.float64)
    if total == 0:
        return out
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    index = np.repeat(lo - starts, lengths) + np.arange(total)
    nonempty = lengths > 0
    out[nonempty] = np.add.reduceat(values[index], starts[nonempty])
    return out


def search_segments(values: I64, starts: I64, segment: I64, query: I64) -> I64:
    """Per query i: ``np.searchsorted(values[a:b], query[i], side="right") + a`` where ``a, b`` are
    ``starts[segment[i]], starts[segment[i] + 1]``, in one call for any number of segments.

    ``values`` holds ascending runs one after another (``starts``: where each begins, then the end). Each
    run is lifted onto its own range of one ascending key, so a single searchsorted answers every query."""
    if query.size == 0:
        return np.empty(0, dtype=np.int64)
    if values.size == 0:
        return starts[segment].astype(np.int64)
    base = min(int(values.min()), int(query.min()))
    span = max(int(values.max()), int(query.max())) - base + 1
    runs = starts.shape[0] - 1
    if span * runs >= 2**62:  # values spread over more than int64 holds: one search per query
        return np.array(
            [
                a + np.searchsorted(values[a : starts[s + 1]], q, side="right")
                for s, q, a in zip(segment.tolist(), query.tolist(), starts[segment].tolist(), strict=True)
            ],
            dtype=np.int64,
        )
    run = np.repeat(np.arange(runs, dtype=np.int64), np.diff(starts))
    key = run * span + (values - base)
    return np.searchsorted(key, segment.astype(np.int64) * span + (query - base), side="right").astype(
        np.int64
    )


def dedupe(trades: TradeColumns) -> TradeColumns:
    """Keep one trade per (symbol, exchange, second, trade id): the first to arrive.

    A resend is the same trade, so the same second. The same id stamped in another second is kept as
    another trade: the processor dedupes the trades of the windows one closing pass pops, and which
    windows close together depends on when the pass runs; keyed by id alone, such a trade counted or not
    by that timing."""
    n = len(trades)
    if n < 2:
        return trades
    bucket = bucket_of(trades.timestamp)
    order = np.lexsort((np.arange(n), trades.trade_id, bucket, trades.exchange, trades.symbol))
    s, e, b, t = trades.symbol[order], trades.exchange[order], bucket[order], trades.trade_id[order]
    first = np.ones(n, dtype=np.bool_)
    first[1:] = (s[1:] != s[:-1]) | (e[1:] != e[:-1]) | (b[1:] != b[:-1]) | (t[1:] != t[:-1])
    if first.all():
        return trades
    keep = np.sort(order[first])
    return trades.take(keep)


@dataclass(slots=True)
class Candles:
    """1 s candles as NumPy columns, sorted by (symbol code, exchange code, bucket).

    ``symbol``/``exchange`` are codes into ``symbols``/``exchanges``; after
    :meth:`processor.state.Interner.adopt` both hold the stream code."""

    symbols: list[str]
    exchanges: list[str]
    symbol: npt.NDArray[np.int32]
    exchange: npt.NDArray[np.int32]
    columns: dict[str, npt.NDArray[Any]]  # bucket (int64 ms), open .. sell_volume, in CANDLE_SCHEMA order

    def __len__(self) -> int:
        return int(self.symbol.shape[0])

    def segments(self) -> list[tuple[int, slice]]:
        """(symbol code, row slice) of each stream's run of candles."""
        n = len(self)
        if n == 0:
            return []
        change = (self.symbol[1:] != self.symbol[:-1]) | (self.exchange[1:] != self.exchange[:-1])
        cut = np.flatnonzero(change) + 1
        starts = np.concatenate(([0], cut))
        ends = np.concatenate((cut, [n]))
        return [(int(self.symbol[a]), slice(int(a), int(b))) for a, b in zip(starts, ends, strict=True)]

    def to_table(self) -> pa.Table:
        """The ``CANDLE_SCHEMA`` table the sinks store."""
        if len(self) == 0:
            return CANDLE_SCHEMA.empty_table()
        arrays: dict[str, Any] = {
            "exchange": pa.array(np.asarray(self.exchanges, dtype=object)[self.exchange], pa.string()),
            "symbol": pa.array(np.asarray(self.symbols, dtype=object)[self.symbol], pa.string()),
        }
        for name, values in self.columns.items():
            arrays[name] = pa.array(values, CANDLE_SCHEMA.field(name).type)
        return pa.Table.from_pydict(arrays, schema=CANDLE_SCHEMA)


def aggregate(trades: TradeColumns) -> Candles:
    """1 s OHLCV candles of deduplicated trades per (exchange, symbol), sorted by symbol, exchange, bucket.

    Within a window, open/close are the first/last trade by (event time, trade id): trade ids are unique
    within a venue's market, so the order never depends on arrival."""
    n = len(trades)
    if n == 0:
        empty = {
            f.name: np.empty(0, np.int64 if f.name in ("bucket", "trade_count") else np.float64)
            for f in CANDLE_SCHEMA
            if f.name not in ("exchange", "symbol")
        }
        none = np.empty(0, np.int32)
        return Candles(trades.symbols, trades.exchanges, none, none, empty)
    bucket = bucket_of(trades.timestamp)
    order = np.lexsort((trades.trade_id, trades.timestamp, trades.exchange, trades.symbol))
    sym, exch, bkt = trades.symbol[order], trades.exchange[order], bucket[order]
    price, qty = trades.price[order], trades.quantity[order]
    starts_mask = np.ones(n, dtype=np.bool_)
    starts_mask[1:] = (sym[1:] != sym[:-1]) | (exch[1:] != exch[:-1]) | (bkt[1:] != bkt[:-1])
    starts = np.flatnonzero(starts_mask)
    ends = np.append(starts[1:], n) - 1
    volume = np.add.reduceat(qty, starts)
    notional = np.add.reduceat(price * qty, starts)
    taker_sold = trades.is_buyer_maker[order]  # buyer was the maker, so the taker sold
    buy_volume = np.add.reduceat(np.where(taker_sold, 0.0, qty), starts)
    sell_volume = np.add.reduceat(np.where(taker_sold, qty, 0.0), starts)
    close = price[ends]
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = np.where(volume > 0, notional / np.where(volume > 0, volume, 1.0), close)
    columns = {
        "bucket": bkt[starts],
        "open": price[starts],
        "high": np.maximum.reduceat(price, starts),
        "low": np.minimum.reduceat(price, starts),
        "close": close,
        "volume": volume,
        "trade_count": np.diff(np.append(starts, n)).astype(np.int64),
        "vwap": vwap,
        "buy_volume": buy_volume,
        "sell_volume": sell_volume,
    }
    return Candles(trades.symbols, trades.exchanges, sym[starts], exch[starts], columns)
