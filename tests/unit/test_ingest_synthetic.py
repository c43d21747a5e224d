"""The synthetic market: seeded, valid, realistic in the ways the pipeline cares about, test aids bounded."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from cryptostream.markets import EXCHANGES, snapshot, whole_market
from ingest.synthetic import SyntheticMarket

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
T0 = 1_700_000_000_000


def by_symbol_in_time_order(trades, symbol):
    return sorted((t for t in trades if t.symbol == symbol), key=lambda t: t.trade_id)


def test_same_seed_same_trades_other_seed_other_trades():
    a = SyntheticMarket(SYMBOLS, seed=3).generate(2_000, T0)
    b = SyntheticMarket(SYMBOLS, seed=3).generate(2_000, T0)
    c = SyntheticMarket(SYMBOLS, seed=4).generate(2_000, T0)
    assert a == b and a != c


def test_trades_are_valid_and_ids_consecutive_per_symbol():
    trades = SyntheticMarket(SYMBOLS, rate=500, seed=1).generate(20_000, T0)
    assert all(t.price > 0 and math.isfinite(t.price) and t.quantity > 0 for t in trades)
    assert [t.timestamp for t in trades] == sorted(t.timestamp for t in trades)  # no disorder asked for
    for symbol in SYMBOLS:
        ids = [t.trade_id for t in by_symbol_in_time_order(trades, symbol)]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
    counts = Counter(t.symbol for t in trades)
    assert counts["BTCUSDT"] > counts["ETHUSDT"] > counts["SOLUSDT"]  # busier pairs trade more
    span_s = (trades[-1].timestamp - trades[0].timestamp) / 1000
    assert 0.5 * 20_000 / 500 < span_s < 2 * 20_000 / 500  # about the asked rate


def test_prices_sit_on_a_tick_grid():
    trades = SyntheticMarket(["BTCUSDT"], seed=2).generate(2_000, T0)
    assert all(abs(t.price * 100 - round(t.price * 100)) < 1e-6 for t in trades)  # 65,000 -> 0.01 ticks


def test_volatility_clusters_and_symbols_move_together():
    trades = SyntheticMarket(["BTCUSDT", "ETHUSDT"], rate=1_000, seed=5).generate(200_000, T0)
    closes: dict[str, dict[int, float]] = {"BTCUSDT": {}, "ETHUSDT": {}}
    for t in trades:
        closes[t.symbol][t.timestamp // 1000] = t.price
    seconds = sorted(set(closes["BTCUSDT"]) & set(closes["ETHUSDT"]))
    btc = np.diff(np.log([closes["BTCUSDT"][s] for s in seconds]))
    eth = np.diff(np.log([closes["ETHUSDT"][s] for s in seconds]))
    assert np.corrcoef(btc, eth)[0, 1] > 0.2  # a shared market factor
    squared = btc**2
    assert np.corrcoef(squared[:-1], squared[1:])[0, 1] > 0.05  # big moves follow big moves


def test_disorder_is_bounded_and_duplicates_are_exact_resends():
    market = SyntheticMarket(SYMBOLS, rate=400, seed=9, disorder_ms=300, duplicate_rate=0.05)
    trades = market.generate(10_000, T0)
    unique = {(t.symbol, t.trade_id): t for t in trades}
    assert 10_000 < len(trades) and len(unique) == 10_000
    assert 0.03 < (len(trades) - 10_000) / 10_000 < 0.07
    high = -1
    worst = 0
    for t in trades:
        worst = max(worst, high - t.timestamp)
        high = max(high, t.timestamp)
    assert 0 < worst < 300 * 2  # delivered out of order, but within the bound (plus a resend delay)


def test_a_whole_market_of_2000_symbols_trades_many_of_them_at_plausible_prices():
    every = whole_market(snapshot(name) for name in EXCHANGES)
    symbols = (every + [f"Z{i:04d}USD" for i in range(2000)])[:2000]
    trades = SyntheticMarket(symbols, rate=5000, seed=2).generate(50_000, T0)  # 10 s of a busy market
    seen = Counter(t.symbol for t in trades)
    assert len(seen) > 1000  # busier symbols trade more (Zipf-like), but the tail trades too
    assert seen["BTCUSD"] == max(seen.values())
    first = {}
    for t in trades:
        first.setdefault(t.symbol, t.price)
    assert 50_000 < first["BTCUSD"] < 80_000 and 0.03 < first["ETHBTC"] < 0.07
    assert 0.9 < first["USDTUSD"] < 1.1 and first["BTCTRY"] > 1_000_000
    assert all(1e-8 < p < 1e9 and math.isfinite(p) for p in first.values())  # BTCARS ~65 million


async def test_a_restarted_live_market_goes_on_from_the_prices_it_left(tmp_path, caplog):
    """Every restart of the demo started BTCUSDT near 65,000 again: a cliff in the stored series each time.
    A live market saves its prices as it goes and at stop; the next run starts from them."""
    import asyncio

    from ingest.synthetic import PriceFile

    prices = PriceFile(tmp_path / "state" / "ingest" / "synthetic.json")
    assert prices.load() == {}  # a first run: the usual start prices
    first = SyntheticMarket(SYMBOLS, rate=2_000, seed=1)
    assert first.prices()["BTCUSDT"] == 65_000.0
    stop = asyncio.Event()
    trades = []
    async for batch in first.stream(tick_s=0.01, stop=stop, save=prices.save):
        trades.extend(batch)
        if len(trades) > 200:
            stop.set()
    last = {s: by_symbol_in_time_order(trades, s)[-1].price for s in SYMBOLS}
    assert prices.load() == last == first.prices()  # saved at stop: each symbol's last trade
    assert last["BTCUSDT"] != 65_000.0

    second = SyntheticMarket(["BTCUSDT", "ADAUSDT"], rate=2_000, seed=2, start_prices=prices.load())
    assert second.prices() == {"BTCUSDT": last["BTCUSDT"], "ADAUSDT": 0.45}  # a new symbol: its usual price
    opening = second.generate(50, T0)
    btc = by_symbol_in_time_order(opening, "BTCUSDT")[0].price
    assert abs(math.log(btc / last["BTCUSDT"])) < 0.01  # within a tick or two of where it was left
    prices.save(second.prices())  # symbols not running keep their saved price
    assert set(prices.load()) == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "ADAUSDT"}

    for bad in (b"{not json", b"[1, 2]"):
        prices.path.write_bytes(bad)
        assert prices.load() == {}  # said and ignored: the market starts afresh
    prices.path.write_bytes(b'{"BTCUSDT": -1, "ETHUSDT": "x", "SOLUSDT": 150.5}')
    assert prices.load() == {"SOLUSDT": 150.5}  # only what can be a price
    assert sum("ignoring" in r.getMessage() for r in caplog.records) == 2
