"""A synthetic market: realistic enough to exercise every part of the pipeline, seeded and offline.

* **Prices** follow a geometric Brownian motion per symbol with volatility clustering on two scales (a
  GARCH(1,1) variance that reacts to each shock, and a market-wide volatility regime that drifts over
  minutes), rare jumps, and a shared market factor so symbols move together the way BTC and ETH do
  (``market_beta``). Prices sit on a tick grid (about six significant digits).
* **Arrivals** are a Poisson process whose intensity rises with volatility (bursts follow big moves, as in
  real markets); busier symbols trade more (the first symbol most, Zipf-like).
* **Sizes** are log-normal, scaled so the notional per trade is similar across price levels, with
  occasional block trades 20x the usual size.
* **Sides**: the taker's side leans with the shock (buyers lift the offer when the price goes up).
* **Test aids**: ``disorder_ms`` delivers trades out of event-time order within that bound;
  ``duplicate_rate`` resends that fraction of trades (as exchanges do on reconnect). Same seed, same trades.
* **Start prices** are what the pair would cost: the base's USD price over the quote's (ETHBTC about 0.05,
  BTCTRY about two million); a coin not in :data:`USD_PRICES` gets a fixed price of its own between one cent
  and a few dollars, so a whole market (``SYMBOLS=all``) looks like one. Live, a market goes on from where
  the previous run left it (:class:`PriceFile`, ``STATE_DIR/ingest/synthetic.json``): every restart of the
  demo started BTCUSDT at 65,000 again, a cliff in the stored series.
* **Venue**: ``synthetic``, a venue of its own (demo data never poses as an exchange's market). Live, it
  starts on the next whole second with trade ids that never repeat an earlier run's, writes progress (its
  event time, exact: it generates in order) every ``PROGRESS_INTERVAL_MS``, and at stop writes progress
  that closes every window it fed.

All random numbers of a call are drawn at once with NumPy; the per-trade loop is plain float arithmetic,
and nothing per tick loops over the symbols (2,000 of them cost what 3 do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from cryptostream.codec import Progress
from cryptostream.feeds import CONNECTED, ENDED, FeedStatus
from cryptostream.models import Trade
from cryptostream.venues import DEMO
from ingest.source import TradeBatch

__all__ = ["PriceFile", "SyntheticMarket"]

log = logging.getLogger(__name__)
SAVE_EVERY_S = 5.0  # how often a live market saves its prices (and at stop)

# Rough USD prices of the coins and currencies pairs are most often quoted in or made of (start values only).
USD_PRICES = {
    **{"BTC": 65_000.0, "ETH": 3_200.0, "SOL": 150.0, "BNB": 600.0, "XRP": 0.6, "DOGE": 0.15},
    **{"ADA": 0.45, "DOT": 6.0, "LINK": 14.0, "LTC": 75.0, "AVAX": 30.0, "TRX": 0.12, "SHIB": 0.00002},
    **{"PEPE": 0.00001, "BCH": 400.0, "ETC": 25.0, "ATOM": 7.0, "NEAR": 5.0, "UNI": 8.0, "AAVE": 150.0},
    **dict.fromkeys(("USD", "USDT", "USDC", "FDUSD", "TUSD", "DAI", "BUSD", "USDP", "PYUSD", "USDE"), 1.0),
    **{"EUR": 1.08, "GBP": 1.27, "AUD": 0.66, "CAD": 0.73, "SGD": 0.74, "JPY": 0.0067, "TRY": 0.03},
    **{"BRL": 0.18, "ARS": 0.001, "INR": 0.012, "UAH": 0.024, "ZAR": 0.055, "PLN": 0.25, "MXN": 0.055},
    **{"RON": 0.22, "CZK": 0.043, "COP": 0.00025, "IDRT": 0.000064},
}
_BY_LENGTH = sorted(USD_PRICES, key=lambda name: (-len(name), name))
JUMP_PROBABILITY = 0.0002  # per trade: rare news, about 1 variance-percent of the path
BLOCK_PROBABILITY = 0.01
REGIME_SECONDS = 120.0  # how long a calm or wild spell lasts (mean reversion time of log volatility)
REGIME_SPREAD = 0.5  # standard deviation of log volatility across spells


def _usd(coin: str) -> float:
    """The USD price of ``coin``: from :data:`USD_PRICES`, else fixed by its name, $0.01 to about $30."""
    if coin in USD_PRICES:
        return USD_PRICES[coin]
    return float(10.0 ** (-2.0 + 3.5 * zlib.crc32(coin.encode()) / 2**32))  # crc32: the same in every run


def _start_price(symbol: str) -> float:
    """What ``symbol`` would cost: base over quote in USD. The split is a guess from the known quote
    suffixes (a known base wins: DOTUSD is DOT/USD, not DO/TUSD); a wrong guess only moves a start price."""
    splits = [(symbol[: -len(q)], q) for q in _BY_LENGTH if symbol.endswith(q) and len(symbol) > len(q)]
    base, quote = next((s for s in splits if s[0] in USD_PRICES), splits[0] if splits else (symbol, "USD"))
    return _usd(base) / _usd(quote)


def _given(price: object) -> float | None:
    """A saved price if it can be one (finite, positive), else None."""
    if isinstance(price, int | float) and not isinstance(price, bool) and math.isfinite(price) and price > 0:
        return float(price)
    return None


class PriceFile:
    """``STATE_DIR/ingest/synthetic.json``: each demo symbol's last price, so a restarted market goes on from
    there. An unreadable file is said and ignored: the market then starts from its usual prices."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, float]:
        try:
            saved = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("ignoring unreadable %s (%s): the demo's prices start afresh", self.path, exc)
            return {}
        if not isinstance(saved, dict):
            log.warning("ignoring %s (not an object): the demo's prices start afresh", self.path)
            return {}
        return {str(symbol): price for symbol, price in saved.items() if _given(price) is not None}

    def save(self, prices: Mapping[str, float]) -> None:
        """Replace the file with ``prices`` (merged into what it held: symbols not running now keep theirs),
        never leaving half a file; a failure to write is said, not raised (the prices only start a run)."""
        temporary: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**self.load(), **prices}
            # a file of its own: two markets on one STATE_DIR never write into the same temporary file
            handle, temporary = tempfile.mkstemp(prefix=".synthetic-", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(handle, "wb") as out:
                out.write(orjson.dumps(merged))
            os.replace(temporary, self.path)
            temporary = None
        except OSError as exc:
            log.warning("could not save the demo's prices to %s: %s", self.path, exc)
        finally:
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)


