"""Features and labels: computed from the past only, on the forward-filled 1 s grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.model.features import FEATURES, LOOKBACK_SECONDS, candle_features, grid_features, to_grid
from processor.model.labels import last_direction, up_labels
from processor.model.synthetic import synthetic_candles

T0 = 1_700_000_000_000
COL = {name: i for i, name in enumerate(FEATURES)}


def candles_from(seconds: list[int], closes: list[float], **extra: list[float]) -> dict[str, np.ndarray]:
    close = np.asarray(closes, dtype=np.float64)
    n = close.size
    out = {
        "bucket": T0 + 1000 * np.asarray(seconds, dtype=np.int64),
        "open": close.copy(),
        "high": close * 1.001,
        "low": close * 0.999,
        "close": close,
        "volume": np.ones(n),
        "trade_count": np.ones(n, dtype=np.int64),
        "vwap": close.copy(),
        "buy_volume": np.full(n, 0.5),
        "sell_volume": np.full(n, 0.5),
    }
    out.update({k: np.asarray(v, dtype=np.float64) for k, v in extra.items()})
    return out


@st.composite
def series(draw: st.DrawFn, min_size: int = 2, max_size: int = 140) -> dict[str, np.ndarray]:
    """Candles with random gaps, prices, ranges and order flow."""
    n = draw(st.integers(min_size, max_size))
    steps = draw(st.lists(st.sampled_from([1, 1, 1, 1, 2, 3, 7, 40]), min_size=n, max_size=n))
    seconds = np.cumsum(steps) - steps[0]
    moves = draw(st.lists(st.floats(-0.01, 0.01), min_size=n, max_size=n))
    close = 100.0 * np.exp(np.cumsum(moves))
    buy = np.asarray(draw(st.lists(st.floats(0.0, 5.0), min_size=n, max_size=n)))
    sell = np.asarray(draw(st.lists(st.floats(0.0, 5.0), min_size=n, max_size=n)))
    spread = np.asarray(draw(st.lists(st.floats(0.0, 0.02), min_size=n, max_size=n)))
    return candles_from(
        list(seconds),
        list(close),
        high=list(close * (1 + spread)),
        low=list(close * (1 - spread / 2)),
        volume=list(buy + sell),
        buy_volume=list(buy),
        sell_volume=list(sell),
    )


def _replace_after(
    candles: dict[str, np.ndarray], cut: int, other: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Candles up to index ``cut`` unchanged, then ``other``'s candles shifted to start after them."""
    head = {k: v[: cut + 1] for k, v in candles.items()}
    shift = int(head["bucket"][-1]) + 1000 - int(other["bucket"][0])
    tail = dict(other)
    tail["bucket"] = other["bucket"] + shift
    return {k: np.concatenate([head[k], tail[k]]) for k in candles}


@settings(max_examples=150, deadline=None)
@given(series(min_size=2), series(min_size=1, max_size=60), st.data())
def test_a_feature_at_t_does_not_change_when_data_after_t_changes(candles, other, data):
    n = candles["bucket"].size
    cut = data.draw(st.integers(0, n - 1))
    changed = _replace_after(candles, cut, other)
    before = candle_features(candles)[: cut + 1]
    after = candle_features(changed)[: cut + 1]
    np.testing.assert_array_equal(before, after)  # bit for bit, NaN where there is no lookback


@settings(max_examples=100, deadline=None)
@given(series(min_size=2), series(min_size=1, max_size=60), st.integers(1, 90), st.data())
def test_a_label_reads_nothing_after_t_plus_horizon(candles, other, horizon, data):
    grid = to_grid(candles)
    n = candles["bucket"].size
    cut = data.draw(st.integers(0, n - 1))
    changed = to_grid(_replace_after(candles, cut, other))
    # rows whose whole horizon lies at or before the cut candle's second
    rows = grid.index[grid.index + horizon <= grid.index[cut]]
    label, known = up_labels(grid, rows, horizon)
    label2, known2 = up_labels(changed, rows, horizon)
    assert known.all() and known2.all()
    np.testing.assert_array_equal(label, label2)


def test_forward_filled_grid_gives_returns_across_quiet_seconds():
    # one candle per second for 40 s, then a quiet stretch, then a candle at 50 s
    seconds = [*range(41), 50]
    closes = [100.0 + s for s in range(41)] + [200.0]
    x = candle_features(candles_from(seconds, closes))
    assert np.isnan(x[:LOOKBACK_SECONDS]).all() and np.isfinite(x[LOOKBACK_SECONDS:]).all()
    last = x[-1]
    # at 50 s the grid holds 140 for 41..49 s: the 1 s return is from 140, the 10 s one from 140 (at 40 s)
    assert last[COL["ret_1"]] == pytest.approx(math.log(200 / 140))
    assert last[COL["ret_10"]] == pytest.approx(math.log(200 / 140))
    assert last[COL["ret_30"]] == pytest.approx(math.log(200 / 120))
    assert last[COL["ma5_ratio"]] == pytest.approx(200 / ((140 * 4 + 200) / 5) - 1)
    assert last[COL["ma10_ratio"]] == pytest.approx(200 / ((140 * 9 + 200) / 10) - 1)
    # quiet seconds trade nothing: 10 s volume is this candle's only, 5 s pace vs 30 s pace
    assert last[COL["log_volume_10"]] == pytest.approx(math.log1p(1.0))
    assert last[COL["volume_ratio"]] == pytest.approx(1.0 / (21.0 / 6.0))
    assert last[COL["range_10"]] == pytest.approx(0.002 / 10)
    returns = np.diff(np.log([100.0 + s for s in range(20, 41)] + [140.0] * 9 + [200.0]))
    assert last[COL["vol_30"]] == pytest.approx(np.std(returns[-30:], ddof=1))


