"""A synthetic market: realistic enough to exercise every part of the pipeline, seeded and offline.

Prices follow a geometric Brownian motion with volatility clustering (a GARCH(1,1)-style variance that
reacts to its own shocks) and occasional jumps. Trade arrivals are a Poisson process whose intensity
bursts with volatility; sizes are log-normal. Optional disorder (trades delivered out of event-time order
within a bound) and duplicates (the same trade resent, as exchanges do on reconnect) feed the tests.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from cryptostream.models import Trade

__all__ = ["SyntheticMarket"]

START_PRICES = {"BTC": 65_000.0, "ETH": 3_200.0, "SOL": 150.0, "BNB": 600.0, "XRP": 0.6, "DOGE": 0.15}


def _start_price(symbol: str) -> float:
    for base, price in START_PRICES.items():
        if symbol.startswith(base):
            return price
    return 100.0


@dataclass
class _Path:
    price: float
    variance: float
    next_id: int


@dataclass
class SyntheticMarket:
    """Trades for ``symbols`` at about ``rate`` trades per second in total.

    ``disorder_ms`` shuffles delivery within that many milliseconds of event time; ``duplicate_rate`` is
    the fraction of trades sent twice. Same seed, same trades.
    """

    symbols: list[str]
    rate: float = 50.0
    seed: int = 7
    disorder_ms: int = 0
    duplicate_rate: float = 0.0
    exchange: str = "synthetic"
    base_vol: float = 2e-4  # per-trade log-return scale
    _rng: np.random.Generator = field(init=False, repr=False)
    _paths: dict[str, _Path] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._paths = {
            s: _Path(_start_price(s), self.base_vol**2, 1 + 1_000_000 * i) for i, s in enumerate(self.symbols)
        }

    def _step(self, symbol: str, timestamp: int) -> Trade:
        rng = self._rng
        path = self._paths[symbol]
        shock = rng.standard_normal() * math.sqrt(path.variance)
        if rng.random() < 0.002:  # rare jump
            shock += rng.choice((-1.0, 1.0)) * rng.exponential(20 * self.base_vol)
        # GARCH(1,1): variance reverts to base, reacts to the last shock (volatility clustering)
        path.variance = 0.05 * self.base_vol**2 + 0.85 * path.variance + 0.10 * shock * shock
        path.price = round(path.price * math.exp(shock), 8)
        size = round(float(rng.lognormal(-2.0, 1.2)) * 100 / max(path.price, 1e-9) ** 0.5, 8) or 1e-8
        trade = Trade(
            exchange=self.exchange,
            symbol=symbol,
            price=path.price,
            quantity=size,
            timestamp=timestamp,
            trade_id=path.next_id,
            is_buyer_maker=bool(rng.random() < 0.5 - 50 * shock),
            received_at=int(time.time() * 1000),
        )
        path.next_id += 1
        return trade

    def generate(self, n: int, start_ms: int) -> list[Trade]:
        """``n`` trades from ``start_ms`` on, in delivery order (with disorder/duplicates if enabled)."""
        rng = self._rng
        gaps = rng.exponential(1000.0 / self.rate, size=n)
        times = start_ms + np.floor(np.cumsum(gaps)).astype(np.int64)
        picks = rng.integers(0, len(self.symbols), size=n)
        trades = [self._step(self.symbols[int(k)], int(t)) for k, t in zip(picks, times, strict=True)]
        return self._deliver(trades)

    def _deliver(self, trades: list[Trade]) -> list[Trade]:
        rng = self._rng
        if self.duplicate_rate > 0:
            dup = rng.random(len(trades)) < self.duplicate_rate
            extra = [
                (t.timestamp + int(rng.integers(0, max(self.disorder_ms, 1))), t)
                for t, d in zip(trades, dup, strict=True)
                if d
            ]
        else:
            extra = []
        keyed = [(t.timestamp, t) for t in trades]
        if self.disorder_ms > 0:
            keyed = [
                (ts + int(j), t)
                for (ts, t), j in zip(keyed, rng.integers(0, self.disorder_ms, len(keyed)), strict=True)
            ]
        keyed.extend(extra)
        keyed.sort(key=lambda kv: kv[0])
        return [t for _, t in keyed]

    async def stream(self, tick_s: float = 0.05) -> AsyncIterator[list[Trade]]:
        """Trades stamped with the wall clock, delivered every ``tick_s`` seconds, forever."""
        rng = self._rng
        last = time.time()
        while True:
            await asyncio.sleep(tick_s)
            now = time.time()
            n = int(rng.poisson(self.rate * (now - last) * self._burst()))
            start_ms = int(last * 1000)
            span = max(1, int(now * 1000) - start_ms)
            times = np.sort(start_ms + rng.integers(0, span, size=n))
            picks = rng.integers(0, len(self.symbols), size=n)
            batch = [self._step(self.symbols[int(k)], int(t)) for k, t in zip(picks, times, strict=True)]
            last = now
            if batch:
                yield self._deliver(batch)

    def _burst(self) -> float:
        """Trading intensity rises with volatility, as real markets do."""
        mean_var = sum(p.variance for p in self._paths.values()) / len(self._paths)
        return min(5.0, max(0.3, math.sqrt(mean_var) / self.base_vol))
