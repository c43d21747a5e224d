"""Event-time windows: the streaming state equals a batch computation, however the stream arrives.

(The whole processor state, with progress records, crashes and dead letters, is held to a reference in
``test_determinism.py``; here are the window rules themselves.)"""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream.codec import Progress
from cryptostream.models import CANDLE_SCHEMA, Trade, TradeColumns
from processor.state import Interner, PartitionState, closed_candles
from processor.volatility import streams_volatility
from processor.windows import aggregate, bucket_of, dedupe, late_mask, search_segments
from tests.reference import assert_candles_equal, batch_candles, batch_volatility, rows_by_key

T0 = 1_700_000_000_000
BUFFER_MS = 2_000


def _trade(i: int, symbol: str, ts: int, price: float, qty: float, exchange: str = "x") -> Trade:
    return Trade(exchange, symbol, price, qty, ts, i, i % 3 == 0)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Trade], list[Trade], list[int]]:
    """(unique trades, delivery order with disorder within the buffer and duplicates, batch cut points)."""
    n = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"][: draw(st.integers(1, 3))]
    ts = T0
    trades = []
    for i in range(n):
        ts += rng.choice([0, 0, 1, 7, 150, 999, 1000, 2500])  # equal timestamps happen a lot
        trades.append(
            _trade(
                i,
                rng.choice(symbols),
                ts,
                round(rng.uniform(90, 110), 2),
                round(rng.uniform(0, 3), 4),
                rng.choice(["binance", "coinbase"]),
            )
        )
    dup_rate = draw(st.sampled_from([0.0, 0.1, 0.5]))
    copies = trades + [t for t in trades if rng.random() < dup_rate]
    keyed = [(t.timestamp + rng.randrange(BUFFER_MS), k, t) for k, t in enumerate(copies)]
    keyed.sort(key=lambda x: (x[0], x[1]))
    delivery = [t for _, _, t in keyed]
    cuts = sorted(rng.sample(range(1, len(delivery)), min(len(delivery) - 1, draw(st.integers(0, 20)))))
    return trades, delivery, cuts


def _new_state() -> PartitionState:
    return PartitionState(
        topic="t", partition=0, epoch="e", seq=0, position=0, buffer_ms=BUFFER_MS, history_ms=61_000
    )


