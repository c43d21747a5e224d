"""Rolling volatility: the standard deviation of 1 s log returns over the last ``window`` seconds.

The close series lives on a 1 s grid, forward-filled through seconds without trades, so a quiet second is
a zero return and the move across a gap is the return of the second that ends it. For the candle at
bucket ``b`` the window is the grid seconds ``(b - window, b]`` after the symbol's first candle; the
standard deviation is the sample one (ddof = 1) and needs at least two returns. Because returns are zero
everywhere but at candle seconds, the sums only need the candles themselves: no grid is materialized,
and gaps of any length cost nothing. Each window is summed on its own (:func:`processor.windows.window_sums`),
so a value never depends on how much history happened to be kept before it.

A stream's history is a suffix of its candles. A window reaching before that suffix (a processor restarted
with a larger ``VOLATILITY_WINDOW_SECONDS`` than its checkpoint kept history for) cannot be summed: its
volatility is NaN, not stored, rather than a figure that counts the missing seconds as quiet. A window
within the suffix has every candle it needs, and the candle before them for the first return's previous
close; with an unchanged setting every window is.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from processor.windows import WINDOW_MS, search_segments, window_sums

__all__ = ["streams_volatility"]


def streams_volatility(
    buckets: npt.NDArray[np.int64],
    closes: npt.NDArray[np.float64],
    starts: npt.NDArray[np.int64],
    targets: npt.NDArray[np.int64],
    first_buckets: npt.NDArray[np.int64],
    window_s: int,
) -> npt.NDArray[np.float64]:
    """Volatility of the candles at ``targets`` (NaN with fewer than two returns), many streams at once.

    ``buckets``/``closes`` hold one stream's candles after another in bucket order (``starts``: where each
    stream begins, then the end): its recent history (a suffix of its candles), then its new candles.
    ``targets`` are positions (ascending) and ``first_buckets`` the first candle ever of each target's
    stream (returns start after it). A window reaching before the stream's history is NaN (see the module
    docstring). A value is summed over its own window only, so it never depends on which other streams
    closed with it."""
    n = buckets.shape[0]
    if targets.size == 0:
        return np.empty(0, dtype=np.float64)
    returns = np.zeros(n, dtype=np.float64)
    returns[1:] = np.log(closes[1:] / closes[:-1])
    returns[starts[:-1][starts[:-1] < n]] = 0.0  # a stream's first row has no previous close of its own
    target = buckets[targets]
    window_ms = window_s * WINDOW_MS
    stream = np.searchsorted(starts, targets, side="right") - 1
    lo = search_segments(buckets, starts, stream, target - window_ms)
    hi = targets + 1
    total = window_sums(returns, lo, hi)
    total_sq = window_sums(returns * returns, lo, hi)
    count = np.minimum(window_s, (target - first_buckets) // WINDOW_MS).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        var = (total_sq - count * mean * mean) / (count - 1.0)
    # returns from after max(target - window, first) on: all there if that is not before the history
    known = np.maximum(target - window_ms, first_buckets) >= buckets[starts[stream]]
    var = np.where((count >= 2) & known, np.maximum(var, 0.0), np.nan)
    return np.sqrt(var)
