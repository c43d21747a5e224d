"""The original README's REST routes, same paths and parameters, so its users keep working.

``/api/ohlc/``, ``/api/ohlc/latest``, ``/api/volatility/``, ``/api/symbols`` and ``/health`` answer in the
seed's shapes (``{"data": [...], "count": n, "symbol": s}``), with a few added fields (``exchange`` of every
row and of the answer, ``trade_count``, ``vwap``, buy/sell volume; ``source`` of volatility), and
``/api/markets`` lists the markets. A row belongs to a market, a venue and a symbol: ``symbol`` alone means
the venue :mod:`graphql_api.catalog`'s rule picks, ``exchange=`` names one. Fields an archive of the original
project did not record are null. Dates are ``YYYY-MM-DD`` (whole UTC days, the end day included) or ISO 8601
times. Bad parameters are a 4xx with a message: 422 for a malformed or out-of-range parameter, 400 for a bad
date, range or name, 404 for an unknown symbol, exchange or market.

``/api/volatility/`` keeps the seed's fallback: when no stored volatility exists for the range (or all of
it is zero), it is computed from the candles' closes, as the seed did: rolling standard deviation of 1 s
log returns over min(10, n) candles, at least two returns, zero where undefined.
"""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cryptostream import store
from cryptostream.errors import QueryError
from cryptostream.models import VOLATILITY_SCHEMA
from cryptostream.settings import Settings
from graphql_api.catalog import MarketKey
from graphql_api.context import Services
from graphql_api.inputs import InputError, check_dates
from graphql_api.status import FeedReport, waiting

__all__ = [
    "FALLBACK_WINDOW",
    "VENUE_RULE",
    "array_json",
    "build_router",
    "encode_rows",
    "fallback_volatility",
    "load_ohlc",
    "load_volatility",
    "off_loop",
    "rows_json",
]

T = TypeVar("T")
FALLBACK_WINDOW = 10
VENUE_RULE = (
    "A market is a venue (`exchange`) and a `symbol`: Binance's BTCUSDT and Coinbase's BTCUSDT are two "
    "candle series. `symbol` alone means the only venue that has it; if several do, the first of the "
    "`EXCHANGES` setting that has it; else the first real venue by name (`synthetic` demo data and "
    "`unknown` data last). `exchange=` names the venue; `/api/markets` lists them all."
)


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _markets(services: Services, symbol: str | None, exchange: str | None) -> list[MarketKey]:
    """The market ``symbol`` (and ``exchange``) names; without a symbol, every stored market (of
    ``exchange``)."""
    exchange = exchange or None
    if symbol:
        return [await services.market(symbol, exchange)]
    venue = None if exchange is None else await services.venue(exchange)
    stored = await services.catalog.stored()
    pairs = zip(stored["exchange"].to_pylist(), stored["symbol"].to_pylist(), strict=True)
    return [(e, s) for e, s in pairs if venue is None or e == venue]


def _answer(symbol: str | None, markets: list[MarketKey], **fields: Any) -> dict[str, Any]:
    """The seed's envelope, plus ``exchange``: the market of a one-symbol request, else null."""
    exchange, name = markets[0] if symbol and markets else (None, None)
    return {**fields, "symbol": name, "exchange": exchange}


async def load_ohlc(
    services: Services, market: MarketKey, start: datetime | None, end: datetime | None, limit: int
) -> pa.Table:
    try:
        return await services.store.candles(*market, start=start, end=end, limit=limit)
    except QueryError as exc:
        raise InputError(str(exc)) from None


async def load_volatility(
    services: Services, market: MarketKey, start: datetime | None, end: datetime | None, limit: int
) -> tuple[pa.Table, str]:
    """Stored volatility, or (seed behaviour) volatility computed from candles when none is stored.
    Stored rows without a value (NaN in archives of the original project) are left out."""
    try:
        table = await services.store.volatility(*market, start=start, end=end, limit=limit)
    except QueryError as exc:
        raise InputError(str(exc)) from None
    values = table["volatility"]
    usable = table.num_rows and pc.any(pc.and_(pc.is_finite(values), pc.not_equal(values, 0.0))).as_py()
    if usable:
        finite = pc.is_finite(values)
        return table.filter(pc.fill_null(finite, False)), "stored"
    ohlc = await load_ohlc(services, market, start, end, limit)
    return fallback_volatility(ohlc), "ohlc"