def _tick(price: float) -> float:
    """Price grid of about six significant digits (65,000 -> 0.01; 0.6 -> 0.000001)."""
    return 10.0 ** (math.floor(math.log10(max(price, 1e-12))) - 6)


@dataclass
class _Path:
    price: float
    variance: float
    next_id: int
    tick: float
    market_seen: float = 0.0  # market factor level at this symbol's last trade


@dataclass
class SyntheticMarket:
    """Trades for ``symbols`` at about ``rate`` trades per second in total (more in volatile spells).

    ``disorder_ms`` shuffles delivery within that many milliseconds of event time; ``duplicate_rate`` is
    the fraction of trades sent twice. Same seed, same trades.
    """

    symbols: list[str]
    rate: float = 50.0
    seed: int = 7
    disorder_ms: int = 0
    duplicate_rate: float = 0.0
    exchange: str = DEMO
    first_id: int = 1  # trade ids of symbol i start at first_id + 1_000_000 * i
    base_vol: float = 2e-4  # per-trade log-return scale
    market_beta: float = 0.7  # share of a symbol's moves that come from the common market factor
    start_prices: Mapping[str, float] | None = None  # where a symbol starts (an earlier run's last price)
    _rng: np.random.Generator = field(init=False, repr=False)
    _paths: list[_Path] = field(init=False, repr=False)  # in the order of symbols
    _variance: float = field(init=False, default=0.0, repr=False)  # sum of the paths' variances
    _weights: npt.NDArray[np.float64] = field(init=False, repr=False)
    _cdf: npt.NDArray[np.float64] = field(init=False, repr=False)
    _market: float = field(init=False, default=0.0, repr=False)
    _market_var: float = field(init=False, default=0.0, repr=False)
    _regime: float = field(init=False, default=0.0, repr=False)
    _last_ms: float | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("SyntheticMarket needs at least one symbol")
        self._rng = np.random.default_rng(self.seed)
        given = self.start_prices or {}
        prices = [_given(given.get(s)) or _start_price(s) for s in self.symbols]
        self._paths = [
            _Path(price, self.base_vol**2, self.first_id + 1_000_000 * i, _tick(price))
            for i, price in enumerate(prices)
        ]
        self._variance = self.base_vol**2 * len(self._paths)
        weights = 1.0 / np.arange(1, len(self.symbols) + 1)
        self._weights = weights / weights.sum()
        self._cdf = self._weights.cumsum()  # what Generator.choice(p=...) builds on every call, once
        self._cdf /= self._cdf[-1]
        self._market_var = self.base_vol**2 * float(self._weights.min())

    # ------------------------------------------------------------------------------------------ core
    def _trades(self, picks: npt.NDArray[np.int64], times: list[int] | None, start_ms: int) -> list[Trade]:
        """One trade per pick; event times from ``times``, or drawn here with volatility-driven bursts."""
        n = len(picks)
        rng = self._rng
        z_market = rng.standard_normal(n).tolist()
        z_own = rng.standard_normal(n).tolist()
        z_regime = rng.standard_normal(n).tolist()
        jumps = (rng.random(n) < JUMP_PROBABILITY).tolist()
        jump_size = (rng.exponential(10 * self.base_vol, n) * rng.choice((-1.0, 1.0), n)).tolist()
        sizes = rng.lognormal(-2.0, 1.2, n)
        sizes[rng.random(n) < BLOCK_PROBABILITY] *= 20.0
        size_l = sizes.tolist()
        side_u = rng.random(n).tolist()
        gaps = rng.exponential(1000.0 / self.rate, n).tolist() if times is None else None
        received = int(time.time() * 1000)
        symbols = self.symbols
        paths = self._paths
        variance = self._variance
        beta = self.market_beta
        own = math.sqrt(max(0.0, 1.0 - beta * beta))
        base_var = self.base_vol**2
        exchange = self.exchange
        clock = float(start_ms)
        out: list[Trade] = []
        append = out.append
        m_base = base_var * float(self._weights.min())  # the rarest symbol gets ~base_var from it
        last_ms = self._last_ms if self._last_ms is not None else float(start_ms)
        for k in range(n):
            i = int(picks[k])
            path = paths[i]
            level = math.exp(self._regime)  # the market's volatility regime (minutes-long calm/wild spells)
            sigma = math.sqrt(path.variance) * level
            if times is None:
                burst = min(5.0, max(0.3, sigma / self.base_vol))  # busier when volatile
                clock += gaps[k] / burst  # type: ignore[index]
                ts = int(clock)
            else:
                ts = times[k]
            # log-volatility regime: Ornstein-Uhlenbeck in event time, shared by every symbol
            decay = math.exp(-max(0.0, ts - last_ms) / 1000.0 / REGIME_SECONDS)
            self._regime = self._regime * decay + REGIME_SPREAD * math.sqrt(1.0 - decay * decay) * z_regime[k]
            last_ms = ts
            # The market factor moves with every trade (its own GARCH variance); a symbol takes what the
            # market moved since its own last trade, so symbols move together.
            move = z_market[k] * math.sqrt(self._market_var) * level
            self._market += move
            self._market_var = 0.05 * m_base + 0.85 * self._market_var + 0.10 * (move / level) ** 2
            idio = own * z_own[k] * sigma
            shock = beta * (self._market - path.market_seen) + idio
            path.market_seen = self._market
            if jumps[k]:
                shock += jump_size[k]
            shock = max(-0.2, min(0.2, shock))
            # GARCH(1,1) on the symbol's own shocks: variance reverts to base, reacts to news (clustering)
            news = 0.10 * (idio / level) ** 2 / max(own * own, 1e-9)
            updated = 0.05 * base_var + 0.85 * path.variance + news
            variance += updated - path.variance
            path.variance = updated
            price = round(round(path.price * math.exp(shock) / path.tick) * path.tick, 10)
            path.price = price if price > 0 else path.tick
            size = round(size_l[k] * 100 / max(path.price, 1e-9) ** 0.5, 8) or 1e-8
            append(
                Trade(
                    exchange=exchange,
                    symbol=symbols[i],
                    price=path.price,
                    quantity=size,
                    timestamp=ts,
                    trade_id=path.next_id,
                    is_buyer_maker=side_u[k] < 0.5 - 50 * shock,
                    received_at=received,
                )
            )
            path.next_id += 1
        self._last_ms = last_ms
        self._variance = variance
        return out

    def _picks(self, n: int) -> npt.NDArray[np.int64]:
        """``n`` symbol indexes by activity: exactly ``rng.choice(p=weights)``, without its per-call set-up
        (O(symbols))."""
        return self._cdf.searchsorted(self._rng.random(n), side="right")

    def generate(self, n: int, start_ms: int) -> list[Trade]:
        """``n`` trades from ``start_ms`` on, in delivery order (with disorder/duplicates if enabled)."""
        return self._deliver(self._trades(self._picks(n), None, start_ms))

    def _deliver(self, trades: list[Trade]) -> list[Trade]:
        rng = self._rng
        keyed = [(t.timestamp, t) for t in trades]
        if self.disorder_ms > 0:
            jitter = rng.integers(0, self.disorder_ms, len(keyed)).tolist()
            keyed = [(ts + j, t) for (ts, t), j in zip(keyed, jitter, strict=True)]
        if self.duplicate_rate > 0:
            dup = np.flatnonzero(rng.random(len(trades)) < self.duplicate_rate).tolist()
            delay = rng.integers(0, max(self.disorder_ms, 1), len(dup)).tolist()
            keyed.extend((trades[i].timestamp + d, trades[i]) for i, d in zip(dup, delay, strict=True))
        keyed.sort(key=lambda kv: kv[0])
        return [t for _, t in keyed]

    def prices(self) -> dict[str, float]:
        """Each symbol's last price."""
        return {symbol: path.price for symbol, path in zip(self.symbols, self._paths, strict=True)}

    async def stream(
        self,
        tick_s: float = 0.05,
        *,
        stop: asyncio.Event | None = None,
        progress_ms: int = 200,
        save: Callable[[dict[str, float]], None] | None = None,
    ) -> AsyncIterator[TradeBatch]:
        """Trades stamped with the wall clock, delivered every ``tick_s`` seconds, until ``stop``.

        Each batch holds every trade with event time before its end; about every ``progress_ms`` a batch
        also carries that end as progress, and the last batch (after ``stop``) carries it for sure.
        ``save`` gets the prices every :data:`SAVE_EVERY_S` seconds and once more at the end."""
        rng = self._rng
        saved = time.time()
        first = math.ceil(time.time())  # a whole second: an earlier run's last second is never shared
        await asyncio.sleep(max(0.0, first - time.time()))
        last_ms = first * 1000
        said = reported = time.time()  # the first progress one interval in
        feed = FeedStatus(self.exchange, CONNECTED, last_ms)
        every = tuple(self.symbols)
        while True:
            stopping = stop is not None and stop.is_set()
            if not stopping:
                if stop is None:
                    await asyncio.sleep(tick_s)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), tick_s)
            now = time.time()
            end_ms = max(last_ms, int(now * 1000))
            n = int(rng.poisson(self.rate * (end_ms - last_ms) / 1000 * self._burst()))
            times = np.sort(last_ms + rng.integers(0, max(1, end_ms - last_ms), size=n)).tolist()
            batch = TradeBatch(self._deliver(self._trades(self._picks(n), times, last_ms)) if n else [])
            batch.source = self.exchange
            feed.traded(len(batch), int(now * 1000))
            last_ms = end_ms
            final = stopping or (stop is not None and stop.is_set())
            if final:
                # Nothing more will come: through the end of this second (the next run starts after it).
                closing = end_ms - 1 - (end_ms - 1) % 1000 + 1000
                batch.progress.append(Progress(self.exchange, every, closing))
                feed.enter(ENDED, int(now * 1000))
                batch.feeds.append(feed)
            elif now - said >= progress_ms / 1000:
                said = now
                batch.progress.append(Progress(self.exchange, every, end_ms))
            if not final and now - reported >= 1.0:
                reported = now
                batch.feeds.append(replace(feed))
            if save is not None and (final or now - saved >= SAVE_EVERY_S):
                saved = now
                save(self.prices())
            if batch or batch.progress or batch.feeds:
                yield batch
            if final:
                return

    def _burst(self) -> float:
        """Trading intensity rises with volatility, as real markets do."""
        mean_var = max(0.0, self._variance) / len(self._paths)  # kept as trades update it
        return min(5.0, max(0.3, math.sqrt(mean_var) / self.base_vol))
