"""Symbol normalization, in one place.

Every exchange spells a pair its own way (``BTC-USD`` at Coinbase, ``btcusdt`` in a Binance stream name,
``BTC/USDT`` elsewhere). Inside cryptostream a symbol is the upper-case concatenation ``BTCUSD``/``BTCUSDT``;
``USDT`` pairs stay ``USDT`` pairs (a USDT price is not a USD price).
"""

from __future__ import annotations

import re
from functools import lru_cache

from cryptostream.errors import UnsupportedSymbol

__all__ = ["QUOTE_ASSETS", "normalize_symbol", "split_symbol", "to_binance_stream", "to_coinbase_product"]

_VALID = re.compile(r"[A-Z0-9]{2,24}")
_SEPARATORS = re.compile(r"[-/_:.\s]")

# Longest first, so BTCUSDT splits as BTC/USDT and not BTCUSD/T.
QUOTE_ASSETS: tuple[str, ...] = tuple(
    sorted(
        (
            "USDT",
            "USDC",
            "FDUSD",
            "TUSD",
            "BUSD",
            "DAI",
            "USD",
            "EUR",
            "GBP",
            "JPY",
            "TRY",
            "BRL",
            "BTC",
            "ETH",
            "BNB",
            "SOL",
        ),
        key=len,
        reverse=True,
    )
)


@lru_cache(maxsize=4096)
def normalize_symbol(raw: str) -> str:
    """``BTC-USD`` -> ``BTCUSD``, ``btcusdt`` -> ``BTCUSDT``; raise :class:`UnsupportedSymbol` otherwise."""
    if not isinstance(raw, str):
        raise UnsupportedSymbol(f"symbol must be a string, got {type(raw).__name__}")
    symbol = _SEPARATORS.sub("", raw.strip()).upper()
    if not _VALID.fullmatch(symbol):
        raise UnsupportedSymbol(
            f"unsupported symbol {raw!r}: expected 2-24 letters/digits such as BTCUSDT or BTC-USD"
        )
    return symbol


def split_symbol(symbol: str) -> tuple[str, str]:
    """``BTCUSDT`` -> (``BTC``, ``USDT``) using the known quote assets."""
    normalized = normalize_symbol(symbol)
    for quote in QUOTE_ASSETS:
        if normalized.endswith(quote) and len(normalized) > len(quote):
            return normalized[: -len(quote)], quote
    raise UnsupportedSymbol(
        f"cannot tell base from quote in {symbol!r}; known quotes: {', '.join(QUOTE_ASSETS)}"
    )


def to_coinbase_product(symbol: str) -> str:
    """``BTCUSD`` -> ``BTC-USD`` (Coinbase product id)."""
    base, quote = split_symbol(symbol)
    return f"{base}-{quote}"


def to_binance_stream(symbol: str) -> str:
    """``BTCUSDT`` -> ``btcusdt`` (Binance stream names are lower case)."""
    return normalize_symbol(symbol).lower()