def test_order_flow_imbalance_runs_from_all_selling_to_all_buying():
    n = 40
    buy = [0.0] * 35 + [3.0] * 5
    sell = [2.0] * 35 + [0.0] * 5
    x = candle_features(
        candles_from(list(range(n)), [100.0] * n, buy_volume=buy, sell_volume=sell, volume=np.add(buy, sell))
    )
    assert x[-1, COL["imbalance_1"]] == 1.0
    assert x[-1, COL["imbalance_10"]] == pytest.approx((15 - 10) / 25)
    assert x[-1, COL["imbalance_30"]] == pytest.approx((15 - 50) / 65)
    assert x[-1, COL["ret_5"]] == 0.0 and x[-1, COL["vol_30"]] == 0.0


def test_labels_and_persistence_on_the_grid():
    grid = to_grid(candles_from([0, 1, 2, 5], [10.0, 11.0, 11.0, 9.0]))
    label, known = up_labels(grid, grid.index, 2)
    assert known.tolist() == [True, True, True, False]
    assert label[:3].tolist() == [1, 0, 0]  # 11 > 10; 11 (filled at 3 s) is not above 11; 11 at 4 s
    guess, defined = last_direction(grid, grid.index, 2)
    assert defined.tolist() == [False, False, True, True]
    assert guess[2:].tolist() == [1, 0]  # 11 > 10 ; 9 < 11 (filled at 3 s)


def test_unsorted_or_non_positive_candles_are_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        to_grid(candles_from([0, 2, 1], [1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="positive"):
        to_grid(candles_from([0, 1], [1.0, 0.0]))


def test_grids_of_markets_laid_end_to_end_equal_each_markets_own_grid() -> None:
    """Live scoring spreads every market that closed on one grid: each market's part (from its origin) must
    be its own grid exactly, however the markets' times overlap, and an empty market takes no room."""
    markets = [
        synthetic_candles(n, seed=i, gap_rate=0.4, start_ms=1_800_000_000_000 + i * 5_000)
        for i, n in enumerate([40, 3, 1, 90, 7])
    ]
    markets[1] = {k: v[:0] for k, v in markets[1].items()}  # a market with no candles
    starts = np.cumsum([0] + [m["bucket"].size for m in markets])
    together = to_grid({k: np.concatenate([m[k] for m in markets]) for k in markets[0]}, starts)
    for i, market in enumerate(markets):
        own, at = to_grid(market), int(together.origins[i])
        assert together.index[starts[i] : starts[i + 1]].tolist() == (own.index + at).tolist()
        for name in ("close", "volume", "buy", "sell", "range"):
            assert getattr(together, name)[at : at + len(own)].tobytes() == getattr(own, name).tobytes()
    assert len(together) == sum(len(to_grid(m)) for m in markets)


def test_a_long_quiet_gap_costs_a_few_grid_seconds_and_changes_no_feature_or_label():
    """A market trading again after a quiet stretch was spread over every second of it (a year: 2 GB and
    2.7 s to score four candles). Gaps longer than anything reads back are laid out shorter: the same
    features, labels and persistence guesses, bit for bit."""
    rng = np.random.default_rng(3)
    before, after = list(range(60)), [172_800 + i for i in range(60)]  # two quiet days between
    seconds = before + after + [172_800 + 95, 172_800 + 400]  # and gaps of 35 s and 5 min at the end
    closes = list(100.0 + np.cumsum(rng.normal(0, 0.1, len(seconds))))
    candles = candles_from(seconds, closes)
    whole = to_grid(candles, max_gap_s=10**9)
    for horizon in (5, 60):
        short = to_grid(candles, max_gap_s=max(LOOKBACK_SECONDS, horizon) + 1)
        assert len(short) < 300 < len(whole)
        assert np.array_equal(
            grid_features(short, short.index), grid_features(whole, whole.index), equal_nan=True
        )
        for read in (up_labels, last_direction):
            got, expected = read(short, short.index, horizon), read(whole, whole.index, horizon)
            assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True)), (read, horizon)
    assert np.array_equal(candle_features(candles), grid_features(whole, whole.index), equal_nan=True)


def test_candles_without_buy_and_sell_volume_have_no_order_flow_features():
    """Candles imported from the original project never recorded the sides: their imbalance is unknown
    (NaN, so training leaves those rows out), not 0, a balanced flow it would learn from."""
    n = 40
    x = candle_features(
        candles_from(list(range(n)), [100.0] * n, buy_volume=[math.nan] * n, sell_volume=[math.nan] * n)
    )
    imbalances = [COL["imbalance_1"], COL["imbalance_10"], COL["imbalance_30"]]
    assert np.isnan(x[LOOKBACK_SECONDS:, imbalances]).all()
    assert np.isfinite(np.delete(x[LOOKBACK_SECONDS:], imbalances, axis=1)).all()
    quiet = candle_features(
        candles_from([0, *range(5, 45)], [100.0] * 41, buy_volume=[0.0] * 41, sell_volume=[0.0] * 41)
    )
    assert (quiet[LOOKBACK_SECONDS:, COL["imbalance_30"]] == 0.0).all()  # no volume: 0, as before