def _drive(
    state: PartitionState, interner: Interner, delivery: list[Trade], cuts: list[int], offset0: int = 0
) -> tuple[list[pa.Table], list[int]]:
    tables, late = [], []
    bounds = [0, *cuts, len(delivery)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if a == b:
            continue
        cols = interner.adopt(TradeColumns.from_trades(delivery[a:b], list(range(offset0 + a, offset0 + b))))
        late.extend(state.ingest(cols).late.tolist())
        state.position = offset0 + b
        candles = closed_candles(state.take_closed())
        if candles is not None:
            tables.append(candles.to_table())
    return tables, late


def _finish(state: PartitionState, interner: Interner) -> pa.Table:
    """The sources stop: progress that closes every window of every stream."""
    for exchange, symbol in {interner.name(code) for code in state.streams}:
        state.advance(Progress(exchange, (symbol,), 2**60), interner)
    candles = closed_candles(state.take_closed())
    return candles.to_table() if candles is not None else CANDLE_SCHEMA.empty_table()


def _as_rows(tables: list[pa.Table]) -> dict:
    return rows_by_key(pa.concat_tables(tables).to_pylist())


@settings(max_examples=150, deadline=None)
@given(streams())
def test_any_delivery_within_the_buffer_gives_the_batch_candles(stream) -> None:
    trades, delivery, cuts = stream
    state, interner = _new_state(), Interner()
    tables, late = _drive(state, interner, delivery, cuts)
    tables.append(_finish(state, interner))
    assert late == []
    assert_candles_equal(_as_rows(tables), batch_candles(trades))


@settings(max_examples=150, deadline=None)
@given(streams(), st.integers(0, 2**32 - 1))
def test_restoring_a_snapshot_and_reading_on_from_its_offset_gives_the_same_candles(stream, seed) -> None:
    """A crash at any point: everything closed before the checkpoint was flushed, open windows are in the
    snapshot, and reading goes on from the snapshot's offset in a new process."""
    trades, delivery, cuts = stream
    rng = random.Random(seed)
    crash_at = rng.randrange(0, len(cuts) + 1)
    pre_cuts = cuts[:crash_at]
    upto = pre_cuts[-1] if pre_cuts else 0
    state, interner = _new_state(), Interner()
    flushed, _ = _drive(state, interner, delivery[:upto], pre_cuts[:-1] if pre_cuts else [])
    tables = state.snapshot(interner)
    # ... the process dies here; a new one restores the snapshot and reads on from its offset
    interner2 = Interner()
    head = {"topic": "t", "partition": 0, "epoch": "e", "seq": 0, "offset": state.position}
    restored = PartitionState.restore(head, tables, interner2, BUFFER_MS, 61_000)
    start = restored.position
    rest_cuts = [c - start for c in cuts if c > start]
    replayed, late = _drive(restored, interner2, delivery[start:], rest_cuts, offset0=start)
    replayed.append(_finish(restored, interner2))
    assert late == []
    assert_candles_equal(_as_rows(flushed + replayed), batch_candles(trades))


def test_distinct_trades_sharing_a_timestamp_all_count_and_ties_break_by_trade_id() -> None:
    trades = [
        _trade(3, "BTCUSDT", T0, 101.0, 1.0),
        _trade(1, "BTCUSDT", T0, 100.0, 2.0),
        _trade(2, "BTCUSDT", T0, 102.0, 0.5),
    ]
    candles = aggregate(TradeColumns.from_trades(trades)).to_table().to_pylist()
    assert len(candles) == 1
    c = candles[0]
    assert (c["open"], c["close"], c["high"], c["low"], c["trade_count"]) == (100.0, 101.0, 102.0, 100.0, 3)
    assert c["volume"] == 3.5


def test_duplicates_count_once_keeping_the_first_arrival() -> None:
    a = _trade(1, "BTCUSDT", T0, 100.0, 1.0)
    cols = TradeColumns.from_trades([a, _trade(2, "BTCUSDT", T0 + 5, 99.0, 1.0), a, a])
    assert len(dedupe(cols)) == 2
    same_id_other_exchange = TradeColumns.from_trades([a, _trade(1, "BTCUSDT", T0, 100.0, 1.0, exchange="y")])
    assert len(dedupe(same_id_other_exchange)) == 2


def test_a_trade_older_than_the_watermark_is_late_and_not_counted() -> None:
    state, interner = _new_state(), Interner()
    on_time = [_trade(1, "BTCUSDT", T0, 100.0, 1.0), _trade(2, "BTCUSDT", T0 + 10_000, 101.0, 1.0)]
    late_trade = _trade(3, "BTCUSDT", T0 + 500, 50.0, 9.0)  # window [T0, T0+1000) closed by the watermark
    tables, late = _drive(state, interner, [*on_time, late_trade], [2])
    tables.append(_finish(state, interner))
    assert late == [2]
    rows = _as_rows(tables)
    assert rows[("x", "BTCUSDT", T0)]["trade_count"] == 1 and rows[("x", "BTCUSDT", T0)]["low"] == 100.0


def test_late_mask_does_not_depend_on_how_the_batch_is_cut() -> None:
    rng = np.random.default_rng(3)
    ts = (T0 + np.cumsum(rng.integers(-900, 1000, 500))).astype(np.int64)
    whole, m1, c1 = late_mask(ts, -(2**62), -(2**62), 1500)
    first, m, c = late_mask(ts[:200], -(2**62), -(2**62), 1500)
    second, m2, c2 = late_mask(ts[200:], m, c, 1500)
    assert (np.concatenate([first, second]) == whole).all() and (m1, c1) == (m2, c2)


def test_a_quiet_stream_closes_by_its_progress_and_never_by_another_venue() -> None:
    """Progress of one venue closes that venue's windows only; its own trades no longer move its frontier."""
    state, interner = _new_state(), Interner()
    trades = [
        _trade(1, "BTCUSDT", T0, 100.0, 1.0, "binance"),
        _trade(2, "BTCUSDT", T0, 200.0, 1.0, "coinbase"),
    ]
    state.ingest(interner.adopt(TradeColumns.from_trades(trades, [0, 1])))
    state.advance(Progress("coinbase", ("BTCUSDT",), T0 + 1000), interner)
    candles = closed_candles(state.take_closed()).to_table().to_pylist()
    assert [(c["exchange"], c["close"]) for c in candles] == [("coinbase", 200.0)]
    # coinbase is governed by progress now: a trade 30 s later does not close its next window by itself
    later = [
        _trade(3, "BTCUSDT", T0 + 1500, 201.0, 1.0, "coinbase"),
        _trade(4, "BTCUSDT", T0 + 30_000, 202.0, 1.0, "coinbase"),
    ]
    state.ingest(interner.adopt(TradeColumns.from_trades(later, [2, 3])))
    assert closed_candles(state.take_closed()) is None
    # binance never carried progress: its trade watermark (max time - buffer) closes its windows
    state.ingest(
        interner.adopt(
            TradeColumns.from_trades([_trade(5, "BTCUSDT", T0 + 9_000, 99.0, 1.0, "binance")], [4])
        )
    )
    closed = closed_candles(state.take_closed()).to_table().to_pylist()
    assert [(c["exchange"], c["bucket"].timestamp() * 1000) for c in closed] == [("binance", T0)]


def test_a_progress_watermark_closes_exactly_the_windows_that_end_by_it() -> None:
    state, interner = _new_state(), Interner()
    trades = [_trade(i, "ETHUSDT", T0 + 500 * i, 10.0 + i, 1.0, "binance") for i in range(6)]  # T0 .. T0+2500
    state.ingest(interner.adopt(TradeColumns.from_trades(trades, list(range(6)))))
    state.advance(Progress("binance", ("ETHUSDT",), T0 + 1999), interner)
    assert [c["trade_count"] for c in closed_candles(state.take_closed()).to_table().to_pylist()] == [2]
    state.advance(Progress("binance", ("ETHUSDT",), T0 + 2000), interner)
    assert [c["trade_count"] for c in closed_candles(state.take_closed()).to_table().to_pylist()] == [2]
    state.advance(Progress("binance", ("ETHUSDT",), T0 + 1000), interner)  # an older watermark: no effect
    assert closed_candles(state.take_closed()) is None
    late = state.ingest(
        interner.adopt(TradeColumns.from_trades([_trade(9, "ETHUSDT", T0 + 1999, 1.0, 1.0, "binance")], [9]))
    )
    assert late.late.tolist() == [9]


def test_bucket_is_the_floor_of_the_second() -> None:
    ts = np.array([T0, T0 + 999, T0 + 1000, -1, -1000, -1001], dtype=np.int64)
    assert bucket_of(ts).tolist() == [T0, T0, T0 + 1000, -1000, -1000, -2000]


@st.composite
def runs_of_buckets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ascending runs of buckets one after another, where each starts then the end, closes)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([10**3, 10**9, 2**61]))  # 2**61: runs too far apart for one key
    parts = []
    for _ in range(draw(st.integers(1, 12))):
        n = draw(st.integers(0, 40))
        start = int(rng.integers(-spread, spread)) // 1000 * 1000
        parts.append(start + np.cumsum(rng.choice([1000, 1000, 2000, 7000], n)).astype(np.int64))
    starts = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([p.size for p in parts], out=starts[1:])
    buckets = np.concatenate(parts) if parts else np.empty(0, np.int64)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, buckets.size)))
    return buckets, starts, closes


