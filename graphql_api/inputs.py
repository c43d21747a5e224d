"""Checks of what API users send, shared by GraphQL and REST, with messages that name the fix.

A failed check raises :class:`InputError`: GraphQL shows its message with ``extensions.code`` (e.g.
``BAD_USER_INPUT``, ``UNKNOWN_SYMBOL``), REST answers with its HTTP ``status`` (400 or 404). Neither path
ever turns bad input into a 500.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from cryptostream.errors import UnsupportedSymbol
from cryptostream.models import INTERVALS
from cryptostream.symbols import normalize_symbol

__all__ = [
    "InputError",
    "check_interval",
    "check_limit",
    "check_range",
    "check_symbol_format",
    "check_symbols",
    "parse_date",
    "utc",
]


class InputError(ValueError):
    """A request the API cannot answer as asked; the message says what to send instead."""

    def __init__(self, message: str, code: str = "BAD_USER_INPUT", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.extensions = {"code": code}


def check_symbol_format(raw: str) -> str:
    """``raw`` normalized (``btc-usd`` -> ``BTCUSD``), or an error saying what a symbol looks like."""
    try:
        return normalize_symbol(raw)
    except UnsupportedSymbol as exc:
        raise InputError(f"{exc}; symbols look like BTCUSDT or BTC-USD") from None


def check_symbols(raws: list[str], known: set[str], *, most: int = 100) -> list[str]:
    """Normalize and check every symbol is ``known``; duplicates are kept once, order preserved."""
    if not raws:
        raise InputError('symbols must name at least one symbol, e.g. ["BTCUSDT"]')
    if len(raws) > most:
        raise InputError(f"symbols may name at most {most} symbols, got {len(raws)}")
    out: list[str] = []
    for raw in raws:
        symbol = check_symbol_format(raw)
        if symbol not in known:
            shown = ", ".join(sorted(known)[:20]) or "none yet"
            raise InputError(
                f"unknown symbol {symbol!r}; known symbols: {shown}", code="UNKNOWN_SYMBOL", status=404
            )
        if symbol not in out:
            out.append(symbol)
    return out


def check_interval(interval: str) -> str:
    if interval not in INTERVALS:
        raise InputError(f"interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
    return interval


def check_limit(limit: int, most: int) -> int:
    if not 1 <= limit <= most:
        raise InputError(f"limit must be between 1 and {most} (API_MAX_LIMIT), got {limit}")
    return limit


def utc(moment: datetime | None) -> datetime | None:
    """``moment`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def check_range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    start, end = utc(start), utc(end)
    if start is not None and end is not None and start > end:
        raise InputError(f"from must not be after to, got from={start.isoformat()} to={end.isoformat()}")
    return start, end


def parse_date(text: str | None, name: str, *, end: bool = False) -> datetime | None:
    """A REST date parameter: ``YYYY-MM-DD`` (a whole UTC day; as an end, the day is included) or ISO 8601."""
    if text is None or text == "":
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise InputError(f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 time, got {text!r}") from None
