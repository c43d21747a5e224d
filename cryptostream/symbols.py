"""Symbol spelling, in one place.

Every exchange spells a pair its own way (``BTC-USD`` at Coinbase, ``btcusdt`` in a Binance stream name,
``BTC/USDT`` elsewhere). Inside cryptostream a symbol is the upper-case concatenation ``BTCUSD``/``BTCUSDT``;
``USDT`` pairs stay ``USDT`` pairs (a USDT price is not a USD price).

This module only reads spellings. Which pairs an exchange lists, and what it calls them there, comes from
the exchange's own metadata (:mod:`cryptostream.markets`): a concatenation such as ``DOTUSD`` cannot be
split by looking at it (``DOT``/``USD`` or ``DO``/``TUSD``?), so nothing here tries.
"""

from __future__ import annotations

import re
from functools import lru_cache

from cryptostream.errors import UnsupportedSymbol

__all__ = ["normalize_symbol", "split_pair"]

_VALID = re.compile(r"[A-Z0-9]{2,24}")
_SEPARATORS = re.compile(r"[-/_:.\s]")
_PART = re.compile(r"[A-Z0-9]{1,20}")


# Characters of a symbol as written, separators and spaces included. Longer is no symbol; refused before
# normalizing, so what is cached stays small (a valid symbol padded with a megabyte of spaces was cached at
# its full size: 4,096 of them held about 4 GB of an API's memory).
MAX_WRITTEN = 64


def normalize_symbol(raw: str) -> str:
    """``BTC-USD`` -> ``BTCUSD``, ``btcusdt`` -> ``BTCUSDT``; raise :class:`UnsupportedSymbol` otherwise."""
    if isinstance(raw, str) and len(raw) > MAX_WRITTEN:
        raise UnsupportedSymbol(
            f"unsupported symbol {raw[:24]!r}... ({len(raw)} characters): a symbol is at most {MAX_WRITTEN} "
            "characters as written, 2-24 letters/digits such as BTCUSDT or BTC-USD"
        )
    return _normalize(raw)


@lru_cache(maxsize=4096)
def _normalize(raw: str) -> str:
    if not isinstance(raw, str):
        raise UnsupportedSymbol(f"symbol must be a string, got {type(raw).__name__}")
    # ASCII only before upper(): it maps some other letters to ASCII ones ("btcuſdt", "ethuß" -> "ETHUSS")
    symbol = _SEPARATORS.sub("", raw.strip()).upper() if raw.isascii() else raw
    if not _VALID.fullmatch(symbol):
        raise UnsupportedSymbol(
            f"unsupported symbol {raw!r}: expected 2-24 letters/digits such as BTCUSDT or BTC-USD"
        )
    return symbol


def split_pair(raw: str) -> tuple[str, str] | None:
    """``DOT-USD`` / ``dot/usd`` / ``DOT_USD`` -> (``DOT``, ``USD``), split exactly at the separator.

    A spelling without a separator (``DOTUSD``) gives ``None``: only an exchange's market list can tell
    its base from its quote. More than one separator, or an empty side, raises :class:`UnsupportedSymbol`.
    """
    text = raw.strip() if isinstance(raw, str) else ""
    text = text.upper() if text.isascii() else text  # see normalize_symbol
    parts = _SEPARATORS.split(text)
    if len(parts) == 1:
        return None
    if len(parts) != 2 or not all(_PART.fullmatch(part) for part in parts):
        raise UnsupportedSymbol(f"unsupported symbol {raw!r}: expected BASE-QUOTE such as BTC-USD or ETH/BTC")
    normalize_symbol(text)  # the concatenation must be a valid symbol too (length, characters)
    return parts[0], parts[1]