def fallback_volatility(ohlc: pa.Table, window: int = FALLBACK_WINDOW) -> pa.Table:
    """Rolling std (ddof 1) of log returns of closes over min(window, n) rows, >= 2 returns, else 0."""
    n = ohlc.num_rows
    if n == 0:
        return VOLATILITY_SCHEMA.empty_table()
    closes = ohlc["close"].to_numpy()
    returns = np.full(n, np.nan)
    if n > 1:
        returns[1:] = np.diff(np.log(closes))
    width = max(1, min(window, n))
    padded = np.concatenate([np.full(width - 1, np.nan), returns])
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    counts = np.sum(~np.isnan(windows), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.nansum(windows, axis=1) / np.maximum(counts, 1)
        squares = np.nansum((windows - means[:, None]) ** 2, axis=1)
        std = np.sqrt(squares / np.maximum(counts - 1, 1))
    vol = np.abs(np.where(counts >= 2, std, 0.0))
    vol = np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0)
    return pa.table(
        {
            "exchange": ohlc["exchange"],
            "symbol": ohlc["symbol"],
            "bucket": ohlc["bucket"],
            "volatility": pa.array(vol, pa.float64()),
            "window_seconds": pa.array(np.full(n, width, np.int32)),
        },
        schema=VOLATILITY_SCHEMA,
    )


# JSON text is built from columns: a row is a sequence of segments, each a constant (keys, punctuation, a
# value every row shares) or a list with one JSON value per row, and all rows are joined in one call.
Segment = bytes | list[bytes]

