"""Checks of what API users send, shared by GraphQL and REST, with messages that name the fix.

A failed check raises :class:`InputError`: GraphQL shows its message with ``extensions.code`` (e.g.
``BAD_USER_INPUT``, ``UNKNOWN_SYMBOL``, ``UNKNOWN_MARKET``), REST answers with its HTTP ``status`` (400 or
404). Neither path ever turns bad input into a 500. Whether a symbol or market exists is the catalog's
question (:mod:`graphql_api.catalog`); the messages for both answers are built here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from cryptostream.errors import UnsupportedSymbol
from cryptostream.models import INTERVALS
from cryptostream.symbols import normalize_symbol
from cryptostream.venues import DEMO, UNKNOWN, normalize_exchange

__all__ = [
    "InputError",
    "check_dates",
    "check_exchange_format",
    "check_interval",
    "check_limit",
    "check_range",
    "check_symbol_format",
    "check_symbols",
    "parse_date",
    "unknown_market",
    "unknown_symbol",
    "utc",
]


class InputError(ValueError):
    """A request the API cannot answer as asked; the message says what to send instead."""

    def __init__(
        self, message: str, code: str = "BAD_USER_INPUT", status: int = 400, **extensions: object
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.extensions: dict[str, object] = {"code": code, **extensions}


def check_symbol_format(raw: str) -> str:
    """``raw`` normalized (``btc-usd`` -> ``BTCUSD``), or an error saying what a symbol looks like."""
    try:
        return normalize_symbol(raw)
    except UnsupportedSymbol as exc:
        raise InputError(f"{exc}; symbols look like BTCUSDT or BTC-USD") from None


def check_exchange_format(raw: str) -> str:
    """``raw`` as a venue name (``Binance`` -> ``binance``), or an error saying what one looks like."""
    name = normalize_exchange(raw)
    if name is None:
        raise InputError(
            f"exchange must be a venue name such as binance, coinbase or {DEMO} (1-32 of a-z 0-9 _ . -), "
            f"got {raw!r}"
        )
    return name


def check_symbols(raws: list[str], *, most: int = 100) -> list[str]:
    """Normalize every symbol; duplicates are kept once, order preserved."""
    if not raws:
        raise InputError('symbols must name at least one symbol, e.g. ["BTCUSDT"]')
    if len(raws) > most:
        raise InputError(f"symbols may name at most {most} symbols, got {len(raws)}")
    out: list[str] = []
    for raw in raws:
        symbol = check_symbol_format(raw)
        if symbol not in out:
            out.append(symbol)
    return out


def _names(values: list[str], what: str) -> str:
    return ", ".join(values[:20]) + (f" and {len(values) - 20} more" if len(values) > 20 else "") or what


def unknown_symbol(symbol: str, known: list[str]) -> InputError:
    """No venue has ``symbol`` (``known``: the symbols some venue has)."""
    return InputError(
        f"unknown symbol {symbol!r}; known symbols: {_names(known, 'none yet')}",
        code="UNKNOWN_SYMBOL",
        status=404,
    )


def unknown_market(exchange: str, symbol: str, venues: list[str], all_venues: list[str]) -> InputError:
    """``symbol`` is not a market of ``exchange``; it trades on ``venues`` (``all_venues``: every venue)."""
    where = (
        f"{symbol} trades on {', '.join(venues)}: pass one of those as exchange, or leave exchange out"
        if venues
        else f"no venue has {symbol}"
    )
    if exchange in all_venues or exchange in (DEMO, UNKNOWN):
        head = f"no market {symbol} on {exchange}"
    else:
        head = f"unknown exchange {exchange!r} (venues: {_names(all_venues, 'none yet')})"
    return InputError(f"{head}; {where}", code="UNKNOWN_MARKET", status=404, venues=venues)


def check_interval(interval: str) -> str:
    if interval not in INTERVALS:
        raise InputError(f"interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
    return interval


def check_limit(limit: int, most: int) -> int:
    if not 1 <= limit <= most:
        raise InputError(f"limit must be between 1 and {most} (API_MAX_LIMIT), got {limit}")
    return limit


def utc(moment: datetime | None, name: str = "time") -> datetime | None:
    """``moment`` as an aware UTC datetime; a naive one is taken to be UTC already. ``name`` is what the
    error calls it when UTC cannot hold it (``0001-01-01T00:00:00+05:00``)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InputError(f"{name} is out of range in UTC, got {moment.isoformat()}") from None


def check_range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    """GraphQL's ``from`` / ``to`` in UTC; ``from`` after ``to`` is an error."""
    start, end = utc(start, "from"), utc(end, "to")
    if start is not None and end is not None and start > end:
        raise InputError(f"from must not be after to, got from={start.isoformat()} to={end.isoformat()}")
    return start, end


def _whole_day(text: str) -> bool:
    """A date without a time (``2026-12-03``, also ISO 8601's ``20261203``, read as midnight before)."""
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def parse_date(text: str | None, name: str, *, end: bool = False) -> datetime | None:
    """A REST date parameter: ``YYYY-MM-DD`` (a whole UTC day; as an end, the day is included) or ISO 8601.
    None: no bound (nothing given, or an end that includes 9999-12-31, the last day a date can name)."""
    if text is None or text == "":
        return None
    try:
        if _whole_day(text):
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if end and day == date.max:  # "up to and including the last day": no end at all
                return None
            return moment + timedelta(days=1) if end else moment
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 time, got {text!r}") from None
    return utc(moment, name)


def check_dates(start_date: str | None, end_date: str | None) -> tuple[datetime | None, datetime | None]:
    """REST's ``start_date`` / ``end_date`` as a UTC range [start, end). A ``YYYY-MM-DD`` end includes its
    day, so the range ends at the next midnight; errors name the parameters and repeat what was sent, not
    that midnight."""
    start = parse_date(start_date, "start_date")
    end = parse_date(end_date, "end_date", end=True)
    if start is not None and end is not None and end_date is not None:
        # a start at the end day's next midnight is after the whole end day
        if start > end or (start == end and _whole_day(end_date)):
            raise InputError(
                f"start_date must not be after end_date, got start_date={start_date!r} end_date={end_date!r}"
            )
    return start, end
