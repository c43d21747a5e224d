"""Synthetic 1 s candles with a known amount of predictability, for tests and benchmarks.

``signal = 0`` is a pure random walk: nothing in the past predicts the future, and an honest evaluation
must say so. With ``signal > 0`` order flow carries information: the buy/sell imbalance follows a
persistent AR(1) process and the next second's expected return is ``signal * vol * imbalance``, so the
imbalance features (visible at ``t``) predict the move over the next horizon. Quiet seconds (no candle)
can be planted with ``gap_rate``; the price keeps moving through them, as it does between trades.
"""

from __future__ import annotations

import numpy as np

from processor.model.dataset import Candles

__all__ = ["synthetic_candles"]


def synthetic_candles(
    seconds: int,
    *,
    seed: int,
    start_ms: int = 1_700_000_000_000,
    signal: float = 0.0,
    vol: float = 2e-4,
    price: float = 100.0,
    persistence: float = 0.97,
    gap_rate: float = 0.0,
) -> Candles:
    """``seconds`` of candles (fewer with gaps) in the processor's ``recent`` shape."""
    rng = np.random.default_rng(seed)
    shocks = rng.standard_normal(seconds)
    flow = np.empty(seconds)
    level = 0.0
    scale = np.sqrt(1.0 - persistence * persistence)
    for i, e in enumerate(rng.standard_normal(seconds)):  # AR(1): a short recursion, run once per series
        level = persistence * level + scale * e
        flow[i] = level
    imbalance = np.tanh(flow)
    drift = np.zeros(seconds)
    drift[1:] = signal * vol * imbalance[:-1]  # known at t-1, moves the price at t
    log_close = np.log(price) + np.cumsum(drift + vol * shocks)
    close = np.exp(log_close)
    open_ = np.concatenate(([price], close[:-1]))
    wiggle = np.abs(rng.standard_normal((2, seconds))) * vol * 0.5 * close
    high = np.maximum(open_, close) + wiggle[0]
    low = np.minimum(open_, close) - wiggle[1]
    volume = rng.lognormal(0.0, 0.5, seconds)
    buy = volume * (1.0 + imbalance) / 2.0
    count = rng.integers(1, 50, seconds)
    keep = rng.random(seconds) >= gap_rate
    keep[0] = True
    return {
        "bucket": (start_ms + 1000 * np.arange(seconds, dtype=np.int64))[keep],
        "open": open_[keep],
        "high": high[keep],
        "low": low[keep],
        "close": close[keep],
        "volume": volume[keep],
        "trade_count": count[keep].astype(np.int64),
        "vwap": ((open_ + close) / 2.0)[keep],
        "buy_volume": buy[keep],
        "sell_volume": (volume - buy)[keep],
    }
