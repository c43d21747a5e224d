"""Benchmark of the trend model: training on a day of 1 s candles, and live scoring per call.

Run: ``.venv/bin/python -m bench.bench_model [--hours 24] [--symbols 3]``. Prints figures and ratios
against baselines measured in the same run:

* features: the vectorized grid features vs a straightforward per-row Python loop over the same rows;
* training: the whole ``fit_and_report`` (walk-forward logit + online SGD, 5 folds, verdict, final fits)
  in seconds, and as seconds of market per second of training;
* live scoring: one scorer call (the processor's hook, one new candle, 61 s of history) in microseconds,
  vs one second of wall-clock time per symbol it has to keep up with.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from processor.model.dataset import build_dataset
from processor.model.features import LOOKBACK_SECONDS, candle_features, to_grid
from processor.model.scorer import ModelScorer
from processor.model.synthetic import synthetic_candles
from processor.model.train import fit_and_report
from processor.state import Histories


def naive_features(candles: dict[str, np.ndarray], rows: int) -> list[list[float]]:
    """The same features, row by row in plain Python (the baseline)."""
    grid = to_grid(candles)
    close = grid.close.tolist()
    out = []
    for p in grid.index[:rows].tolist():
        if p < LOOKBACK_SECONDS:
            continue
        c = close[p]
        rets = [math.log(close[q] / close[q - 1]) for q in range(p - 29, p + 1)]
        mean = sum(rets) / 30
        vol = math.sqrt(sum((r - mean) ** 2 for r in rets) / 29)
        buy10 = sum(grid.buy[p - 9 : p + 1].tolist())
        sell10 = sum(grid.sell[p - 9 : p + 1].tolist())
        out.append(
            [
                math.log(c / close[p - 1]),
                math.log(c / close[p - 5]),
                c / (sum(close[p - 4 : p + 1]) / 5) - 1,
                c / (sum(close[p - 9 : p + 1]) / 10) - 1,
                vol,
                (buy10 - sell10) / (buy10 + sell10) if buy10 + sell10 > 0 else 0.0,
            ]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--symbols", type=int, default=3)
    parser.add_argument("--horizon", type=int, default=60)
    args = parser.parse_args()
    seconds = int(args.hours * 3600)
    candles = {
        f"SYM{i}USDT": synthetic_candles(seconds, seed=i, signal=0.1, gap_rate=0.05)
        for i in range(args.symbols)
    }
    n = sum(c["bucket"].size for c in candles.values())
    print(f"data: {args.symbols} symbol(s) x {args.hours:g} h = {n:,} candles, horizon {args.horizon} s")

    first = next(iter(candles.values()))
    t = time.perf_counter()
    candle_features(first)
    vec = first["bucket"].size / (time.perf_counter() - t)
    sample = 20_000
    t = time.perf_counter()
    naive_features(first, sample)
    naive = sample / (time.perf_counter() - t)
    print(f"features: vectorized {vec:,.0f} rows/s; per-row Python (6 of 14 features) {naive:,.0f} rows/s")
    print(f"  ratio vectorized / naive: {vec / naive:.0f}x")

    t = time.perf_counter()
    ds = build_dataset(candles, args.horizon)
    built = time.perf_counter() - t
    t = time.perf_counter()
    result = fit_and_report(ds, folds=5)
    fitted = time.perf_counter() - t
    total = built + fitted
    print(f"training: dataset {built:.2f} s + walk-forward/verdict/final fits {fitted:.2f} s = {total:.2f} s")
    print(f"  {len(ds):,} labelled rows; {args.symbols * seconds / total:,.0f} s of market per s of training")
    verdict = result.report["verdict"]
    print(f"  selected {result.report['selected_model']}; beats baselines: {verdict['beats_baselines']}")

    scorer = ModelScorer(result.model_file)
    hist = {k: v[:61] for k, v in first.items()}
    calls = 5_000
    t = time.perf_counter()
    for _ in range(calls):
        scorer(Histories.one("binance", "SYM0USDT", hist, 1))
    per_call = (time.perf_counter() - t) / calls
    print(f"live scoring: {per_call * 1e6:,.0f} us per call (one market, one new candle, 61 s history)")
    markets = 2_000  # a whole market closing a second: one call for all of them
    many = Histories(
        ["binance"] * markets,
        [f"SYM{i}USDT" for i in range(markets)],
        {k: np.tile(v, markets) for k, v in hist.items()},
        np.arange(markets + 1, dtype=np.int64) * 61,
        np.ones(markets, np.int64),
    )
    t = time.perf_counter()
    for _ in range(20):
        scorer(many)
    batch = (time.perf_counter() - t) / 20
    print(
        f"  {markets:,} markets in one call: {batch * 1000:.1f} ms "
        f"({batch / markets * 1e6:.0f} us a market), against {per_call * markets * 1000:.0f} ms "
        f"one call per market ({per_call * markets / batch:.0f}x)"
    )


if __name__ == "__main__":
    main()
