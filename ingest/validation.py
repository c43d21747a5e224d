"""Ingest-side validation: raw exchange fields -> a :class:`Trade`, or a :class:`Rejected` with a reason.

Every source (WebSocket feeds, REST backfill, file replay) funnels its fields through here, so a trade is
judged the same way wherever it came from. Bad data is an outcome, not an exception: the caller gets a
``Rejected`` carrying one of :data:`INGEST_REASONS` and the raw payload, and the ingest service counts it
and writes it to the dead-letter topic.

Timestamps are parsed exactly into integer milliseconds: ISO 8601 with any number of fractional digits
(Coinbase sends nanoseconds) is cut, never rounded, to the millisecond; epoch numbers are read as ms, µs or
ns by magnitude (Binance sends µs when asked for ``timeUnit=MICROSECOND`` and in its 2025+ dump files).
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Collection
from datetime import datetime
from functools import lru_cache
from typing import Any

from cryptostream.codec import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, REASONS, Rejected
from cryptostream.errors import UnsupportedSymbol
from cryptostream.models import Trade
from cryptostream.symbols import normalize_symbol

__all__ = [
    "INGEST_REASONS",
    "FieldError",
    "epoch_to_ms",
    "iso_to_ms",
    "make_trade",
    "rejected",
    "to_float",
    "to_int",
]

INGEST_REASONS: dict[str, str] = {
    **REASONS,
    "unknown_symbol": "symbol is well formed but not one of SYMBOLS (a pair we did not ask for)",
    "bad_side": "trade side is neither buy nor sell",
    "malformed_csv": "a replayed CSV line has the wrong number of fields",
}

_ISO = re.compile(  # ASCII: \d would take any script's digits, and int() reads them
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?\s*(Z|z|[+-]\d{2}:?\d{2})?", re.ASCII
)
# A decimal number as exchanges write prices and sizes ("0.00100000", "1e-8"), or NaN / infinity (rejected
# after as not finite, which says more); float() also takes "1_0", " 1" and other scripts' digits
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?i:nan|inf|infinity)")


class FieldError(ValueError):
    """One field of a raw trade is unusable; ``reason`` is a key of :data:`INGEST_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@lru_cache(maxsize=65_536)
def _seconds(text: str) -> int:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS`` (cached: trades of one second share it); a date or time
    that does not exist (February 30, second 61) raises ValueError (``timegm`` would roll it over)."""
    stamp = datetime(
        int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]), int(text[17:19])
    )
    return calendar.timegm(stamp.timetuple())


def iso_to_ms(text: Any) -> int:
    """``2026-08-09T21:05:48.251397169Z`` -> epoch ms, truncating extra digits (exact, no float)."""
    if not isinstance(text, str):
        raise FieldError("wrong_type", f"time is {type(text).__name__}: {text!r:.40}")
    m = _ISO.fullmatch(text.strip())
    if m is None:
        raise FieldError("bad_timestamp", f"time {text!r:.60} is not ISO 8601")
    try:
        seconds = _seconds(f"{m[1]}-{m[2]}-{m[3]}T{m[4]}:{m[5]}:{m[6]}")
    except ValueError as exc:  # month 13, second 61, ...
        raise FieldError("bad_timestamp", f"time {text!r:.60}: {exc}") from None
    ms = seconds * 1000 + int((m[7] or "0")[:3].ljust(3, "0"))
    zone = m[8]
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "+" else 1  # +02:00 is two hours ahead of UTC: subtract
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise FieldError("bad_timestamp", f"time {text!r:.60}: offset {zone} is not a UTC offset")
        ms += sign * (hours * 3_600_000 + minutes * 60_000)
    return _checked_ms(ms, text)


def epoch_to_ms(value: Any) -> int:
    """An epoch number in ms, µs or ns (told apart by magnitude) -> exact integer ms."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise FieldError("wrong_type", f"timestamp is {type(value).__name__}: {value!r:.40}")
    if value >= 10**17:
        ms = value // 1_000_000  # nanoseconds
    elif value >= 10**14:
        ms = value // 1_000  # microseconds
    else:
        ms = value
    return _checked_ms(ms, value)


def _checked_ms(ms: int, raw: Any) -> int:
    if not MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS:
        raise FieldError("bad_timestamp", f"timestamp {raw!r:.40} is not between 2000 and 2100")
    return ms


def to_float(value: Any, name: str) -> float:
    """Exchanges send prices and sizes as decimal strings; numbers are accepted too (replay, tests)."""
    if isinstance(value, str):
        if _DECIMAL.fullmatch(value) is None:
            raise FieldError("wrong_type", f"{name} {value!r:.40} is not a number")
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise FieldError("wrong_type", f"{name} is {type(value).__name__}: {value!r:.40}")


def to_int(value: Any, name: str) -> int:
    """Trade ids: integers, or decimal strings (Coinbase Advanced Trade sends ``"1068572091"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise FieldError("wrong_type", f"{name} is {type(value).__name__}: {value!r:.40}")


def make_trade(
    exchange: str,
    raw_symbol: Any,
    price: Any,
    quantity: Any,
    timestamp_ms: int,
    trade_id: Any,
    is_buyer_maker: bool,
    received_at: int,
    symbols: Collection[str],
) -> Trade:
    """A validated :class:`Trade`; raises :class:`FieldError` naming the first thing wrong."""
    try:
        symbol = normalize_symbol(raw_symbol)
    except UnsupportedSymbol as exc:
        raise FieldError("bad_symbol", str(exc)) from None
    if symbol not in symbols:
        raise FieldError("unknown_symbol", f"symbol {symbol} is not in SYMBOLS ({','.join(sorted(symbols))})")
    p = to_float(price, "price")
    if not math.isfinite(p):
        raise FieldError("non_finite_price", f"price {price!r}")
    if p <= 0:
        raise FieldError("non_positive_price", f"price {price!r}")
    q = to_float(quantity, "quantity")
    if not math.isfinite(q):
        raise FieldError("non_finite_quantity", f"quantity {quantity!r}")
    if q < 0:
        raise FieldError("negative_quantity", f"quantity {quantity!r}")
    tid = to_int(trade_id, "trade_id")
    if not 0 <= tid < 2**63:
        raise FieldError("wrong_type", f"trade_id {tid} out of 64-bit range")
    return Trade(exchange, symbol, p, q, timestamp_ms, tid, is_buyer_maker, received_at)


def rejected(error: FieldError, raw: bytes | str) -> Rejected:
    """The dead-letter form of a field error, keeping the raw payload."""
    return Rejected(error.reason, error.detail, raw.encode() if isinstance(raw, str) else raw)
