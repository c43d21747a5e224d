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

Everything here is a function of the records in offset order: the same records give the same frontiers,
candles and late trades whatever the fetch-batch cuts, pauses or crashes (a property test holds it to that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cryptostream.codec import Progress
from cryptostream.models import CANDLE_SCHEMA, VOLATILITY_SCHEMA, TradeColumns
from processor.volatility import rolling_volatility
from processor.windows import Candles, aggregate, bucket_of, closed_through, dedupe, late_mask

__all__ = [
    "FAR_PAST",
    "Closed",
    "Interner",
    "PartitionState",
    "StreamState",
    "closed_candles",
    "concat_trades",
]

RECENT_FIELDS = CANDLE_SCHEMA.names[2:]  # bucket .. sell_volume (exchange and symbol are the stream)
FAR_PAST = -(2**62)  # "nothing seen yet", far from int64 overflow when the buffer is subtracted


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

    def stream(self, exchange: str, symbol: str) -> int:
        code = self._code.get((exchange, symbol))
        if code is None:
            code = self._code[(exchange, symbol)] = len(self.symbols)
            self.symbols.append(symbol)
            self.exchanges.append(exchange)
        return code

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
    streams: dict[int, StreamState] = field(default_factory=dict)
    dirty: bool = False  # something happened since the last checkpoint

    # ------------------------------------------------------------------------------------------ input
    def apply(
        self, trades: TradeColumns, progress: list[Progress], interner: Interner
    ) -> npt.NDArray[np.int64]:
        """Add one batch: trades (interned stream codes, offset order) and progress marks, in offset order.

        Returns the offsets of late trades (to dead-letter)."""
        if not progress:
            return self.ingest(trades)
        late: list[npt.NDArray[np.int64]] = []
        start = 0
        for mark in progress:
            end = int(np.searchsorted(trades.offset, mark.offset))
            if end > start:
                late.append(self.ingest(trades.take(slice(start, end))))
            self.advance(mark, interner)
            start = end
        if start < len(trades):
            late.append(self.ingest(trades.take(slice(start, None))))
        return np.concatenate(late) if late else np.empty(0, dtype=np.int64)

    def ingest(self, trades: TradeColumns) -> npt.NDArray[np.int64]:
        """Add trades (one partition, offset order, stream codes); returns the offsets of late ones."""
        late_offsets: list[npt.NDArray[np.int64]] = []
        if len(trades) == 0:
            return np.empty(0, dtype=np.int64)
        self.dirty = True
        if (trades.symbol[1:] != trades.symbol[:-1]).any():
            # One stable sort, then a view per stream (arrival order within a stream is kept for late_mask)
            trades = trades.take(np.argsort(trades.symbol, kind="stable"))
        for a, b in _runs(trades.symbol):
            code = int(trades.symbol[a])
            rows = trades.take(slice(a, b))
            state = self.streams.get(code)
            if state is None:
                state = self.streams[code] = StreamState()
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
        if late_offsets:
            return np.concatenate(late_offsets)
        return np.empty(0, dtype=np.int64)

    def advance(self, mark: Progress, interner: Interner) -> None:
        """Apply a progress record: its streams' frontiers move to the windows its watermark completes."""
        self.dirty = True
        through = closed_through(mark.watermark)
        for symbol in mark.symbols:
            code = interner.stream(mark.exchange, symbol)
            state = self.streams.get(code)
            if state is None:
                state = self.streams[code] = StreamState()
            if mark.watermark > state.progress:
                state.progress = mark.watermark
            if through > state.closed:
                state.closed = through

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
        the history (ending with its new candles) prediction hooks read. None when nothing closed."""
        candles = closed_candles(self.take_closed())
        if candles is None:
            return None
        vol_parts: list[pa.Table] = []
        histories: list[tuple[str, str, dict[str, npt.NDArray[Any]], int]] = []
        for code, rows in candles.segments():
            state = self.streams[code]
            exchange, symbol = interner.name(code)
            new = {name: values[rows] for name, values in candles.columns.items()}
            history = state.recent.get("bucket")
            first = state.first_bucket if state.first_bucket is not None else int(new["bucket"][0])
            if history is not None and history.size:
                vol = rolling_volatility(
                    np.concatenate([history, new["bucket"]]),
                    np.concatenate([state.recent["close"], new["close"]]),
                    first,
                    window_s,
                    start=history.size,
                )
            else:
                vol = rolling_volatility(new["bucket"], new["close"], first, window_s)
            ok = ~np.isnan(vol)
            if ok.any():
                count = int(ok.sum())
                vol_parts.append(
                    pa.table(
                        {
                            "exchange": pa.array([exchange] * count, pa.string()),
                            "symbol": pa.array([symbol] * count, pa.string()),
                            "bucket": pa.array(new["bucket"][ok], pa.timestamp("ms", tz="UTC")),
                            "volatility": vol[ok],
                            "window_seconds": pa.array(np.full(count, window_s, np.int32)),
                        },
                        schema=VOLATILITY_SCHEMA,
                    )
                )
            histories.append((exchange, symbol, self.remember(code, new), rows.stop - rows.start))
        volatility = pa.concat_tables(vol_parts) if vol_parts else VOLATILITY_SCHEMA.empty_table()
        return Closed(candles.to_table(), volatility, histories)

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
        return out

    def remember(self, code: int, new: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Append a stream's newly closed candles (bucket order) to its recent history, trimmed.

        Returns the untrimmed history + new candles, so hooks see every new candle even when a backlog
        closes more of them at once than the history keeps."""
        state = self.streams[code]
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

    # ------------------------------------------------------------------------------------------ checkpoints
    def snapshot(self, interner: Interner) -> tuple[pa.Table, pa.Table, pa.Table]:
        """(streams, recent candles, open-window trades) as Arrow tables: what a checkpoint stores.

        Every window behind a frontier must have been taken first (its rows belong to the sinks)."""
        codes = list(self.streams)
        for code in codes:
            s = self.streams[code]
            if s.open and min(s.open) < s.closed:
                raise RuntimeError("snapshot with closed windows not taken: their trades would be lost")
        states = [self.streams[c] for c in codes]
        streams = pa.table(
            {
                "exchange": pa.array([interner.exchanges[c] for c in codes], pa.string()),
                "symbol": pa.array([interner.symbols[c] for c in codes], pa.string()),
                "closed": pa.array([s.closed for s in states], pa.int64()),
                "max_event": pa.array([s.max_event for s in states], pa.int64()),
                "progress": pa.array([s.progress for s in states], pa.int64()),
                "first_bucket": pa.array([s.first_bucket for s in states], pa.int64()),
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
        recent = pa.table(
            {
                k: (np.concatenate(v) if v else np.empty(0, _RECENT_DTYPE.get(k, np.float64)))
                for k, v in recent_parts.items()
            }
        )
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
    ) -> PartitionState:
        """The state a :meth:`snapshot` (with its header) describes, ready to read from ``head["offset"]``."""
        streams, recent, open_rows = tables
        state = cls(
            topic=head["topic"],
            partition=head["partition"],
            epoch=head["epoch"],
            seq=head["seq"],
            position=head["offset"],
            buffer_ms=buffer_ms,
            history_ms=history_ms,
        )
        codes = [
            interner.stream(e, s)
            for e, s in zip(streams["exchange"].to_pylist(), streams["symbol"].to_pylist(), strict=True)
        ]
        firsts = streams["first_bucket"].to_pylist()
        for i, code in enumerate(codes):
            state.streams[code] = StreamState(
                closed=int(streams["closed"][i].as_py()),
                max_event=int(streams["max_event"][i].as_py()),
                progress=int(streams["progress"][i].as_py()),
                first_bucket=firsts[i],
            )
        if recent.num_rows:
            index = recent["stream"].to_numpy()
            for a, b in _runs(index):
                target = state.streams[codes[int(index[a])]]
                target.recent = {
                    k: recent[k].to_numpy()[a:b].astype(_RECENT_DTYPE.get(k, np.float64))
                    for k in RECENT_FIELDS
                }
        if open_rows.num_rows:
            stream_codes = np.asarray(codes, dtype=np.int32)[open_rows["stream"].to_numpy()]
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
class Closed:
    """What one :meth:`PartitionState.close` made."""

    ohlc: pa.Table
    volatility: pa.Table
    histories: list[tuple[str, str, dict[str, npt.NDArray[Any]], int]]  # exchange, symbol, history, n new


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
_RECENT_DTYPE: dict[str, Any] = {"stream": np.int32, "bucket": np.int64, "trade_count": np.int64}


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


def _runs(values: npt.NDArray[Any]) -> list[tuple[int, int]]:
    """(start, end) of each run of equal values."""
    cut = (np.flatnonzero(values[1:] != values[:-1]) + 1).tolist()
    return list(zip([0, *cut], [*cut, len(values)], strict=True))
