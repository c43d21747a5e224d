"""Rolling volatility: the standard deviation of 1 s log returns over the last ``window`` seconds.

The close series lives on a 1 s grid, forward-filled through seconds without trades, so a quiet second is
a zero return and the move across a gap is the return of the second that ends it. For the candle at
bucket ``b`` the window is the grid seconds ``(b - window, b]`` after the symbol's first candle; the
standard deviation is the sample one (ddof = 1) and needs at least two returns. Because returns are zero
everywhere but at candle seconds, the sums only need the candles themselves: no grid is materialized,
and gaps of any length cost nothing. Each window is summed on its own (:func:`processor.windows.window_sums`),
so a value never depends on how much history happened to be kept before it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from processor.windows import WINDOW_MS, window_sums

__all__ = ["rolling_volatility"]


def rolling_volatility(
    buckets: npt.NDArray[np.int64],
    closes: npt.NDArray[np.float64],
    first_bucket: int,
    window_s: int,
    start: int = 0,
) -> npt.NDArray[np.float64]:
    """Volatility of the candles ``buckets[start:]`` (NaN where fewer than two returns exist).

    ``buckets``/``closes`` are one symbol's candles in bucket order: recent history then new candles.
    History must reach back to the candle before the window of ``buckets[start]``. ``first_bucket`` is the
    symbol's first candle ever (returns start after it).
    """
    n = buckets.shape[0]
    if n == 0 or start >= n:
        return np.empty(0, dtype=np.float64)
    returns = np.zeros(n, dtype=np.float64)
    returns[1:] = np.log(closes[1:] / closes[:-1])
    if buckets[0] == first_bucket:
        returns[0] = 0.0  # the first candle ever has no previous close: it starts the series
    target = buckets[start:]
    window_ms = window_s * WINDOW_MS
    lo = np.searchsorted(buckets, target - window_ms, side="right").astype(np.int64)
    hi = np.arange(start, n, dtype=np.int64) + 1
    total = window_sums(returns, lo, hi)
    total_sq = window_sums(returns * returns, lo, hi)
    count = np.minimum(window_s, (target - first_bucket) // WINDOW_MS).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        var = (total_sq - count * mean * mean) / (count - 1.0)
    var = np.where(count >= 2, np.maximum(var, 0.0), np.nan)
    return np.sqrt(var)
