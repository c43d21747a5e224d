"""Straightforward batch computations the streaming code is checked against.

Deliberately naive: plain Python over a list of trades, no NumPy, no shared code with the processor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from cryptostream.models import Trade

Key = tuple[str, str, int]  # exchange, symbol, bucket ms


def batch_candles(trades: Iterable[Trade], interval_ms: int = 1000) -> dict[Key, dict[str, Any]]:
    """OHLCV per (exchange, symbol, bucket) over deduplicated trades (one per exchange, symbol, second and
    trade id, the first given); ties broken by (time, id).

    At ``interval_ms`` other than 1 s this is the roll-up the store must return, computed from the trades
    directly rather than from 1 s candles."""
    seen: set[tuple[str, str, int, int]] = set()
    groups: dict[Key, list[Trade]] = {}
    for t in trades:
        ident = (t.symbol, t.exchange, t.timestamp // 1000, t.trade_id)
        if ident in seen:
            continue
        seen.add(ident)
        groups.setdefault((t.exchange, t.symbol, t.timestamp - t.timestamp % interval_ms), []).append(t)
    out: dict[Key, dict[str, Any]] = {}
    for key, group in groups.items():
        group.sort(key=lambda t: (t.timestamp, t.trade_id))
        volume = sum(t.quantity for t in group)
        notional = sum(t.price * t.quantity for t in group)
        out[key] = {
            "open": group[0].price,
            "high": max(t.price for t in group),
            "low": min(t.price for t in group),
            "close": group[-1].price,
            "volume": volume,
            "trade_count": len(group),
            "vwap": notional / volume if volume > 0 else group[-1].price,
            "buy_volume": sum(t.quantity for t in group if not t.is_buyer_maker),
            "sell_volume": sum(t.quantity for t in group if t.is_buyer_maker),
        }
    return out


def batch_volatility(candles: dict[Key, dict[str, Any]], window_s: int) -> dict[Key, float]:
    """Std (ddof=1) of 1 s log returns of forward-filled closes over (b - window, b], per candle."""
    out: dict[Key, float] = {}
    by_market: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for (exchange, symbol, bucket), c in candles.items():
        by_market.setdefault((exchange, symbol), []).append((bucket, c["close"]))
    for (exchange, symbol), rows in by_market.items():
        rows.sort()
        closes = dict(rows)
        first = rows[0][0]
        returns: dict[int, float] = {}
        last = closes[first]
        for t in range(first + 1000, rows[-1][0] + 1, 1000):
            current = closes.get(t, last)
            returns[t] = math.log(current / last)
            last = current
        for bucket, _ in rows:
            window = [
                returns[t] for t in range(bucket - window_s * 1000 + 1000, bucket + 1, 1000) if t in returns
            ]
            if len(window) < 2:
                continue
            mean = sum(window) / len(window)
            out[(exchange, symbol, bucket)] = math.sqrt(
                sum((r - mean) ** 2 for r in window) / (len(window) - 1)
            )
    return out


FLOAT_FIELDS = ("volume", "vwap", "buy_volume", "sell_volume")
EXACT_FIELDS = ("open", "high", "low", "close", "trade_count")


def assert_candles_equal(got: dict[Key, dict[str, Any]], expected: dict[Key, dict[str, Any]]) -> None:
    """Same keys; prices and counts exactly equal; sums equal to 1e-9 relative (summation order)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, (
        f"{len(missing)} candles missing (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})"
    )
    for key, exp in expected.items():
        row = got[key]
        for name in EXACT_FIELDS:
            assert row[name] == exp[name], f"{key} {name}: {row[name]} != {exp[name]}"
        for name in FLOAT_FIELDS:
            assert math.isclose(row[name], exp[name], rel_tol=1e-9, abs_tol=1e-12), (
                f"{key} {name}: {row[name]} != {exp[name]}"
            )


def rows_by_key(rows: Iterable[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Index candle rows (``exchange``, ``symbol``, a datetime or ms ``bucket``) by (exchange, symbol, ms)."""
    out: dict[Key, dict[str, Any]] = {}
    for row in rows:
        bucket = row["bucket"]
        ms = bucket if isinstance(bucket, int) else int(round(bucket.timestamp() * 1000))
        key = (row["exchange"], row["symbol"], ms)
        assert key not in out, f"candle {key} stored twice"
        out[key] = row
    return out


def one_trade_candle(
    bucket_ms: int, price: float, closed: bool = True, symbol: str = "BTCUSDT", exchange: str = "binance"
) -> bytes:
    """A candles-topic message as the processor publishes it, for a window of one 1.0 buy at ``price``."""
    return orjson.dumps(
        {
            "type": "candle",
            "interval": "1s",
            "closed": closed,
            "exchange": exchange,
            "symbol": symbol,
            "bucket": datetime.fromtimestamp(bucket_ms / 1000, tz=UTC).isoformat(),
            "open": price,
            "high": price,
            "low": price,
            "close": price,
            "volume": 1.0,
            "trade_count": 1,
            "vwap": price,
            "buy_volume": 1.0,
            "sell_volume": 0.0,
        }
    )