@given(runs_of_buckets(), st.integers(-5_000, 5_000))
@settings(max_examples=150, deadline=None)
def test_one_search_over_many_runs_equals_a_search_in_each(runs, shift) -> None:
    buckets, starts, _ = runs
    segment = np.repeat(np.arange(starts.size - 1), 3)
    query = np.array(
        [
            buckets[a] + shift if b > a else shift
            for a, b in zip(starts[segment], starts[segment + 1], strict=True)
        ],
        np.int64,
    )
    expected = [
        a + np.searchsorted(buckets[a:b], q, side="right")
        for a, b, q in zip(starts[segment], starts[segment + 1], query, strict=True)
    ]
    assert search_segments(buckets, starts, segment, query).tolist() == expected


@given(runs_of_buckets(), st.sampled_from([2, 5, 60]))
@settings(max_examples=150, deadline=None)
def test_volatility_of_many_streams_at_once_equals_each_stream_alone_bit_for_bit(runs, window_s) -> None:
    """Closing passes compute every stream that closed together: no figure may depend on its neighbours."""
    buckets, starts, closes = runs
    rng = np.random.default_rng(int(starts[-1]))
    targets, firsts, alone = [], [], []
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        if b == a:
            continue
        new = int(rng.integers(a, b))  # history before it, new candles from it on
        first = int(buckets[a]) - int(rng.choice([0, 0, 3000]))
        targets.extend(range(new, b))
        firsts.extend([first] * (b - new))
        alone.append(
            streams_volatility(
                buckets[a:b],
                closes[a:b],
                np.array([0, b - a]),
                np.arange(new - a, b - a),
                np.full(b - new, first),
                window_s,
            )
        )
    together = streams_volatility(
        buckets, closes, starts, np.array(targets, np.int64), np.array(firsts, np.int64), window_s
    )
    expected = np.concatenate(alone) if alone else np.empty(0)
    assert together.tobytes() == expected.tobytes()


