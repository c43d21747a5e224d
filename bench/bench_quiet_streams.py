"""Quiet streams: what a partition of many markets, most of them quiet, costs with and without eviction.

The processor's own partition state (no Kafka, no sinks: the per-stream part of the closing pass), driven
second by second in event time: first every market trades for a history's length (so each holds a full
recent history), then only ``--active`` of them go on trading while a progress record for all of them
arrives every second (as a live source writes it). The same records run twice in one process, evicting
quiet streams (the default) and keeping every stream a Python object, and the figures are printed side by
side: memory of the state (tracemalloc), the steady closing cycle (apply + close + frontiers), and a
checkpoint's size and snapshot time.

    .venv/bin/python bench/bench_quiet_streams.py [--streams 2000] [--active 100] [--steady 60]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from cryptostream.codec import Progress
from cryptostream.models import TradeColumns
from processor.checkpoint import Checkpoint
from processor.model.features import LOOKBACK_SECONDS
from processor.state import Interner, PartitionState

T0 = 1_700_000_000_000
VOL_WINDOW_S = 60
HISTORY_MS = (max(VOL_WINDOW_S, LOOKBACK_SECONDS) + 1) * 1000  # what the processor keeps
TRADES_PER_SECOND = 4  # per trading market


@dataclass
class Figures:
    memory_mb: float
    cycle_ms: float
    checkpoint_mb: float
    snapshot_ms: float
    hot: int
    cold: int
    candles: int


def _batch(
    symbols: list[str], active: int, seconds: range, offset: int, rng: np.random.Generator
) -> TradeColumns:
    """``TRADES_PER_SECOND`` trades per second of ``seconds`` for each of the first ``active`` markets."""
    per_market = TRADES_PER_SECOND * len(seconds)
    n = active * per_market
    within = np.linspace(0, 999, TRADES_PER_SECOND, dtype=np.int64)
    stamps = T0 + (np.asarray(seconds, np.int64)[:, None] * 1000 + within).ravel()
    return TradeColumns(
        symbols=symbols[:active],
        exchanges=["binance"],
        symbol=np.repeat(np.arange(active, dtype=np.int32), per_market),
        exchange=np.zeros(n, np.int32),
        timestamp=np.tile(stamps, active),
        price=100 * np.exp(rng.normal(0, 0.001, n)),
        quantity=rng.uniform(0.01, 1, n),
        trade_id=np.arange(offset, offset + n, dtype=np.int64),
        is_buyer_maker=rng.random(n) < 0.5,
        offset=np.arange(offset, offset + n, dtype=np.int64),
    )


def run(streams: int, active: int, steady: int, evict: bool, measure_memory: bool) -> Figures:
    rng = np.random.default_rng(7)
    symbols = [f"S{i:05d}USDT" for i in range(streams)]
    names = tuple(symbols)
    if measure_memory:
        gc.collect()
        tracemalloc.start()
    interner = Interner()
    state = PartitionState("t", 0, "e", 0, 0, 1_000, HISTORY_MS, evict=evict)
    offset = candles = 0
    warm = HISTORY_MS // 1000 + 1  # every market trades for a history's length (one backlog) ...
    settle = warm + HISTORY_MS // 1000 + 2  # ... then the quiet ones stay quiet for more than one
    cycles: list[float] = []
    steps = [(range(warm), streams), (range(warm, settle), active)]
    steps += [(range(s, s + 1), active) for s in range(settle, settle + steady)]
    for seconds, trading in steps:
        started = time.perf_counter()
        trades = interner.adopt(_batch(symbols, trading, seconds, offset, rng))
        offset += len(trades)
        state.apply(trades, [Progress("binance", names, T0 + seconds.stop * 1000, offset)], interner)
        offset += 1
        closed = state.close(interner, VOL_WINDOW_S)
        state.frontiers()
        if seconds.start >= settle:
            cycles.append(time.perf_counter() - started)
            candles += 0 if closed is None else closed.ohlc.num_rows
    memory = 0.0
    if measure_memory:
        gc.collect()
        memory = tracemalloc.get_traced_memory()[0] / 1e6
        tracemalloc.stop()
    started = time.perf_counter()
    raw = Checkpoint("t", 0, offset, "e", 0, {}, state.snapshot(interner)).to_bytes()
    snapshot_s = time.perf_counter() - started
    return Figures(
        memory,
        float(np.median(cycles)) * 1000,
        len(raw) / 1e6,
        snapshot_s * 1000,
        len(state.streams),
        len(state.cold),
        candles,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=2_000, help="markets in the partition")
    parser.add_argument("--active", type=int, default=100, help="markets that keep trading")
    parser.add_argument("--steady", type=int, default=60, help="seconds of event time measured")
    args = parser.parse_args()
    print(
        f"{args.streams:,} markets in one partition, {args.active} trading {TRADES_PER_SECOND}/s, progress "
        f"for all every second, history {HISTORY_MS // 1000} s; {args.steady} steady seconds measured"
    )
    results = {}
    for evict in (True, False):
        timed = run(args.streams, args.active, args.steady, evict, measure_memory=False)
        timed.memory_mb = run(args.streams, args.active, args.steady, evict, measure_memory=True).memory_mb
        results[evict] = timed
    on, off = results[True], results[False]
    assert on.candles == off.candles, "eviction changed the candles"
    print(f"\n{'':34} {'evicting':>12} {'keeping all':>12} {'ratio':>8}")
    rows = [
        ("streams hot / cold", f"{on.hot}/{on.cold}", f"{off.hot}/{off.cold}", ""),
        (
            "state memory (tracemalloc, MB)",
            f"{on.memory_mb:.2f}",
            f"{off.memory_mb:.2f}",
            off.memory_mb / on.memory_mb,
        ),
        (
            "closing cycle (median ms/second)",
            f"{on.cycle_ms:.2f}",
            f"{off.cycle_ms:.2f}",
            off.cycle_ms / on.cycle_ms,
        ),
        (
            "checkpoint size (MB)",
            f"{on.checkpoint_mb:.3f}",
            f"{off.checkpoint_mb:.3f}",
            off.checkpoint_mb / on.checkpoint_mb,
        ),
        (
            "checkpoint snapshot (ms)",
            f"{on.snapshot_ms:.1f}",
            f"{off.snapshot_ms:.1f}",
            off.snapshot_ms / on.snapshot_ms,
        ),
    ]
    for name, a, b, ratio in rows:
        print(f"{name:34} {a:>12} {b:>12} {'' if ratio == '' else f'{ratio:.1f}x':>8}")
    print(f"(same {on.candles:,} candles either way in the measured seconds; ratio = keeping all / evicting)")


if __name__ == "__main__":
    main()
