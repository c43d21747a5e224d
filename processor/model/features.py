"""Features of 1 s candles for the up/down model, computed only from the past.

Candles exist only for seconds with trades. Every feature is defined on the 1 s grid, with closes
forward-filled through quiet seconds (a quiet second has no volume and no range), and evaluated at the
seconds that have a candle, because those are the seconds the live pipeline scores. A feature at second
``t`` reads grid seconds ``t - LOOKBACK_SECONDS .. t`` and nothing else: rolling sums are differences of
prefix sums, so a row's value depends only on data at or before it (the no-look-ahead property test
checks this bit for bit). Rows whose lookback reaches before the first candle are NaN.

The same function serves training (a whole day of candles) and live scoring (the processor's recent
history of about a minute), which is what keeps the two consistent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from processor.windows import window_sums

__all__ = ["FEATURES", "LOOKBACK_SECONDS", "Grid", "candle_features", "to_grid"]

SECOND_MS = 1000
LOOKBACK_SECONDS = 30  # the longest window any feature reads; live history must cover it

FEATURES: tuple[str, ...] = (
    "ret_1",  # log return over the last second (momentum at several lags ...)
    "ret_5",
    "ret_10",
    "ret_30",
    "ma5_ratio",  # close / 5 s moving average of closes - 1
    "ma10_ratio",  # close / 10 s moving average - 1
    "vol_30",  # std (ddof=1) of 1 s log returns over 30 s
    "range_1",  # (high - low) / close of this second's candle
    "range_10",  # mean of (high - low) / close over 10 s (0 in quiet seconds)
    "log_volume_10",  # log(1 + volume over 10 s)
    "volume_ratio",  # volume over 5 s relative to the 30 s pace (1 = steady)
    "imbalance_1",  # (buy - sell) / (buy + sell) volume, this second
    "imbalance_10",  # the same over 10 s
    "imbalance_30",  # the same over 30 s
)

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Grid:
    """One market's candles spread on the 1 s grid starting at its first candle (or several markets' grids
    end to end, see :func:`to_grid`)."""

    start: int  # bucket (ms) of grid index 0
    index: npt.NDArray[np.int64]  # grid index of each candle
    close: F64  # forward-filled
    volume: F64  # 0 in quiet seconds
    buy: F64
    sell: F64
    range: F64  # (high - low) / close, 0 in quiet seconds
    origins: npt.NDArray[np.int64]  # grid index where each market's grid begins (one market: [0])

    def __len__(self) -> int:
        return int(self.close.shape[0])


def to_grid(
    candles: Mapping[str, npt.NDArray[Any]],
    starts: npt.NDArray[np.int64] | None = None,
    max_gap_s: int = LOOKBACK_SECONDS + 1,
) -> Grid:
    """Spread candles (bucket order, strictly increasing whole-second buckets) on the 1 s grid.

    With ``starts`` the candles are several markets one after another (where each begins, then the end):
    each is spread on its own grid from its own first candle and the grids are laid end to end
    (:attr:`Grid.origins`), so one pass serves them all and every value equals that market's grid alone.

    A gap between two candles longer than ``max_gap_s`` seconds is laid out as ``max_gap_s`` seconds: they
    all carry the close, with no volume, so nothing that reads at most that far back (features: 30 s; labels
    and the persistence guess: the horizon, so pass more) can tell. A market trading again after a quiet
    year used to cost a grid of every second of it: 2 GB and 2.7 s to score four candles."""
    bucket = np.asarray(candles["bucket"], dtype=np.int64)
    n = bucket.shape[0]
    if starts is None:
        starts = np.array([0, n], dtype=np.int64)
    counts = np.diff(starts)
    if n == 0:
        empty = np.empty(0, dtype=np.float64)
        none = np.zeros(counts.shape[0], dtype=np.int64)
        return Grid(0, np.empty(0, dtype=np.int64), empty, empty, empty, empty, empty, none)
    steps = np.diff(bucket)
    steps[starts[1:-1][(starts[1:-1] > 0) & (starts[1:-1] < n)] - 1] = 1  # a new market may start anywhere
    if n > 1 and not (steps > 0).all():
        raise ValueError("candle buckets must be strictly increasing (one candle per second, sorted)")
    seconds = np.zeros(n, dtype=np.int64)  # grid steps from the candle before (0 at a market's first)
    seconds[1:] = np.minimum(np.diff(bucket) // SECOND_MS, max_gap_s)
    seconds[starts[:-1][counts > 0]] = 0
    travelled = np.cumsum(seconds)
    local = travelled - np.repeat(travelled[np.minimum(starts[:-1], n - 1)], counts)
    sizes = np.zeros(counts.shape[0], dtype=np.int64)
    sizes[counts > 0] = local[starts[1:][counts > 0] - 1] + 1
    origins = np.cumsum(sizes) - sizes
    index = np.repeat(origins, counts) + local
    size = int(sizes.sum())
    close = np.asarray(candles["close"], dtype=np.float64)
    if not (close > 0).all():
        raise ValueError("candle closes must be positive")
    last = np.full(size, -1, dtype=np.int64)
    last[index] = np.arange(n)
    np.maximum.accumulate(last, out=last)  # each market's grid starts with a candle: never fills across

    def spread(values: npt.NDArray[Any]) -> F64:
        out = np.zeros(size, dtype=np.float64)
        out[index] = values
        return out

    high = np.asarray(candles["high"], dtype=np.float64)
    low = np.asarray(candles["low"], dtype=np.float64)
    return Grid(
        start=int(bucket[0]),
        index=index,
        close=close[last],
        volume=spread(candles["volume"]),
        buy=spread(candles["buy_volume"]),
        sell=spread(candles["sell_volume"]),
        range=spread((high - low) / close),
        origins=origins,
    )


def _window_sum(values: F64, at: npt.NDArray[np.int64], width: int) -> F64:
    """Sum of the ``width`` grid values ending at ``at`` (inclusive), each window summed on its own, so a
    feature never depends on how much history came before it (see :func:`processor.windows.window_sums`)."""
    return window_sums(values, at + 1 - width, at + 1)


def _imbalance(buy: F64, sell: F64) -> F64:
    """Order-flow imbalance; 0 without volume, NaN where a side is unknown (candles imported from the
    original project, which never recorded them: not a balanced flow, so such rows are left out)."""
    total = buy + sell
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isnan(total), np.nan, np.where(total > 0, (buy - sell) / total, 0.0))


def grid_features(grid: Grid, at: npt.NDArray[np.int64]) -> F64:
    """Feature matrix (len(at) x len(FEATURES)) at grid indices ``at``; NaN rows lack lookback.

    A row reads its own market's grid only: its lookback must lie after that market's first candle, and
    every window is summed on its own, so markets laid end to end give each market's values bit for bit."""
    out = np.full((at.shape[0], len(FEATURES)), np.nan, dtype=np.float64)
    origin = grid.origins[np.searchsorted(grid.origins, at, side="right") - 1] if at.size else at
    ok = at - origin >= LOOKBACK_SECONDS
    p = at[ok]
    if p.size == 0:
        return out
    log_close = np.log(grid.close)
    returns = np.zeros(len(grid), dtype=np.float64)
    returns[1:] = np.diff(log_close)
    close_p = grid.close[p]

    def ret(k: int) -> F64:
        return log_close[p] - log_close[p - k]

    closes = grid.close
    ma5 = _window_sum(closes, p, 5) / 5.0
    ma10 = _window_sum(closes, p, 10) / 10.0

    n = 30.0
    r_sum = _window_sum(returns, p, 30)
    r_sq = _window_sum(returns * returns, p, 30)
    vol = np.sqrt(np.maximum((r_sq - r_sum * r_sum / n) / (n - 1.0), 0.0))

    ranges = grid.range
    volumes = grid.volume
    vol5 = _window_sum(volumes, p, 5)
    vol10 = _window_sum(volumes, p, 10)
    vol30 = _window_sum(volumes, p, 30)
    with np.errstate(invalid="ignore", divide="ignore"):
        volume_ratio = np.where(vol30 > 0, vol5 / (vol30 / 6.0), 1.0)
    buys = grid.buy
    sells = grid.sell

    columns = (
        ret(1),
        ret(5),
        ret(10),
        ret(30),
        close_p / ma5 - 1.0,
        close_p / ma10 - 1.0,
        vol,
        grid.range[p],
        _window_sum(ranges, p, 10) / 10.0,
        np.log1p(np.maximum(vol10, 0.0)),
        volume_ratio,
        _imbalance(grid.buy[p], grid.sell[p]),
        _imbalance(_window_sum(buys, p, 10), _window_sum(sells, p, 10)),
        _imbalance(_window_sum(buys, p, 30), _window_sum(sells, p, 30)),
    )
    out[ok] = np.column_stack(columns)
    return out


def candle_features(candles: Mapping[str, npt.NDArray[Any]]) -> F64:
    """Features at each candle (rows in candle order); NaN rows where the lookback is not covered."""
    grid = to_grid(candles)
    return grid_features(grid, grid.index)