def _history_ms(window_s: int) -> int:
    return (max(window_s, 30) + 1) * 1000  # as processor/service.py keeps it


def _volatility_across_a_restart(trades: list[Trade], before_s: int, after_s: int, cut: int) -> dict:
    """Stored volatility of a processor run with window ``before_s`` until trade ``cut``, checkpointed and
    restarted with ``after_s``: {key: (volatility, window_seconds)}."""
    state = PartitionState("t", 0, "e", 0, 0, BUFFER_MS, _history_ms(before_s))
    interner, window, stored = Interner(), before_s, []
    for i in range(0, len(trades), 7):
        if i >= cut and window != after_s:
            head = {"topic": "t", "partition": 0, "epoch": "e", "seq": 0, "offset": i}
            tables, interner, window = state.snapshot(interner), Interner(), after_s
            state = PartitionState.restore(head, tables, interner, BUFFER_MS, _history_ms(window))
        chunk = trades[i : i + 7]
        state.apply(
            interner.adopt(TradeColumns.from_trades(chunk, list(range(i, i + len(chunk))))), [], interner
        )
        if i + 7 >= len(trades):  # the source stops: every window closes
            state.advance(Progress("binance", ("BTCUSDT",), 2**60), interner)
        closed = state.close(interner, window)
        if closed is not None:
            stored.extend(closed.volatility.to_pylist())
    return {
        (r["exchange"], r["symbol"], int(r["bucket"].timestamp() * 1000)): (
            r["volatility"],
            r["window_seconds"],
        )
        for r in stored
    }


def test_a_restart_with_a_longer_window_stores_no_volatility_its_history_cannot_give() -> None:
    """The checkpoint of a 20 s window holds 31 s of candles; after a restart with 100 s, a window reaching
    before them would count the missing seconds as quiet (about 0.4 of the true figure). Such buckets get no
    volatility; every figure stored equals the batch one, and from one window after the restart on, all are
    there again. With the window unchanged, every bucket has its figure."""
    rng = random.Random(7)
    price, trades = 100.0, []
    for s in range(400):
        if 150 <= s < 170:  # a quiet stretch: forward-filled seconds count, they are not missing
            continue
        price = round(price * (1 + rng.gauss(0, 1e-3)), 2)
        trades.append(_trade(s, "BTCUSDT", T0 + s * 1000 + rng.randrange(1000), price, 1.0, "binance"))
    candles = batch_candles(trades)
    reference = {w: batch_volatility(candles, w) for w in (20, 100)}
    restart_at = 250  # trade 252 (batches of 7), in second 272: its candles close after the restart

    for before_s, after_s in ((20, 100), (100, 100), (100, 20)):
        got = _volatility_across_a_restart(trades, before_s, after_s, restart_at)
        for key, (volatility, window) in got.items():
            assert math.isclose(volatility, reference[window][key], rel_tol=1e-9), (
                key,
                window,
            )
        missing = sorted(k[2] for k in candles if k not in got and k[2] > T0 + 2000)
        if before_s < after_s:
            assert missing, "the windows reaching before the restored history must not be stored"
            assert T0 + 260_000 < missing[0] and missing[-1] < T0 + 272_000 + after_s * 1000
        else:
            assert missing == []
