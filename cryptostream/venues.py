"""Venues: which exchange a trade, candle or prediction belongs to, in one place.

A candle's key is (exchange, symbol, bucket): Binance's BTCUSDT and Coinbase's BTC-USDT are two markets with
two candle series and two watermarks, never one. Besides the exchanges, two venue names are reserved:

* ``synthetic``: the demo market of ``cryptostream up --source synthetic``, a venue of its own, so demo
  prices never show up as a live market (the API and dashboard label it as demo data);
* ``unknown``: trades written by another tool without an ``exchange`` field, and candles stored before
  cryptostream kept venues apart (they may mix venues; the migration that added venues labels them so).

Readers that name only a symbol (the original REST routes) get :func:`pick_venue`'s answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["DEMO", "UNKNOWN", "is_demo", "normalize_exchange", "pick_venue"]

DEMO = "synthetic"
UNKNOWN = "unknown"

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")


def normalize_exchange(raw: object) -> str | None:
    """``Binance`` -> ``binance``; None when ``raw`` is not a venue name (1-32 of a-z 0-9 _ . -)."""
    if not isinstance(raw, str):
        return None
    name = raw.strip().lower()
    return name if _NAME.fullmatch(name) else None


def is_demo(exchange: str) -> bool:
    return exchange == DEMO


def pick_venue(venues: Iterable[str], preferred: Sequence[str]) -> str | None:
    """The venue a symbol-only request means: the only venue that has the symbol, else the first of
    ``preferred`` (the configured ``EXCHANGES``) that has it, else the first real venue by name (demo and
    ``unknown`` data last). None when no venue has it."""
    have = sorted(set(venues))
    if len(have) <= 1:
        return have[0] if have else None
    for name in preferred:
        if name in have:
            return name
    return sorted(have, key=lambda v: (v in (DEMO, UNKNOWN), v))[0]