# Times as ``datetime.isoformat()`` writes them, for the units and zones it can write without a datetime
# per row; year 1..9999 is datetime's range (outside it the per-row path raises, as before).
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000}
_ZONE_SUFFIX = {"UTC": b'+00:00"', "+00:00": b'+00:00"', None: b'"'}
_YEARS = (-62_135_596_800, 253_402_300_800)  # epoch seconds of 0001-01-01 and 10000-01-01
_JSON_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _iso_segments(column: pa.Array) -> list[Segment] | None:
    """``"2023-11-14T22:13:20.123000+00:00"`` per time, from digits computed on NumPy arrays (dates once
    per distinct day, fractions once per distinct value); None where the per-row path is needed."""
    kind: pa.TimestampType = column.type
    per_second, suffix = _PER_SECOND.get(kind.unit), _ZONE_SUFFIX.get(kind.tz)
    if per_second is None or suffix is None or column.null_count:
        return None
    values = column.cast(pa.int64()).to_numpy()
    seconds = values // per_second
    if seconds.min() < _YEARS[0] or seconds.max() >= _YEARS[1]:
        return None
    days, clock = np.divmod(seconds, 86_400)
    day, of_day = np.unique(days, return_inverse=True)
    dates = np.datetime_as_string(day.astype("datetime64[D]")).astype("S10")
    text = np.empty((len(values), 19), np.uint8)
    text[:, :10] = dates.view(np.uint8).reshape(-1, 10)[of_day.ravel()]
    text[:, 10], text[:, 13], text[:, 16] = ord("T"), ord(":"), ord(":")
    hours, rest = np.divmod(clock, 3_600)
    for at, unit in ((11, hours), (14, rest // 60), (17, rest % 60)):
        text[:, at], text[:, at + 1] = unit // 10 + ord("0"), unit % 10 + ord("0")
    base: list[bytes] = text.view("S19").ravel().tolist()
    micros = (values - seconds * per_second) * (1_000_000 // per_second)
    if not micros.any():  # isoformat() writes microseconds only when there are some
        return [b'"', base, suffix]
    fraction, of_fraction = np.unique(micros, return_inverse=True)
    tails = np.array([(b".%06d" % m if m else b"") + suffix for m in fraction.tolist()], dtype=object)
    return [b'"', base, tails[of_fraction.ravel()].tolist()]


def _segments(column: pa.Array) -> list[Segment]:
    """The JSON orjson writes for each Python value of a non-empty ``column`` (``to_pylist()``, times as
    ``isoformat()``, NaN and missing values null). On the usual types no float, datetime or dict is made
    per row: each value's JSON bytes come from orjson over a NumPy array (or a lookup), made in C."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        iso = _iso_segments(column)
        if iso is not None:
            return iso
        return [[orjson.dumps(None if t is None else t.isoformat()) for t in column.to_pylist()]]
    if pa.types.is_float64(kind) or (
        not column.null_count and (pa.types.is_integer(kind) or pa.types.is_boolean(kind))
    ):
        values = column.to_numpy(zero_copy_only=False)  # missing floats become NaN: null either way
        return [orjson.dumps(values, option=_JSON_NUMPY)[1:-1].split(b",")]
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        encoded = column.dictionary_encode(null_encoding="encode")
        words = [orjson.dumps(w) for w in encoded.dictionary.to_pylist()]
        if len(words) == 1:
            return [words[0]]
        taken: list[bytes] = np.array(words, dtype=object)[encoded.indices.to_numpy()].tolist()
        return [taken]
    return [[orjson.dumps(v) for v in column.to_pylist()]]


def _join_rows(pieces: list[Segment], n: int, head: bytes, tail: bytes) -> bytes:
    """``n`` rows of ``pieces``, each row framed by ``head`` and ``tail``, separated by commas."""
    merged: list[Segment] = []  # constant, values, constant, values, ...
    constant = head
    for piece in [*pieces, tail]:
        if isinstance(piece, bytes):
            constant += piece
        else:
            merged += [constant, piece]
            constant = b""
    if not merged:  # every value is the same
        return b"[" + b",".join([constant] * n) + b"]"
    step = len(merged)
    parts: list[bytes] = [b""] * (step * n)
    for j, piece in enumerate(merged):
        if isinstance(piece, bytes):  # merged[0]: the row's opening, after the previous row's closing
            parts[j::step] = [(constant + b"," if j == 0 else b"") + piece] * n
        else:
            parts[j::step] = piece
    opening = merged[0]
    assert isinstance(opening, bytes)
    parts[0] = opening
    return b"[" + b"".join(parts) + constant + b"]"


def rows_json(table: pa.Table, names: list[str]) -> bytes:
    """``table`` as a JSON array of row objects with keys ``names`` (``timestamp`` = ``bucket``): the bytes
    ``orjson.dumps`` gives for the rows as dicts of their Python values, built column by column."""
    if table.num_rows == 0:
        return b"[]"
    pieces: list[Segment] = []
    for j, name in enumerate(names):
        pieces.append((b"," if j else b"") + orjson.dumps(name) + b":")
        pieces.extend(_segments(table["bucket" if name == "timestamp" else name].combine_chunks()))
    return _join_rows(pieces, table.num_rows, b"{", b"}")


def array_json(column: pa.ChunkedArray) -> bytes:
    """``column`` as a JSON array, the bytes ``orjson.dumps(column.to_pylist())`` gives (times as
    ``isoformat()``)."""
    if len(column) == 0:
        return b"[]"
    return _join_rows(_segments(column.combine_chunks()), len(column), b"", b"")


# Above this many rows a response is encoded on a worker thread, as the store converts records (the same
# threshold): /health and small queries do not wait behind it on the event loop.
THREAD_ROWS = store.THREAD_ROWS


async def off_loop(rows: int, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)``, on a worker thread when it handles ``rows`` >= :data:`THREAD_ROWS` rows."""
    if rows >= THREAD_ROWS:
        return await asyncio.to_thread(work, *args)
    return work(*args)


async def encode_rows(table: pa.Table, names: list[str]) -> orjson.Fragment:
    """:func:`rows_json` as a fragment of the response."""
    return orjson.Fragment(await off_loop(table.num_rows, rows_json, table, names))


OHLC_FIELDS = [
    "exchange",
    "timestamp",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "symbol",
    "trade_count",
    "vwap",
    "buy_volume",
    "sell_volume",
]


VOLATILITY_FIELDS = ["exchange", "timestamp", "volatility", "symbol", "window_seconds"]
MARKET_FIELDS = ["exchange", "symbol", "demo", "preferred", "first_candle", "last_candle"]


def _newest(tables: list[pa.Table], limit: int, empty: pa.Table) -> pa.Table:
    if not tables:
        return empty
    order = [("bucket", "ascending"), ("exchange", "ascending"), ("symbol", "ascending")]
    table = pa.concat_tables(tables).sort_by(order)
    return table.slice(max(0, table.num_rows - limit))


async def _newest_candles(
    services: Services, markets: list[MarketKey], start: datetime | None, end: datetime | None, limit: int
) -> pa.Table:
    """The newest ``limit`` candles of all ``markets`` together. Once ``limit`` rows are held, a market is
    read only from the oldest of them on: an older row cannot be among the newest (one of that very
    bucket can, and is read: ties go by market as before). Reading every market's newest ``limit`` rows
    read 1,700 x 1,000 rows for one ``/api/ohlc/`` of a whole-market demo; this reads about ``limit``
    times the log of the market count."""
    empty = pa.table({"bucket": pa.array([], pa.timestamp("ms", tz="UTC"))})
    held: list[pa.Table] = []
    rows, since = 0, start
    for market in markets:
        table = await load_ohlc(services, market, since, end, limit)
        if table.num_rows:
            held.append(table)
            rows += table.num_rows
        if rows >= 2 * limit or (rows >= limit and since is start):  # merged now and then, not per market
            newest = _newest(held, limit, empty)
            held, rows = [newest], newest.num_rows
            oldest: datetime = newest["bucket"][0].as_py()
            since = oldest if start is None else max(start, oldest)
    return _newest(held, limit, empty)


def _iso_ms(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _feed(f: FeedReport) -> dict[str, Any]:
    return {
        "source": f.source,
        "state": f.state,
        "since": _iso_ms(f.since_ms),
        "last_trade_at": _iso_ms(f.last_trade_ms),
        "trades": f.trades,
        "reconnects": f.reconnects,
        "error": f.error,
        "alive": f.alive,
        "delivering": f.delivering,
    }


def _undelivered(feeds: list[FeedReport]) -> str:
    if not waiting(feeds):  # none, or finished ones only (a finished replay is not why)
        return "no trade source reports: is ingest running?"
    parts = []
    for f in waiting(feeds):
        since = f" since {_iso_ms(f.since_ms)}" if f.since_ms is not None else ""
        why = f" ({f.error})" if f.error else ""
        parts.append(f"{f.source} {f.state if f.alive else 'silent'}{since}{why}")
    return "no trade source delivers: " + "; ".join(parts)


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    most = settings.api_max_limit

    Symbol = Annotated[
        str | None,
        Query(description="Symbol, e.g. BTCUSDT (BTC-USD works too); every stored market if omitted."),
    ]
    Exchange = Annotated[
        str | None,
        Query(
            description="Venue, e.g. binance, coinbase, synthetic (demo data), unknown. Without it, the "
            "venue rule picks (see the route's description); without symbol, every stored market of it."
        ),
    ]
    StartDate = Annotated[str | None, Query(description="Start date (YYYY-MM-DD) or ISO 8601 time, UTC.")]
    EndDate = Annotated[
        str | None, Query(description="End date (YYYY-MM-DD, included) or ISO 8601 time, UTC.")
    ]
    Limit = Annotated[int, Query(ge=1, le=most, description=f"Newest rows to return (1..{most}).")]

    @router.get("/api/ohlc/", tags=["OHLC"], summary="OHLC candles (1 s)", description=VENUE_RULE)
    async def ohlc(
        request: Request,
        symbol: Symbol = None,
        exchange: Exchange = None,
        start_date: StartDate = None,
        end_date: EndDate = None,
        limit: Limit = 1000,
    ) -> Response:
        services = services_of(request)
        start, end = check_dates(start_date, end_date)
        markets = await _markets(services, symbol, exchange)
        table = await _newest_candles(services, markets, start, end, limit)
        data = await encode_rows(table, OHLC_FIELDS)
        return json_response(_answer(symbol, markets, data=data, count=table.num_rows))

    @router.get(
        "/api/ohlc/latest", tags=["OHLC"], summary="Newest candle of each market", description=VENUE_RULE
    )
    async def ohlc_latest(request: Request, symbol: Symbol = None, exchange: Exchange = None) -> Response:
        services = services_of(request)
        rows: list[bytes] = []
        for market in await _markets(services, symbol, exchange):
            table = await services.store.latest_candle(*market)
            if table.num_rows:
                rows.append(rows_json(table.slice(table.num_rows - 1), OHLC_FIELDS)[1:-1])
        return json_response({"data": orjson.Fragment(b"[" + b",".join(rows) + b"]")})

    @router.get(
        "/api/volatility/",
        tags=["Volatility"],
        summary="Volatility (stored, or computed from OHLC)",
        description=VENUE_RULE,
    )
    async def volatility(
        request: Request,
        symbol: Symbol = None,
        exchange: Exchange = None,
        start_date: StartDate = None,
        end_date: EndDate = None,
        limit: Limit = 1000,
    ) -> Response:
        services = services_of(request)
        start, end = check_dates(start_date, end_date)
        tables: list[pa.Table] = []
        sources: set[str] = set()
        markets = await _markets(services, symbol, exchange)
        for market in markets:
            table, source = await load_volatility(services, market, start, end, limit)
            if table.num_rows:
                tables.append(table)
                sources.add(source)
        table = _newest(tables, limit, VOLATILITY_SCHEMA.empty_table())
        data = await encode_rows(table, VOLATILITY_FIELDS)
        origin = "+".join(sorted(sources)) or None
        return json_response(_answer(symbol, markets, data=data, count=table.num_rows, source=origin))

    @router.get("/api/symbols", tags=["Utility"], summary="Symbols with stored candles, on any venue")
    async def symbols(request: Request) -> Response:
        names = await services_of(request).catalog.symbols(fresh_within=1.0)
        return json_response({"symbols": names, "count": len(names)})

    @router.get(
        "/api/markets",
        tags=["Utility"],
        summary="Markets: venue and symbol, demo flag, span of stored candles",
        description="Every market the API knows (stored, seen live, or configured as EXCHANGES x SYMBOLS), "
        "by exchange and symbol. `demo` is true for the synthetic venue (demo data, not a real market); "
        "`preferred` marks the venue a request naming only the symbol gets; `first_candle` / `last_candle` "
        "are null while nothing is stored. " + VENUE_RULE,
    )
    async def markets(request: Request) -> Response:
        table = await services_of(request).catalog.listing(fresh_within=1.0)
        data = await encode_rows(table, MARKET_FIELDS)
        return json_response({"markets": data, "count": table.num_rows})

    @router.get(
        "/health",
        tags=["Utility"],
        summary="Liveness of the API, its store, its live feed and the trade sources",
        description="Always HTTP 200 while the API runs; `status` is `degraded` with `problems` saying why "
        "when the store does not answer or has no candles table (pinged every second in the background, so "
        "this route never waits; no answer for 5 s counts), the live feed is unreachable, or (with a live "
        "feed) no trade source delivers: no ingest runs, or every exchange is unreachable (a replay at the "
        "end of its file is `finished`, not a problem). `feeds` lists each source as ingest last reported it "
        "(null without a live feed).",
    )
    async def health(request: Request) -> Response:
        services = services_of(request)
        ok = await services.probe.answers()  # checked in the background: /health never waits
        live = None if services.fanout is None else services.fanout.ready.is_set()
        problems = []
        if not ok:
            store = services.store
            missing = "has no candles table: run `cryptostream migrate`"
            problems.append(f"the store ({store.name}) {missing if store.unmigrated else 'does not answer'}")
        feeds = None
        if live is False:
            problems.append("the live feed (KAFKA_BOOTSTRAP) is unreachable")
        elif live:
            snapshot = services.board.snapshot()
            feeds = snapshot.feeds
            if not snapshot.fed:
                problems.append(_undelivered(feeds))
        return json_response(
            {
                "status": "degraded" if problems else "healthy",
                "problems": problems,
                "store": services.store.name,
                "database": ok,
                "live_feed": live,
                "feeds": None if feeds is None else [_feed(f) for f in feeds],
                "subscribers": 0 if services.fanout is None else services.fanout.subscribers,
                "timestamp": datetime.now(UTC).isoformat(),
            }
        )

    return router
