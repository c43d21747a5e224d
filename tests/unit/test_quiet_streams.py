"""Quiet streams are evicted to columns and brought back without changing a single output bit, and a partition
holds at most ``max_streams`` streams, decided by its records alone.

The differential test runs the same records through two partition states, one evicting quiet streams and one
keeping every stream a Python object, with the same closing passes and checkpoint round trips, and holds the
candles, volatility, predictions, refused trades and frontiers of both to bit-for-bit equality. (The states
themselves are held to a record-at-a-time reference in ``test_determinism.py``.)
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream.codec import Progress, encode_progress
from cryptostream.fetch import Fetched
from cryptostream.models import Trade, TradeColumns
from cryptostream.settings import load_settings
from processor import service
from processor.checkpoint import Checkpoint
from processor.model.features import FEATURES, LOOKBACK_SECONDS
from processor.model.scorer import ModelScorer
from processor.service import Processor
from processor.state import Interner, PartitionState

T0 = 1_700_000_000_000
BUFFER_MS = 1_500
VOL_WINDOW_S = 20
HISTORY_MS = (max(VOL_WINDOW_S, LOOKBACK_SECONDS) + 1) * 1000  # what the processor keeps
GOVERNED = "binance"  # its source writes progress; "coinbase" does not (trade times move its frontiers)
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")

Event = tuple[
    str, Any
]  # (trade, Trade), (progress, (exchange, symbols, watermark)), (close|checkpoint, None)


def make_log(rng: random.Random, n: int) -> list[Event]:
    """Markets that trade in bursts and fall quiet for longer than the history, progress that sometimes names
    symbols that never trade, trades out of order and late, and closing passes and checkpoints anywhere."""
    clock = T0
    ids: dict[tuple[str, str], int] = {}
    events: list[Event] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.06:  # a silence: often within a few seconds of the history, where eviction starts
            clock += (
                HISTORY_MS + rng.randrange(-4_000, 3_000, 500)
                if roll < 0.04
                else rng.randrange(3 * HISTORY_MS)
            )
        else:
            clock += rng.choice([0, 50, 400, 1000, 1700])
        if roll < 0.2:
            symbols = tuple(rng.sample([*SYMBOLS, "NEVERUSDT"], rng.randint(1, 3)))
            lag = rng.choice([0, 300, BUFFER_MS])
            events.append(("progress", (GOVERNED, symbols, clock - lag)))
        elif roll < 0.3:
            events.append(("close", None))
        elif roll < 0.35:
            events.append(("checkpoint", None))
        else:
            exchange = rng.choice([GOVERNED, GOVERNED, "coinbase"])
            symbol = rng.choice(SYMBOLS[:2] if rng.random() < 0.7 else SYMBOLS)
            ids[(exchange, symbol)] = ids.get((exchange, symbol), 0) + 1
            ts = clock - rng.choice([0, 0, 0, 300, 900, 2 * BUFFER_MS])  # disorder, sometimes late
            price = round(100 * (1 + rng.uniform(-0.02, 0.02)), 2)
            trade = Trade(
                exchange, symbol, price, rng.uniform(0.01, 2), ts, ids[(exchange, symbol)], rng.random() < 0.5
            )
            events.append(("trade", trade))
    events.append(("progress", (GOVERNED, SYMBOLS, clock + 10 * HISTORY_MS)))  # the source stops
    events.append(("close", None))
    return events


def _scorer() -> ModelScorer:
    rng = np.random.default_rng(3)
    n = len(FEATURES)
    params = {
        "kind": "logit",
        "mean": rng.normal(0, 0.001, n).tolist(),
        "scale": rng.uniform(0.001, 0.01, n).tolist(),
        "active": [True] * n,
        "coef": rng.normal(0, 1, n).tolist(),
        "intercept": 0.1,
    }
    return ModelScorer(
        {
            "features": list(FEATURES),
            "lookback_seconds": LOOKBACK_SECONDS,
            "version": "t",
            "horizon_seconds": 20,
            "params": params,
        }
    )


SCORER = _scorer()


def run(events: list[Event], evict: bool, batch_seed: int) -> dict[str, Any]:
    """Drive a partition state the way the service does: fetch batches (cut at random), closing passes and
    checkpoints (snapshot, then restore in a new process with a new interner) where the log says."""
    rng = random.Random(batch_seed)
    interner = Interner()
    state = PartitionState("t", 0, "e", 0, 0, BUFFER_MS, HISTORY_MS, evict=evict)
    out: dict[str, list[Any]] = {"ohlc": [], "volatility": [], "predictions": [], "late": [], "over_cap": []}
    most_cold = warmed = 0
    i = 0
    while i < len(events):
        kind, payload = events[i]
        if kind in ("close", "checkpoint"):
            closed = state.close(interner, VOL_WINDOW_S)
            if closed is not None:
                out["ohlc"].append(closed.ohlc)
                out["volatility"].append(closed.volatility)
                out["predictions"].extend(SCORER(closed.histories).values())
            most_cold = max(most_cold, len(state.cold))
            if kind == "checkpoint":
                tables = state.snapshot(interner)
                interner = Interner()
                head = {"topic": "t", "partition": 0, "epoch": "e", "seq": 0, "offset": i}
                state = PartitionState.restore(head, tables, interner, BUFFER_MS, HISTORY_MS, evict=evict)
                most_cold = max(most_cold, len(state.cold))
            i += 1
            continue
        # a fetch batch: trades and progress up to the next close/checkpoint, cut at random
        end = i
        limit = i + rng.choice([1, 3, 8, 30])
        while end < min(limit, len(events)) and events[end][0] in ("trade", "progress"):
            end += 1
        trades = [(o, e[1]) for o, e in enumerate(events[i:end], start=i) if e[0] == "trade"]
        marks = [
            Progress(*e[1], offset=o) for o, e in enumerate(events[i:end], start=i) if e[0] == "progress"
        ]
        cols = interner.adopt(TradeColumns.from_trades([t for _, t in trades], [o for o, _ in trades]))
        warmed += int((state.cold.find(np.unique(cols.symbol).astype(np.int64)) >= 0).sum())
        refused = state.apply(cols, marks, interner)
        out["late"].extend(sorted(refused.late.tolist()))  # the service sends them in offset order
        out["over_cap"].extend(sorted(refused.over_cap.tolist()))
        i = end
    streams = state.snapshot(interner)[0].sort_by([("exchange", "ascending"), ("symbol", "ascending")])
    return {
        **{
            k: pa.concat_tables(v).to_pylist() if v and isinstance(v[0], pa.Table) else v
            for k, v in out.items()
        },
        "frontiers": streams.to_pylist(),
        "most_cold": most_cold,
        "warmed": warmed,
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("ohlc", "volatility", "predictions", "late", "over_cap", "frontiers"):
        # Bit for bit: floats compared through their bytes, no tolerance. Rows in market order: the order of
        # markets within a closing pass follows interner codes, which a restore numbers anew.
        rows_a, rows_b = (sorted(r[key], key=_market) if key in _TABLES else r[key] for r in (a, b))
        assert orjson.dumps(rows_a) == orjson.dumps(rows_b), key


_TABLES = ("ohlc", "volatility", "predictions")


def _market(row: dict[str, Any]) -> tuple[str, str, Any]:
    return row["exchange"], row["symbol"], row["bucket"]


logs = st.builds(make_log, st.randoms(use_true_random=False), st.integers(1, 300))


@settings(max_examples=40, deadline=None)
@given(logs, st.integers(0, 2**32 - 1))
def test_evicting_quiet_streams_changes_no_candle_volatility_prediction_or_frontier(events, seed) -> None:
    evicting, keeping = run(events, True, seed), run(events, False, seed)
    _same(evicting, keeping)
    assert keeping["most_cold"] == 0


def test_the_generator_makes_streams_go_quiet_and_come_back() -> None:
    """Guard against a differential test that compares two identical code paths: streams must be evicted,
    survive checkpoints cold, and come back on trades, with predictions and volatility being made. Seed 54
    is pinned: a silence where evicting 3 s earlier than the rule would lose a prediction."""
    cold = warmed = predictions = volatility = 0
    for seed in [*range(12), 54]:
        rng = random.Random(seed)
        events = make_log(rng, rng.randint(1, 300))
        result = run(events, True, seed)
        _same(result, run(events, False, seed))
        cold += result["most_cold"] > 0
        warmed += result["warmed"]
        predictions += len(result["predictions"])
        volatility += len(result["volatility"])
    assert cold >= 8 and warmed >= 8 and predictions > 50 and volatility > 200


def test_a_quiet_stream_comes_back_with_its_last_close_so_the_return_across_the_gap_counts() -> None:
    """The named case of the rule: after a silence longer than the history, the first new candle's volatility
    uses the close before the silence (dropping that last candle too would make it NaN or different)."""
    results = []
    for evict in (True, False):
        interner = Interner()
        state = PartitionState("t", 0, "e", 0, 0, BUFFER_MS, HISTORY_MS, evict=evict)
        closes = []
        offset = 0
        for second, price in [(0, 100.0), (1, 101.0), (2, 99.0), (200, 120.0), (201, 121.0)]:
            t = Trade(GOVERNED, "BTCUSDT", price, 1.0, T0 + second * 1000, offset, False)
            state.apply(interner.adopt(TradeColumns.from_trades([t], [offset])), [], interner)
            state.advance(Progress(GOVERNED, ("BTCUSDT",), T0 + (second + 1) * 1000), interner)
            offset += 2
            closed = state.close(interner, VOL_WINDOW_S)
            assert closed is not None
            closes.append(closed.volatility.to_pylist())
            if second == 2:  # the frontier moves past the history: the stream goes cold
                state.advance(Progress(GOVERNED, ("BTCUSDT",), T0 + 150_000), interner)
                state.close(interner, VOL_WINDOW_S)
                assert (len(state.cold), len(state.streams)) == ((1, 0) if evict else (0, 1))
        results.append(closes)
    assert orjson.dumps(results[0]) == orjson.dumps(results[1])
    after_gap = results[0][3][0]["volatility"]
    assert after_gap > 0  # the 99 -> 120 return across the silence is in the window


def test_a_progress_record_for_thousands_of_quiet_markets_moves_them_as_columns() -> None:
    interner = Interner()
    state = PartitionState("t", 0, "e", 0, 0, BUFFER_MS, HISTORY_MS)
    symbols = tuple(f"S{i:05d}USDT" for i in range(5_000))
    state.advance(Progress(GOVERNED, symbols, T0 + 1_500), interner)
    assert (len(state.streams), len(state.cold)) == (0, 5_000)
    state.advance(Progress(GOVERNED, symbols, T0 + 9_500), interner)
    assert len(state.streams) == 0 and set(state.cold.cols["closed"].tolist()) == {T0 + 9_000}
    frontiers = state.frontiers()
    assert len(frontiers) == 5_000 and state.frontiers() == []  # each moved frontier is announced once


# ---------------------------------------------------------------------------------------------- the cap
def _trades(specs: list[tuple[str, int]], first_offset: int) -> tuple[TradeColumns, list[int]]:
    offsets = list(range(first_offset, first_offset + len(specs)))
    trades = [Trade(GOVERNED, s, 100.0, 1.0, ts, o, False) for (s, ts), o in zip(specs, offsets, strict=True)]
    return TradeColumns.from_trades(trades, offsets), offsets


def test_trades_of_a_new_stream_past_the_cap_are_refused_in_offset_order_and_held_streams_carry_on() -> None:
    interner = Interner()
    interner.stream(GOVERNED, "MMMUSDT")  # the smallest code, yet the third to arrive
    state = PartitionState("t", 0, "e", 0, 0, BUFFER_MS, HISTORY_MS, max_streams=2)
    cols, _ = _trades([("ZZZUSDT", T0), ("AAAUSDT", T0 + 1), ("MMMUSDT", T0 + 2), ("ZZZUSDT", T0 + 3)], 0)
    refused = state.apply(interner.adopt(cols), [], interner)
    assert refused.over_cap.tolist() == [2] and refused.late.tolist() == []  # MMM came third
    # a quiet stream still counts (the cap is on streams held, not on Python objects)
    state.advance(Progress(GOVERNED, ("AAAUSDT", "ZZZUSDT", "NEWUSDT"), T0 + 200_000), interner)
    state.close(interner, VOL_WINDOW_S)
    assert len(state.cold) == 2 and state.stream_count() == 2  # NEWUSDT named by progress: not taken
    cols, _ = _trades([("MMMUSDT", T0 + 200_001), ("AAAUSDT", T0 + 200_002)], 10)
    refused = state.apply(interner.adopt(cols), [], interner)
    assert refused.over_cap.tolist() == [10] and len(state.streams) == 1  # AAA came back and trades on


def test_the_processor_dead_letters_trades_past_the_cap_naming_the_setting(tmp_path: Path) -> None:
    class Producer:
        def __init__(self) -> None:
            self.sent: list[tuple[bytes, list[tuple[str, bytes]]]] = []

        async def send(
            self, topic: str, value: bytes, partition: int, headers: list[tuple[str, bytes]]
        ) -> None:
            self.sent.append((value, headers))

    settings_ = load_settings(
        kafka_bootstrap="127.0.0.1:1", output_dir=tmp_path, database_url=None, max_streams_per_partition=1
    )
    processor = Processor(settings_, [])
    producer = Producer()
    processor._producer = producer  # type: ignore[assignment]
    processor._dlq_partitions = [0]
    part = processor._new_partition(0, "e", 0)
    values = [
        orjson.dumps(
            {
                "exchange": "binance",
                "symbol": s,
                "price": 1.0,
                "quantity": 1.0,
                "timestamp": T0 + i,
                "trade_id": i,
                "is_buyer_maker": False,
            }
        )
        for i, s in enumerate(["BTCUSDT", "ETHUSDT", "BTCUSDT"])
    ]
    asyncio.run(processor._ingest(part, Fetched(values, [0, 1, 2], [T0] * 3)))
    assert len(producer.sent) == 1
    letter = orjson.loads(producer.sent[0][0])
    assert letter["reason"] == "stream_cap" and "MAX_STREAMS_PER_PARTITION=1" in letter["detail"]
    assert letter["source"]["offset"] == 1 and orjson.loads(letter["raw"])["symbol"] == "ETHUSDT"
    assert processor.stats.reasons == {"stream_cap": 1} and processor.stats.rejected == 1


def test_markets_the_cap_refuses_do_not_pile_up_in_the_interner(tmp_path: Path) -> None:
    """A flood of new markets past the cap (trades and progress naming them) leaves the process's names as
    they were: refused names are forgotten unless another partition holds them, and their codes serve the
    next new markets under the right names."""

    class Producer:
        async def send(self, *args: Any, **kwargs: Any) -> None:
            pass

    settings_ = load_settings(
        kafka_bootstrap="127.0.0.1:1", output_dir=tmp_path, database_url=None, max_streams_per_partition=2
    )
    processor = Processor(settings_, [])
    processor._producer = Producer()  # type: ignore[assignment]
    processor._dlq_partitions = [0]
    full, other = processor._new_partition(0, "e", 0), processor._new_partition(1, "e", 0)
    processor.parts = {0: full, 1: other}

    def trade(symbol: str, i: int) -> bytes:
        return orjson.dumps(
            {
                "exchange": "binance",
                "symbol": symbol,
                "price": 100.0 + i % 7,
                "quantity": 1.0,
                "timestamp": T0 + i,
                "trade_id": i,
                "is_buyer_maker": False,
            }
        )

    def ingest(part: PartitionState, values: list[bytes], first: int) -> None:
        offsets = list(range(first, first + len(values)))
        asyncio.run(processor._ingest(part, Fetched(values, offsets, [T0 + 60_000] * len(values))))

    ingest(other, [trade("XRPUSDT", 0)], 0)
    ingest(full, [trade("BTCUSDT", 1), trade("ETHUSDT", 2)], 0)
    assert len(processor.interner) == 3
    junk = [f"J{i:04d}USDT" for i in range(2_000)]
    flood = [trade(s, 10 + i) for i, s in enumerate(junk)] + [trade("XRPUSDT", 9_000)]
    progress = encode_progress("binance", ["BTCUSDT", *junk[:500], "NEWUSDT"], T0)
    ingest(full, [*flood, progress], 2)
    assert processor.stats.reasons == {"stream_cap": len(flood)}  # XRPUSDT too: held elsewhere, not here
    assert len(processor.interner) == 3  # the 2,001 refused names are gone; XRPUSDT stays (partition 1)
    # the next new market takes a released code, under its own name
    codes = len(processor.interner.symbols)
    ingest(other, [trade("ADAUSDT", 20_000), trade("ADAUSDT", 40_000)], 1)
    assert len(processor.interner) == 4 and len(processor.interner.symbols) == codes
    closed = other.close(processor.interner, VOL_WINDOW_S)
    assert closed is not None and closed.ohlc["symbol"].to_pylist() == ["ADAUSDT"]
    assert closed.ohlc["exchange"].to_pylist() == ["binance"] and closed.ohlc["close"].to_pylist() == [
        100 + 20_000 % 7
    ]


# ---------------------------------------------------------------------------------------------- scale
def test_twenty_thousand_streams_in_one_partition_state_checkpoint_and_status(tmp_path: Path) -> None:
    """20,000 markets named by progress, 2,000 of them traded and then quiet, 100 trading on: closing passes,
    checkpoints, restores and the status message stay fast and small (figures printed: run with -s)."""
    n, traded, active = 20_000, 2_000, 100
    interner = Interner()
    state = PartitionState("t", 0, "e", 0, 0, BUFFER_MS, HISTORY_MS)
    symbols = tuple(f"S{i:05d}USDT" for i in range(n))
    rng = np.random.default_rng(1)
    offset = 0

    def trade(count: int, at: int) -> None:
        nonlocal offset
        batch = [
            Trade(GOVERNED, symbols[i], float(p), 1.0, at + int(dt), offset + i, False)
            for i, p, dt in zip(
                range(count), rng.uniform(1, 100, count), rng.integers(0, 1000, count), strict=True
            )
        ]
        cols = interner.adopt(TradeColumns.from_trades(batch, list(range(offset, offset + count))))
        offset += count
        assert state.apply(cols, [], interner).late.size == 0

    started = time.perf_counter()
    state.advance(Progress(GOVERNED, symbols, T0), interner)
    trade(traded, T0)
    state.advance(Progress(GOVERNED, symbols, T0 + 1_000), interner)
    closed = state.close(interner, VOL_WINDOW_S)
    assert closed is not None and closed.ohlc.num_rows == traded and len(state.streams) == traded
    state.advance(Progress(GOVERNED, symbols, T0 + 2 * HISTORY_MS), interner)
    state.close(interner, VOL_WINDOW_S)
    first_pass = time.perf_counter() - started
    assert (len(state.streams), len(state.cold)) == (0, n)

    started = time.perf_counter()
    for step in range(10):  # the steady state: a few markets trade, progress for all, a closing pass
        at = T0 + 3 * HISTORY_MS + step * 1000
        trade(active, at)
        state.advance(Progress(GOVERNED, symbols, at + 1000), interner)
        state.close(interner, VOL_WINDOW_S)
        state.frontiers()
    cycle = (time.perf_counter() - started) / 10
    assert len(state.streams) == active and state.stream_count() == n
    trade(active, T0 + 3 * HISTORY_MS + 10_000)  # open windows in the checkpoint too

    started = time.perf_counter()
    tables = state.snapshot(interner)
    raw = Checkpoint("t", 0, 0, "e", 0, {}, tables).to_bytes()
    snap = time.perf_counter() - started
    started = time.perf_counter()
    back = PartitionState.restore(
        Checkpoint.from_bytes(raw).header(),
        Checkpoint.from_bytes(raw).tables,
        Interner(),
        BUFFER_MS,
        HISTORY_MS,
    )
    restore = time.perf_counter() - started
    assert len(back.streams) == active and back.stream_count() == n and tables[0].num_rows == n
    assert tables[2].num_rows == active  # the open windows' trades

    processor = Processor(
        load_settings(kafka_bootstrap="127.0.0.1:1", output_dir=tmp_path, database_url=None), []
    )
    processor.interner = interner
    processor.parts[0] = state

    class Ends:
        def highwater(self, _: Any) -> int:
            return 0

    processor._consumer = Ends()  # type: ignore[assignment]
    started = time.perf_counter()
    message = orjson.loads(processor._status())
    status = time.perf_counter() - started
    # markets that traded are listed (the most behind first) and counted, hot and cold alike
    assert message["streams_total"] == traded and len(message["streams"]) == service.STATUS_STREAMS
    assert message["streams"][0]["last_event_ms"] < T0 + 1000 < message["streams"][-1]["closed_through_ms"]
    print(
        f"\n20,000 streams: {traded:,} traded, closed and evicted in {first_pass * 1000:.0f} ms; a cycle of "
        f"{active} trading + progress for all + close + frontiers {cycle * 1000:.1f} ms; checkpoint "
        f"{len(raw) / 1e6:.2f} MB in "
        f"{snap * 1000:.0f} ms, restore {restore * 1000:.0f} ms, status {status * 1000:.1f} ms"
    )
    assert first_pass < 5 and cycle < 0.5 and snap < 2 and restore < 2 and status < 0.5
